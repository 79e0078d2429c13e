"""What a handler returns: a status, headers and a body the front end sends.

A body is one of: ``bytes``; a ``FileRange`` (sendfile where the client is a
plain socket); a ``Spool`` (a drained upstream response, in memory or a temp
file); or a ``BodyStream``, an async iterator of chunks that may hold an
upstream slot until it is closed (httpcore's ``PoolByteStream``). The front end
writes it at the client's pace and always closes it (``Response.aclose``).
A streamed body without a Content-Length goes out chunked (HTTP/1.1) or
close-delimited (HTTP/1.0).

A ``101 Switching Protocols`` from a proxied backend carries a ``Tunnel``
(the backend's switched connection) instead of a body: the HTTP/1.1 front end
sends the 101 head and pumps bytes both ways (``front.tunnel``); whoever
gets such a response closes it (``aclose``), which closes the tunnel too.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, BinaryIO, Protocol

from .spool import Spool

if TYPE_CHECKING:
    import trio


@dataclass(slots=True)
class FileRange:
    """``length`` bytes of an open file from ``offset``: sent with sendfile where
    the client stream is a plain socket. The connection task closes ``file``."""

    file: BinaryIO
    offset: int
    length: int
    close_file: bool = True

    def __len__(self) -> int:  # h11 counts Data(data=...) against Content-Length
        return self.length


class BodyStream(Protocol):
    """A body produced while it is sent: chunks of bytes, then ``aclose()``
    (always called, also when the client left halfway)."""

    def __aiter__(self) -> BodyStream: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


class UpstreamTiming(Protocol):
    """Seconds waiting for an upstream slot, and from slot to the response's
    end (None until a streamed body ends); the addresses tried, each with its
    seconds (None: not ended). For the access log."""

    queue_wait: float
    upstream_time: float | None
    tried: list[tuple[str, float | None]]


class Tunnel(Protocol):
    """The backend's side of a switched connection (``upstream.exchange.UpstreamTunnel``)."""

    @property
    def stream(self) -> trio.abc.Stream:
        """The backend connection, speaking the new protocol."""

    @property
    def prefix(self) -> bytes:
        """What the backend sent past its 101 head (to go to the client first)."""

    async def aclose(self) -> None:
        """Close the backend connection and free what it holds (idempotent)."""


Body = bytes | FileRange | Spool | BodyStream


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: Body = b""
    reason: bytes = b""
    #: set for a response from an upstream: its name and timing (access log)
    upstream: str = ""
    timing: UpstreamTiming | None = None
    #: the status and body are a backend's own (PHP or a proxied server), not
    #: the gateway's: error pages replace them only with ``intercept_errors``
    from_upstream: bool = False
    #: bytes written to the client after the head, chunk framing included
    #: (nginx's $body_bytes_sent); the front end counts them, also of a cut write
    bytes_sent: int = 0
    #: a 101's switched backend connection (the body is then empty)
    tunnel: Tunnel | None = None

    @property
    def streamed(self) -> bool:
        """Is the body a ``BodyStream``, or is there a tunnel (closing it may await the upstream)?"""
        return self.tunnel is not None or not isinstance(self.body, (bytes, Spool, FileRange))

    def close(self) -> None:
        """Release a file or spool body at once (no await); a stream is left
        to ``aclose``."""
        body = self.body
        if isinstance(body, Spool):
            body.close()
        elif isinstance(body, FileRange) and body.close_file:
            body.file.close()

    async def aclose(self) -> None:
        """Release what the body holds: a file, a spool, an upstream slot; and the tunnel."""
        try:
            if not isinstance(self.body, (bytes, Spool, FileRange)):
                await self.body.aclose()
            else:
                self.close()
        finally:
            if self.tunnel is not None:
                await self.tunnel.aclose()


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of ``status`` (b"" for one without)."""
    return _PHRASES.get(status, b"")


#: (made once: ``HTTPStatus(status)`` and the encode cost ~1 us a response)
_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}


_date_cache: tuple[int, bytes] = (0, b"")


def http_date(ts: float | None = None) -> bytes:
    """An RFC 9110 date; the current one is formatted once per second."""
    global _date_cache
    if ts is not None:
        return email.utils.formatdate(ts, usegmt=True).encode()
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def error_response(status: int, *, server: bytes = b"gateway", headers: list[tuple[bytes, bytes]] | None = None,
                   detail: str = "") -> Response:
    """An nginx-like small HTML error page. ``detail`` goes to the log, never the client."""
    phrase = reason_phrase(status)
    title = f"{status} {phrase.decode()}".strip().encode()
    body = (
        b"<html>\r\n<head><title>" + title + b"</title></head>\r\n<body>\r\n<center><h1>" + title
        + b"</h1></center>\r\n<hr><center>" + server + b"</center>\r\n</body>\r\n</html>\r\n"
    )
    hdrs = [(b"content-type", b"text/html")]
    if headers:
        hdrs += headers
    return Response(status, hdrs, body)
