"""Send one request upstream and get its response: the policy every transport shares.

Flow (nginx's upstream module, one state machine for every protocol): take a
pool slot (queue wait measured) -> a connection -> the transport writes the
request and reads the response head -> the body is drained into a spool and
the connection goes back to the pool *before* the client is sent anything, so
a slow client never holds a worker. Two exceptions stream instead, holding the
slot until the body is closed, by choice: a response that asks for it
(``X-Accel-Buffering: no``, ``text/event-stream``, or ``force_stream``), and
one that outgrows ``response_buffer_size + max_temp_file_size``.

Retry policy: a *reused* connection that yields EOF or a reset before any
response record is retried once on a fresh connection, **for idempotent
methods only** (``retry_safe``: GET, HEAD, OPTIONS, TRACE, PUT, DELETE; RFC 9110
9.2.2). That is php-fpm's pm.max_requests recycling: the worker closed the
kept-alive connection after its last response, and the request written on it
never ran. But the same silence comes from a worker that died *while running*
the request (a segfault, a request_terminate_timeout kill with its output still
buffered): a POST retried then runs twice. So a POST, PATCH, LOCK... gets a 502
instead, as nginx never retries a non-idempotent request once sent. In a
group, an idempotent request whose response head did not come within
``read_timeout`` goes to another address too (nginx's default
``fastcgi_next_upstream error timeout``): a host whose link went down or
that hangs answers nothing, and its requests must not all be lost; the price
is nginx's too: a GET slower than read_timeout runs on two hosts. Nothing
else is retried: once a response head arrived, the backend ran it. A fresh
connection closed unanswered counts against its address (passive health,
``Pool.record_failure``) whatever the method, as nginx counts a failure before
it decides whether to pass the request on; a reused one does not (that is
recycling, not a failing host).

Each address is tried once per request. The addresses tried, and the
seconds spent on each, are in ``Timing.tried`` (nginx's ``$upstream_addr``
and ``$upstream_response_time``, in the access log), also on the error of a
request that failed.

Tunnels: a ``101`` to an upgrade request (``http1``, WebSocket) makes the
connection an ``UpstreamTunnel``: the response carries it, the front end pumps
bytes through it and closes it. It keeps the pool slot for its whole life (it
is a live connection to that address, within the address's bound, as nginx's
``max_conns`` counts upgraded connections), and its connection is closed at
the end, never returned to the pool.

Client aborts are the front end's: it cancels the handler when the client
leaves. A waiter then leaves the queue (php-fpm would run the request for
nobody) and a run in progress is abandoned (its connection closed, the only
abort php-fpm honours), unless ``ignore_client_abort``, which shields the run
from the client (not from shutdown's graceful deadline: ``Pool.end_shielded_at``).
A client that left during a short wait, before the front end watched it, is
caught by ``client_left`` (one poll()) as the request gets its slot; a client
that half-closed after its request is refused there too, as nginx does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, cast

import trio

from .._util import single_exception
from ..http.errors import (
    ClientGone,
    GatewayError,
    UpstreamClosedEarly,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ..http.spool import Spool
from .cgi import CgiHead
from .fastcgi import FastCgiConn, FastCgiExchange, PhpSettings
from .http1 import HttpConn, HttpExchange, HttpSettings, UpstreamRequest
from .pool import C, Pool, Slot

log = logging.getLogger(__name__)


class Timing:
    """Seconds waiting for a slot, and from slot to the response's end (filled
    in when a streamed body ends); the addresses tried, each with the seconds
    spent on it (None: the response from it is still streaming). The access
    log reads them."""

    __slots__ = ("queue_wait", "upstream_time", "tried")

    def __init__(self, queue_wait: float = 0.0) -> None:
        self.queue_wait = queue_wait
        self.upstream_time: float | None = None
        self.tried: list[tuple[str, float | None]] = []


@dataclass(slots=True)
class UpstreamResponse:
    head: CgiHead
    #: the drained body, or a stream that holds the slot until closed
    body: Spool | UpstreamBody[Any]
    timing: Timing
    upstream: str
    #: set for a 101 to an upgrade request: the switched connection (``body`` is empty)
    tunnel: UpstreamTunnel | None = None


class Transaction(Protocol):
    """One request/response on one connection (``FastCgiExchange``, ``HttpExchange``)."""

    large_body: bool
    request_id: str

    async def send_head(self) -> None: ...

    async def send_body(self) -> None: ...

    async def read_head(self) -> tuple[CgiHead, bytes]: ...

    def wants_streaming(self, head: CgiHead) -> bool: ...

    async def read_chunk(self) -> bytes | None: ...


class BufferSettings(Protocol):
    """What the policy reads of a backend's settings (``PhpSettings`` has them)."""

    @property
    def response_buffer_size(self) -> int: ...

    @property
    def max_temp_file_size(self) -> int: ...

    @property
    def temp_dir(self) -> str | None: ...

    @property
    def ignore_client_abort(self) -> bool: ...


