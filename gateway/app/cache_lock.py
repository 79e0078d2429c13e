"""The page cache's stampede lock shared by the worker processes
(``[server] processes`` > 1): one table for all of them, so that a burst on a
cold URL, which the kernel spreads over every process, costs one PHP run,
not one per process. The lock's states and steps are ``http.cache_lock``'s
(pure); this module is their IO.

- **The table**: a ``ratelimit.SlotTable`` in a file of the master's runtime
  directory (``create``, as the rate limits' ``guard.table``: made by the
  master before it starts a generation of workers, kept across reloads),
  mapped by every worker (``open``, before they drop privileges), each
  step under an ``fcntl`` lock on the key's set (``guard_table.GuardTable``).
  ``SETS`` x 8 slots: 8192 keys fetched at once; past that, a full set
  drops the state that expires first (one extra PHP run at worst).
- **In one process**, requests for a key being fetched wait on an event
  (``app.cache``); only the first of them claims the shared lock, and, when
  another process holds it, polls the table for the whole process (``wait``):
  every ``POLL_FIRST`` seconds at first, doubling up to ``POLL_MAX``, until
  the lock is released, its holder's process is gone, or the request's
  ``lock_timeout`` is over. Polling, not a notification: a poll is one
  ``fcntl`` lock and a 384-byte read, and the processes share no channel a
  waiter could sleep on (a pipe per key and process would be more to clean
  up than it saves); the cost is at most ``POLL_MAX`` of latency for the
  waiters of the other processes, beside the PHP run they wait for.
- **Where the waiters find the page**: the disk tier, when the site has one
  (the holder writes it before it releases the lock). Without one, the
  holder writes each page it stored to a hand-off file in
  ``cache-handoff/SITE/`` beside the table (``app.cache_disk``'s format, in
  a thread, so a reader sees all of it or none), and removes it
  ``HANDOFF_KEEP`` seconds later: the waiters read it, and so does a request
  of another process that comes just after the fetch (which would otherwise
  run PHP again: its process's memory tier has no copy). A new holder of the
  key removes what a killed one left, and a purge removes them all. A
  waiter that finds no entry claims the lock itself.
- **A dead holder** (its process killed mid-fetch) frees the lock at the next
  poll (``os.kill(pid, 0)``); a live holder's lock expires ``lock_timeout``
  after it was taken, as the waiters' wait does: nobody waits longer than
  that, whatever happens to the holder.
- A process that cannot map the table (deleted under it) keeps the lock per
  process, with one error line.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import time
from collections.abc import Callable

import trio

from ..http import cache_lock
from ..http.cache_lock import Claim, Lock, is_waited_on, lock_key
from ..http.ratelimit import SlotTable
from . import guard_table
from .guard_table import GuardTable

log = logging.getLogger(__name__)

FILE_NAME = "cache.locks"
#: Sets of ``ratelimit.WAYS`` slots: 1024 x 8 keys being fetched at once, 384 KiB.
SETS = 1024
#: The first poll of a waiter, and the longest interval between two.
POLL_FIRST = 0.005
POLL_MAX = 0.05
#: Seconds a hand-off file stays (the waiters poll at most POLL_MAX apart).
HANDOFF_KEEP = 2.0
HANDOFF_DIR = "cache-handoff"


def create(runtime_dir: str) -> str:
    """The lock table's file in ``runtime_dir`` (made if there is none); its path."""
    return guard_table.create(runtime_dir, SETS, FILE_NAME)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (another user's: alive)
        return True
    return True


class CacheLocks:
    """The shared table, this process's id in it, and how to tell a live holder.
    ``handoff_dir``: where hand-off files go (empty: none)."""

    def __init__(self, table: GuardTable, handoff_dir: str = "", pid: int | None = None,
                 alive: Callable[[int], bool] = pid_alive) -> None:
        self.table = table
        self.handoff_dir = handoff_dir
        self.pid = os.getpid() if pid is None else pid
        self.alive = alive
        self._serial = itertools.count(1)

    @classmethod
    def open(cls, path: str) -> CacheLocks | None:
        """The shared table at ``path`` (``create``); None if it cannot be
        mapped (one error line: the lock then holds per process)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            log.error("page-cache lock table %s: %s; the lock holds per process", path, exc.strerror)
            return None
        try:
            buf = mmap.mmap(fd, os.fstat(fd).st_size)
            table = GuardTable(SlotTable(memoryview(buf)), fd, time.monotonic)
        except (OSError, ValueError) as exc:
            os.close(fd)
            log.error("page-cache lock table %s: %s; the lock holds per process", path, exc)
            return None
        return cls(table, os.path.join(os.path.dirname(path), HANDOFF_DIR))

    @staticmethod
    def key(site: str, key: bytes) -> bytes:
        return lock_key(site, key)

    def claim(self, key: bytes, hold_for: float) -> tuple[Claim, Lock | None]:
        """Take ``key``'s lock for at most ``hold_for`` seconds (``LEAD``, with
        this holder's lock), or the lock to wait for, or ``UNCACHEABLE``."""
        token = cache_lock.make_token(self.pid, next(self._serial))
        return self.table.update(key, cache_lock.claim(token, hold_for, self.alive))

    def peek(self, key: bytes) -> Lock | None:
        return self.table.update(key, cache_lock.peek)

    def release(self, key: bytes, token: int, phase: int | None, keep_for: float) -> None:
        self.table.update(key, cache_lock.release(token, phase, keep_for))

    def cacheable_again(self, key: bytes) -> None:
        self.table.update(key, cache_lock.cacheable_again)

    async def wait(self, key: bytes, deadline: float) -> Lock | None:
        """Poll until ``key``'s lock is no longer held by a live process, or
        until ``deadline`` (trio time); the state last seen."""
        interval = POLL_FIRST
        while True:
            lock = self.peek(key)
            now = trio.current_time()
            if not is_waited_on(lock, self.alive) or now >= deadline:
                return lock
            await trio.sleep(min(interval, deadline - now))
            interval = min(interval * 2, POLL_MAX)
