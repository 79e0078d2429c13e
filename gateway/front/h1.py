"""One task per client connection: h11 in, a handler, h11 out, keep-alive.

The loop is linear, like h11's ``examples/trio-server.py``: wait for a request,
read its body fully into a spool, hand it to the handler, send the response,
then recycle the connection or close it.

Timeout policy (all cancel scopes on ``trio.current_time()``, so the autojump
clock drives them in tests; defaults in config.py follow nginx):

- ``header``: the request line and headers must be complete within this time,
  counted from accept for the first request (slowloris, connections that never
  send a byte) and from the first byte for later ones. Partial request -> 408;
  nothing at all -> close silently.
- ``keepalive``: an idle kept-alive connection is closed after this.
- ``body``: the longest gap between two reads of the request body -> 408.
- ``send``: the longest the client may take to accept more of a response
  (between two writes that make progress, as nginx's send_timeout) -> close.

While the handler runs, the client socket is watched: EOF means the client left,
and ``Request.abort`` fires (waiters leave the PHP queue, PHP runs are cut).
Bytes a pipelining client sends meanwhile are kept for the next cycle.

Shutdown: ``Lifecycle.begin_shutdown`` closes idle connections at once and
makes busy ones answer with ``Connection: close``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import h11
else:
    try:  # h11 compiled with mypyc: the same code, ~3x faster (13 vs 44 us per request/response)
        import h11_mypyc as h11
    except ImportError:  # pure h11 where no compiled build is installed
        import h11

from .._util import peer_closed, single_exception
from ..config import LimitsConfig, ServerConfig, TimeoutsConfig
from ..http.errors import ClientGone, GatewayError, SpoolWriteError
from ..http.head import BadRequestHead, check_request_head
from ..http.request import ClientAbort, Request
from ..http.response import FileRange, Response, error_response, http_date, reason_phrase
from ..http.spool import Spool
from ..metrics import ListenerStats
from .parking import PARK_AFTER, Parker

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")

Handler = Callable[[Request], Awaitable[Response]]

_request_ids = itertools.count(1)
_PID = os.getpid()
#: How long, and how much, we read from a client after our response when it was
#: still sending (a 413, say), so that closing does not reset the connection
#: before it has read the response (nginx: lingering_close).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
_WATCH_LIMIT = 64 * 1024
#: Seconds of a request body before its average rate is held to body_min_rate.
BODY_RATE_GRACE = 10.0
#: Writes to a stream that is not a socket (tests' memory streams) go in pieces
#: of this size, the send timeout re-armed for each.
SEND_PIECE = 16 * 1024
#: Static files up to this size are read and sent with the head in one write.
SMALL_FILE = 64 * 1024


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What one client connection obeys. No defaults here: ``from_config`` is
    the one mapping from the schema, where every default lives."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    send_timeout: float
    max_header_size: int
    max_uri_size: int
    max_header_count: int
    max_body_size: int
    body_buffer_size: int
    body_min_rate: int  # bytes per second, after BODY_RATE_GRACE; 0: off
    keepalive_requests: int
    temp_dir: str | None
    server_software: bytes
    access_log_json: bool

    @classmethod
    def from_config(cls, server: ServerConfig | None = None, timeouts: TimeoutsConfig | None = None,
                    limits: LimitsConfig | None = None) -> ConnectionSettings:
        """The settings these sections give; an omitted one is the schema's defaults."""
        srv, t, lim = server or ServerConfig(), timeouts or TimeoutsConfig(), limits or LimitsConfig()
        return cls(
            header_timeout=t.client_header,
            body_timeout=t.client_body,
            keepalive_timeout=t.keepalive,
            send_timeout=t.send,
            max_header_size=lim.max_header_size,
            max_uri_size=lim.max_uri_size,
            max_header_count=lim.max_header_count,
            max_body_size=lim.client_max_body_size,
            body_buffer_size=lim.body_buffer_size,
            body_min_rate=t.client_body_min_rate,
            keepalive_requests=lim.keepalive_requests,
            temp_dir=srv.temp_dir or None,
            server_software=srv.server_software.encode(),
            access_log_json=srv.access_log_format == "json",
        )


