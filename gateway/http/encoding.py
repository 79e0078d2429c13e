"""Content codings, sans-IO: which coding a client gets, and whether a response
is compressed at all. Pure functions on header values; the transform itself
(``app.compress``) calls them, so HTTP/1.1 and HTTP/2 answer alike.

Policy (nginx's gzip module and Caddy's ``encode`` where RFC 9110 is silent):

- **Accept-Encoding** (RFC 9110 12.5.3): ``coding;q=V`` entries, names case
  insensitive, ``x-gzip`` is ``gzip``. A coding is acceptable when its own
  entry, or else ``*``'s, has q > 0; ``q=0`` refuses it. No header, or an
  empty one: identity only (a client that says nothing gets what it can
  surely read). Among acceptable codings the client's highest q wins, ties go
  to the server's order (``[server] compression``, br before gzip). A client
  that refuses identity too (``identity;q=0``) still gets identity when it
  accepts nothing we have: nginx and Caddy do so rather than answer 406.
- **Candidates**: text types only — ``text/html``, ``text/css``,
  ``text/plain``, ``text/xml``, ``text/javascript``, ``application/javascript``,
  ``application/json``, ``application/xml``, any ``+json``/``+xml`` suffix
  (``image/svg+xml``, ``application/rss+xml``, ``application/ld+json``);
  images, fonts, archives and ``text/event-stream`` are sent as they are. A
  candidate response always gets ``Vary: Accept-Encoding`` (merged into an
  existing Vary), also when this client is not given a coding, so a cache
  keeps both variants apart.
- **Never compressed**: 1xx, 204, 206 (a range of the identity bytes) and 304
  (no body; it still carries Vary and the weak ETag), a response with a
  Content-Encoding already (PHP's own gzip, a precompressed file), one with
  ``Cache-Control: no-transform``, a response whose known length is below
  ``compress_min_size`` (a streamed one of unknown length is compressed).
  HEAD gets the headers a GET would get, without a body.
- **Headers** of a compressed response: ``Content-Encoding``, no
  ``Content-Length`` unless the body is re-measured, no ``Accept-Ranges``
  (the coded bytes serve no ranges), a strong ETag made weak (``W/"…"``,
  nginx since 1.7.3: the coded bytes differ from the identity's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Codings the gateway can produce, in its default order of preference.
CODINGS = ("br", "gzip")

_TEXT_TYPES = frozenset({
    b"text/html", b"text/css", b"text/plain", b"text/xml", b"text/javascript", b"text/csv", b"text/markdown",
    b"application/javascript", b"application/x-javascript", b"application/json", b"application/xml",
    b"application/manifest+json", b"image/svg+xml",
})


def parse_accept_encoding(value: bytes | None) -> dict[str, float]:
    """``b"br;q=1.0, gzip;q=0.5, *;q=0"`` -> ``{"br": 1.0, "gzip": 0.5, "*": 0.0}``.

    Names lower case, ``x-gzip`` as ``gzip``; a malformed q counts as 0 (a
    refusal is the safe reading); the last entry for a name wins."""
    out: dict[str, float] = {}
    if not value:
        return out
    for item in value.decode("latin-1").split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        if name == "x-gzip":
            name = "gzip"
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        out[name] = q
    return out


def choose_coding(accept: bytes | None, offered: Sequence[str]) -> str | None:
    """The coding from ``offered`` (server's order of preference) that the
    Accept-Encoding value ``accept`` prefers, or None for identity."""
    prefs = parse_accept_encoding(accept)
    if not prefs:
        return None
    star = prefs.get("*", 0.0)
    best: str | None = None
    best_q = 0.0
    for coding in offered:
        q = prefs.get(coding, star)
        if q > best_q:  # strictly greater: ties keep the server's earlier choice
            best, best_q = coding, q
    return best


def media_type(content_type: bytes | None) -> bytes:
    """``b"text/html; charset=UTF-8"`` -> ``b"text/html"``."""
    if not content_type:
        return b""
    return content_type.split(b";", 1)[0].strip().lower()


def is_compressible_type(content_type: bytes | None) -> bool:
    """A text type worth compressing (see the module docstring)."""
    mt = media_type(content_type)
    return mt in _TEXT_TYPES or mt.endswith((b"+xml", b"+json"))


def _has_token(value: bytes | None, token: bytes) -> bool:
    return value is not None and any(t.strip().lower() == token for t in value.split(b","))


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one response: ``coding`` to compress with (None: send
    as it is), and whether it varies by Accept-Encoding (``vary``)."""

    coding: str | None
    vary: bool

    @property
    def compress(self) -> bool:
        return self.coding is not None


NO = Decision(None, False)


def decide(*, status: int, headers: Sequence[tuple[bytes, bytes]], length: int | None, accept: bytes | None,
           offered: Sequence[str], min_size: int, content_type: bytes | None = None) -> Decision:
    """Compress this response, and with what?

    Args:
        headers: the response's headers (any case).
        length: the identity body's length (a HEAD's: what GET would send);
            None when unknown (streamed).
        accept: the request's Accept-Encoding.
        offered: the server's codings, in its order; empty: compression off.
        content_type: the type to judge when the headers carry none (a 304
            of a static file).
    """
    if not offered or status < 200 or status == 204:
        return NO
    # the last Content-Type, Content-Encoding and Cache-Control, in one pass
    # (a name of another length is not lowered: most are not these three)
    ctype = coded = cache_control = None
    for n, v in headers:
        if len(n) in _LENGTHS:
            n = n.lower()
            if n == b"content-type":
                ctype = v
            elif n == b"content-encoding":
                coded = v
            elif n == b"cache-control":
                cache_control = v
    if not is_compressible_type(ctype or content_type):
        return NO
    if coded is not None:
        return NO  # already coded: leave it, Vary is the coder's business
    if _has_token(cache_control, b"no-transform"):
        return NO
    if status in (206, 304) or (length is not None and length < min_size):
        return Decision(None, True)
    return Decision(choose_coding(accept, offered), True)


#: the lengths of the names ``decide`` reads
_LENGTHS = frozenset({len(b"content-type"), len(b"content-encoding"), len(b"cache-control")})


def add_vary(headers: list[tuple[bytes, bytes]], token: bytes = b"Accept-Encoding") -> list[tuple[bytes, bytes]]:
    """``headers`` with ``token`` in Vary: merged into an existing Vary (one
    line), left alone when it is there already or Vary is ``*``."""
    for i, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            tokens = [t.strip().lower() for t in value.split(b",")]
            if token.lower() in tokens or b"*" in tokens:
                return headers
            out = list(headers)
            out[i] = (name, value + b", " + token if value.strip() else token)
            return out
    return [*headers, (b"vary", token)]


def weak_etag(etag: bytes) -> bytes:
    """A strong ETag made weak, as nginx does for a compressed response; weak
    ones stay as they are."""
    etag = etag.strip()
    if etag.startswith(b"W/") or not etag.startswith(b'"'):
        return etag
    return b"W/" + etag


def coded_headers(headers: Sequence[tuple[bytes, bytes]], coding: str, *,
                  length: int | None = None) -> list[tuple[bytes, bytes]]:
    """The headers of the coded variant: Content-Encoding, Vary, a weak
    ETag, no Accept-Ranges; Content-Length ``length`` (None: dropped, the body
    is framed by chunks)."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        low = name.lower()
        if low in (b"content-length", b"accept-ranges"):
            continue
        if low == b"etag":
            value = weak_etag(value)
        out.append((name, value))
    out.append((b"content-encoding", coding.encode()))
    if length is not None:
        out.append((b"content-length", b"%d" % length))
    return add_vary(out)