def run_php(pool: Pool[FastCgiConn], params: bytes | list[tuple[bytes, bytes]], body: Spool | None,
            settings: PhpSettings, *, request_id: str, retry_safe: bool = False,
            client_left: Callable[[], bool] | None = None, stream_ok: bool = True,
            force_stream: bool = False, key: bytes | None = None) -> Coroutine[Any, Any, UpstreamResponse]:
    """Run one request on PHP through ``pool``: ``exchange`` with the FastCGI
    transport (its coroutine: awaited, it is ``exchange``'s frame, no frame of its own)."""

    def start(conn: FastCgiConn) -> FastCgiExchange:
        return FastCgiExchange(conn, params, body, settings, request_id)

    return exchange(pool, start, settings, retry_safe=retry_safe, client_left=client_left,
                    stream_ok=stream_ok, force_stream=force_stream, key=key)


def run_http(pool: Pool[HttpConn], request: UpstreamRequest, settings: HttpSettings, *, request_id: str,
             retry_safe: bool = False, client_left: Callable[[], bool] | None = None,
             stream_ok: bool = True, force_stream: bool = False,
             key: bytes | None = None) -> Coroutine[Any, Any, UpstreamResponse]:
    """Send one request to an HTTP backend through ``pool``: ``exchange`` with
    the HTTP/1.1 transport (its coroutine, as ``run_php``)."""

    def start(conn: HttpConn) -> HttpExchange:
        return HttpExchange(conn, request, settings, request_id)

    return exchange(pool, start, settings, retry_safe=retry_safe, client_left=client_left,
                    stream_ok=stream_ok, force_stream=force_stream, key=key)


async def exchange(pool: Pool[C], start: Callable[[C], Transaction], settings: BufferSettings, *,
                   retry_safe: bool = False, client_left: Callable[[], bool] | None = None,
                   stream_ok: bool = True, force_stream: bool = False, key: bytes | None = None) -> UpstreamResponse:
    """Run one request through ``pool``; ``start`` begins the transport's
    transaction on a connection.

    ``stream_ok``: the caller can take a streamed body (else everything is
    spooled). ``key``: what an ip_hash group hashes (the client address).
    The caller closes the returned body (``Spool.close`` or ``await
    UpstreamBody.aclose()``).

    Raises:
        GatewayError subclasses (QueueFull, QueueTimeout, UpstreamConnectError,
        UpstreamTimeout, UpstreamProtocolError, UpstreamClosedEarly,
        UpstreamOverloaded, SpoolWriteError); ``ClientGone`` when the client
        left while queued.
    """
    # (``pool.slot()``'s steps without its context manager: this runs once per request)
    slot: Slot[C] = Slot(pool)
    try:
        slot.queue_wait = await pool._acquire(slot, key)
    except trio.Cancelled:
        # counted only for a client that really left, not for a shutdown or a timeout
        if client_left is not None and client_left():
            pool.stats.client_gone_in_queue += 1
        raise
    try:
        if client_left is not None and (slot.queue_wait or not settings.ignore_client_abort) and client_left():
            # the client left (or half-closed, as nginx sees it too) before PHP
            # was asked: PHP never sees it. One poll() per request. With
            # ignore_client_abort only a client that left the queue is dropped.
            if slot.queue_wait:
                pool.stats.client_gone_in_queue += 1
            raise ClientGone()
        policy = _Policy(slot, start, settings, retry_safe=retry_safe, stream_ok=stream_ok,
                         force_stream=force_stream)
        if settings.ignore_client_abort:
            # only the wait in the queue is abandoned when the client leaves;
            # shutdown's graceful deadline still ends the run (Pool.end_shielded_at)
            with slot.pool.shielded() as shield:
                return await policy.run()
            assert shield.cancelled_caught
            raise UpstreamTimeout("shutting down: PHP did not finish within the graceful period")
        return await policy.run()
    finally:
        if not slot.detached:
            slot.release()


