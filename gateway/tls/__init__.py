"""TLS material: where certificates live (``store``), the local CA, the
``ssl`` contexts a TLS listener serves with. No sockets here."""
