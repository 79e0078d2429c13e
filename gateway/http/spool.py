"""A byte buffer in memory up to a threshold, then in an unlinked temp file.

Used for request bodies (read fully before a PHP worker is taken) and PHP
responses (drained before the worker is released). Writes and reads are plain
file calls on the event loop thread; they touch the page cache, and the sizes
that reach the disk are bounded by the configured limits.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from .errors import SpoolWriteError


def _write_all(f: BinaryIO, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


class Spool:
    def __init__(self, memory_limit: int, temp_dir: str | None = None) -> None:
        self.memory_limit = memory_limit
        self.temp_dir = temp_dir or None
        self._mem = bytearray()
        self._file: BinaryIO | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``.

        Raises:
            SpoolWriteError: the temp file could not be made or written (ENOSPC...).
        """
        if not data:
            return
        self.size += len(data)
        if self._file is None and len(self._mem) + len(data) <= self.memory_limit:
            self._mem += data
            return
        try:
            if self._file is None:
                # Unbuffered: a full disk fails this write, here, never a later
                # flush in chunks() or close() (after a 200 head went out).
                self._file = tempfile.TemporaryFile(dir=self.temp_dir, buffering=0)  # noqa: SIM115 - ours
                _write_all(self._file, self._mem)
                self._mem = bytearray()
            _write_all(self._file, data)
        except OSError as exc:
            raise SpoolWriteError(f"cannot buffer {self.size} bytes in {self.temp_dir or tempfile.gettempdir()}: "
                                  f"{exc.strerror or exc}") from None

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def getvalue(self) -> bytes:
        """The whole content; only for in-memory spools."""
        assert self._file is None
        return bytes(self._mem)

    @property
    def file(self) -> BinaryIO:
        """The temp file (unbuffered: all written); only for spools that went to disk."""
        assert self._file is not None
        return self._file

    def chunks(self, size: int = 256 * 1024) -> Iterator[bytes]:
        if self._file is None:
            view = memoryview(self._mem)
            for i in range(0, len(self._mem), size):
                yield bytes(view[i : i + size])
            return
        fd = self._file.fileno()
        offset = 0
        while offset < self.size:
            data = os.pread(fd, min(size, self.size - offset), offset)
            if not data:
                break
            offset += len(data)
            yield data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._mem = bytearray()