class _Policy(Generic[C]):
    """What happens on a held slot: retry if safe, then spool or stream."""

    def __init__(self, slot: Slot[C], start: Callable[[C], Transaction], settings: BufferSettings, *,
                 retry_safe: bool, stream_ok: bool, force_stream: bool) -> None:
        self.slot = slot
        self.start = start
        self.settings = settings
        self.retry_safe = retry_safe
        self.stream_ok = stream_ok
        self.force_stream = force_stream
        self.timing = Timing(slot.queue_wait)
        self.began = trio.current_time()
        #: the attempt under way got its response head
        self.answered = False
        #: when the current address was first tried
        self.attempt_began = self.began
        #: what the backend sent past its 101 head (a switch)
        self.switched_prefix = b""

    async def _connection(self, tried: list[Any], *, fresh: bool = False) -> C:
        """A connection of the slot's member; after a connect error another
        member's, while there is one in rotation (nothing was sent: always safe)."""
        while True:
            try:
                return await self.slot.connection(fresh=fresh)
            except (UpstreamConnectError, UpstreamConnectTimeout) as exc:
                await self._next_member(tried, exc)
                fresh = False  # (another address's idle connections are fine)

    async def _next_member(self, tried: list[Any], exc: Exception) -> None:
        """Move the slot to an address not ``tried`` yet, or raise ``exc``."""
        tried.append(self.slot.member)
        ended = trio.current_time()
        if not await self.slot.switch(tried):
            raise exc
        self._end_attempt(ended)
        self._begin_attempt()
        self.slot.pool.stats.retries += 1
        assert self.slot.member is not None
        log.warning("%s: %s; trying %s", self.slot.pool.name, exc, self.slot.member.name)

    async def run(self) -> UpstreamResponse:
        """The response, after the retries the policy allows (the loop is in
        this frame: one frame less to pass through at every wait)."""
        self._begin_attempt(self.began)
        pool = self.slot.pool
        tried: list[Any] = []
        try:
            conn = await self._connection(tried)
            while True:
                try:
                    return await self._on(conn)
                except UpstreamClosedEarly as exc:
                    await self.slot.discard(conn)
                    reused = bool(conn.requests)
                    if not reused and self.slot.member is not None:
                        # a fresh one closed before answering: that address is failing, whatever the
                        # method (nginx counts the failure before it decides whether to pass the
                        # request on); a POST's failure takes it out of rotation as a GET's does
                        pool.record_failure(self.slot.member, str(exc))
                    if not self.retry_safe and exc.sent:
                        if not reused:
                            raise
                        raise UpstreamClosedEarly(f"{exc} (a reused connection; not retried: the method is not "
                                                  "idempotent and the backend may have run it)") from None
                    if reused:  # a kept connection the backend closed (pm.max_requests): a fresh one
                        pool.stats.retries += 1
                        log.info("%s: reused connection closed before a response; retrying on a fresh one", pool.name)
                    else:  # another address, if any
                        await self._next_member(tried, exc)
                    # (ends: each fresh failure uses up an address, a reused one is retried fresh once)
                    conn = await self._connection(tried, fresh=reused)
                except BaseException as exc:
                    if isinstance(exc, GatewayError) and self.slot.member is not None:
                        self._count_error(exc)
                        if isinstance(exc, UpstreamTimeout):  # a hung host (nginx counts timeouts too)
                            pool.record_failure(self.slot.member, str(exc))
                    await self.slot.discard(conn)
                    if not (isinstance(exc, UpstreamTimeout) and self.retry_safe and not self.answered
                            and self.slot.member is not None):
                        raise
                    # no head within read_timeout, an idempotent request: another address, if any
                    await self._next_member(tried, exc)
                    conn = await self._connection(tried)
        except GatewayError as exc:
            # the request fails: it carries the addresses tried, for the access log
            self._end_attempt()
            exc.timing = self.timing
            raise

    def _count_error(self, exc: GatewayError) -> None:
        if self.slot.member is not None:
            errors = self.slot.member.stats.errors
            errors[exc.status] = errors.get(exc.status, 0) + 1

    def _begin_attempt(self, now: float | None = None) -> None:
        """The slot's address is tried from now: an entry in ``timing.tried``."""
        member = self.slot.member
        self.timing.tried.append((member.name if member is not None and member.name else self.slot.pool.name, None))
        self.attempt_began = trio.current_time() if now is None else now

    def _end_attempt(self, ended: float | None = None) -> None:
        """The current address is done with (failed, or its response ended): its time."""
        name, seconds = self.timing.tried[-1]
        if seconds is None:
            ended = trio.current_time() if ended is None else ended
            self.timing.tried[-1] = (name, ended - self.attempt_began)

    async def _on(self, conn: C) -> UpstreamResponse:
        self.answered = False
        tx = self.start(conn)
        if not tx.large_body:
            await tx.send_head()
            head, spool, ended = await self._read(tx)
        else:
            with single_exception():
                async with trio.open_nursery() as nursery:
                    await tx.send_head()
                    nursery.start_soon(tx.send_body)
                    # streaming starts only once the request is sent: the sender
                    # task cannot outlive this nursery
                    head, spool, ended = await self._read(tx, sending=nursery)
                    nursery.cancel_scope.cancel()  # PHP answered without reading it all
        if head.status == 101:
            spool.close()
            return self._tunnel(head, conn)
        if not ended:
            return self._streamed(head, conn, tx, spool)
        # only now: no task of this exchange writes to the connection any more
        if not self.slot.keep(conn):
            try:
                await self.slot.discard(conn)
            except BaseException:
                spool.close()
                raise
        self._done()
        return UpstreamResponse(head, spool, self.timing, self.slot.pool.name)

    async def _read(self, tx: Transaction, sending: trio.Nursery | None = None) -> tuple[CgiHead, Spool, bool]:
        """The head, and the body spooled: to its end (True), or up to where it
        is to be streamed (False: the rest is read as the client takes it)."""
        head, rest = await tx.read_head()
        self.answered = True
        if head.status == 101:  # switched (``_on``): the rest is the new protocol's
            self.switched_prefix = rest
            return head, Spool(0), True
        stream = self.stream_ok and (self.force_stream or tx.wants_streaming(head))
        limit = self.settings.response_buffer_size + self.settings.max_temp_file_size
        spool = Spool(self.settings.response_buffer_size, self.settings.temp_dir)
        try:
            chunk: bytes | None = rest
            while chunk is not None:
                spool.write(chunk)
                if ((stream or (self.stream_ok and spool.size > limit))
                        and (sending is None or not sending.child_tasks)):
                    if not stream:
                        log.info("[%s] response passed %d bytes: passing the rest through at the client's pace "
                                 "(the PHP worker is held until it is sent)", tx.request_id, limit)
                    return head, spool, False
                chunk = await tx.read_chunk()
        except BaseException:
            spool.close()
            raise
        return head, spool, True

    def _streamed(self, head: CgiHead, conn: C, tx: Transaction, prefix: Spool) -> UpstreamResponse:
        body = UpstreamBody(self.slot.detach(), conn, tx, prefix, self._done)
        return UpstreamResponse(head, body, self.timing, self.slot.pool.name)

    def _tunnel(self, head: CgiHead, conn: C) -> UpstreamResponse:
        if not isinstance(conn, HttpConn):
            raise UpstreamProtocolError("the backend switched protocols (101), which its transport cannot carry")
        self._done()  # (the response is the 101; the tunnel's own time is the front end's to log)
        tunnel = UpstreamTunnel(cast(Slot[HttpConn], self.slot.detach()), conn, self.switched_prefix)
        return UpstreamResponse(head, Spool(0), self.timing, self.slot.pool.name, tunnel)

    def _done(self) -> None:
        now = trio.current_time()
        self._end_attempt(now)
        elapsed = now - self.began
        self.timing.upstream_time = elapsed
        self.slot.pool.record_response(elapsed)


