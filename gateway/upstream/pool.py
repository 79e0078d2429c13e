"""The bounded pool of FastCGI connections in front of one backend.

Strategy (httpcore's structure without its regrets, see MODELS.md 2.3):

- **Slots**: one ``trio.CapacityLimiter(size)``. Its wait queue is FIFO and
  cancellation-safe, and a slot is held by the request's own task between
  ``pool.acquire()`` and ``pool.release()`` in a ``try/finally``: a cancelled
  request *cannot* leak a slot.
- **The queue** is the limiter's waiters. Its depth is bounded: a request that
  finds ``queue_depth`` others waiting gets ``QueueFull`` (503) at once; one
  that waits longer than ``queue_timeout`` gets ``QueueTimeout`` (504). A
  waiter whose client left is cancelled by its caller (watched after
  ``LONG_WAIT``) or dropped as it leaves the queue, before it costs a PHP worker.
- **Idle connections** sit in a LIFO list, reachable only while holding a slot,
  so a connection is either idle or owned by exactly one request. Checkout
  drops idle connections that expired (``idle_timeout``, measured with
  ``trio.current_time()`` so tests drive it with the autojump clock) or whose
  socket is readable (a pending EOF: php-fpm closed it).
- **Sizing**: a kept-alive connection pins a php-fpm worker, so ``size`` must
  not exceed pm.max_children; the supervisor sets max_children = size.

State changes are synchronous methods; IO (connect, close) happens outside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

import fastcgi

from ..http.errors import QueueFull, QueueTimeout, UpstreamConnectError, UpstreamConnectTimeout
from ..metrics import PoolInstruments
from .connect import Connector, has_pending_eof

#: Seconds a request waits (for a slot, or for PHP's first bytes) before its
#: client is watched for a disconnect (a task per request). A client that left
#: during a shorter wait is caught when the request leaves the queue
#: (``run_php``'s ``gone`` check, one poll()), before it costs PHP anything.
LONG_WAIT = 1.0


@dataclass(eq=False)
class UpstreamConnection:
    stream: trio.abc.Stream
    fcgi: fastcgi.Connection
    requests: int = 0
    idle_since: float = 0.0
    closed: bool = False

    @property
    def reused(self) -> bool:
        return self.requests > 0

    @property
    def request_id(self) -> int:
        """The FastCGI request id for this connection's next request: 1, 2, 3...
        (the backend echoes it). A record that turns up late for an earlier
        request then cannot pass for the current one's output: it is a protocol
        error (502) and the connection is dropped, never another client's response."""
        return self.requests % 0xFFFF + 1


@dataclass
class PoolStats:
    requests: int = 0
    queue_full: int = 0
    queue_timeouts: int = 0
    connects: int = 0
    connect_errors: int = 0
    retries: int = 0
    client_gone_in_queue: int = 0
    max_waiting: int = 0
    errors: dict[int, int] = field(default_factory=dict)


