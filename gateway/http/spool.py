"""A byte buffer in memory up to a threshold, then in an unlinked temp file.

Used for request bodies (read fully before a PHP worker is taken) and PHP
responses (drained before the worker is released). Writes and reads are plain
file calls on the event loop thread; they touch the page cache, and the sizes
that reach the disk are bounded by the configured limits.

In memory the spool keeps the ``bytes`` it was given, not a copy in one
buffer: a PHP page is not copied into the spool and then out of it again;
``pieces()`` hands them to one ``sendmsg`` with the response head
(``front.h1_write``), ``getvalue()`` joins them once for whoever needs one
``bytes`` (compression, the page cache). Other buffer types are copied (the
caller may reuse them). Past ``MAX_PIECES`` pieces (a sendmsg takes at most
IOV_MAX buffers) they are joined into one ``bytearray`` that takes every
later write, as the spool always did: many tiny writes cost what they did.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from .errors import SpoolWriteError


def _write_all(f: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


#: The most pieces an in-memory spool keeps: past it they are joined into one
#: growing buffer (php-fpm writes a record per 4-8 KiB; a page of 50 KB
#: comes in 1-13 pieces).
MAX_PIECES = 64


class Spool:
    def __init__(self, memory_limit: int, temp_dir: str | None = None) -> None:
        self.memory_limit = memory_limit
        self.temp_dir = temp_dir or None
        #: the content while in memory: the pieces written, or (past
        #: ``MAX_PIECES``) one bytearray that takes every write
        self._pieces: list[bytes | bytearray] = []
        self._file: BinaryIO | None = None
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (``bytes`` are kept as they are, not copied).

        Raises:
            SpoolWriteError: the temp file could not be made or written (ENOSPC...).
        """
        if not data:
            return
        self.size += len(data)
        if self._file is None and self.size <= self.memory_limit:
            pieces = self._pieces
            if pieces and type(pieces[-1]) is bytearray:
                pieces[-1] += data
            else:
                pieces.append(data if type(data) is bytes else bytes(data))
                if len(pieces) > MAX_PIECES:
                    self._pieces = [bytearray().join(pieces)]
            return
        try:
            if self._file is None:
                # Unbuffered: a full disk fails this write, here, never a later
                # flush in chunks() or close() (after a 200 head went out).
                self._file = tempfile.TemporaryFile(dir=self.temp_dir, buffering=0)  # noqa: SIM115 - ours
                for piece in self._pieces:
                    _write_all(self._file, piece)
                self._pieces = []
            _write_all(self._file, data)
        except OSError as exc:
            raise SpoolWriteError(f"cannot buffer {self.size} bytes in {self.temp_dir or tempfile.gettempdir()}: "
                                  f"{exc.strerror or exc}") from None

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def getvalue(self) -> bytes:
        """The whole content, joined once (kept joined); only for in-memory spools."""
        assert self._file is None
        pieces = self._pieces
        if len(pieces) == 1 and type(pieces[0]) is bytes:
            return pieces[0]
        joined = b"".join(pieces)
        self._pieces = [joined] if joined else []
        return joined

    def pieces(self) -> list[bytes | bytearray]:
        """The content as the pieces written (at most ``MAX_PIECES``, none
        empty), not joined; only for in-memory spools."""
        assert self._file is None
        return list(self._pieces)

    @property
    def file(self) -> BinaryIO:
        """The temp file (unbuffered: all written); only for spools that went to disk."""
        assert self._file is not None
        return self._file

    def chunks(self, size: int = 256 * 1024) -> Iterator[bytes]:
        """The content in pieces of at most ``size`` bytes."""
        if self._file is None:
            for piece in list(self._pieces):
                if len(piece) <= size and type(piece) is bytes:
                    yield piece
                    continue
                view = memoryview(piece)
                for i in range(0, len(piece), size):
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
        self._pieces = []
