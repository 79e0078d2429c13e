"""Handlers (L2): ``Request -> Response``, no sockets.

``site.App`` picks the virtual host and route (``routing``), then serves a
static file (``static``) or runs PHP (``cgi_params`` builds the FastCGI
params, ``upstream.fastcgi`` runs them on a pool slot).
"""
