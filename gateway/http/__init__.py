"""The shared HTTP message, whatever the protocol on either side (L0, no IO).

``Request`` and ``Response`` (its body: bytes, a file range, a spool), the
errors a handler raises (one class per status), the request-head checks every
front end runs before a request exists (``head``), and the spool that holds
bodies in memory, then in a temp file. Nothing here touches a socket.
"""
