"""What a handler returns: a status, headers and a body the connection task sends."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import BinaryIO

from .spool import Spool


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


Body = bytes | FileRange | Spool


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: Body = b""
    reason: bytes = b""
    #: Timings for the access log: seconds waiting for a PHP slot, seconds in PHP.
    queue_wait: float | None = None
    php_time: float | None = None
    upstream: str = ""
    #: True when the handler already sent the response through
    #: ``Request.start_response``; ``bytes_sent`` then counts the body.
    streamed: bool = False
    bytes_sent: int = 0

    def close(self) -> None:
        if isinstance(self.body, Spool):
            self.body.close()
        elif isinstance(self.body, FileRange) and self.body.close_file:
            self.body.file.close()


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


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