class Pool:
    """At most ``size`` live FastCGI connections to one backend, with a bounded FIFO queue.

    Args:
        name: for logs and metrics.
        connector: opens a new stream to the backend.
        size: slots (live connections); at most the backend's pm.max_children.
        queue_depth: waiters allowed; one more gets 503.
        queue_timeout: seconds a waiter may wait; then 504.
        connect_timeout: seconds to open a connection; then 504.
        idle_timeout: seconds an idle connection is kept.
    """

    def __init__(self, name: str, connector: Connector, *, size: int, queue_depth: int, queue_timeout: float,
                 connect_timeout: float = 5.0, idle_timeout: float = 10.0,
                 max_params_size: int = fastcgi.DEFAULT_MAX_PARAMS_SIZE) -> None:
        self.name = name
        self.connector = connector
        self.size = size
        self.queue_depth = queue_depth
        self.queue_timeout = queue_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_params_size = max_params_size
        self.limiter = trio.CapacityLimiter(size)
        self._idle: list[UpstreamConnection] = []
        self.waiting = 0
        self.open_connections = 0
        self.stats = PoolStats()
        self.instruments = PoolInstruments()

    def __repr__(self) -> str:
        return (f"<Pool {self.name} [slots {self.busy}/{self.size} busy, {len(self._idle)} idle, "
                f"{self.waiting} waiting]>")

    @property
    def busy(self) -> int:
        return int(self.limiter.borrowed_tokens)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self, on_long_wait: Callable[[], None] | None = None) -> Slot:
        """Wait in the FIFO queue for a slot; the caller must ``release()`` it.

        Raises:
            QueueFull: ``queue_depth`` requests are already waiting.
            QueueTimeout: no slot within ``queue_timeout``.

        ``on_long_wait`` is called once the wait has lasted ``LONG_WAIT`` seconds
        (the caller starts watching its client then: a short wait is not worth it).
        """
        self.stats.requests += 1
        start = trio.current_time()
        try:
            self.limiter.acquire_nowait()
        except trio.WouldBlock:
            await self._wait_for_slot(on_long_wait)
        queue_wait = trio.current_time() - start
        self.instruments.queue_wait.observe(queue_wait)
        return Slot(self, queue_wait)

    def release(self) -> None:
        self.limiter.release()

    async def _wait_for_slot(self, on_long_wait: Callable[[], None] | None) -> None:
        if self.waiting >= self.queue_depth:
            self.stats.queue_full += 1
            raise QueueFull(f"pool {self.name}: {self.waiting} requests already queued (queue_depth)")
        self.waiting += 1
        self.stats.max_waiting = max(self.stats.max_waiting, self.waiting)
        try:
            with trio.fail_after(self.queue_timeout):
                if on_long_wait is not None:
                    with trio.move_on_after(LONG_WAIT):
                        await self.limiter.acquire()
                        return
                    on_long_wait()
                await self.limiter.acquire()
        except trio.TooSlowError:
            self.stats.queue_timeouts += 1
            raise QueueTimeout(f"pool {self.name}: waited {self.queue_timeout:g}s for a PHP slot") from None
        except trio.Cancelled:
            self.stats.client_gone_in_queue += 1
            raise
        finally:
            self.waiting -= 1
    # -- synchronous state changes --------------------------------------------

    def _checkout_idle(self) -> tuple[UpstreamConnection | None, list[UpstreamConnection]]:
        """Pop the most recently used usable idle connection; return it and those to close."""
        now = trio.current_time()
        to_close = []
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since >= self.idle_timeout or has_pending_eof(conn.stream):
                to_close.append(conn)
                continue
            return conn, to_close
        return None, to_close

    def _checkin(self, conn: UpstreamConnection) -> bool:
        """Keep ``conn`` for reuse if its request cycle ended cleanly with keep-conn
        and nothing followed the END_REQUEST (stray records would otherwise be
        read as the next request's response)."""
        if conn.fcgi.states != {fastcgi.CLIENT: fastcgi.DONE, fastcgi.SERVER: fastcgi.DONE}:
            return False
        data, eof = conn.fcgi.trailing_data
        if data or eof:
            return False
        conn.fcgi.start_next_cycle()
        conn.idle_since = trio.current_time()
        self._idle.append(conn)
        return True

    def _expired(self) -> list[UpstreamConnection]:
        now = trio.current_time()
        keep: list[UpstreamConnection] = []
        drop: list[UpstreamConnection] = []
        for conn in self._idle:
            (drop if now - conn.idle_since >= self.idle_timeout else keep).append(conn)
        self._idle = keep
        return drop

    # -- IO ----------------------------------------------------------------------

    async def _close(self, conns: list[UpstreamConnection]) -> None:
        for conn in conns:
            if conn.closed:
                continue
            conn.closed = True
            self.open_connections -= 1
            await trio.aclose_forcefully(conn.stream)

    async def _open(self) -> UpstreamConnection:
        self.stats.connects += 1
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await self.connector()
        except trio.TooSlowError:
            self.stats.connect_errors += 1
            raise UpstreamConnectTimeout(f"pool {self.name}: connect timed out after {self.connect_timeout:g}s") \
                from None
        except UpstreamConnectError:
            self.stats.connect_errors += 1
            raise
        self.open_connections += 1
        return UpstreamConnection(stream, fastcgi.Connection(fastcgi.CLIENT, max_params_size=self.max_params_size))

    async def close_expired(self) -> None:
        await self._close(self._expired())

    async def run_reaper(self) -> None:
        """Close idle connections as they expire; runs until cancelled."""
        period = max(self.idle_timeout / 4, 0.05)
        while True:
            await trio.sleep(period)
            await self.close_expired()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        await self._close(idle)


class Slot:
    """A held pool slot: get a connection, give it back."""

    def __init__(self, pool: Pool, queue_wait: float) -> None:
        self.pool = pool
        self.queue_wait = queue_wait

    async def connection(self, *, fresh: bool = False) -> UpstreamConnection:
        """An idle connection (unless ``fresh``), else a new one.

        Raises:
            UpstreamConnectError, UpstreamConnectTimeout
        """
        conn = None
        if not fresh:
            conn, to_close = self.pool._checkout_idle()
            await self.pool._close(to_close)
        return conn or await self.pool._open()

    async def put_back(self, conn: UpstreamConnection) -> None:
        """Return ``conn`` to the idle list if reusable, else close it."""
        conn.requests += 1
        if not self.pool._checkin(conn):
            await self.pool._close([conn])
