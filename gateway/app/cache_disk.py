"""The page cache's disk tier (``[sites.X.cache] disk_dir``): entries as
files, shared by every gateway process of the machine and kept across
reloads and restarts.

- **Layout**: ``DIR/SITE/ab/cd/<sha256 of the key>``; a file is ``GWC1``, the
  length of a JSON head (key, host, path, query, status, headers, tags,
  lifetime, wall-clock time stored), the head, then PHP's identity body. A
  file whose head does not hold the key asked for (a hash collision) or that
  cannot be parsed is not an entry (a broken one is removed).
- **Writes** go to a temp file in the same directory, then ``os.replace``:
  a reader in another process sees the old entry or the new one, never half.
- **What runs where**: a read (``get``) is a plain file call on the event
  loop: an entry is at most ``max_entry_size``, usually in the OS page cache,
  and a thread would cost more than the read (``scripts/cache_disk_bench.py``,
  README "Page cache": the read of a 52 KB entry 20-50 us on the loop,
  130-400 us through a thread). The memory tier is asked first; an entry
  read from disk is kept in memory too. What can take long runs in threads:
  a write (``store``: directories, the temp file, the rename, 0.4-1.5 ms for
  52 KB; no fsync: after a crash a file cut short is no entry, by its size)
  and a purge (``purge_async``, reads every head: 0.6-1.5 s of a stalled
  loop for 20 000 entries when it ran there), at most ``THREADS`` at once per
  store, and the sweep (``sweep_async``).
- **Size bound**: ``sweep`` (every ``SWEEP_EVERY`` seconds, in a thread, from
  ``App.run``) removes entries past all their windows, then the least
  recently written until the tier holds at most ``disk_max_size``; between
  sweeps it may exceed it by what was written meanwhile, and a process that
  wrote a quarter of ``disk_max_size`` since its last sweep sweeps at once
  (``SWEEP_AFTER``: a flood of distinct URLs, ``?x=N``, at PHP's pace would
  otherwise write gigabytes in 30 s). Several processes sweeping at once is
  harmless (a file gone is skipped).
- **Purges** read every head under the site's directory: O(entries), in a
  thread. A purge passed on to sibling processes scans again there
  (finding nothing): simple over fast, since purges are rare.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import trio

from ..http.cache_policy import CacheKey, Lifetime, Purge

log = logging.getLogger(__name__)

R = TypeVar("R")

MAGIC = b"GWC1"
_LEN = struct.Struct(">I")
#: The most a head may be (headers are bounded by the backend's header limit).
MAX_HEAD = 1 << 20
#: Seconds between two sweeps of a disk tier.
SWEEP_EVERY = 30.0
#: The share of ``max_size`` a process may write before it sweeps early.
SWEEP_AFTER = 0.25
#: Threads one store's writes and purges may use at once (a sweep runs in its own).
THREADS = 2


def _text(b: bytes) -> str:
    return b.decode("latin-1")


class DiskStore:
    """One site's disk tier under ``directory``, at most ``max_size`` bytes
    (between sweeps). ``flat``: files in ``directory`` itself, not in
    ``ab/cd/`` below it (``app.cache_lock``'s few, short-lived hand-off
    files: no empty directories left behind)."""

    def __init__(self, directory: str, max_size: int, *, flat: bool = False) -> None:
        self.directory = directory
        self.max_size = max_size
        self.flat = flat
        #: bytes this process wrote since its last sweep began
        self.written = 0
        #: set when ``written`` passes ``SWEEP_AFTER`` of ``max_size``: the sweeper sweeps now
        self._full = trio.Event()
        self._threads = trio.CapacityLimiter(THREADS)

    def _path(self, key: bytes) -> str:
        digest = hashlib.sha256(key).hexdigest()
        if self.flat:
            return os.path.join(self.directory, digest)
        return os.path.join(self.directory, digest[:2], digest[2:4], digest)

    # -- entries ---------------------------------------------------------------------

    def get(self, key: bytes) -> tuple[dict[str, Any], bytes] | None:
        """The head and body stored for ``key``, or None."""
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                head = _read_head(f)
                if head is None or head.get("key") != _text(key):
                    if head is None:
                        log.warning("cache: %s is not a cache entry; removed", path)
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                    return None
                body = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cache: cannot read %s: %s", path, exc.strerror or exc)
            return None
        if len(body) != head.get("size"):
            return None  # cut short (a full disk when written): not an entry
        return head, body

    async def store(self, where: CacheKey, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                    body: bytes, tags: frozenset[str], lifetime: Lifetime, stored_wall: float) -> None:
        """``put`` in a thread (not cancelled: a write once begun completes)."""
        written = await self._in_thread(
            partial(self.put, where, status, reason, headers, body, tags, lifetime, stored_wall))
        self.written += written
        if self.written > self.max_size * SWEEP_AFTER:
            self._full.set()

    def put(self, where: CacheKey, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
            tags: frozenset[str], lifetime: Lifetime, stored_wall: float) -> int:
        """Store an entry (replacing the key's); the bytes written (0: a
        failure, one log line). Blocks: ``store`` runs it in a thread."""
        head = json.dumps({
            "key": _text(where.key), "host": where.host, "path": where.path, "query": where.query,
            "status": status, "reason": _text(reason), "headers": [[_text(n), _text(v)] for n, v in headers],
            "tags": sorted(tags), "fresh": lifetime.fresh, "swr": lifetime.stale_while_revalidate,
            "sie": lifetime.stale_if_error, "stored": stored_wall, "size": len(body),
        }).encode()
        path = self._path(where.key)
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(MAGIC + _LEN.pack(len(head)) + head)
                    f.write(body)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("cache: cannot write %s: %s", path, exc.strerror or exc)
            return 0
        return len(MAGIC) + _LEN.size + len(head) + len(body)

    async def _in_thread(self, work: Callable[[], R]) -> R:
        """``work`` in a thread, at most ``THREADS`` at once."""
        return await trio.to_thread.run_sync(work, limiter=self._threads)

    def remove(self, key: bytes) -> None:
        """Remove ``key``'s entry, if there is one."""
        with contextlib.suppress(OSError):
            os.unlink(self._path(key))

    async def purge_async(self, purge: Purge) -> int:
        """``purge`` in a thread."""
        return await self._in_thread(partial(self.purge, purge))

    def purge(self, purge: Purge) -> int:
        n = 0
        for path, head in self._heads():
            where = CacheKey(head.get("host", ""), head.get("path", ""), head.get("query", ""), b"")
            if purge.matches(where, frozenset(head.get("tags", ()))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    n += 1
        return n

    # -- upkeep ----------------------------------------------------------------------

    async def sweep_async(self) -> tuple[int, int]:
        """``sweep`` in a thread (not one of ``THREADS``: writes do not queue behind a sweep)."""
        return await trio.to_thread.run_sync(self.sweep)

    def sweep(self, now_wall: float | None = None) -> tuple[int, int]:
        """Remove entries past all their windows, then the oldest written until
        the tier fits ``max_size``; (entries, bytes) left. Runs in a thread."""
        now_wall = time.time() if now_wall is None else now_wall
        files: list[tuple[float, int, str]] = []
        for path, head in self._heads():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            life = float(head.get("fresh", 0)) + float(head.get("swr", 0)) + float(head.get("sie", 0))
            if float(head.get("stored", 0)) + life <= now_wall:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        files.sort()
        left = len(files)
        for _, size, path in files:
            if total <= self.max_size:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size
            left -= 1
        for stale in list(self._temp_files(now_wall)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        return left, total

    async def run_sweeper(self, found: Callable[[int, int], None]) -> None:
        """Sweep every ``SWEEP_EVERY`` seconds (the first at once), or when
        this process wrote ``SWEEP_AFTER`` of ``max_size`` since; ``found``
        is told the entries and bytes left."""
        while True:
            self.written = 0
            self._full = trio.Event()
            try:
                found(*await self.sweep_async())
            except OSError as exc:
                log.warning("cache: sweeping %s failed: %s", self.directory, exc)
            with trio.move_on_after(SWEEP_EVERY):
                await self._full.wait()

    def _files(self) -> Iterator[str]:
        for root, _, names in os.walk(self.directory):
            for name in names:
                yield os.path.join(root, name)

    def _temp_files(self, now_wall: float) -> Iterator[str]:
        """Temp files a writer left (killed mid-write) over a minute ago."""
        for path in self._files():
            if os.path.basename(path).startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    if os.stat(path).st_mtime < now_wall - 60:
                        yield path

    def _heads(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for path in list(self._files()):
            if os.path.basename(path).startswith(".tmp-"):
                continue
            try:
                with open(path, "rb") as f:
                    head = _read_head(f)
            except OSError:
                continue
            if head is not None:
                yield path, head


def _read_head(f: Any) -> dict[str, Any] | None:
    start = f.read(len(MAGIC) + _LEN.size)
    if len(start) != len(MAGIC) + _LEN.size or not start.startswith(MAGIC):
        return None
    (length,) = _LEN.unpack(start[len(MAGIC):])
    if length > MAX_HEAD:
        return None
    try:
        head = json.loads(f.read(length))
    except ValueError:
        return None
    return head if isinstance(head, dict) else None


def head_headers(head: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in head.get("headers", [])]
