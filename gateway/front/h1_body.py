"""Reading an HTTP/1.1 request body into a spool, before any handler runs.

The whole body is read first (memory up to ``body_buffer_size``, then a temp
file), so a slow upload never holds a PHP worker. Limits, each its own status:
``client_max_body_size`` -> 413 (from Content-Length at once, else as the
bytes arrive); a gap longer than ``body_timeout`` -> 408; after
``BODY_RATE_GRACE`` seconds the average rate must stay above ``body_min_rate``
-> 408 (slow-drip uploads); a temp dir that cannot take it -> 507; broken
chunked framing -> 400. ``Expect: 100-continue`` is answered when the body is
first waited for.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import trio

from ..http._h11 import h11
from ..http.errors import ClientGone, SpoolWriteError
from ..http.spool import Spool

if TYPE_CHECKING:
    from .h1 import ConnectionSettings
    from .h1_write import ResponseWriter

log = logging.getLogger(__name__)

#: Seconds of a request body before its average rate is held to body_min_rate.
BODY_RATE_GRACE = 10.0


class ReceiveTimeout(Exception):
    """Nothing arrived from the client before the deadline."""


class BodyError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Connection(Protocol):
    conn: h11.Connection
    settings: ConnectionSettings
    client: tuple[str, int]
    writer: ResponseWriter

    async def receive(self, timeout_at: float, *, idle: bool = False) -> None: ...


async def read_body(c: _Connection, req: h11.Request, headers: list[tuple[bytes, bytes]]) -> Spool | None:
    """The body of ``req`` (None if it has none), read through ``c``.

    Raises:
        BodyError: with the status to answer; ClientGone: EOF mid-body.
    """
    s = c.settings
    if not any(n in (b"content-length", b"transfer-encoding") for n, _ in headers):
        event = c.conn.next_event()  # h11 still needs to see EndOfMessage
        assert isinstance(event, h11.EndOfMessage), event
        return None
    for n, v in headers:
        if n == b"content-length" and int(v) > s.max_body_size:
            raise BodyError(413)
    spool = Spool(s.body_buffer_size, s.temp_dir)
    try:
        await _fill(c, spool)
    except h11.RemoteProtocolError:
        spool.close()
        raise BodyError(400) from None
    except BaseException:
        spool.close()
        raise
    return spool


async def _fill(c: _Connection, spool: Spool) -> None:
    s = c.settings
    started = trio.current_time()
    while True:
        event = c.conn.next_event()
        if event is h11.NEED_DATA:
            if c.conn.they_are_waiting_for_100_continue:
                await c.writer.send_all(c.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            deadline = trio.current_time() + s.body_timeout
            if s.body_min_rate:
                # After a grace period the body must average body_min_rate:
                # the bytes we have buy time until the average falls below it.
                deadline = min(deadline, started + max(BODY_RATE_GRACE, spool.size / s.body_min_rate))
            try:
                await c.receive(deadline)
            except ReceiveTimeout:
                log.info("closing %s: request body too slow (%d bytes in %.0fs)", c.client[0],
                         spool.size, trio.current_time() - started)
                raise BodyError(408) from None
        elif isinstance(event, h11.Data):
            try:
                spool.write(event.data)
            except SpoolWriteError as exc:
                log.error("%s: request body from %s refused: %s", exc.status, c.client[0], exc)
                raise BodyError(exc.status) from None
            if spool.size > s.max_body_size:
                raise BodyError(413)
        elif isinstance(event, h11.EndOfMessage):
            return
        else:  # ConnectionClosed mid-body
            raise ClientGone()
