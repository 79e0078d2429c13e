"""Protocol upgrades across the proxy (RFC 9110 7.8): WebSocket and any other ``Upgrade``.

Pure: header lists in, answers out. The proxy handler asks ``requested_upgrade``
whether a request wants one; the HTTP upstream transport checks the backend's
``101`` with ``switch_headers``; the front end then pumps bytes both ways
(``front.tunnel``).

Policy:

- A request asks for an upgrade when it is HTTP/1.1 and carries ``Upgrade``
  with ``Connection: upgrade`` (RFC 9110 7.8: an ``Upgrade`` without
  ``Connection: upgrade``, or in HTTP/1.0, is ignored: it is a plain request).
  HTTP/2 has no Upgrade (RFC 9113 8.6: h2 refuses the header), and WebSocket
  over HTTP/2 (RFC 8441, extended CONNECT) is not offered: a browser then uses
  HTTP/1.1 for its WebSocket, as it does with nginx. ``Upgrade: h2c`` is
  this hop's business (a client asking the gateway for HTTP/2, which it
  offers by prior knowledge only; RFC 9113 dropped the upgrade): it is not
  passed on, and the request is answered as HTTP/1.1.
- Only such a request to an HTTP backend keeps ``Upgrade`` and sends
  ``Connection: upgrade``: the one exception to the hop-by-hop rule
  (``forwarding``), what nginx users write as ``proxy_set_header Upgrade
  $http_upgrade; proxy_set_header Connection "upgrade"``. A PHP route never
  switches (php-fpm cannot): PHP answers it as a plain request, which refuses
  the upgrade (RFC 9110 7.8 lets a server ignore it), and a ``Status: 101``
  from PHP is a 502 (``cgi``).
- The backend's ``101`` must name in its ``Upgrade`` a protocol the client
  offered, else it is a broken backend (502): the client never sees a switch
  to something it did not ask for. Its headers go to the client without the
  hop-by-hop ones, except ``Upgrade``, and with ``Connection: upgrade``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .forwarding import connection_tokens, is_hop_by_hop


class BadSwitch(ValueError):
    """The backend's 101 does not answer the upgrade the client asked for."""


def _protocols(value: bytes) -> list[bytes]:
    """The protocol names of an ``Upgrade`` value (``websocket``, ``h2c``, ``foo/2``), lower case."""
    return [p.lower() for p in _listed(value)]


def requested_upgrade(http_version: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The ``Upgrade`` value of a request that asks for an upgrade (the
    module's rule), else None. ``headers``: lower-cased names."""
    if http_version != b"1.1":
        return None
    headers = list(headers)
    if b"upgrade" not in connection_tokens(headers):
        return None
    offered = [p for n, v in headers if n == b"upgrade" for p in _listed(v) if p.lower() != b"h2c"]
    return b", ".join(offered) or None


def _listed(value: bytes) -> list[bytes]:
    """The comma-separated members of a header value, as written."""
    return [p.strip(b" \t") for p in value.split(b",") if p.strip(b" \t")]


def switch_headers(raw: Iterable[tuple[bytes, bytes]], offered: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of a backend's ``101`` as they go to the client.

    Args:
        raw: the 101's headers (names as the backend cased them).
        offered: the request's ``Upgrade`` value (``requested_upgrade``).

    Raises:
        BadSwitch: the 101 has no ``Upgrade``, or names a protocol the client did not offer.
    """
    raw = list(raw)
    named = connection_tokens(raw)
    chosen = [v.strip(b" \t") for n, v in raw if n.lower() == b"upgrade" and v.strip(b" \t")]
    if not chosen:
        raise BadSwitch("the backend switched protocols (101) without an Upgrade header")
    wanted = set(_protocols(offered))
    for value in chosen:
        for protocol in _protocols(value):
            if protocol not in wanted:
                raise BadSwitch(f"the backend switched to {protocol.decode('latin-1')!r}, "
                                f"which the client did not offer ({offered.decode('latin-1')})")
    out = [(n, v) for n, v in raw if n.lower() != b"upgrade" and not is_hop_by_hop(n.lower(), named)]
    out.append((b"connection", b"upgrade"))
    out.append((b"upgrade", b", ".join(chosen)))
    return out
