"""Headers across a proxy hop (RFC 9110 7.6): what is removed, what is added.

Pure: header lists in, header lists out; the HTTP upstream transport and the
proxy handler both use it, so the rules are in one place.

Policy, both ways (RFC 9110 7.6.1): a header that describes one hop, not the
message, never crosses the gateway: ``Connection`` and every header it names,
``Keep-Alive``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``,
``Proxy-Connection`` and every ``Proxy-*`` (``Proxy-Authorization`` is for
this hop's proxy), and ``Proxy`` (httpoxy: CGI turns it into HTTP_PROXY).

Request side (``forward_request_headers``), what nginx users write by hand
(``proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`` ...):

- ``X-Forwarded-For``: the TCP peer's address appended to the list a
  *trusted* peer sent (``[server] trusted_proxies``, as ``http.realip``
  believes it); from any other peer the list is replaced by its address (a
  client cannot forge the chain the backend reads).
- ``Forwarded`` (RFC 7239): the same, one element ``for=...;host=...;proto=...``.
- ``X-Forwarded-Proto``: ``https`` or ``http``, as the request came (a
  trusted proxy's own ``X-Forwarded-Proto: https`` counts, ``realip``).
- ``X-Forwarded-Host``: a trusted peer's is kept, else the client's Host.
- ``Via``: ``1.1 NAME`` appended (RFC 9110 7.6.3).
- ``Host``: passed as the client sent it, or ``upstream_host``.
- ``Upgrade``: kept, with ``Connection: upgrade``, only for a request that
  asks for a protocol switch (``http.upgrade``, ``upgrade`` here).
- ``Content-Length`` and ``Expect`` are the transport's: the body is already
  read (a chunked upload goes out with its length, ``100-continue`` was
  answered by the front end).
"""

from __future__ import annotations

from collections.abc import Iterable

#: RFC 9110 7.6.1 and the de-facto ones: one hop's business, never forwarded.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
                        b"proxy-connection", b"proxy"})

#: Request headers the proxy sets itself (the client's are replaced or appended to).
_REWRITTEN = frozenset({b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
                        b"x-forwarded-host", b"forwarded", b"via"})


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names listed in ``Connection`` (lower case)."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t"))
    return frozenset(names)


def is_hop_by_hop(lname: bytes, named: frozenset[bytes] = frozenset()) -> bool:
    """Is the header ``lname`` (lower case) one hop's? ``named``: what Connection listed."""
    return lname in HOP_BY_HOP or lname.startswith(b"proxy-") or lname in named


def strip_hop_by_hop(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without the hop-by-hop ones (their case kept)."""
    named = connection_tokens(headers)
    return [(n, v) for n, v in headers if not is_hop_by_hop(n.lower(), named)]


def _values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v.strip(b" \t") for n, v in headers if n == name and v.strip(b" \t")]


def _forwarded_node(address: str) -> bytes:
    """An RFC 7239 node: IPv6 in brackets and quotes, a unix peer "unknown"."""
    if not address or address.startswith("unix:") or address.startswith("/"):
        return b"unknown"
    if ":" in address:
        return b'"[' + address.encode() + b']"'
    return address.encode()


def forward_request_headers(headers: list[tuple[bytes, bytes]], *, peer: str, peer_trusted: bool, https: bool,
                            upstream_host: bytes = b"", default_host: bytes = b"",
                            via: bytes = b"gateway", upgrade: bytes = b"") -> list[tuple[bytes, bytes]]:
    """The headers of a request as it goes to an HTTP backend.

    Args:
        headers: the client's (lower-cased names, as ``Request.headers``).
        peer: the TCP peer's address (the client, or the proxy in front).
        peer_trusted: the peer is in ``trusted_proxies``: its forwarding
            headers are appended to, not replaced.
        https: the request came over HTTPS (here or at a trusted proxy).
        upstream_host: the Host to send instead of the client's.
        default_host: the Host to send when the client sent none (HTTP/1.0).
        via: this proxy's name in ``Via``.
        upgrade: the ``Upgrade`` value of a request that asks for a switch
            (``http.upgrade.requested_upgrade``): sent on, with ``Connection: upgrade``.
    """
    named = connection_tokens(headers)
    out = [(n, v) for n, v in headers if n not in _REWRITTEN and not is_hop_by_hop(n, named)]
    host = next(iter(_values(headers, b"host")), b"")
    out.append((b"host", upstream_host or host or default_host))
    proto = b"https" if https else b"http"
    node = _forwarded_node(peer)
    xff = [peer.encode() if node != b"unknown" else b"unknown"]
    forwarded = [b"for=" + node + (b";host=" + _quoted(host) if host else b"") + b";proto=" + proto]
    forwarded_host = host
    if peer_trusted:
        xff = _values(headers, b"x-forwarded-for") + xff
        forwarded = _values(headers, b"forwarded") + forwarded
        forwarded_host = next(iter(_values(headers, b"x-forwarded-host")), b"") or host
    out.append((b"x-forwarded-for", b", ".join(xff)))
    out.append((b"x-forwarded-proto", proto))
    if forwarded_host:
        out.append((b"x-forwarded-host", forwarded_host))
    out.append((b"forwarded", b", ".join(forwarded)))
    out.append((b"via", b", ".join([*_values(headers, b"via"), b"1.1 " + via])))
    if upgrade:
        out.append((b"connection", b"upgrade"))
        out.append((b"upgrade", upgrade))
    return out


def _quoted(value: bytes) -> bytes:
    """A Forwarded parameter value: a token as it is, else a quoted string
    (a Host with a port has a colon, which is not a token character)."""
    if value and all(c in _TOKEN_CHARS for c in value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
