"""Response compression (br, gzip): the transform, in the app layer so every
front end (HTTP/1.1 now, HTTP/2 next) sends the same bytes.

What is compressed and which headers change is decided by the sans-IO
``http.encoding`` (see its docstring: types, statuses, Vary, ETag); this
module does the work:

- **Small bodies inline, large ones in a thread.** A body of up to
  ``INLINE_MAX`` (32 KiB) is compressed on the event loop: at br quality 5 that
  is at most ~0.5 ms, less than the ~0.1 ms a thread round trip costs plus the
  wake-up of the loop. Larger ones go to ``trio.to_thread.run_sync`` under a
  ``CapacityLimiter`` (the cores shared out among the gateway's processes,
  at least one thread each), so a 1 MiB page (~5 ms of br)
  never stalls the other connections of this process; when every thread is
  busy a response waits for one (it is queued, not compressed on the loop).
- **Buffered bodies** (bytes, a PHP response drained into memory, a static
  file up to ``SMALL_FILE``) are compressed in one call and sent with a
  Content-Length. **Large ones** (a spooled PHP response, a big static file)
  and **streamed** PHP output become a ``BodyStream`` that reads ``CHUNK``
  bytes at a time, compresses them and hands them on: memory stays bounded
  by the chunk and the coder's window, whatever the size (no Content-Length:
  chunked). A streamed PHP response is flushed after each piece PHP sends, so
  a long poll or a progress page still arrives as it is written.
- **Levels for dynamic content**: brotli quality 5 and gzip level 5 (nginx's
  default is gzip level 1, Caddy's gzip 5; brotli 11, the precompressed
  level, costs ~30x the CPU). Measured on the WordPress home page: see the
  README's "Compression".
- **Accounting**: CPU seconds (the compressing thread's own CPU time, inline
  or not), bytes in and out, responses per coding, in ``CompressionStats``
  (``/status``, ``/metrics``); with ``server_timing`` a buffered response says
  ``compress;dur=…``.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import brotli  # type: ignore[import-untyped]  # no stubs; four calls, typed below
import trio

from ..config import Config
from ..http.encoding import CODINGS, Decision, add_vary, coded_headers, decide
from ..http.response import BodyStream, FileRange, Response
from ..http.spool import Spool
from ..metrics import CompressionStats

#: Bodies up to this size are compressed on the event loop, larger ones in a thread.
INLINE_MAX = 32 * 1024
#: Files and spools up to this size are read whole and sent with a Content-Length.
SMALL_FILE = 256 * 1024
#: What a streamed compression reads (and compresses) at a time.
CHUNK = 128 * 1024
#: brotli quality and gzip level for dynamic compression.
BR_QUALITY = 5
GZIP_LEVEL = 5
#: brotli window for streamed bodies (1 MiB; one-shot bodies size theirs to the input).
BR_LGWIN = 20


class Encoder(Protocol):
    def process(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    def finish(self) -> bytes: ...


class _Gzip:
    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def process(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


def new_encoder(coding: str, *, br_quality: int = BR_QUALITY, gzip_level: int = GZIP_LEVEL) -> Encoder:
    if coding == "br":
        enc: Encoder = brotli.Compressor(quality=br_quality, lgwin=BR_LGWIN, mode=brotli.MODE_TEXT)
        return enc
    return _Gzip(gzip_level)


def compress_bytes(coding: str, data: bytes, *, br_quality: int = BR_QUALITY, gzip_level: int = GZIP_LEVEL) -> bytes:
    """One body in one call."""
    if coding == "br":
        out: bytes = brotli.compress(data, quality=br_quality, mode=brotli.MODE_TEXT)
        return out
    return zlib.compress(data, gzip_level, wbits=31)


def _process_and_flush(encoder: Encoder, data: bytes) -> bytes:
    return encoder.process(data) + encoder.flush()


def _timed(work: Callable[[], bytes]) -> tuple[bytes, float]:
    """``work()`` and the CPU seconds this thread spent on it. Runs on the
    loop or in a worker thread (tests wrap it to hold a thread)."""
    t0 = time.thread_time()
    out = work()
    return out, time.thread_time() - t0


@dataclass(frozen=True, slots=True)
class CompressionSettings:
    offered: tuple[str, ...]
    min_size: int
    server_timing: bool = False
    br_quality: int = BR_QUALITY
    gzip_level: int = GZIP_LEVEL

    #: worker threads for large bodies, in this process
    threads: int = 1

    @classmethod
    def from_config(cls, config: Config) -> CompressionSettings:
        """Threads: the cores shared out among the gateway's processes (at
        least one each), so N processes never run more than the cores' worth
        of compression at once."""
        cpus = os.cpu_count() or 1
        processes = cpus if config.server.processes == "auto" else config.server.processes
        return cls(tuple(c for c in config.server.compression if c in CODINGS), config.server.compress_min_size,
                   config.server.server_timing, threads=max(1, cpus // max(1, processes)))


class Compressor:
    """Compresses responses for one process; ``stats`` is what the monitor shows."""

    def __init__(self, settings: CompressionSettings, stats: CompressionStats | None = None) -> None:
        self.settings = settings
        self.stats = stats if stats is not None else CompressionStats()
        self.limiter = trio.CapacityLimiter(settings.threads)

    async def run(self, work: Callable[[], bytes], size: int) -> bytes:
        """``work()`` inline when ``size`` is small, else in a worker thread; its CPU counted."""
        return (await self.timed(work, size))[0]

    async def timed(self, work: Callable[[], bytes], size: int) -> tuple[bytes, float]:
        """``run``, and the CPU seconds it took."""
        if size <= INLINE_MAX:
            out, cpu = _timed(work)
        else:
            self.stats.threaded += 1
            out, cpu = await trio.to_thread.run_sync(_timed, work, limiter=self.limiter)
        self.stats.cpu_seconds += cpu
        return out, cpu

    def decision(self, method: bytes, accept: bytes | None, resp: Response, *,
                 content_type: bytes | None = None) -> Decision:
        """What ``apply`` does to ``resp``: compress it (and with what), or
        not (and whether it varies); the fast path (``app.fastpath``) asks it
        too, and declines what would be compressed."""
        s = self.settings
        return decide(status=resp.status, headers=resp.headers, length=_known_length(resp, method == b"HEAD"),
                      accept=accept, offered=s.offered, min_size=s.min_size, content_type=content_type)

    def compress_now(self, coding: str, data: bytes) -> bytes:
        """``data`` (at most ``INLINE_MAX``) compressed on the event loop, its
        CPU and bytes counted as ``apply`` counts them (a kept variant of a
        small file: ``app.fastpath``)."""
        s = self.settings
        out, cpu = _timed(lambda: compress_bytes(coding, data, br_quality=s.br_quality, gzip_level=s.gzip_level))
        self.stats.cpu_seconds += cpu
        self.stats.bytes_in += len(data)
        self.stats.bytes_out += len(out)
        return out

    def count_response(self, coding: str) -> None:
        """One response sent in ``coding`` (also one whose coded body was made
        before: the page cache's variants, the fast path's)."""
        self.stats.responses[coding] = self.stats.responses.get(coding, 0) + 1

    def unchanged(self, method: bytes, accept: bytes | None, resp: Response, *,
                  content_type: bytes | None = None) -> Response | None:
        """``apply``'s answer when it compresses nothing (``resp``, with Vary
        where it varies), without an await; None: ``apply`` compresses it."""
        decision = self.decision(method, accept, resp, content_type=content_type)
        if decision.compress:
            return None
        if decision.vary:
            resp.headers = add_vary(resp.headers)
        return resp

    async def apply(self, method: bytes, accept: bytes | None, resp: Response, *,
                    content_type: bytes | None = None) -> Response:
        """``resp`` compressed for a client that sent ``accept`` (Accept-Encoding),
        or as it was (with Vary where it varies). ``content_type``: the type to
        judge when the response has none (a static file's 304)."""
        s = self.settings
        head_only = method == b"HEAD"
        decision = self.decision(method, accept, resp, content_type=content_type)
        if not decision.compress:
            if decision.vary:
                resp.headers = add_vary(resp.headers)
            return resp
        coding = decision.coding
        assert coding is not None
        self.count_response(coding)
        body = resp.body
        if head_only or resp.status in (204, 304):
            resp.headers = coded_headers(resp.headers, coding)
            return resp
        data: bytes | None = None
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, Spool) and (body.in_memory or body.size <= SMALL_FILE):
            data = body.getvalue() if body.in_memory else b"".join(body.chunks())
            body.close()
        elif isinstance(body, FileRange) and body.length <= SMALL_FILE:
            data = _read_range(body)
            if body.close_file:
                body.file.close()
        if data is not None:
            out, cpu = await self.timed(lambda: compress_bytes(coding, data, br_quality=s.br_quality,
                                                               gzip_level=s.gzip_level), len(data))
            self.stats.bytes_in += len(data)
            self.stats.bytes_out += len(out)
            headers = coded_headers(resp.headers, coding, length=len(out))
            if s.server_timing:
                headers = _add_timing(headers, cpu)
            resp.headers = headers
            resp.body = out
            return resp
        resp.headers = coded_headers(resp.headers, coding)
        encoder = new_encoder(coding, br_quality=s.br_quality, gzip_level=s.gzip_level)
        if isinstance(body, (Spool, FileRange)):
            resp.body = CompressedFile(self, encoder, body)
        else:
            assert not isinstance(body, bytes)
            resp.body = CompressedStream(self, encoder, body)
        return resp


