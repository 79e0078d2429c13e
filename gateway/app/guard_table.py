"""Where rate-limit and login-failure states live: one table for all worker
processes (nginx's shared-memory zone).

The table's layout and logic are ``http.ratelimit.SlotTable`` (pure); this
module is its IO: the buffer and the locks.

- With one process (``[server] processes = 1``, tests): a ``bytearray`` and no
  lock. ``SlotTable.update`` is synchronous, so two requests' updates never
  interleave on trio's one thread.
- With several: a file in the master's runtime directory (``create``, by the
  master before it starts a generation of workers; kept across reloads, so a
  reload does not forgive the clients being limited), mapped shared by every
  worker (``open``). An update locks its key's set, ``WAYS`` slots, 384 bytes,
  with an ``fcntl`` byte-range lock (``F_SETLKW``): two processes wait for each
  other only when their clients hash to the same set. Measured here (README
  "Rate limiting"): a lock, the update and the unlock cost a few microseconds,
  small beside the ~100 us the gateway spends on the lightest request.
- Why shared and not per process: a client's keep-alive connection stays on
  one process, but a flood opens many connections, which the kernel spreads
  over all processes; per-process buckets would let a flood through at N times
  the rate (or, with the rate divided by N, limit an honest client on its one
  connection N times harder than configured). Shared, the limit is the one
  configured, whatever the number of processes.
- The clock is ``time.monotonic()`` (CLOCK_MONOTONIC, one for every process of
  the host), not trio's, whose offset differs per process. Tests of the logic
  pass their own times to ``http.ratelimit``.
- A process that cannot map the file (deleted under it) falls back to its
  own table, with one error line: limits then hold per process.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import time
from collections.abc import Callable
from typing import TypeVar

from ..http.ratelimit import SlotTable, Step, init_table, table_size

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Sets of ``ratelimit.WAYS`` slots: 8192 x 8 = 65536 client states (per rule)
#: in 3 MiB, as nginx's "zone=NAME:4m". A flood of more addresses than this
#: evicts the states that expire first (counted: gateway_rate_limit_evictions_total).
SETS = 8192
FILE_NAME = "guard.table"


def create(runtime_dir: str, sets: int = SETS, name: str = FILE_NAME) -> str:
    """The shared table's file ``name`` in ``runtime_dir``, made (0600, the
    owner's: workers open it before dropping privileges) if there is none of
    this layout; its path. (The page cache's lock table is one too: ``app.cache_lock``.)"""
    path = os.path.join(runtime_dir, name)
    size = table_size(sets)
    try:
        if os.path.getsize(path) == size:
            with open(path, "rb") as f:
                SlotTable(bytearray(f.read(size)))
            return path
    except (OSError, ValueError):
        pass
    tmp = path + ".new"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as buf:
            init_table(buf, sets, os.urandom(16))  # type: ignore[arg-type]
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


class GuardTable:
    """The table and how to lock it. ``clock``: seconds, one clock for every
    process sharing the table."""

    def __init__(self, table: SlotTable, fd: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.fd = fd
        self.clock = clock

    @classmethod
    def memory(cls, sets: int = SETS, clock: Callable[[], float] = time.monotonic) -> GuardTable:
        """A table of this process's own."""
        buf = bytearray(table_size(sets))
        init_table(buf, sets, os.urandom(16))
        return cls(SlotTable(buf), clock=clock)

    @classmethod
    def open(cls, path: str) -> GuardTable:
        """The shared table at ``path`` (``create``); this process's own one if
        it cannot be mapped (one error line)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            log.error("rate-limit table %s: %s; limits hold per process", path, exc.strerror)
            return cls.memory()
        try:
            buf = mmap.mmap(fd, os.fstat(fd).st_size)
            return cls(SlotTable(memoryview(buf)), fd)
        except (OSError, ValueError) as exc:
            os.close(fd)
            log.error("rate-limit table %s: %s; limits hold per process", path, exc)
            return cls.memory()

    @property
    def evictions(self) -> int:
        return self.table.evictions

    def update(self, key: bytes, step: Step[R]) -> R:
        """``SlotTable.update`` at the clock's now, under the set's lock when shared."""
        if self.fd is None:
            return self.table.update(key, self.clock(), step)
        span = self.table.set_span(key)
        fcntl.lockf(self.fd, fcntl.LOCK_EX, span[1], span[0])
        try:
            return self.table.update(key, self.clock(), step, span)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, span[1], span[0])
