"""An event-driven HTTP front end and FastCGI gateway for PHP, on trio.

Follow a request from ``gateway serve`` to the FastCGI socket:
``cli.serve`` -> ``server.serve`` (listeners, shutdown) -> ``http_connection``
(one task per client, h11) -> ``app.App.handle`` (vhost + ``routing``) ->
``php.PhpHandler`` (``cgi`` params, ``pool`` slot, ``upstream`` FastCGI
exchange) or ``static``.
"""

__version__ = "0.1.0"