def _known_length(resp: Response, head_only: bool) -> int | None:
    """The identity body's length, if known (for HEAD: the Content-Length a
    GET would get)."""
    body = resp.body
    if isinstance(body, bytes) and body:
        return len(body)  # (a gateway page for HEAD too: the writer leaves its body out)
    if not head_only and resp.status not in (204, 304):
        if isinstance(body, bytes):
            return len(body)
        if isinstance(body, Spool):
            return body.size
        if isinstance(body, FileRange):
            return body.length
    for name, value in resp.headers:
        if name.lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def _read_range(fr: FileRange) -> bytes:
    data = os.pread(fr.file.fileno(), fr.length, fr.offset)
    if len(data) < fr.length:
        raise trio.BrokenResourceError("file shrank while being read")
    return data


def _add_timing(headers: list[tuple[bytes, bytes]], cpu: float) -> list[tuple[bytes, bytes]]:
    metric = b"compress;dur=%.1f" % (cpu * 1000)
    for i, (name, value) in enumerate(headers):
        if name.lower() == b"server-timing":
            headers[i] = (name, value + b", " + metric)
            return headers
    return [*headers, (b"server-timing", metric)]


class CompressedFile:
    """A ``BodyStream``: a file range or a spooled body, read ``CHUNK`` bytes
    at a time and compressed as the client takes it."""

    def __init__(self, compressor: Compressor, encoder: Encoder, source: Spool | FileRange) -> None:
        self.compressor = compressor
        self.encoder = encoder
        self.source = source
        if isinstance(source, Spool):
            self._fd, self._offset, self._left = source.file.fileno(), 0, source.size
        else:
            self._fd, self._offset, self._left = source.file.fileno(), source.offset, source.length
        self._done = False

    def __aiter__(self) -> CompressedFile:
        return self

    async def __anext__(self) -> bytes:
        stats = self.compressor.stats
        while not self._done:
            if self._left <= 0:
                self._done = True
                out = await self.compressor.run(self.encoder.finish, 0)
            else:
                data = os.pread(self._fd, min(CHUNK, self._left), self._offset)
                if not data:
                    raise trio.BrokenResourceError("file shrank while being sent")
                self._offset += len(data)
                self._left -= len(data)
                stats.bytes_in += len(data)
                out = await self.compressor.run(partial(self.encoder.process, data), len(data))
            if out:
                stats.bytes_out += len(out)
                return out
        raise StopAsyncIteration

    async def aclose(self) -> None:
        source = self.source
        if isinstance(source, Spool):
            source.close()
        elif source.close_file:
            source.file.close()


class CompressedStream:
    """A ``BodyStream`` around a streamed upstream body: each piece compressed
    and flushed, so the client sees it when PHP sends it."""

    def __init__(self, compressor: Compressor, encoder: Encoder, source: BodyStream) -> None:
        self.compressor = compressor
        self.encoder = encoder
        self.source = source
        self._done = False

    def __aiter__(self) -> CompressedStream:
        return self

    async def __anext__(self) -> bytes:
        stats = self.compressor.stats
        while not self._done:
            try:
                data = await self.source.__anext__()
            except StopAsyncIteration:
                self._done = True
                out = await self.compressor.run(self.encoder.finish, 0)
            else:
                if not data:
                    continue
                stats.bytes_in += len(data)
                out = await self.compressor.run(partial(_process_and_flush, self.encoder, data), len(data))
            if out:
                stats.bytes_out += len(out)
                return out
        raise StopAsyncIteration

    async def aclose(self) -> None:
        await self.source.aclose()
