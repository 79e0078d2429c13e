"""Run one request on PHP through a pool: the FastCGI exchange and its policy.

Flow: take a slot (queue wait measured) -> get a connection -> send
BEGIN_REQUEST(keep_conn), PARAMS, STDIN while reading STDOUT/STDERR ->
drain PHP's output into a spool -> END_REQUEST -> give the connection back
and release the slot -> only then is the response sent to the client, at the
client's pace. The PHP worker is never held by a slow client.

Retry policy: a *reused* connection that yields EOF or a reset before any
response record is retried once on a fresh connection, **for idempotent
methods only** (GET, HEAD, OPTIONS, TRACE, PUT, DELETE: RFC 9110 9.2.2). That
is php-fpm's pm.max_requests recycling: the worker closed the kept-alive
connection after its last response, and the request written on it never ran.
But the same silence comes from a worker that died *while running* the request
(a segfault, a request_terminate_timeout kill with its output still buffered):
a POST retried then runs twice. So a POST, PATCH, LOCK... gets a 502 instead,
as nginx never retries a non-idempotent request once sent. The window is small:
checkout already drops an idle connection whose close is pending. Nothing else
is retried: once any byte of a response arrived, PHP ran.

Client aborts: ``abort`` is a cancel-scope factory that fires when the client
closes its connection. Waiting in the queue is always abandoned then (php-fpm
would run the request for nobody); the PHP run itself is abandoned too (the
FastCGI connection is closed, the only abort php-fpm honours) unless
``ignore_client_abort`` is set.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import trio

import fastcgi

from .._util import single_exception
from ..config import BackendConfig, ServerConfig
from ..http.errors import (
    ClientGone,
    UpstreamClosedEarly,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ..http.request import BodyWriter
from ..http.spool import Spool
from .cgi import CgiHead, CgiResponseError, CgiResponseHead, wants_streaming
from .pool import LONG_WAIT, Pool, Slot, UpstreamConnection

log = logging.getLogger(__name__)

STDIN_CHUNK = 4 * fastcgi.MAX_CONTENT
#: Request bodies up to this size are written with the params in one write;
#: larger ones are sent by a task while the response is read (no deadlock if
#: PHP answers before reading all of its input).
SMALL_BODY = 64 * 1024


#: Starts a streamed response for a CGI head and returns where its body goes.
StartStream = Callable[[CgiHead], Awaitable[BodyWriter]]


@dataclass(slots=True)
class PhpResult:
    head: CgiHead
    body: Spool | None  # None: the response was streamed to the client already
    queue_wait: float
    php_time: float
    app_status: int


@dataclass(frozen=True, slots=True)
class PhpSettings:
    """How one backend's responses are read. No defaults here: ``from_config``
    is the one mapping from the schema, where every default lives."""

    read_timeout: float
    max_header_size: int
    response_buffer_size: int
    temp_dir: str | None
    ignore_client_abort: bool
    #: Past response_buffer_size + this, PHP's output is passed through at the
    #: client's pace instead of spooled (nginx fastcgi_max_temp_file_size).
    max_temp_file_size: int

    @classmethod
    def from_config(cls, backend: BackendConfig, server: ServerConfig | None = None) -> PhpSettings:
        """The settings for ``backend``; ``server`` gives the temp dir (omitted: the default)."""
        return cls(
            read_timeout=backend.read_timeout,
            max_header_size=backend.max_response_header_size,
            response_buffer_size=backend.response_buffer_size,
            temp_dir=(server or ServerConfig()).temp_dir or None,
            ignore_client_abort=backend.ignore_client_abort,
            max_temp_file_size=backend.max_temp_file_size,
        )


async def run_php(
    pool: Pool,
    params: list[tuple[bytes, bytes]],
    body: Spool | None,
    settings: PhpSettings,
    *,
    request_id: str,
    abort: Callable[[], AbstractContextManager[object]] = nullcontext,
    watch: Callable[[], None] | None = None,
    gone: Callable[[], bool] | None = None,
    start_stream: StartStream | None = None,
    force_stream: bool = False,
    retry_safe: bool = False,
) -> PhpResult:
    """Run one request on PHP and return its drained response.

    With ``start_stream``, a response that asks for it (``wants_streaming``), or
    any response when ``force_stream``, or one larger than the spool may hold,
    is sent to the client as PHP produces it; the pool slot is then held until
    PHP is done, by choice.

    Raises:
        GatewayError subclasses (QueueFull, QueueTimeout, UpstreamConnectError,
        UpstreamTimeout, UpstreamProtocolError, UpstreamClosedEarly,
        UpstreamOverloaded); ``ClientGone`` when the client left.

    ``retry_safe``: the request may run twice (an idempotent method); only then
    is a reused connection that closed before responding retried.
    """
    if settings.ignore_client_abort:  # only the wait in the queue is abandoned when the client leaves
        with abort():
            slot = await pool.acquire(on_long_wait=watch)
        try:
            return await _on_slot(slot, params, body, settings, request_id, watch, gone, start_stream, force_stream,
                                  retry_safe)
        finally:
            pool.release()
    with abort():  # one scope for the wait and the exchange
        slot = await pool.acquire(on_long_wait=watch)
        try:
            return await _on_slot(slot, params, body, settings, request_id, watch, gone, start_stream, force_stream,
                                  retry_safe)
        finally:
            pool.release()
    raise AssertionError("unreachable")  # for type checkers: the abort scope raises ClientGone


async def _on_slot(slot: Slot, params: list[tuple[bytes, bytes]], body: Spool | None, settings: PhpSettings,
                   request_id: str, watch: Callable[[], None] | None, gone: Callable[[], bool] | None,
                   start_stream: StartStream | None, force_stream: bool, retry_safe: bool) -> PhpResult:
    pool = slot.pool
    if slot.queue_wait and gone is not None and gone():
        # the client left while it waited (too briefly to be watched): PHP never sees it
        pool.stats.client_gone_in_queue += 1
        raise ClientGone()
    if watch is not None and slot.queue_wait >= LONG_WAIT:
        watch()  # the pool has started watching the client while we waited (a second call does nothing)
        watch = None
    start = trio.current_time()
    conn = await slot.connection()
    try:
        reader = _ResponseReader(settings, request_id, start_stream, force_stream, watch)
        try:
            head, spool, app_status = await _exchange(conn, params, body, reader)
        except UpstreamClosedEarly as exc:
            if not conn.reused:
                raise
            if not retry_safe:
                raise UpstreamClosedEarly(f"{exc} (a reused connection; not retried: the method is not "
                                          "idempotent and PHP may have run it)") from None
            pool.stats.retries += 1
            log.info("[%s] %s: reused connection closed before a response; retrying on a fresh one",
                     request_id, pool.name)
            await pool._close([conn])
            conn = await slot.connection(fresh=True)
            reader = _ResponseReader(settings, request_id, start_stream, force_stream, watch)
            head, spool, app_status = await _exchange(conn, params, body, reader)
    except BaseException:
        await pool._close([conn])
        raise
    await slot.put_back(conn)
    php_time = trio.current_time() - start
    pool.instruments.php_time.observe(php_time)
    pool.instruments.responses += 1
    return PhpResult(head, spool, slot.queue_wait, php_time, app_status)


async def _exchange(conn: UpstreamConnection, params: list[tuple[bytes, bytes]], body: Spool | None,
                    reader: _ResponseReader) -> tuple[CgiHead, Spool | None, int]:
    fc = conn.fcgi
    stream = conn.stream
    rid = conn.request_id
    first = ((fc.send(fastcgi.BeginRequest(keep_conn=True, request_id=rid)) or b"")
             + (fc.send(fastcgi.Params(tuple(params), rid)) or b""))

    async def send_stdin() -> None:
        try:
            await stream.send_all(first)
            if body is not None:
                for chunk in body.chunks(STDIN_CHUNK):
                    await stream.send_all(fc.send(fastcgi.Stdin(chunk, rid)) or b"")
            await stream.send_all(fc.send(fastcgi.Stdin(b"", rid)) or b"")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The reader sees the EOF or reset and decides (retry or 502).
            fc.send_failed()

    if body is None or body.size <= SMALL_BODY:
        # Everything fits in the socket buffer: write it, then read. No task needed.
        if body is not None and body.size:
            first += fc.send(fastcgi.Stdin(body.getvalue() if body.in_memory else b"".join(body.chunks()), rid)) or b""
        first += fc.send(fastcgi.Stdin(b"", rid)) or b""
        try:
            await stream.send_all(first)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            fc.send_failed()
        return await reader.read(conn)
    with single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_stdin)
            result = await reader.read(conn)
            nursery.cancel_scope.cancel()
    return result


class _ResponseReader:
    """Reads one response: STDOUT into the CGI head, then into a spool, or
    straight to the client when streaming; STDERR to the log."""

    def __init__(self, settings: PhpSettings, request_id: str, start_stream: StartStream | None,
                 force_stream: bool, watch: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.request_id = request_id
        self.start_stream = start_stream
        self.force_stream = force_stream
        self.head: CgiHead | None = None
        self.spool: Spool | None = Spool(settings.response_buffer_size, settings.temp_dir)
        self.writer: BodyWriter | None = None
        self.spool_limit = settings.response_buffer_size + settings.max_temp_file_size
        self.watch = watch
        self.watch_at = trio.current_time() + LONG_WAIT

    async def _body(self, data: bytes) -> None:
        if self.writer is not None:
            await self.writer.send(data)
            return
        assert self.spool is not None and self.head is not None
        self.spool.write(data)
        if self.start_stream is not None and self.spool.size > self.spool_limit:
            log.info("[%s] response passed %d bytes: passing the rest through at the client's pace "
                     "(the PHP worker is held until it is sent)", self.request_id, self.spool_limit)
            await self._stream_from_here()

    async def _stream_from_here(self) -> None:
        assert self.start_stream is not None and self.head is not None
        self.writer = await self.start_stream(self.head)
        if self.spool is not None:
            for chunk in self.spool.chunks():
                await self.writer.send(chunk)
            self.spool.close()
            self.spool = None

    async def _receive(self, conn: UpstreamConnection) -> bytes | bytearray:
        """The next bytes from PHP, within read_timeout. One cancel scope per
        wait, made by hand (cheaper than fail_after's generator); its deadline is
        the watch time instead while that comes first (PHP is taking a while:
        start watching the client, once, and wait on)."""
        read_deadline = trio.current_time() + self.settings.read_timeout
        while True:
            watch_first = self.watch is not None and self.watch_at < read_deadline
            scope = trio.CancelScope(deadline=self.watch_at if watch_first else read_deadline)
            with scope:
                return await conn.stream.receive_some(65536)
            if not watch_first:
                raise UpstreamTimeout(f"PHP sent nothing for {self.settings.read_timeout:g}s")
            assert self.watch is not None
            self.watch()
            self.watch = None

    async def read(self, conn: UpstreamConnection) -> tuple[CgiHead, Spool | None, int]:
        try:
            return await self._read(conn)
        except BaseException:
            if self.spool is not None:
                self.spool.close()
            raise

    async def _read(self, conn: UpstreamConnection) -> tuple[CgiHead, Spool | None, int]:
        settings = self.settings
        fc = conn.fcgi
        head_parser = CgiResponseHead(settings.max_header_size)
        got_response = False
        eof = False
        stderr_tail = b""
        while True:
            try:
                event = fc.next_event()
            except fastcgi.RemoteProtocolError as exc:
                if eof:
                    raise UpstreamProtocolError("backend closed the connection mid-response") from None
                raise UpstreamProtocolError(f"backend broke the FastCGI protocol: {exc}") from None
            if event is fastcgi.NEED_DATA:
                try:
                    data = await self._receive(conn)
                except trio.BrokenResourceError as exc:
                    if not got_response:
                        raise UpstreamClosedEarly("backend reset the connection before responding") from exc
                    raise UpstreamProtocolError("backend reset the connection mid-response") from exc
                eof = not data
                fc.receive_data(data)
                continue
            if isinstance(event, fastcgi.ConnectionClosed):
                if not got_response:
                    raise UpstreamClosedEarly("backend closed the connection before responding")
                raise UpstreamProtocolError("backend closed the connection mid-response")
            got_response = True
            if isinstance(event, fastcgi.Stdout):
                if not event.data:
                    continue
                if self.head is not None:
                    await self._body(event.data)
                    continue
                try:
                    done = head_parser.feed(event.data)
                except CgiResponseError as exc:
                    raise UpstreamProtocolError(str(exc)) from None
                if done is not None:
                    self.head, rest = done
                    if self.head.dropped:
                        log.warning("[%s] PHP sent headers that cannot go to a client, dropped: %s",
                                    self.request_id, "; ".join(self.head.dropped))
                    if self.start_stream is not None and (self.force_stream or wants_streaming(self.head)):
                        await self._stream_from_here()
                    await self._body(rest)
            elif isinstance(event, fastcgi.Stderr):
                stderr_tail = _log_stderr(self.request_id, stderr_tail + event.data, final=not event.data)
            elif isinstance(event, fastcgi.EndRequest):
                _log_stderr(self.request_id, stderr_tail, final=True)
                if event.protocol_status == fastcgi.ProtocolStatus.OVERLOADED:
                    raise UpstreamOverloaded("backend answered FCGI_OVERLOADED")
                if event.protocol_status != fastcgi.ProtocolStatus.REQUEST_COMPLETE:
                    raise UpstreamProtocolError(f"backend refused the request: {event.protocol_status.name}")
                if self.head is None:
                    raise UpstreamProtocolError("PHP ended the request without a complete CGI header block")
                if self.writer is not None:
                    await self.writer.end()
                return self.head, self.spool, event.app_status


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _printable(data: bytes) -> str:
    """PHP's words for the log, control bytes escaped (an ESC must not reach a terminal)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", data.decode("utf-8", "replace"))


def _log_stderr(request_id: str, data: bytes, *, final: bool) -> bytes:
    """Log complete lines from PHP's STDERR; return the incomplete tail."""
    *lines, tail = data.split(b"\n")
    if final and tail:
        lines.append(tail)
        tail = b""
    for line in lines:
        if line.strip():
            log.warning("[%s] PHP stderr: %s", request_id, _printable(line.removesuffix(b"\r")))
    if len(tail) > 8192:  # a runaway line without newline: log what we have
        log.warning("[%s] PHP stderr: %s", request_id, _printable(tail))
        tail = b""
    return tail
