"""An event-driven HTTP front end and FastCGI gateway for PHP, on trio.

The tree is the architecture; imports point down the layers (checked by
``tests/test_layers.py``):

- L0 ``http`` (Request, Response, body types, errors, spool, request-head
  checks; no IO), ``config`` (schema, conf.d loading, the address parser),
  ``metrics`` (counters and histograms), ``_util``.
- L1 ``front`` (socket to Request and back: listeners, accept, parking, the
  h11 loop) and ``upstream`` (Request to a backend and back: the pool,
  connect, the FastCGI transport and its CGI head parser). Neither imports
  the other.
- L2 ``app``: handlers, ``Request -> Response``: sites and routing, static
  files, the PHP site handler.
- L3 ``observe`` (monitor, verdict, admin, multi-process merge, views) and
  ``serve`` (one process's wiring, the master, the php-fpm supervisor; it
  wires ``observe`` in).
- L4 ``cli``.

Follow a request: ``cli.serve`` -> ``serve.process.serve`` ->
``front.listen`` (accept) -> ``front.h1.HttpConnection`` -> ``app.site.App.handle``
(vhost + ``app.routing``) -> ``app.static`` or the PHP handler, which runs
``upstream.fastcgi.run_php`` on an ``upstream.pool`` slot.
"""

__version__ = "0.1.0"