class Lifecycle:
    """Shared by the server and its connections: are we shutting down, and the
    listener's instruments (connection states, requests in flight)."""

    def __init__(self, stats: ListenerStats | None = None, watchers: trio.Nursery | None = None) -> None:
        """``watchers``: where client watchers run while a handler waits (the
        server's connection nursery); each connection task also waits for its
        watcher to end, so none outlives its request."""
        self.watchers = watchers
        #: where idle keep-alive connections wait without a task (set by the server)
        self.parker: Parker | None = None
        self.shutting_down = False
        self.idle_scopes: set[trio.CancelScope] = set()
        self.stats = stats or ListenerStats()

    @property
    def open_connections(self) -> int:
        return self.stats.open_connections

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        for scope in list(self.idle_scopes):
            scope.cancel()
        if self.parker is not None:
            self.parker.close_all()


class _Timeout(Exception):
    pass


#: ``_next_request``'s answer when the connection went to the parker.
_PARKED = object()

#: ``park(served, keepalive_deadline)``: hand the idle connection over; True if taken.
Park = Callable[[int, float], bool]


class HttpConnection:
    def __init__(self, stream: trio.abc.Stream, handler: Handler, settings: ConnectionSettings, *,
                 client: tuple[str, int], server: tuple[str, int], lifecycle: Lifecycle | None = None,
                 served: int = 0, park: Park | None = None) -> None:
        """``served``: requests this connection served before (it comes back from
        the parker); ``park``: how to hand it over when it idles (None: never)."""
        self.stream = stream
        self.handler = handler
        self.settings = settings
        self.client = client
        self.server = server
        self.lifecycle = lifecycle or Lifecycle()
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=settings.max_header_size)
        #: the trio socket under a SocketStream, written directly (see _send_all)
        self._socket: trio.socket.SocketType | None = getattr(stream, "socket", None)
        self._received_any = False
        self._state = "reading"
        self._served = served
        self._park = park
        self._parked = False

    def _set_state(self, state: str) -> None:
        states = self.lifecycle.stats.states
        states[self._state] -= 1
        states[state] += 1
        self._state = state

    # -- the loop ---------------------------------------------------------------

    async def run(self) -> bool:
        """Serve requests until the connection ends, and close the stream; or
        until it was parked (True: the parker owns the stream now)."""
        stats = self.lifecycle.stats
        if not self._served:
            stats.accepted += 1
        stats.states[self._state] += 1
        try:
            await self._serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
            pass
        except trio.TooSlowError:
            log.info("closing connection from %s: client did not read for %gs (send timeout)",
                     self.client[0], self.settings.send_timeout)
        except Exception:
            # A bug, not input: input is validated before it gets here. It stays
            # in this connection, which is closed; the process serves on.
            log.exception("internal error on the connection from %s; closing it", self.client[0])
        finally:
            stats.states[self._state] -= 1
            if not self._parked:
                await trio.aclose_forcefully(self.stream)
        return self._parked

    async def _serve(self) -> None:
        while True:
            try:
                event = await self._next_request(first=self._served == 0)
            except _Timeout:
                if self._received_any:
                    await self._send_error_and_close(408)
                return
            except h11.RemoteProtocolError as exc:
                await self._send_error_and_close(self._status_for(exc))
                return
            if event is _PARKED:
                self._parked = True
                return
            if event is None or isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            self._served += 1
            keep_alive = await self._handle(event, last=self._served >= self.settings.keepalive_requests)
            if not keep_alive or self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                await self._linger()
                return
            self.conn.start_next_cycle()
            self._received_any = bool(self.conn.trailing_data[0])

    def _status_for(self, exc: h11.RemoteProtocolError) -> int:
        status = exc.error_status_hint
        if status == 431:
            buffered, _ = self.conn.trailing_data
            first_line = buffered.split(b"\n", 1)[0]
            limit = self.settings.max_uri_size
            if b"\n" not in buffered[: limit + 64] and len(first_line) > limit:
                return 414
        return status

    async def _receive(self, timeout_at: float, *, idle: bool = False) -> None:
        """Read into h11 before ``timeout_at`` or raise ``_Timeout``; an ``idle``
        wait is also cut short (``_Timeout``) by ``Lifecycle.begin_shutdown``."""
        scope = trio.CancelScope(deadline=timeout_at)
        if idle:
            self.lifecycle.idle_scopes.add(scope)
        try:
            with scope:
                data = await self.stream.receive_some(65536)
        finally:
            if idle:
                self.lifecycle.idle_scopes.discard(scope)
        if scope.cancelled_caught:
            raise _Timeout()
        if data:
            self._received_any = True
        # the compiled h11 takes bytes only; sockets give bytes, memory streams bytearray
        self.conn.receive_data(data if type(data) is bytes else bytes(data))

    async def _next_request(self, *, first: bool) -> h11.Request | h11.ConnectionClosed | object | None:
        """Wait for the next request's head, under the header/keep-alive timeouts.

        Returns None when the connection should close quietly (shutdown), and
        ``_PARKED`` when it idled ``PARK_AFTER`` seconds and went to the parker.
        """
        s = self.settings
        now = trio.current_time()
        header_deadline = now + s.header_timeout
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._received_any:
                await self._receive(header_deadline)
                continue
            # Idle: no byte of the next request yet.
            if self.lifecycle.shutting_down:
                return None
            idle_deadline = header_deadline if first else now + s.keepalive_timeout
            self._set_state("idle")
            park_at = now + PARK_AFTER if self._park is not None and not first else math.inf
            try:
                if park_at < idle_deadline:
                    try:
                        await self._receive(park_at, idle=True)
                    except _Timeout:
                        if self.lifecycle.shutting_down:
                            return None  # shutdown closed us while idle
                        # idle for a while: wait without a task (nothing is buffered: h11 is IDLE)
                        if self._park is not None and self._park(self._served, idle_deadline):
                            return _PARKED
                        await self._receive(idle_deadline, idle=True)
                else:
                    await self._receive(idle_deadline, idle=True)
            except _Timeout:
                if self.lifecycle.shutting_down:
                    return None  # shutdown closed us while idle
                raise
            finally:
                self._set_state("reading")
            header_deadline = trio.current_time() + s.header_timeout if not first else header_deadline

    async def _handle(self, req: h11.Request, *, last: bool) -> bool:
        """Read the body, run the handler, send the response. Returns keep-alive."""
        started = time.monotonic()
        stats = self.lifecycle.stats
        stats.requests += 1
        stats.in_flight += 1
        try:
            return await self._handle_counted(req, last=last, started=started)
        finally:
            stats.in_flight -= 1

    async def _handle_counted(self, req: h11.Request, *, last: bool, started: float) -> bool:
        s = self.settings
        request_id = f"{_PID:x}-{next(_request_ids):x}"
        headers: list[tuple[bytes, bytes]] = list(req.headers)  # h11 gives (lower-cased name, value) bytes
        keep_alive = not last and not self.lifecycle.shutting_down
        response: Response
        body: Spool | None = None
        if len(req.target) > s.max_uri_size:
            response = self._error(414)
            keep_alive = False
        elif (len(headers) > s.max_header_count
              or sum(len(n) + len(v) + 4 for n, v in headers) + len(req.target) + 16 > s.max_header_size):
            # h11 bounds only an *incomplete* head; a complete one that arrived
            # in one read is checked here.
            response = self._error(431)
            keep_alive = False
        else:
            try:
                checked = check_request_head(req.target, req.http_version, headers)
                body = await self._read_body(req, headers)
            except BadRequestHead as exc:
                log.info("[%s] %d from %s: %s", request_id, exc.status, self.client[0], exc)
                response = self._error(exc.status)
                keep_alive = False
            except _BodyError as exc:
                response = self._error(exc.status)
                keep_alive = False
            else:
                streaming = _StreamingResponse(self, req, keep_alive)
                request = Request(req.method, checked.target, req.http_version, checked.headers, self.client,
                                  self.server, body, request_id, host=checked.host, start_response=streaming.start)
                self._set_state("waiting_php")
                try:
                    response = await self._run_handler(request)
                except ClientGone:
                    self._access(req, None, request_id, started, 499)
                    raise
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    raise  # writing to the client failed (while streaming): run() closes quietly
                except GatewayError as exc:
                    # expected failures (backend timeout, broken backend): one line, no traceback
                    log.error("[%s] %s %s -> %d: %s", request_id, req.method.decode(), req.target.decode("latin-1"),
                              exc.status, exc)
                    if streaming.started:  # the head is out: no error page can follow
                        raise ClientGone() from None
                    response = self._error(exc.status)
                except Exception:
                    if streaming.started:
                        # The head is out: no error page can follow. Cut the connection.
                        log.exception("[%s] error while streaming %s %s", request_id, req.method.decode(),
                                      req.target.decode("latin-1"))
                        raise ClientGone() from None
                    log.exception("[%s] unhandled error while handling %s %s", request_id, req.method.decode(),
                                  req.target.decode("latin-1"))
                    response = self._error(500)
                finally:
                    if body is not None:
                        body.close()
                if response.streamed:
                    self._set_state("reading")
                    response.bytes_sent = streaming.bytes_sent
                    self._access(req, response, request_id, started, response.status)
                    return streaming.keep_alive
        keep_alive = keep_alive and not self.lifecycle.shutting_down
        self._set_state("writing")
        try:
            await self._send_response(req, response, keep_alive)
        finally:
            response.close()
            self._set_state("reading")
        self._access(req, response, request_id, started, response.status)
        return keep_alive

    async def _run_handler(self, request: Request) -> Response:
        """Run the handler; if it waits on something (``request.abort.scope()``),
        watch the client for EOF meanwhile, in the connection's nursery."""
        if self.lifecycle.watchers is None:  # no server around (tests): a nursery of our own
            with single_exception():
                async with trio.open_nursery() as nursery:
                    return await self._run_handler_watched(request, nursery)
        return await self._run_handler_watched(request, self.lifecycle.watchers)

    async def _run_handler_watched(self, request: Request, watchers: trio.Nursery) -> Response:
        watch: list[tuple[trio.CancelScope, trio.Event]] = []  # made only if a watcher starts

        def start_watching() -> None:
            scope, done = trio.CancelScope(), trio.Event()
            watch.append((scope, done))
            watchers.start_soon(self._watch_client, request, scope, done)

        sock = self._socket
        request.abort = ClientAbort(start_watching, probe=None if sock is None else partial(peer_closed, sock))
        try:
            return await self.handler(request)
        finally:
            for scope, done in watch:
                scope.cancel()
                # the watcher must be out of receive_some before anyone reads again
                with trio.CancelScope(shield=True):
                    await done.wait()

    async def _watch_client(self, request: Request, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                received = 0
                while received < _WATCH_LIMIT:
                    try:
                        data = await self.stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        request.abort.fire()
                        return
                    received += len(data)
                    self.conn.receive_data(data if type(data) is bytes else bytes(data))
                await trio.sleep_forever()
        except Exception:  # runs in the server's nursery: nothing may escape it
            log.exception("internal error watching the client %s", self.client[0])
            request.abort.fire()
        finally:
            done.set()

    # -- request body -------------------------------------------------------------

    async def _read_body(self, req: h11.Request, headers: list[tuple[bytes, bytes]]) -> Spool | None:
        s = self.settings
        has_body = any(n in (b"content-length", b"transfer-encoding") for n, _ in headers)
        if not has_body:
            # h11 still needs to see EndOfMessage
            event = self.conn.next_event()
            assert isinstance(event, h11.EndOfMessage), event
            return None
        for n, v in headers:
            if n == b"content-length" and int(v) > s.max_body_size:
                raise _BodyError(413)
        spool = Spool(s.body_buffer_size, s.temp_dir)
        started = trio.current_time()
        try:
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    if self.conn.they_are_waiting_for_100_continue:
                        await self._send_all(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                    deadline = trio.current_time() + s.body_timeout
                    if s.body_min_rate:
                        # After a grace period the body must average body_min_rate:
                        # the bytes we have buy time until the average falls below it.
                        deadline = min(deadline, started + max(BODY_RATE_GRACE, spool.size / s.body_min_rate))
                    try:
                        await self._receive(deadline)
                    except _Timeout:
                        log.info("closing %s: request body too slow (%d bytes in %.0fs)", self.client[0],
                                 spool.size, trio.current_time() - started)
                        raise _BodyError(408) from None
                    continue
                if isinstance(event, h11.Data):
                    try:
                        spool.write(event.data)
                    except SpoolWriteError as exc:
                        log.error("%s: request body from %s refused: %s", exc.status, self.client[0], exc)
                        raise _BodyError(exc.status) from None
                    if spool.size > s.max_body_size:
                        raise _BodyError(413)
                elif isinstance(event, h11.EndOfMessage):
                    return spool
                else:  # ConnectionClosed mid-body
                    raise ClientGone()
        except h11.RemoteProtocolError:
            spool.close()
            raise _BodyError(400) from None
        except BaseException:
            spool.close()
            raise

    # -- response -----------------------------------------------------------------

    def _error(self, status: int) -> Response:
        return error_response(status, server=self.settings.server_software)

    async def _send_error_and_close(self, status: int) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        resp = self._error(status)
        try:
            await self._send_response(None, resp, keep_alive=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            return
        await self._linger()

    def _head_bytes(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes, keep_alive: bool) -> bytes:
        s = self.settings
        ours = [(b"server", s.server_software), (b"date", http_date())]
        for name, _ in headers:
            if len(name) in (4, 6) and name.lower() in (b"date", b"server"):
                # PHP's own Date or Server replaces ours, as under nginx (one of each, RFC 9110)
                ours = [h for h in ours if h[0] != name.lower()]
        full = [*ours, *headers]
        if not keep_alive:
            full.append((b"connection", b"close"))
        reason = reason or reason_phrase(status)
        return self.conn.send(h11.Response(status_code=status, headers=full, reason=reason)) or b""

    async def _send_head(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes,
                         keep_alive: bool) -> None:
        await self._send_all(self._head_bytes(status, headers, reason, keep_alive))

    async def _send_response(self, req: h11.Request | None, resp: Response, keep_alive: bool) -> None:
        headers = resp.headers
        body = resp.body
        if isinstance(body, bytes) and body and not any(n == b"content-length" for n, _ in resp.headers):
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        head = self._head_bytes(resp.status, headers, resp.reason, keep_alive)
        head_only = req is not None and req.method == b"HEAD" or resp.status in (204, 304)
        if isinstance(body, Spool) and body.in_memory:
            body = body.getvalue()
        elif isinstance(body, FileRange) and body.length <= SMALL_FILE:
            # a small file costs less read and sent with the head than sendfile'd
            data = os.pread(body.file.fileno(), body.length, body.offset) if not head_only else b""
            if len(data) < body.length and not head_only:
                self.conn.send_failed()
                raise trio.BrokenResourceError("file shrank while being sent")
            body = data
        if head_only or isinstance(body, bytes):
            # one write for head, body and end: the common case
            out = head
            if isinstance(body, bytes) and body and not head_only:
                out += self.conn.send(h11.Data(data=body)) or b""
            out += self.conn.send(h11.EndOfMessage()) or b""
            await self._send_all(out)
            return
        # a large body: a temp file or static file, sent with sendfile
        await self._send_all(head)
        if isinstance(body, Spool):
            body = FileRange(body.file, 0, body.size, close_file=False)
        for piece in self.conn.send_with_data_passthrough(h11.Data(data=body)) or []:  # type: ignore[arg-type]
            if isinstance(piece, FileRange):
                await self._sendfile(piece)
            else:
                await self._send_all(piece)
        await self._send_all(self.conn.send(h11.EndOfMessage()))

    async def _send_all(self, data: bytes | None) -> None:
        """Send ``data``; ``send_timeout`` bounds the wait between two writes that
        make progress (nginx's send_timeout), so a slow but steady reader is
        served and one that stops reading is cut (``trio.TooSlowError``)."""
        if not data:
            return
        timeout = self.settings.send_timeout
        view = memoryview(data)
        sock = self._socket
        scope = trio.CancelScope(deadline=trio.current_time() + timeout)
        try:
            with scope:
                if sock is None:  # not a socket (tests): pieces through the stream
                    for i in range(0, len(view), SEND_PIECE):
                        scope.deadline = trio.current_time() + timeout
                        await self.stream.send_all(view[i : i + SEND_PIECE])
                else:  # as much as the kernel takes per call: fewer syscalls than pieces
                    while view:
                        try:
                            sent = await sock.send(view)
                        except OSError as exc:
                            raise trio.BrokenResourceError(f"send failed: {exc}") from exc
                        view = view[sent:]
                        scope.deadline = trio.current_time() + timeout
            if scope.cancelled_caught:
                raise trio.TooSlowError()
        except BaseException:
            self.conn.send_failed()
            raise

    async def _sendfile(self, fr: FileRange) -> None:
        sock = getattr(self.stream, "socket", None)
        in_fd = fr.file.fileno()
        offset, remaining = fr.offset, fr.length
        if sock is None or not hasattr(os, "sendfile"):
            while remaining:
                data = os.pread(in_fd, min(remaining, 256 * 1024), offset)
                if not data:
                    raise trio.BrokenResourceError("file shrank while being sent")
                await self._send_all(data)
                offset += len(data)
                remaining -= len(data)
            return
        out_fd = sock.fileno()
        while remaining:
            try:
                n = os.sendfile(out_fd, in_fd, offset, min(remaining, 4 * 1024 * 1024))
            except BlockingIOError:
                with trio.fail_after(self.settings.send_timeout):
                    await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                self.conn.send_failed()
                raise trio.BrokenResourceError(f"sendfile failed: {exc}") from exc
            if n == 0:
                self.conn.send_failed()
                raise trio.BrokenResourceError("file shrank while being sent")
            offset += n
            remaining -= n
            await trio.lowlevel.checkpoint()

    async def _linger(self) -> None:
        """Half-close and drain briefly so the client reads our response before any reset."""
        try:
            if isinstance(self.stream, trio.SocketStream):
                await self.stream.send_eof()
            with trio.move_on_after(LINGER_SECONDS):
                drained = 0
                while drained < LINGER_BYTES:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _access(self, req: h11.Request, resp: Response | None, request_id: str, started: float, status: int) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        headers = dict(req.headers)
        size = 0
        if resp is not None:
            size = (resp.bytes_sent if resp.streamed
                    else resp.body.size if isinstance(resp.body, Spool) else len(resp.body))
        qw = f"{resp.queue_wait:.3f}" if resp is not None and resp.queue_wait is not None else "-"
        php = f"{resp.php_time:.3f}" if resp is not None and resp.php_time is not None else "-"
        if self.settings.access_log_json:
            access_log.info(json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "id": request_id, "remote_addr": self.client[0],
                "method": req.method.decode("latin-1"), "uri": req.target.decode("latin-1"),
                "protocol": "HTTP/" + req.http_version.decode(), "status": status, "bytes": size,
                "referer": headers.get(b"referer", b"").decode("latin-1"),
                "user_agent": headers.get(b"user-agent", b"").decode("latin-1"),
                "request_time": round(time.monotonic() - started, 6),
                "queue_wait": None if qw == "-" else float(qw), "php_time": None if php == "-" else float(php),
                "upstream": resp.upstream if resp is not None else "",
            }))
            return
        access_log.info(
            '%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s" rt=%.3f qw=%s php=%s id=%s',
            self.client[0], time.strftime("%d/%b/%Y:%H:%M:%S %z"), req.method.decode("latin-1"),
            req.target.decode("latin-1"), req.http_version.decode(), status, size,
            headers.get(b"referer", b"-").decode("latin-1"), headers.get(b"user-agent", b"-").decode("latin-1"),
            time.monotonic() - started, qw, php, request_id,
        )


class _StreamingResponse:
    """``Request.start_response`` for one request: the head goes out at once, the
    body chunk by chunk (h11 frames it: chunked for HTTP/1.1 without a length)."""

    def __init__(self, connection: HttpConnection, req: h11.Request, keep_alive: bool) -> None:
        self.connection = connection
        self.req = req
        self.keep_alive = keep_alive
        self.started = False
        self.bytes_sent = 0
        self.head_only = req.method == b"HEAD"

    async def start(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> _StreamingResponse:
        c = self.connection
        self.keep_alive = self.keep_alive and not c.lifecycle.shutting_down
        self.started = True
        c._set_state("writing")
        self.head_only = self.head_only or status in (204, 304)
        await c._send_head(status, headers, reason, self.keep_alive)
        return self

    async def send(self, data: bytes) -> None:
        if data and not self.head_only:
            await self.connection._send_all(self.connection.conn.send(h11.Data(data=data)))
            self.bytes_sent += len(data)

    async def end(self) -> None:
        await self.connection._send_all(self.connection.conn.send(h11.EndOfMessage()))


class _BodyError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
