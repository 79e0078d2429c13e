"""Small static files kept in memory, per process: nginx's ``open_file_cache``, with the bytes.

``FileCache.get(path)`` gives a file's bytes and identity without a system
call while the entry is fresh. ``app.fastpath`` serves from it; the full
path (``static.serve_file``) never does, so whatever it answers (ranges,
big files, errors) is read from the disk as before.

Policy:

- **What is kept**: regular files of at most ``MAX_FILE`` (64 KiB: the
  size the HTTP/1.1 writer reads and sends with the head in one write;
  bigger files go out by ``sendfile``, which a copy in memory would not
  beat). At most ``MAX_BYTES`` of bodies and ``MAX_FILES`` entries per
  process, the least recently used dropped first. A file too big or not
  regular is remembered as such (no body), so it costs a ``stat`` per
  ``VALID``, not an open per request. A file's compressed variants (br,
  gzip: ``add_variant``, made at the first request that asks for one) are
  kept beside it and counted in ``MAX_BYTES`` too; the answers made from it
  (``app.fastpath``: heads, a handful per file) are not, being small and
  sharing the bodies.
- **Validity**: an entry is trusted for ``VALID`` seconds after it was last
  checked (nginx's ``open_file_cache_valid``, whose default is 60 s; ours
  is 1 s because a client should see an edited file about as soon as the
  full path would show it). Then one ``os.stat``: the same device, inode,
  size, mtime and ctime (to the nanosecond) trust it again; anything else
  reads the file again, and a file gone or unreadable drops the entry. So
  a change, a replacement (rename over it) or a deletion is seen within
  ``VALID``: until then the old bytes are served, as nginx serves the file
  it holds open.
- **Consistent reads**: a file is read whole after ``fstat`` and kept only
  if ``fstat`` after the read says the same (a file being written while we
  read it is not kept, and is asked again next time).
- **Never blocks**: opened with ``O_NONBLOCK`` (a FIFO, or a device, put
  where a file was is looked at, not waited on), read with one ``read``.
- **Errors are not cached** (nginx's ``open_file_cache_errors off``): a
  missing or unreadable file is looked up again on the next request.
"""

from __future__ import annotations

import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .static import etag_for

#: Files up to this size are kept (h1_write.SMALL_FILE: sent with the head in one write).
MAX_FILE = 64 * 1024
#: The most body bytes kept per process.
MAX_BYTES = 16 * 1024 * 1024
#: The most entries kept per process (bodies or not).
MAX_FILES = 4096
#: Seconds an entry is trusted after its last check.
VALID = 1.0
#: Non-blocking: a FIFO put where a file was must not hold the event loop in open().
_OPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes when a file's content may have: device, inode, size, mtime, ctime."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(slots=True)
class CachedFile:
    path: str
    identity: tuple[int, int, int, int, int]
    #: the whole file; None: not kept (not a regular file, or too big)
    body: bytes | None
    #: whole seconds, as Last-Modified and the ETag give it
    mtime: int
    etag: bytes
    #: when it was last read or checked (the cache's clock)
    checked: float
    #: the body compressed, by coding (``add_variant``; counted in the cache's bytes)
    variants: dict[str, bytes] = field(default_factory=dict)
    #: answers made from this version of the file, by what else they depend
    #: on (``app.fastpath``); gone with the entry when the file changes
    answers: dict[object, object] = field(default_factory=dict)
    #: the sites with ``symlinks = "within_root"`` this version was found
    #: to lie within (``app.fastpath``): what was read through a path is
    #: checked for each such site before it serves it
    within: set[str] = field(default_factory=set)


class FileCache:
    """Small files by path (see the module docstring)."""

    def __init__(self, *, valid: float = VALID, max_file: int = MAX_FILE, max_bytes: int = MAX_BYTES,
                 max_files: int = MAX_FILES, clock: Callable[[], float] = time.monotonic) -> None:
        self.valid = valid
        self.max_file = max_file
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.clock = clock
        self.bytes = 0
        self._files: OrderedDict[str, CachedFile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._files)

    def get(self, path: str) -> CachedFile | None:
        """The file at ``path`` as kept (``body`` None: not a small regular
        file), or None when it cannot be opened."""
        now = self.clock()
        entry = self._files.get(path)
        if entry is not None:
            if now - entry.checked < self.valid:
                self._files.move_to_end(path)
                return entry
            try:
                st = os.stat(path)
            except (OSError, ValueError):
                self._drop(path)
                return None
            if identity(st) == entry.identity:
                entry.checked = now
                self._files.move_to_end(path)
                return entry
            self._drop(path)
        return self._load(path, now)

    def _load(self, path: str, now: float) -> CachedFile | None:
        try:
            fd = os.open(path, _OPEN)
        except (OSError, ValueError):
            return None
        try:
            st = os.fstat(fd)
            body: bytes | None = None
            if stat.S_ISREG(st.st_mode) and st.st_size <= self.max_file:
                body = os.read(fd, st.st_size + 1)
                if len(body) != st.st_size or identity(os.fstat(fd)) != identity(st):
                    return None  # changing while we read it: not kept, asked again next time
        except OSError:
            return None
        finally:
            os.close(fd)
        entry = CachedFile(path, identity(st), body, int(st.st_mtime), etag_for(st), now)
        self._files[path] = entry
        self.bytes += len(body) if body is not None else 0
        while self.bytes > self.max_bytes or len(self._files) > self.max_files:
            self._drop(next(iter(self._files)))
        return entry

    def add_variant(self, entry: CachedFile, coding: str, data: bytes) -> None:
        """Keep ``entry``'s body compressed with ``coding`` beside it, within the bounds."""
        if self._files.get(entry.path) is not entry or coding in entry.variants:
            return
        entry.variants[coding] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            victim = next((path for path in self._files if path != entry.path), None)
            if victim is None:
                break
            self._drop(victim)

    def _drop(self, path: str) -> None:
        entry = self._files.pop(path, None)
        if entry is not None and entry.body is not None:
            self.bytes -= len(entry.body) + sum(len(v) for v in entry.variants.values())
