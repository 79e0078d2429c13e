"""The bounded pool of kept-alive connections in front of one backend.

Protocol-neutral (httpcore's structure without its regrets, see MODELS.md
2.3): the pool never speaks FastCGI or HTTP. A transport gives it a
``connect`` coroutine that returns an ``UpstreamConn``; the pool bounds, queues,
keeps and closes them.

- **Slots**: one ``trio.CapacityLimiter(size)``. Its wait queue is FIFO and
  cancellation-safe. ``async with pool.slot() as slot:`` holds one for the
  block; a cancelled request *cannot* leak it. A response body that outlives
  the block (streaming) takes the slot with ``slot.detach()`` and releases it
  when it is closed (httpcore's ``PoolByteStream``).
- **The queue** is the limiter's waiters. Its depth is bounded: a request that
  finds ``queue_depth`` others waiting gets ``QueueFull`` (503) at once; one
  that waits longer than ``queue_timeout`` gets ``QueueTimeout`` (504). A
  waiter whose client left is cancelled by the front end, before it costs a
  worker (the caller counts it: only it knows a departure from a shutdown).
- **Idle connections** sit in a LIFO list, reachable only while holding a slot,
  so a connection is either idle or owned by exactly one request. Checkout
  drops idle connections that expired (``idle_timeout``, measured with
  ``trio.current_time()`` so tests drive it with the autojump clock) or whose
  peer closed them (``UpstreamConn.peer_closed``).
- **Sizing**: a kept-alive FastCGI connection pins a php-fpm worker, so
  ``size`` must not exceed pm.max_children; the supervisor sets
  max_children = size.
- **Counters** are the pool's own (``stats``, ``instruments``); ``changed()``
  lets a caller (a test, a monitor) wait for the next change of busy/waiting
  instead of polling.

State changes are synchronous methods; IO (connect, close) happens outside them.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import trio

from ..http.errors import QueueFull, QueueTimeout, UpstreamConnectError, UpstreamConnectTimeout
from ..metrics import PoolInstruments


class UpstreamConn(Protocol):
    """One connection to a backend, as the pool sees it (a transport implements it)."""

    #: requests completed on it (0: fresh)
    requests: int
    #: ``trio.current_time()`` when it went idle
    idle_since: float

    def reusable(self) -> bool:
        """Did the last exchange end cleanly, with nothing trailing, so that the
        next request may be written on it?"""

    def start_next_cycle(self) -> None:
        """Reset the protocol state for the next request (after ``reusable()``)."""

    def peer_closed(self) -> bool:
        """Has the backend closed it while idle (a pending EOF)? A cheap probe."""

    @property
    def closed(self) -> bool:
        """Has ``aclose()`` been called?"""

    async def aclose(self) -> None:
        """Close it at once (no goodbye to the backend)."""


C = TypeVar("C", bound=UpstreamConn)


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


class Pool(Generic[C]):
    """At most ``size`` live connections to one backend, with a bounded FIFO queue.

    Args:
        name: for logs and metrics.
        connect: opens a new connection to the backend (the transport's).
        size: slots (live connections); at most the backend's pm.max_children.
        queue_depth: waiters allowed; one more gets 503.
        queue_timeout: seconds a waiter may wait; then 504.
        connect_timeout: seconds to open a connection; then 504.
        idle_timeout: seconds an idle connection is kept.
    """

    def __init__(self, name: str, connect: Callable[[], Awaitable[C]], *, size: int, queue_depth: int,
                 queue_timeout: float, connect_timeout: float = 5.0, idle_timeout: float = 10.0) -> None:
        self.name = name
        self.connect = connect
        self.size = size
        self.queue_depth = queue_depth
        self.queue_timeout = queue_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.limiter = trio.CapacityLimiter(size)
        self._idle: list[C] = []
        self.waiting = 0
        self.open_connections = 0
        self.stats = PoolStats()
        self.instruments = PoolInstruments()
        self._changed: trio.Event | None = None
        #: runs shielded from their client's departure (``ignore_client_abort``),
        #: and the deadline that still ends them (set at shutdown)
        self._shielded: set[trio.CancelScope] = set()
        self._shield_deadline = math.inf

    def __repr__(self) -> str:
        return (f"<Pool {self.name} [slots {self.busy}/{self.size} busy, {len(self._idle)} idle, "
                f"{self.waiting} waiting]>")

    @property
    def busy(self) -> int:
        return int(self.limiter.borrowed_tokens)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def slot(self) -> SlotRequest[C]:
        """``async with pool.slot() as slot:`` waits in the FIFO queue for a slot
        and holds it for the block.

        Raises (on entry):
            QueueFull: ``queue_depth`` requests are already waiting.
            QueueTimeout: no slot within ``queue_timeout``.
        """
        return SlotRequest(self)

    async def changed(self) -> None:
        """Wait until ``busy`` or ``waiting`` next changes."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    async def wait_idle(self) -> None:
        """Wait until no slot is held and nobody waits for one."""
        while self.busy or self.waiting:
            await self.changed()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    @contextmanager
    def shielded(self) -> Iterator[trio.CancelScope]:
        """A scope shielded from the caller's cancellation (its client left),
        but not from shutdown: ``end_shielded_at`` sets its deadline."""
        scope = trio.CancelScope(shield=True, deadline=self._shield_deadline)
        self._shielded.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._shielded.discard(scope)

    def end_shielded_at(self, deadline: float) -> None:
        """Shutdown: shielded runs, current and future, end by ``deadline``
        (the connections' graceful deadline), like every other request."""
        self._shield_deadline = min(self._shield_deadline, deadline)
        for scope in self._shielded:
            scope.deadline = min(scope.deadline, deadline)

    def record_error(self, status: int) -> None:
        """Count a request this backend failed with ``status`` (502, 503, 504...)."""
        self.stats.errors[status] = self.stats.errors.get(status, 0) + 1

    def record_response(self, seconds: float) -> None:
        """Count a complete response that took ``seconds`` from slot to its end."""
        self.instruments.php_time.observe(seconds)
        self.instruments.responses += 1

    async def _acquire(self, token: object) -> float:
        """Take a slot for ``token``; return the seconds waited (exactly 0.0
        when a slot was free: callers test it to know whether it queued)."""
        self.stats.requests += 1
        queue_wait = 0.0
        try:
            self.limiter.acquire_on_behalf_of_nowait(token)
        except trio.WouldBlock:
            start = trio.current_time()
            await self._wait_for_slot(token)
            queue_wait = trio.current_time() - start
        self._notify()
        self.instruments.queue_wait.observe(queue_wait)
        return queue_wait

    def _release(self, token: object) -> None:
        self.limiter.release_on_behalf_of(token)
        self._notify()

    async def _wait_for_slot(self, token: object) -> None:
        if self.waiting >= self.queue_depth:
            self.stats.queue_full += 1
            raise QueueFull(f"pool {self.name}: {self.waiting} requests already queued (queue_depth)")
        self.waiting += 1
        self.stats.max_waiting = max(self.stats.max_waiting, self.waiting)
        self._notify()
        try:
            with trio.fail_after(self.queue_timeout):
                await self.limiter.acquire_on_behalf_of(token)
        except trio.TooSlowError:
            self.stats.queue_timeouts += 1
            raise QueueTimeout(f"pool {self.name}: waited {self.queue_timeout:g}s for a PHP slot") from None
        finally:
            self.waiting -= 1
            self._notify()

    # -- synchronous state changes --------------------------------------------

    def _checkout_idle(self) -> tuple[C | None, list[C]]:
        """Pop the most recently used usable idle connection; return it and those to close."""
        now = trio.current_time()
        to_close = []
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since >= self.idle_timeout or conn.peer_closed():
                to_close.append(conn)
                continue
            return conn, to_close
        return None, to_close

    def _checkin(self, conn: C) -> bool:
        """Keep ``conn`` for reuse if its exchange ended cleanly."""
        if not conn.reusable():
            return False
        conn.start_next_cycle()
        conn.idle_since = trio.current_time()
        self._idle.append(conn)
        return True

    def _expired(self) -> list[C]:
        now = trio.current_time()
        keep: list[C] = []
        drop: list[C] = []
        for conn in self._idle:
            (drop if now - conn.idle_since >= self.idle_timeout else keep).append(conn)
        self._idle = keep
        return drop

    # -- IO ----------------------------------------------------------------------

    async def _close(self, conns: list[C]) -> None:
        # shielded: closing is forceful (never waits on the peer), and a cancel
        # halfway would leave the rest of ``conns`` open and uncounted
        with trio.CancelScope(shield=True):
            for conn in conns:
                if not conn.closed:  # (a failed exchange may be discarded twice)
                    self.open_connections -= 1
                    await conn.aclose()

    async def _open(self) -> C:
        self.stats.connects += 1
        try:
            with trio.fail_after(self.connect_timeout):
                conn = await self.connect()
        except trio.TooSlowError:
            self.stats.connect_errors += 1
            raise UpstreamConnectTimeout(f"pool {self.name}: connect timed out after {self.connect_timeout:g}s") \
                from None
        except UpstreamConnectError:
            self.stats.connect_errors += 1
            raise
        self.open_connections += 1
        return conn

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


class SlotRequest(Generic[C]):
    """``pool.slot()``: an async context manager (a class, not a generator: it
    runs once per request)."""

    __slots__ = ("pool", "_slot")

    def __init__(self, pool: Pool[C]) -> None:
        self.pool = pool
        self._slot: Slot[C] | None = None

    async def __aenter__(self) -> Slot[C]:
        slot = Slot(self.pool)
        slot.queue_wait = await self.pool._acquire(slot)
        self._slot = slot
        return slot

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._slot is not None
        if not self._slot.detached:
            self._slot.release()


class Slot(Generic[C]):
    """A held pool slot: take a connection, then give it back or discard it.

    ``detach()`` hands the slot to whoever holds the response body: leaving the
    ``async with`` block then keeps it, and ``release()`` (idempotent) frees it.
    """

    __slots__ = ("pool", "queue_wait", "detached", "_held")

    def __init__(self, pool: Pool[C]) -> None:
        self.pool = pool
        self.queue_wait = 0.0
        self.detached = False
        self._held = True

    async def connection(self, *, fresh: bool = False) -> C:
        """An idle connection (unless ``fresh``), else a new one.

        Raises:
            UpstreamConnectError, UpstreamConnectTimeout
        """
        conn = None
        if not fresh:
            conn, to_close = self.pool._checkout_idle()
            await self.pool._close(to_close)
        return conn or await self.pool._open()

    async def put_back(self, conn: C) -> None:
        """Return ``conn`` to the idle list if reusable, else close it."""
        conn.requests += 1
        if not self.pool._checkin(conn):
            await self.pool._close([conn])

    async def discard(self, conn: C) -> None:
        """Close ``conn``: its exchange failed or was abandoned."""
        await self.pool._close([conn])

    def detach(self) -> Slot[C]:
        self.detached = True
        return self

    def release(self) -> None:
        if self._held:
            self._held = False
            self.pool._release(self)