class UpstreamBody(Generic[C]):
    """A response body read from the backend as the client takes it.

    It holds the pool slot and the connection: at the end of the body the
    connection goes back to the pool; ``aclose()`` before the end discards it
    (the backend's run is abandoned). Either way the slot is released once.
    """

    def __init__(self, slot: Slot[C], conn: C, tx: Transaction, prefix: Spool,
                 on_done: Callable[[], None]) -> None:
        self.slot = slot
        self.conn = conn
        self.tx = tx
        self.prefix = prefix
        self._prefix: Iterator[bytes] | None = prefix.chunks()
        self.on_done = on_done
        self._finished = False

    def __aiter__(self) -> UpstreamBody[C]:
        return self

    async def __anext__(self) -> bytes:
        if self._prefix is not None:
            piece = next(self._prefix, None)
            if piece is not None:
                return piece
            self._close_prefix()
        if self._finished:
            raise StopAsyncIteration
        chunk = await self.tx.read_chunk()
        if chunk is None:
            self._finished = True
            await self.slot.put_back(self.conn)
            self.on_done()
            self.slot.release()
            raise StopAsyncIteration
        return chunk

    def _close_prefix(self) -> None:
        self._prefix = None
        self.prefix.close()

    async def aclose(self) -> None:
        """Idempotent; before the end of the body, the backend's run is abandoned."""
        try:
            if self._prefix is not None:
                self._close_prefix()
            if not self._finished:
                self._finished = True
                await self.slot.discard(self.conn)
        finally:
            self.slot.release()


class UpstreamTunnel:
    """The backend's side of a switched connection (its ``101``): its stream,
    and the bytes it sent past the 101 head. Holds the pool slot until
    ``aclose()``, which closes the connection (never returned to the pool)
    and frees the slot; idempotent.
    """

    def __init__(self, slot: Slot[HttpConn], conn: HttpConn, prefix: bytes) -> None:
        self.slot = slot
        self.conn = conn
        self.stream: trio.abc.Stream = conn.stream
        self.prefix = prefix
        slot.pool.stats.tunnels += 1
        self._open = True

    async def aclose(self) -> None:
        if not self._open:
            return
        self._open = False
        self.slot.pool.stats.tunnels -= 1
        try:
            await self.slot.discard(self.conn)
        finally:
            self.slot.release()
