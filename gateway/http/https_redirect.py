"""The plain-HTTP to HTTPS redirect of ``[sites.X] redirect_to_https``, sans-IO.

Policy (Caddy's automatic redirect, nginx's ``return 308 https://$host$request_uri``):

- 308 Permanent Redirect, so a POST stays a POST with its body (a 301 lets
  clients turn it into a GET).
- To ``https://HOST[:PORT]TARGET``: HOST is the request's host name (Host,
  lower case, no port; an IPv6 literal in brackets), PORT the first ``tls``
  listener's port in ``[server] listen``, left out when it is 443; TARGET the
  request target as the client sent it (path and query; an absolute-form
  target's path and query).
- Never ``/.well-known/acme-challenge/``: an ACME HTTP-01 challenge is
  answered over plain HTTP (Let's Encrypt follows redirects, but a site whose
  certificate is not there yet could not answer over HTTPS).
"""

from __future__ import annotations

ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def exempt(path: str) -> bool:
    """Is the (decoded, normalised) ``path`` never redirected?"""
    return path.startswith(ACME_CHALLENGE_PREFIX)


def origin_form(target: bytes) -> bytes:
    """Path and query of a request target (an absolute-form one loses its
    scheme and authority)."""
    if target.startswith(b"/"):
        return target
    if b"://" in target:
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        return rest[slash:] if slash >= 0 else b"/"
    return b"/"


def location(host: bytes, target: bytes, tls_port: int) -> bytes:
    """``https://HOST[:PORT]/path?query`` for the redirect."""
    port = b"" if tls_port in (443, 0) else b":%d" % tls_port
    return b"https://" + host + port + origin_form(target)
