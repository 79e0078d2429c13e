"""Rate limits (nginx ``limit_req``) and failure counting, and the fixed-size
table both keep their state in.

Pure: times are arguments, the table works on any writable buffer (a
``bytearray`` in one process, a shared ``mmap`` across worker processes:
``app.guard_table`` does that IO and the locking). No clock, no IO here.

Leaky bucket, as nginx's ``limit_req`` (``ngx_http_limit_req_module.c``):

- A client's state is ``excess`` (requests over the rate, queued) and the time
  ``last`` of its last admitted request. A request at ``now`` makes
  ``excess = max(excess - rate * (now - last) + 1, 0)``; a client's first
  request has excess 0.
- ``excess > burst``: refused (429) and the state is left as it was, so a
  refused request does not lengthen the penalty; ``Retry-After`` is when the
  next request would pass, ``ceil((excess - burst) / rate)`` seconds, at least 1.
- Otherwise admitted. Without ``nodelay`` it is delayed by ``excess / rate``
  seconds, which spaces the burst out to the rate; with ``nodelay`` it is
  served at once (the burst still counts until it has leaked away).
- ``burst = 0`` means requests must be at least ``1 / rate`` apart.

Failure windows (``basic_auth``'s ``max_failures`` in ``failure_window``): a
window opens at an address's first failure; once ``max_failures`` failures
are in it, requests are refused (429) until it closes. A fixed window, as
fail2ban's ``findtime``.

The table (``SlotTable``): a fixed number of 48-byte slots in sets of
``WAYS``, so memory is bounded whatever the number of addresses (nginx's
zone). A key hashes (BLAKE2b keyed with the table's random salt, so a flood
cannot aim at one client's set) to one set; its state is found in, or put
into, that set: a free or expired slot first, else the slot that would
expire first is evicted and counted (like nginx evicting the least recently
used states of a full zone, but never refusing a request for want of room).
An evicted client starts again from a fresh bucket: under an address-spraying
flood large enough to cycle the table, limits err on the side of serving.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

R = TypeVar("R")

#: A state: (a, b) as the rule kind means them: (excess, last) for a rate
#: limit, (failures, window start) for a failure window.
State = tuple[float, float]
#: A state to store and the time after which it no longer matters.
Stored = tuple[float, float, float]
#: What ``SlotTable.update`` runs on a key's state at a time: a result, and
#: the state to store (None: leave it as it is).
Step = Callable[[State | None, float], tuple[R, Stored | None]]


@dataclass(frozen=True, slots=True)
class Limit:
    """One rule's numbers: ``rate`` in requests per second (``config.guard.parse_rate``)."""

    rate: float
    burst: int = 0
    nodelay: bool = False


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer for one request: serve it after ``delay`` seconds, or refuse
    it with a 429 whose ``Retry-After`` is ``retry_after``."""

    allowed: bool
    delay: float = 0.0
    retry_after: int = 0


def admit(limit: Limit, state: State | None, now: float) -> tuple[Admission, Stored | None]:
    """The leaky bucket's step for one request at ``now`` (module docstring).

    Returns:
        The admission, and the state to store (None: keep the old one).
    """
    if state is None:
        excess = 0.0
    else:
        previous, last = state
        excess = max(previous - limit.rate * max(now - last, 0.0) + 1.0, 0.0)
    if excess > limit.burst:
        retry = math.ceil((excess - limit.burst) / limit.rate - 1e-9)
        return Admission(False, retry_after=max(1, retry)), None
    delay = 0.0 if limit.nodelay else excess / limit.rate
    return Admission(True, delay=delay), (excess, now, now + (excess + 1.0) / limit.rate)


def blocked_for(state: State | None, now: float, max_failures: int, window: float) -> int:
    """Seconds (whole, at least 1) until an address with ``state`` (failures,
    window start) may try again; 0: it may now."""
    if state is None:
        return 0
    failures, start = state
    if now >= start + window or failures < max_failures:
        return 0
    return max(1, math.ceil(start + window - now - 1e-9))


def add_failure(state: State | None, now: float, window: float) -> Stored:
    """The state after one more failure at ``now``."""
    if state is None or now >= state[1] + window:
        return (1.0, now, now + window)
    return (state[0] + 1.0, state[1], state[1] + window)


def attempt(state: State | None, now: float, max_failures: int, window: float) -> tuple[int, Stored | None]:
    """An attempt with credentials: ``(blocked_for, None)`` when the address
    may not try now, else ``(0, the state with the attempt counted as a
    failure)``. Counted before the check, in one step with the test, so
    concurrent attempts (HTTP/2 streams, many connections) cannot all pass
    the test while the first checks run: at most ``max_failures`` run per
    window. ``forgive`` takes it back when the credentials are right."""
    wait = blocked_for(state, now, max_failures, window)
    if wait:
        return wait, None
    return 0, add_failure(state, now, window)


def forgive(state: State | None, window: float) -> Stored | None:
    """The state with one counted attempt taken back (it succeeded); None:
    nothing to take back (the window closed meanwhile)."""
    if state is None or state[0] < 1.0:
        return None
    return (state[0] - 1.0, state[1], state[1] + window)


def rule_id(*parts: str) -> bytes:
    """8 bytes naming a rule in table keys: its site, kind, position and
    numbers, so a reload that changes a rule starts it afresh while an
    unchanged one keeps its clients' state."""
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()


