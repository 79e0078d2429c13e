"""The page cache's stampede lock across worker processes: the steps on one
key's lock state. Pure: the state lives in a ``ratelimit.SlotTable`` (the
rate limits' fixed-size table, in a file every worker maps:
``app.cache_lock`` does that IO, the locking and the waiting).

A key's state is one slot: the ``token`` of the request that holds or last
held the lock (its process id in the high bits: ``owner``), a ``phase`` and
the time the state ``expires`` (the table's expiry: an expired state is no
state):

- ``HELD``: a request is fetching the page from PHP until ``expires``
  (``lock_timeout`` after it took the lock). Another request for the key, in
  any process, waits (``Claim.WAIT``). A lock whose owner process is gone
  (killed mid-fetch) is free at once, and any held lock is free when it
  expires: a dead owner never makes others wait more than ``lock_timeout``.
- ``STORED``: the holder stored its answer (kept ``DONE_KEEP`` seconds, for
  the waiters that poll: they read the entry, from the disk tier or the
  holder's hand-off file). For a new request it is a free lock.
- ``UNCACHEABLE``: the holder's answer could not be stored (no-store,
  Set-Cookie, an error), kept ``UNCACHEABLE_FOR`` seconds: requests for the
  key in every process go to PHP at once without the lock (Varnish's
  hit-for-miss, as ``app.cache`` does in one process).
- A holder whose client left frees the lock (the state expires now): the
  next request to look leads.

Times are one clock for every process (``time.monotonic``); tests pass their own.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from .ratelimit import KEY_SIZE, State, Step, Stored

HELD, STORED, UNCACHEABLE = 1, 2, 3
#: Seconds a STORED state stays for the waiters to see (they poll at most
#: ``app.cache_lock.POLL_MAX`` apart).
DONE_KEEP = 2.0
#: Bits of a token below the owner's process id.
_SERIAL_BITS = 24


class Claim(enum.Enum):
    """What a request that found no entry does: fetch the page holding the
    lock, wait for the holder, or fetch it without the lock."""

    LEAD = "lead"
    WAIT = "wait"
    UNCACHEABLE = "uncacheable"


@dataclass(frozen=True, slots=True)
class Lock:
    token: int
    phase: int
    expires: float

    @property
    def owner(self) -> int:
        """The process id of the request that holds (or last held) the lock."""
        return self.token >> _SERIAL_BITS


def make_token(pid: int, serial: int) -> int:
    """A lock holder's token: its process id and a serial number of its own
    (below 2**47 with Linux's largest pid, 2**49 with the phase: exact in
    the table's doubles)."""
    return pid << _SERIAL_BITS | serial & ((1 << _SERIAL_BITS) - 1)


def lock_key(site: str, key: bytes) -> bytes:
    """The table key of ``site``'s cache key ``key``."""
    return hashlib.blake2b(site.encode() + b"\0" + key, digest_size=KEY_SIZE).digest()


def decode(state: State | None) -> Lock | None:
    if state is None:
        return None
    a, expires = int(state[0]), state[1]
    return Lock(a >> 2, a & 3, expires)


def encode(lock: Lock) -> Stored:
    return float(lock.token << 2 | lock.phase), lock.expires, lock.expires


def is_waited_on(lock: Lock | None, alive: Callable[[int], bool]) -> bool:
    """Is ``lock`` held by a request whose process is alive (one to wait for)?"""
    return lock is not None and lock.phase == HELD and alive(lock.owner)


def claim(token: int, hold_for: float, alive: Callable[[int], bool]) -> Step[tuple[Claim, Lock | None]]:
    """The step of a request that found no entry for the key: take the lock
    (``LEAD``, held ``hold_for`` seconds at most), or wait for its live
    holder (``WAIT``), or go without (``UNCACHEABLE``)."""

    def step(state: State | None, now: float) -> tuple[tuple[Claim, Lock | None], Stored | None]:
        lock = decode(state)
        if lock is not None and lock.phase == UNCACHEABLE:
            return (Claim.UNCACHEABLE, lock), None
        if is_waited_on(lock, alive):
            return (Claim.WAIT, lock), None
        mine = Lock(token, HELD, now + hold_for)
        return (Claim.LEAD, mine), encode(mine)

    return step


def peek(state: State | None, now: float) -> tuple[Lock | None, Stored | None]:
    """The step that reads the key's state."""
    return decode(state), None


def release(token: int, phase: int | None, keep_for: float) -> Step[bool]:
    """The step of the holder ``token`` when done: ``STORED`` or
    ``UNCACHEABLE`` (kept ``keep_for`` seconds), or None (its client left, or
    it failed: the lock is free now). A lock another request took meanwhile
    (this one's expired) is left to it: False."""

    def step(state: State | None, now: float) -> tuple[bool, Stored | None]:
        lock = decode(state)
        if lock is not None and lock.token != token and lock.phase == HELD:
            return False, None
        if phase is None:
            return True, encode(Lock(token, STORED, now)) if lock is not None else None
        return True, encode(Lock(token, phase, now + keep_for))

    return step


def cacheable_again(state: State | None, now: float) -> tuple[None, Stored | None]:
    """The step of a request that stored the page without the lock: an
    ``UNCACHEABLE`` mark is void (the page is cacheable now)."""
    lock = decode(state)
    if lock is None or lock.phase != UNCACHEABLE:
        return None, None
    return None, encode(Lock(lock.token, STORED, now))
