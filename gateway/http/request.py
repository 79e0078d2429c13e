"""What a handler is given about one request; no IO, no listener imports.

The same ``Request`` comes from every front end (HTTP/1.1 now, HTTP/2 next):
a validated head (``http.head``), the body fully read into a ``Spool``, the
addresses, and a ``client_left`` probe. Handlers never see the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .spool import Spool

#: RFC 9110 9.2.2: methods a server may run twice with the effect of once; only
#: these are retried on a fresh upstream connection.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def _never() -> bool:
    return False


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]  # lower-cased names, in order
    client: tuple[str, int]
    server: tuple[str, int]
    body: Spool | None
    request_id: str
    #: the host name the request is for (Host, or an absolute-form target's
    #: authority): validated, lower case, no port; b"" when there was none
    host: bytes = b""
    https: bool = False
    #: has the client gone? A cheap probe (no IO wait) for a decision point,
    #: such as leaving the PHP queue; the front end's watcher covers long waits.
    client_left: Callable[[], bool] = _never
    #: who sent these headers: the TCP peer (or a PROXY protocol header's
    #: client), before trusted proxies' headers named ``client``; None: ``client``.
    #: A proxied request's X-Forwarded-For is appended to only if it is trusted.
    peer: tuple[str, int] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The last value of a header, or None."""
        value = None
        for n, v in self.headers:
            if n == name:
                value = v
        return value

    def header_map(self) -> dict[bytes, bytes]:
        return dict(self.headers)
