"""The bounded pool of kept-alive connections in front of one backend.

Protocol-neutral (httpcore's structure without its regrets, see MODELS.md
2.3): the pool never speaks FastCGI or HTTP. A transport gives it a
``connect`` coroutine that returns an ``UpstreamConn``; the pool bounds, queues,
keeps and closes them.

- **Slots**: one ``SlotQueue(size)``, what ``trio.CapacityLimiter`` would
  do here (the same attributes), cheaper per request: a free slot is taken
  with no exception and no checkpoint, and a release hands the slot to the
  first waiter. Its wait queue is FIFO and cancellation-safe. ``async with pool.slot() as slot:`` holds one for the
  block; a cancelled request *cannot* leak it. A response body that outlives
  the block (streaming) takes the slot with ``slot.detach()`` and releases it
  when it is closed (httpcore's ``PoolByteStream``).
- **The queue** is the limiter's waiters. Its depth is bounded: a request that
  finds ``queue_depth`` others waiting gets ``QueueFull`` (503) at once; one
  that waits longer than ``queue_timeout`` gets ``QueueTimeout`` (504). A
  waiter whose client left is cancelled by the front end, before it costs a
  worker (the caller counts it: only it knows a departure from a shutdown).
  While ``run_reaper`` runs, one timer task ends the waits at their
  deadlines (``SlotQueue.expire``), so a waiter costs no cancel scope of its
  own; without it (or once it stops) each waiter waits on a scope.
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

- **Groups** (issue 15): a backend may have several addresses (``members``),
  each with its own ``size`` connections and idle stack; the queue (the
  limiter, of the members' total size) is the backend's, one FIFO for all.
  A request that gets a slot is given a member with a free connection by
  ``balance``: "least_busy" (most free connections, ties taken in turn),
  "round_robin", or "ip_hash" (the client address picks it; a down or full
  one passes to the next). A connect error on one member moves the slot to
  another (``Slot.switch``: nothing was sent, always safe).
- **Passive health** (nginx ``max_fails``/``fail_timeout``): ``max_fails``
  failures of one member within ``fail_timeout`` (connect errors and
  timeouts, read timeouts, fresh connections closed unanswered) take it
  out of rotation for ``fail_timeout``; then it is tried again. Active checks
  (``checks``) set ``Member.checked_down``. The limiter's size follows the
  members in rotation, so the queue waits for a live address instead of
  handing out a dead one; with every member down all are tried (nothing
  better to do), and a backend of one address is never taken out.
  One log line when a member goes down, one when it is back.

State changes are synchronous methods; IO (connect, close) happens outside them.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import trio

from ..http.errors import QueueFull, QueueTimeout, UpstreamConnectError, UpstreamConnectTimeout
from ..metrics import PoolInstruments

log = logging.getLogger(__name__)


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
    #: switched connections (WebSocket...) open now: each holds a slot
    tunnels: int = 0
    errors: dict[int, int] = field(default_factory=dict)


@dataclass
class MemberStats:
    """One address's counters (the pool's ``PoolStats`` add them up)."""

    requests: int = 0
    connects: int = 0
    connect_errors: int = 0
    #: times it was taken out of rotation (passive or active)
    marked_down: int = 0
    errors: dict[int, int] = field(default_factory=dict)


#: How a group picks the address for a request.
BALANCE = ("least_busy", "round_robin", "ip_hash")


class Member(Generic[C]):
    """One address of a backend: its own bounded connections, idle stack and health."""

    def __init__(self, name: str, connect: Callable[[], Awaitable[C]], size: int) -> None:
        self.name = name
        self.connect = connect
        self.size = size
        self.busy = 0
        self._idle: list[C] = []
        self.open_connections = 0
        self.stats = MemberStats()
        #: passive health: recent failure times, and out of rotation until
        self._fails: list[float] = []
        self.down_until = -math.inf
        #: active health: the last checks' verdict (False: up or never checked)
        self.checked_down = False
        #: when it left rotation (None: in rotation), and why
        self.down_since: float | None = None
        self.down_reason = ""

    def __repr__(self) -> str:
        state = "" if self.down_since is None else " down"
        return f"{self.name} {self.busy}/{self.size}{state}"

    def up(self, now: float) -> bool:
        return not self.checked_down and now >= self.down_until

    @property
    def idle(self) -> int:
        return len(self._idle)


Opener = Callable[[], Awaitable[C]]


class Pool(Generic[C]):
    """At most ``size`` live connections to each address of one backend, with
    one bounded FIFO queue.

    Args:
        name: for logs and metrics.
        connect: opens a new connection to the backend (the transport's); or,
            for a group, ``(address, connect)`` for each of its addresses.
        size: slots (live connections) per address; at most that php-fpm's
            pm.max_children.
        queue_depth: waiters allowed; one more gets 503.
        queue_timeout: seconds a waiter may wait; then 504.
        connect_timeout: seconds to open a connection; then 504.
        idle_timeout: seconds an idle connection is kept.
        balance: how a group picks an address (``BALANCE``).
        max_fails, fail_timeout: passive health (module docstring).
    """

    def __init__(self, name: str, connect: Opener[C] | Sequence[tuple[str, Opener[C]]], *, size: int,
                 queue_depth: int, queue_timeout: float, connect_timeout: float = 5.0,
                 idle_timeout: float = 10.0, balance: str = "least_busy", max_fails: int = 1,
                 fail_timeout: float = 10.0) -> None:
        self.name = name
        if callable(connect):
            connect = [("", connect)]
        self.members = [Member(address, opener, size) for address, opener in connect]
        assert self.members, "a pool needs at least one address"
        assert balance in BALANCE, balance
        self._only = self.members[0] if len(self.members) == 1 else None
        self.balance = balance
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.queue_depth = queue_depth
        self.queue_timeout = queue_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.limiter = SlotQueue(size * len(self.members))
        self._turn = 0
        self._down = 0  # members out of rotation
        self.waiting = 0
        self.stats = PoolStats()
        self.instruments = PoolInstruments()
        self._changed: trio.Event | None = None
        #: runs shielded from their client's departure (``ignore_client_abort``),
        #: and the deadline that still ends them (set at shutdown)
        self._shielded: set[trio.CancelScope] = set()
        self._shield_deadline = math.inf
        #: the queue's timer (``_run_queue_timer``, while ``run_reaper`` runs):
        #: its deadline is the earliest waiter's; None: each waiter has a scope
        self._queue_timer: trio.CancelScope | None = None

    def __repr__(self) -> str:
        group = "" if self._only is not None else "; " + ", ".join(repr(m) for m in self.members)
        return (f"<Pool {self.name} [slots {self.busy}/{self.size} busy, {self.idle} idle, "
                f"{self.waiting} waiting{group}]>")

    @property
    def size(self) -> int:
        """Slots of the members in rotation (all of them when none is)."""
        return int(self.limiter.total_tokens)

    @property
    def busy(self) -> int:
        return int(self.limiter.borrowed_tokens)

    @property
    def idle(self) -> int:
        return sum(len(m._idle) for m in self.members)

    @property
    def open_connections(self) -> int:
        return sum(m.open_connections for m in self.members)

    def slot(self, key: bytes | None = None) -> SlotRequest[C]:
        """``async with pool.slot() as slot:`` waits in the FIFO queue for a slot
        and holds it for the block; ``slot.member`` is the address it is for
        (``key``: the client address, for ip_hash).

        Raises (on entry):
            QueueFull: ``queue_depth`` requests are already waiting.
            QueueTimeout: no slot within ``queue_timeout``.
        """
        return SlotRequest(self, key)

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

    def record_error(self, status: int, member: Member[C] | None = None) -> None:
        """Count a request this backend (and ``member``, the address it was
        sent to, if it got that far) failed with ``status`` (502, 503, 504...)."""
        self.stats.errors[status] = self.stats.errors.get(status, 0) + 1
        if member is not None:
            member.stats.errors[status] = member.stats.errors.get(status, 0) + 1

    def record_response(self, seconds: float) -> None:
        """Count a complete response that took ``seconds`` from slot to its end."""
        self.instruments.php_time.observe(seconds)
        self.instruments.responses += 1

    async def _acquire(self, token: Slot[C], key: bytes | None = None) -> float:
        """Take a slot for ``token`` and give it a member (``key``: what
        ip_hash hashes); return the seconds waited (exactly 0.0 when a slot was
        free: callers test it to know whether it queued)."""
        self.stats.requests += 1
        queue_wait = 0.0
        if not self.limiter.take(token):
            start = trio.current_time()
            await self._wait_for_slot(token)
            queue_wait = trio.current_time() - start
        member = self._only or self._pick(key) or self._pick(key, fallback=True)
        assert member is not None  # the limiter's size is the members' in rotation
        token.member = member
        member.busy += 1
        member.stats.requests += 1
        self._notify()
        self.instruments.queue_wait.observe(queue_wait)
        return queue_wait

    def _release(self, token: Slot[C]) -> None:
        if token.member is not None:
            token.member.busy -= 1
        self.limiter.release_on_behalf_of(token)
        self._notify()

    async def _wait_for_slot(self, token: object) -> None:
        if self.waiting >= self.queue_depth:
            self.stats.queue_full += 1
            raise QueueFull(f"pool {self.name}: {self.waiting} requests already queued (queue_depth)")
        self.waiting += 1
        self.stats.max_waiting = max(self.stats.max_waiting, self.waiting)
        self._notify()
        deadline = trio.current_time() + self.queue_timeout
        try:
            while True:
                timer = self._queue_timer
                if timer is not None:  # the pool's timer wakes us at the deadline: no scope of our own
                    if deadline < timer.deadline:
                        timer.deadline = deadline
                    if await self.limiter.wait(token, deadline):
                        return
                    if trio.current_time() >= deadline:
                        break
                    continue  # (the timer stopped before our deadline: in line again, on a scope)
                scope = trio.CancelScope(deadline=deadline)  # (cheaper than fail_after)
                with scope:
                    await self.limiter.wait(token)
                if not scope.cancelled_caught:
                    return
                break
        finally:
            self.waiting -= 1
            self._notify()
        self.stats.queue_timeouts += 1
        raise QueueTimeout(f"pool {self.name}: waited {self.queue_timeout:g}s for a PHP slot")

    async def _run_queue_timer(self) -> None:
        """The queue's deadlines, for every waiter, in one task: a waiter
        costs no cancel scope of its own (~5 us each). Until cancelled; then
        the waiters it was timing wait on scopes of their own."""
        try:
            earliest = math.inf
            while True:
                with trio.CancelScope(deadline=earliest) as timer:
                    self._queue_timer = timer
                    await trio.sleep_forever()
                earliest = self.limiter.expire(trio.current_time())
        finally:
            self._queue_timer = None
            self.limiter.expire(trio.current_time(), everyone=True)

    # -- synchronous state changes --------------------------------------------

    def _pick(self, key: bytes | None, *, exclude: Sequence[Member[C]] = (),
              fallback: bool = False) -> Member[C] | None:
        """A member in rotation with a free connection, by ``balance`` (with
        ``fallback``: any member with one); None if there is none."""
        now = trio.current_time()
        if self._down:
            self.refresh(now)
        members = self.members
        n = len(members)
        free = [m for m in members if m.busy < m.size and m not in exclude and (fallback or m.up(now))]
        if not free:
            return None
        if self.balance == "ip_hash" and key is not None:
            start = zlib.crc32(key) % n
            return next(members[(start + i) % n] for i in range(n) if members[(start + i) % n] in free)
        self._turn = (self._turn + 1) % n
        turn = [members[(self._turn + i) % n] for i in range(n)]
        if self.balance == "round_robin":
            return next(m for m in turn if m in free)
        best = None
        for m in turn:
            if m in free and (best is None or m.size - m.busy > best.size - best.busy):
                best = m
        return best

    def refresh(self, now: float | None = None) -> None:
        """Bring back members whose down time is over and fit the limiter to
        the members in rotation (all of them when none is)."""
        now = trio.current_time() if now is None else now
        serving = [m for m in self.members if m.up(now)]
        self._down = len(self.members) - len(serving)
        for m in self.members:
            if m in serving and m.down_since is not None:
                log.info("backend %s: %s is back in rotation after %.0fs (%d of %d addresses serving)", self.name,
                         m.name, now - m.down_since, len(serving), len(self.members))
                m.down_since = None
            elif m not in serving and m.down_since is None:
                m.down_since = now
                m.stats.marked_down += 1
                log.warning("backend %s: %s taken out of rotation: %s (%d of %d addresses serving)", self.name,
                            m.name, m.down_reason, len(serving), len(self.members))
        total = sum(m.size for m in self.members if m.up(now)) or sum(m.size for m in self.members)
        if self.limiter.total_tokens != total:
            self.limiter.total_tokens = total
            self._notify()  # (a request waiting to move to another address looks again)

    def record_failure(self, member: Member[C], reason: str) -> None:
        """Passive health: ``member`` failed (a connect error or timeout, no
        answer within read_timeout, a fresh connection closed unanswered)."""
        if self._only is not None or not self.max_fails:
            return
        now = trio.current_time()
        member._fails = [t for t in member._fails if now - t < self.fail_timeout]
        member._fails.append(now)
        if len(member._fails) >= self.max_fails and member.up(now):
            member.down_until = now + self.fail_timeout
            member.down_reason = f"{reason} (max_fails {self.max_fails} within {self.fail_timeout:g}s)"
            member._fails.clear()
            self.refresh(now)

    def mark_checked(self, member: Member[C], down: bool, reason: str = "") -> None:
        """Active health: the checks' verdict on ``member``."""
        if member.checked_down == down or self._only is not None:
            return
        member.checked_down = down
        if down:
            member.down_reason = f"health check failed: {reason}"
        self.refresh()

    def _checkout_idle(self, member: Member[C]) -> tuple[C | None, list[C]]:
        """Pop ``member``'s most recently used usable idle connection; return it and those to close."""
        now = trio.current_time()
        to_close = []
        idle = member._idle
        while idle:
            conn = idle.pop()
            if now - conn.idle_since >= self.idle_timeout or conn.peer_closed():
                to_close.append(conn)
                continue
            return conn, to_close
        return None, to_close

    def _checkin(self, member: Member[C], conn: C) -> bool:
        """Keep ``conn`` for reuse if its exchange ended cleanly."""
        if not conn.reusable():
            return False
        conn.start_next_cycle()
        conn.idle_since = trio.current_time()
        member._idle.append(conn)
        return True

    def _expired(self, member: Member[C]) -> list[C]:
        now = trio.current_time()
        keep: list[C] = []
        drop: list[C] = []
        for conn in member._idle:
            (drop if now - conn.idle_since >= self.idle_timeout else keep).append(conn)
        member._idle = keep
        return drop

    # -- IO ----------------------------------------------------------------------

    async def _close(self, member: Member[C], conns: list[C]) -> None:
        # shielded: closing is forceful (never waits on the peer), and a cancel
        # halfway would leave the rest of ``conns`` open and uncounted
        with trio.CancelScope(shield=True):
            for conn in conns:
                if not conn.closed:  # (a failed exchange may be discarded twice)
                    member.open_connections -= 1
                    await conn.aclose()

    async def _open(self, member: Member[C]) -> C:
        self.stats.connects += 1
        member.stats.connects += 1
        try:
            with trio.fail_after(self.connect_timeout):
                conn = await member.connect()
        except trio.TooSlowError:
            self.stats.connect_errors += 1
            member.stats.connect_errors += 1
            where = f" to {member.name}" if member.name else ""
            self.record_failure(member, f"connect timed out after {self.connect_timeout:g}s")
            raise UpstreamConnectTimeout(f"pool {self.name}: connect{where} timed out after "
                                         f"{self.connect_timeout:g}s") from None
        except UpstreamConnectError as exc:
            self.stats.connect_errors += 1
            member.stats.connect_errors += 1
            self.record_failure(member, str(exc))
            raise
        member._fails.clear()
        member.open_connections += 1
        return conn

    async def close_expired(self) -> None:
        for member in self.members:
            await self._close(member, self._expired(member))

    async def run_reaper(self) -> None:
        """Close idle connections as they expire, and bring back members whose
        down time is over, and time the queue's waiters (``_run_queue_timer``);
        runs until cancelled. A pool of one address (which
        has no down time) wakes when its oldest idle connection is due, not
        four times per ``idle_timeout`` whether or not one is: a wake-up costs
        ~0.2 ms of CPU on a crowded host, and with ``idle_timeout = "1s"``
        those were a third of an idle gateway's CPU."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_queue_timer)
            await self._reap()

    async def _reap(self) -> None:
        period = max(self.idle_timeout / 4, 0.05)
        if self._only is None:
            period = min(period, max(self.fail_timeout / 4, 0.05))
        while True:
            if self._only is None:
                await trio.sleep(period)
            else:
                await trio.sleep_until(self._next_expiry())
            await self.close_expired()
            if self._down:
                self.refresh()

    def _next_expiry(self) -> float:
        """When the oldest idle connection is due (``idle_timeout`` from now
        if none is idle: one checked in meanwhile is due later), at least
        50 ms from now."""
        now = trio.current_time()
        oldest = min((conn.idle_since for m in self.members for conn in m._idle), default=now)
        return max(oldest + self.idle_timeout, now + 0.05)

    async def aclose(self) -> None:
        for member in self.members:
            idle, member._idle = member._idle, []
            await self._close(member, idle)


class SlotQueue:
    """``size`` slots and the FIFO queue of those waiting for one: the part
    of ``trio.CapacityLimiter`` the pool uses (and its attributes, which the
    pool's counters read), at the cost of a set operation where a slot is
    free. ``take`` never checkpoints; ``wait`` queues (a caller has just
    seen ``take`` fail); a release hands its slot straight to the first
    waiter, which wakes holding it. Nobody takes a slot past a waiter."""

    __slots__ = ("_total", "_borrowers", "_waiters", "_last_deadline", "_in_order")

    def __init__(self, total: int) -> None:
        self._total = total
        self._borrowers: set[object] = set()
        #: waiting tasks, first come first, the token each waits for and
        #: until when (``expire``; inf: the waiter's own cancel scope bounds it)
        self._waiters: dict[trio.lowlevel.Task, tuple[object, float]] = {}
        #: the latest deadline that joined the line, and whether the line's
        #: deadlines (inf aside) still come in its order (the pool's do: one
        #: queue_timeout after each joined): ``expire`` stops at the first not due
        self._last_deadline = -math.inf
        self._in_order = True

    def __repr__(self) -> str:
        return f"<SlotQueue {len(self._borrowers)}/{self._total} with {len(self._waiters)} waiting>"

    @property
    def total_tokens(self) -> int:
        return self._total

    @total_tokens.setter
    def total_tokens(self, total: int) -> None:
        self._total = total
        self._hand_over()

    @property
    def borrowed_tokens(self) -> int:
        return len(self._borrowers)

    @property
    def available_tokens(self) -> int:
        return max(0, self._total - len(self._borrowers))

    def take(self, token: object) -> bool:
        """Take a free slot for ``token`` if there is one and nobody waits."""
        borrowers = self._borrowers
        if len(borrowers) < self._total and not self._waiters:
            if token in borrowers:
                raise RuntimeError("this token already holds a slot")
            borrowers.add(token)
            return True
        return False

    def acquire_on_behalf_of_nowait(self, token: object) -> None:
        """``trio.CapacityLimiter``'s: ``take`` or ``trio.WouldBlock``."""
        if not self.take(token):
            raise trio.WouldBlock

    async def wait(self, token: object, deadline: float = math.inf) -> bool:
        """Wait in line until a release hands ``token`` a slot (True), or
        ``expire`` finds ``deadline`` passed (False: out of the line, holding
        nothing). Cancellable: a cancelled waiter leaves the line and holds nothing."""
        task = trio.lowlevel.current_task()
        waiters = self._waiters
        if deadline < math.inf:
            if not waiters:
                self._last_deadline, self._in_order = deadline, True
            elif deadline >= self._last_deadline:
                self._last_deadline = deadline
            else:
                self._in_order = False  # (``expire`` walks the whole line until it is empty again)
        waiters[task] = (token, deadline)

        def abort(_: object) -> trio.lowlevel.Abort:
            del waiters[task]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        return token in self._borrowers

    def expire(self, now: float, *, everyone: bool = False) -> float:
        """Wake the waiters whose deadline is ``now`` or past (``everyone``:
        all with a deadline) out of the line, holding nothing; the earliest
        deadline of those left (inf: none). Deadlines in line order (the
        pool's), it looks no further than the first waiter not due: a
        timeout costs the waiters it ends, not a walk of the line."""
        earliest = math.inf
        due = []
        in_order = self._in_order and not everyone
        for task, (_, deadline) in self._waiters.items():
            if deadline <= now or (everyone and deadline < math.inf):
                due.append(task)
            elif deadline < earliest:
                earliest = deadline
                if in_order:
                    break
        waiters = self._waiters
        for task in due:
            del waiters[task]
            trio.lowlevel.reschedule(task)
        return earliest

    def release_on_behalf_of(self, token: object) -> None:
        try:
            self._borrowers.remove(token)
        except KeyError:
            raise RuntimeError("this token holds no slot") from None
        if self._waiters:
            self._hand_over()

    def _hand_over(self) -> None:
        waiters = self._waiters
        while waiters and len(self._borrowers) < self._total:
            task = next(iter(waiters))
            self._borrowers.add(waiters.pop(task)[0])
            trio.lowlevel.reschedule(task)


class SlotRequest(Generic[C]):
    """``pool.slot()``: an async context manager (a class, not a generator: it
    runs once per request)."""

    __slots__ = ("pool", "key", "_slot")

    def __init__(self, pool: Pool[C], key: bytes | None = None) -> None:
        self.pool = pool
        self.key = key
        self._slot: Slot[C] | None = None

    async def __aenter__(self) -> Slot[C]:
        slot = Slot(self.pool)
        slot.queue_wait = await self.pool._acquire(slot, self.key)
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

    __slots__ = ("pool", "member", "queue_wait", "detached", "_held")

    def __init__(self, pool: Pool[C]) -> None:
        self.pool = pool
        #: the address this slot is for (set once the slot is taken)
        self.member: Member[C] | None = None
        self.queue_wait = 0.0
        self.detached = False
        self._held = True

    async def connection(self, *, fresh: bool = False) -> C:
        """An idle connection of the slot's member (unless ``fresh``), else a new one.

        Raises:
            UpstreamConnectError, UpstreamConnectTimeout
        """
        member = self.member
        assert member is not None
        conn = None
        if not fresh:
            conn, to_close = self.pool._checkout_idle(member)
            if to_close:
                await self.pool._close(member, to_close)
        return conn or await self.pool._open(member)

    async def switch(self, tried: Sequence[Member[C]]) -> bool:
        """Move the slot to another member in rotation, none of ``tried``
        (after a connect error: nothing was sent); if they are all busy, wait
        (at most ``queue_timeout``) for one of their connections to free. False
        if there is no other member in rotation, or none freed in time."""
        pool = self.pool
        if pool._only is not None or self.member is None:
            return False
        with trio.move_on_after(pool.queue_timeout):
            while True:
                other = pool._pick(None, exclude=tried)
                if other is not None:
                    self.member.busy -= 1
                    other.busy += 1
                    other.stats.requests += 1
                    self.member = other
                    pool._notify()
                    return True
                now = trio.current_time()
                if not any(m.up(now) for m in pool.members if m not in tried):
                    return False
                await pool.changed()
        return False

    async def put_back(self, conn: C) -> None:
        """Return ``conn`` to the idle list if reusable, else close it."""
        if not self.keep(conn):
            await self.discard(conn)

    def keep(self, conn: C) -> bool:
        """``put_back``'s first half, no await: ``conn``'s request is counted
        and it goes to the idle list if reusable; False: the caller closes it
        (``discard``)."""
        conn.requests += 1
        assert self.member is not None
        return self.pool._checkin(self.member, conn)

    async def discard(self, conn: C) -> None:
        """Close ``conn``: its exchange failed or was abandoned."""
        assert self.member is not None
        await self.pool._close(self.member, [conn])

    def detach(self) -> Slot[C]:
        self.detached = True
        return self

    def release(self) -> None:
        if self._held:
            self._held = False
            self.pool._release(self)