def address_key(packed: bytes, rule: bytes) -> bytes:
    """A table key: a client's address (``ipaddress``'s ``packed``: 4 or 16
    bytes) and a ``rule_id``."""
    return packed.rjust(16, b"\0") + rule


_HEADER = struct.Struct("<4sIII16s")
HEADER_SIZE = 64
_SLOT = struct.Struct("<24sddd")
SLOT_SIZE = _SLOT.size
KEY_SIZE = 24
#: Slots per set: a key's state lives in one of its set's.
WAYS = 8
MAGIC = b"GWRT"
VERSION = 1
_EMPTY = bytes(KEY_SIZE)


def table_size(sets: int) -> int:
    """Bytes of a table of ``sets`` sets."""
    return HEADER_SIZE + sets * WAYS * SLOT_SIZE


def init_table(buf: bytearray | memoryview, sets: int, salt: bytes) -> None:
    """Write a new table's header into zeroed ``buf`` (``table_size(sets)`` bytes)."""
    _HEADER.pack_into(buf, 0, MAGIC, VERSION, sets, WAYS, salt.ljust(16, b"\0")[:16])


class SlotTable:
    """Client states in a fixed-size buffer laid out by ``init_table``.

    Not locked: the caller serialises ``update`` calls for one set (in one
    process they never interleave, being synchronous; across processes
    ``app.guard_table`` locks ``set_span``).
    """

    def __init__(self, buf: bytearray | memoryview) -> None:
        magic, version, sets, ways, salt = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC or version != VERSION or ways != WAYS or len(buf) < table_size(sets):
            raise ValueError("not a rate-limit table of this version")
        self.buf = buf
        self.sets: int = sets
        self.salt: bytes = salt
        #: states this process pushed out of a full set before they expired
        self.evictions = 0

    def set_span(self, key: bytes) -> tuple[int, int]:
        """(offset, length) in bytes of the set holding ``key``."""
        digest = hashlib.blake2b(key, digest_size=8, key=self.salt).digest()
        index = int.from_bytes(digest, "little") % self.sets
        return HEADER_SIZE + index * WAYS * SLOT_SIZE, WAYS * SLOT_SIZE

    def update(self, key: bytes, now: float, step: Step[R], span: tuple[int, int] | None = None) -> R:
        """Run ``step`` on ``key``'s live state (None: none, or expired) and
        ``now``, and store what it returns (None: leave it). ``span``:
        ``set_span(key)``, when the caller has it already."""
        if len(key) != KEY_SIZE:
            raise ValueError(f"a key is {KEY_SIZE} bytes")
        start, _ = span if span is not None else self.set_span(key)
        mine = -1
        free = -1
        oldest = -1
        oldest_expiry = math.inf
        state: State | None = None
        for i in range(WAYS):
            offset = start + i * SLOT_SIZE
            slot_key, a, b, expires = _SLOT.unpack_from(self.buf, offset)
            if slot_key == key:
                mine = offset
                if expires > now:
                    state = (a, b)
                break
            if slot_key == _EMPTY or expires <= now:
                if free < 0:
                    free = offset
            elif expires < oldest_expiry:
                oldest, oldest_expiry = offset, expires
        result, stored = step(state, now)
        if stored is not None:
            where = mine if mine >= 0 else free
            if where < 0:
                where = oldest
                self.evictions += 1
            _SLOT.pack_into(self.buf, where, key, *stored)
        return result

    def __repr__(self) -> str:
        return f"<SlotTable {self.sets}x{WAYS} slots, {self.evictions} evictions>"
