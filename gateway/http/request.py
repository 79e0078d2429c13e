"""What a handler is given about one request; no IO, no listener imports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio

from .errors import ClientGone
from .spool import Spool

#: RFC 9110 9.2.2: methods a server may run twice with the effect of once; only
#: these are retried on a fresh upstream connection.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class ClientAbort:
    """Cancel scopes that fire when the client closes its connection.

    The connection task watches the client socket while a handler runs and
    calls :meth:`fire` on EOF. A handler wraps what should be abandoned then in
    ``with abort.scope():``, which raises ``ClientGone`` once cancelled.
    """

    def __init__(self, start_watching: Callable[[], None] | None = None,
                 probe: Callable[[], bool] | None = None) -> None:
        """``start_watching``: start the watcher task; ``probe``: has the client
        closed its connection, checked now without reading (see ``left``)."""
        self.gone = False
        self._scopes: set[trio.CancelScope] = set()
        # Watching the client costs a task; only handlers that wait (PHP) ask for it.
        self._start_watching = start_watching
        self._probe = probe

    def left(self) -> bool:
        """Has the client gone? A cheap check at a decision point (leaving the
        PHP queue), for waits too short to have started the watcher."""
        if not self.gone and self._probe is not None and self._probe():
            self.fire()
        return self.gone

    def watch(self) -> None:
        """Start watching the client for EOF (once; later calls do nothing)."""
        if self._start_watching is not None:
            self._start_watching()
            self._start_watching = None

    @contextmanager
    def scope(self, *, start_watching: bool = True) -> Iterator[None]:
        """Cancelled when the client leaves. With ``start_watching=False`` the
        caller decides when watching starts (``watch()``); until then a departure
        goes unnoticed."""
        if start_watching:
            self.watch()
        cs = trio.CancelScope()
        if self.gone:
            cs.cancel()
        self._scopes.add(cs)
        try:
            with cs:
                yield
        finally:
            self._scopes.discard(cs)
        if cs.cancelled_caught:
            raise ClientGone()

    def fire(self) -> None:
        self.gone = True
        for cs in list(self._scopes):
            cs.cancel()


class BodyWriter(Protocol):
    """The body of a response being streamed to the client."""

    async def send(self, data: bytes) -> None:
        """Send ``data`` now (one chunk), at the client's pace."""

    async def end(self) -> None:
        """The body is complete."""


class StartResponse(Protocol):
    """Given to handlers that stream: send the head now, then the body piece by piece.

    A handler that calls it returns ``Response(status, streamed=True)`` afterwards.
    The response goes out chunked (HTTP/1.1) or close-delimited (HTTP/1.0) unless
    ``headers`` carry a Content-Length.
    """

    async def __call__(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> BodyWriter:
        ...


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
    abort: ClientAbort = field(default_factory=ClientAbort)
    start_response: StartResponse | None = None

    def header(self, name: bytes) -> bytes | None:
        """The last value of a header, or None."""
        value = None
        for n, v in self.headers:
            if n == name:
                value = v
        return value

    def header_map(self) -> dict[bytes, bytes]:
        return dict(self.headers)
