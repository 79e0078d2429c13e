"""Request framing and Host rules that h11 leaves to us: pure, bytes in, verdict out.

h11 parses and validates the request line and header syntax. What it accepts
but a server at the edge must refuse, or must normalise before anything
routes on it, is decided here, once, for every request (RFC 9112, RFC 9110):

- **Content-Length together with Transfer-Encoding** (either order, any
  spelling h11 normalises: ``chunked `` with spaces or tabs, upper case,
  obs-fold): 400 and the connection is closed (RFC 9112 6.1: "a server MAY
  reject a request that contains both ... and ought to handle such a message
  as an error"; nginx >= 1.21.1 answers 400). Behind a front proxy that frames
  by Content-Length this is the classic CL.TE desync; reading it as chunked,
  as h11 would, executes the smuggled request behind the body.
- **Transfer-Encoding in an HTTP/1.0 request**: 400 (RFC 9112 6.1: HTTP/1.0
  has no chunked framing; a 1.0 hop would frame it otherwise).
- **Host**: exactly one (RFC 9112 3.2); its value must be ``uri-host[:port]``
  (RFC 3986 3.2.2: a reg-name of unreserved and sub-delims, an IPv4
  address, or an IPv6 literal in brackets), with no ``..``: else 400.
  ``a b``, ``x/../y``, ``<script>``, ``user@x``, ``x:1:2`` and backslashes are
  refused (nginx lets several of those through to ``$host``).
- **Request target**: one or more visible ASCII characters (RFC 9110 4.1 /
  RFC 3986: no space, control or byte >= 0x80): else 400. h11 enforces
  this on the HTTP/1.1 request line; an HTTP/2 ``:path`` (RFC 9113 8.3.1)
  gets the same rule here, so a space or raw UTF-8 never reaches
  ``$request_uri``, a Location header or a proxied request line.
- **Absolute-form** targets (``GET http://example.com/x HTTP/1.1``) win over
  Host (RFC 9112 3.2.2): the authority picks the site and becomes the Host
  PHP sees; the target becomes origin-form, as nginx's ``$request_uri``.

The result carries the host name (lower case, port and trailing dot removed)
that virtual-host lookup and SERVER_NAME use, so no later layer parses Host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: RFC 3986 3.2.2 reg-name (unreserved / sub-delims; pct-encoded is refused: no
#: real host name needs it, and "%00" would reach PHP as SERVER_NAME), an IPv6
#: literal (hex, colons, dots for a mapped IPv4; no zone id), then an optional port.
_HOST = re.compile(rb"^(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=]*)(?::(?P<port>[0-9]{0,5}))?$")
_SCHEMES = (b"http://", b"https://")
#: RFC 9112 3.2 request-target as h11 checks it: VCHAR (0x21-0x7e), at least one.
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")


class BadRequestHead(ValueError):
    """The request head is refused; the connection is closed after the answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class CheckedHead:
    target: bytes  # origin-form (absolute-form rewritten)
    headers: list[tuple[bytes, bytes]]  # the Host header set to the effective authority
    host: bytes  # the host name: lower case, no port, no trailing dot; b"" when none was given
    #: a Content-Length or Transfer-Encoding was given: the request has a body to read
    framed: bool = False
    #: ``Connection: close`` (any case, a token of a list, as h11 reads it)
    asks_close: bool = False


def parse_host(value: bytes) -> bytes:
    """The host name of a Host value (``[::1]:8080`` -> ``[::1]``), lower case,
    without a trailing dot.

    Raises:
        BadRequestHead: not ``uri-host[:port]``.
    """
    m = _HOST.match(value)
    if m is None:
        raise BadRequestHead(f"invalid Host {value[:64]!r}")
    name = m.group("name").lower()
    if b".." in name or name in (b"", b"."):  # ":80", "." name no host
        raise BadRequestHead(f"invalid Host {value[:64]!r}")
    port = m.group("port")
    if port and int(port) > 65535:
        raise BadRequestHead(f"invalid port in Host {value[:64]!r}")
    return name.removesuffix(b".")


#: Methods refused before any handler, as nginx: TRACE would echo the request
#: (cookies included) back through PHP; CONNECT asks for a tunnel (nginx >= 1.21.1).
REFUSED_METHODS = frozenset({b"TRACE", b"CONNECT"})


def check_method(method: bytes) -> None:
    """Raises ``BadRequestHead`` (405) for a method no handler may see."""
    if method in REFUSED_METHODS:
        raise BadRequestHead(f"{method.decode('latin-1')} is not allowed", status=405)


def check_request_head(target: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]]) -> CheckedHead:
    """Apply the framing and Host rules above to a head h11 has parsed.

    Args:
        headers: lower-cased names, as h11 gives them.

    Returns:
        The head to serve: origin-form target, effective Host, host name.

    Raises:
        BadRequestHead: the request must be refused (status 400).
    """
    if not _TARGET.match(target):
        raise BadRequestHead(f"invalid request target {target[:64]!r}")
    has_length = has_te = asks_close = False
    hosts: list[bytes] = []
    for name, value in headers:  # (the one pass over the headers: the front end reads framing and close here)
        if name == b"host":
            hosts.append(value)
        elif name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            has_te = True
        elif name == b"connection" and not asks_close:
            asks_close = b"close" in [t.strip() for t in value.lower().split(b",")]
    if has_te and has_length:
        raise BadRequestHead("both Content-Length and Transfer-Encoding (request smuggling)")
    if has_te and http_version == b"1.0":
        raise BadRequestHead("Transfer-Encoding in an HTTP/1.0 request")
    if len(hosts) > 1:
        raise BadRequestHead("more than one Host header")
    host = hosts[0] if hosts else b""
    name = parse_host(host) if host else b""
    if target[:1] != b"/" and target[:8].lower().startswith(_SCHEMES):
        rest = target.split(b"://", 1)[1]
        end = len(rest)
        for sep in (b"/", b"?", b"#"):
            i = rest.find(sep)
            if 0 <= i < end:
                end = i
        authority, path = rest[:end], rest[end:]
        if not authority:
            raise BadRequestHead("absolute-form target without a host")
        name = parse_host(authority)  # userinfo ("user@host") is refused here too
        target = path if path.startswith(b"/") else b"/" + path
        headers = [(n, v) for n, v in headers if n != b"host"]
        headers.insert(0, (b"host", authority))
    return CheckedHead(target, headers, name, has_length or has_te, asks_close)
