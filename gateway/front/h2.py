"""One HTTP/2 connection: h2 (python-hyper's sans-IO HTTP/2) in, a task per stream, frames out.

Where ``h1`` is one linear loop, an HTTP/2 connection carries many requests at
once, so it is three kinds of task in one nursery per connection:

- the **reader** (the connection's own task): bytes from the client go
  through ``FrameScanner`` (the abuse limits, ``h2_limits``) and into h2;
  its events start a stream task per request, fill request bodies, wake
  writers when the client opens its flow-control window, and cancel a stream's
  task when the client resets it (RST_STREAM).
- the **sender**: the only task that writes to the socket. Anyone with
  frames queued in h2 asks it to write and may wait until it has
  (``_flush``); a stream task cancelled mid-response never leaves half a
  frame on the wire.
- one **stream task** per request: the same cycle as an HTTP/1.1 request
  (``h1_cycle``): head checks (``http.head``), the body read fully into a
  spool under the same limits, the same ``Request`` to the same handler, its
  ``Response`` written as HEADERS + DATA within the connection's and the
  stream's windows and the client's frame size, the body always closed (a
  PHP slot is released), one access-log line (``HTTP/2.0``).

Answers at hand (the HTTP/1.1 cycle's fast path, ``http.prepared``): a
request whose HEADERS end the stream (no body) is checked by the reader as a
stream task checks it, and offered to the handler's ``ready`` there; an
answer (a small static file, a page-cache hit) is queued at once as HEADERS
(the same fields ``_head`` gives the full path's response) and DATA, and
written with the read's other frames: no stream task, no flush of its own.
Its access-log line is written once those frames are (a 499 if the
connection broke first). An answer bigger than the client's window, a
declined request, and an error in ``ready`` (logged) go to a stream task,
with what the reader made of them.

Client departure: a reset stream's task is cancelled (a request waiting for
PHP leaves the queue; one running is abandoned, as an HTTP/1.1 disconnect);
the others go on. Requests opened and reset in the same read never start. A
client that closes the connection cancels all of them (499).

Timeouts (cancel scopes on ``trio.current_time()``):

- no stream open: the connection is closed with GOAWAY after
  ``timeouts.keepalive`` (``client_header`` before its first request, and
  while a header block is incomplete);
- a request body: ``timeouts.client_body`` between two DATA frames, and
  ``timeouts.client_body_min_rate`` on average after 10 s -> 408;
- writes: ``Downstream``'s progress deadline (``timeouts.send``) cuts the
  connection; a stream the client gives no window for ``timeouts.send`` is
  reset (a stalled reader holds no PHP worker: responses are spooled first).

Limits: SETTINGS_MAX_CONCURRENT_STREAMS ``MAX_CONCURRENT_STREAMS`` (h2
enforces it), SETTINGS_MAX_HEADER_LIST_SIZE ``limits.max_header_size`` (h2's
HPACK decoder enforces it), rapid reset, CONTINUATION and PING/SETTINGS
floods (``h2_limits``): GOAWAY(ENHANCE_YOUR_CALM) and close. A protocol error
is h2's GOAWAY and a close. Each is one log line, never a traceback.

At ``max_connections``, a connection with no stream open (for over
``SILENT_RECLAIM_AFTER``) may be closed to admit a waiting client, as an idle
HTTP/1.1 one is.

Shutdown (``ListenerState.begin_shutdown``, also on reload): GOAWAY with the
last stream we took; in-flight streams finish (within ``timeouts.graceful``),
newer ones are refused (REFUSED_STREAM, safe for the client to retry), then
the connection closes.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ..http.errors import ClientGone, GatewayError, SpoolWriteError
from ..http.head import BadRequestHead, CheckedHead, check_method, check_request_head
from ..http.prepared import Prepared
from ..http.realip import real_client
from ..http.request import Request
from ..http.response import FileRange, Response, error_response, http_date
from ..http.spool import Spool
from .access_log import log_access
from .downstream import Downstream
from .h1 import ConnectionSettings, Handler, ListenerState, Reclaim
from .h1_body import BODY_RATE_GRACE
from .h2_hpack import ResponseEncoder
from .h2_limits import Flood, FrameScanner, ResetBudget

log = logging.getLogger(__name__)

MAX_CONCURRENT_STREAMS = 128
#: Client resets allowed per ``RESET_WINDOW`` seconds (rapid reset).
RESET_LIMIT = 2 * MAX_CONCURRENT_STREAMS
RESET_WINDOW = 10.0
#: PING/SETTINGS ACKs a connection may owe before it is refused (nghttp2: 1000).
MAX_ACKS_OWED = 1000
#: A response body is queued in pieces of at most this much per stream (then
#: the stream waits for it to be written): bounds the memory of 128 streams.
WRITE_CHUNK = 64 * 1024
READ_SIZE = 65536
#: After a GOAWAY for an error, how long (and how much) we read before closing,
#: so the client sees the GOAWAY rather than a reset (as ``h1``'s linger).
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024

HTTP2 = b"2.0"
_Setting = h2.settings.SettingCodes
#: RFC 9113 8.2.2: never sent in HTTP/2 (h2 refuses them in requests).
CONNECTION_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                b"upgrade"})

_request_ids = itertools.count(1)
_PID = os.getpid()


class _Stream:
    """One request's state, shared by the reader and the stream's task."""

    __slots__ = ("id", "headers", "scope", "body", "body_done", "ended", "body_status", "last_data", "reset",
                 "in_handler", "answered", "request_id", "started", "made")

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]], now: float) -> None:
        self.id = stream_id
        self.headers = headers
        self.request_id = f"{_PID:x}-{next(_request_ids):x}"
        self.started = time.monotonic()
        #: what the reader already made of a bodiless request (``Http2Connection._answer_ready``):
        #: its head's error, its ``Request``, or both with the response for it
        self.made: Response | Request | tuple[Request, Response] | None = None
        self.scope = trio.CancelScope()
        self.body: Spool | None = None
        #: the body is complete (or will not be read: ``body_status``, a reset)
        self.body_done = trio.Event()
        #: the client ended its side of the stream (END_STREAM or a reset)
        self.ended = False
        #: the status a body already earned (413, 507): the rest is dropped
        self.body_status = 0
        self.last_data = now
        #: the client reset the stream
        self.reset = False
        self.in_handler = False
        #: some of the response went out (a cut after this is not a 499)
        self.answered = False


class Http2Connection:
    """One client connection speaking HTTP/2 (after ALPN ``h2``, or an h2c preface)."""

    def __init__(self, stream: Downstream, handler: Handler, settings: ConnectionSettings, *,
                 client: tuple[str, int], server: tuple[str, int], listener_state: ListenerState | None = None,
                 peer: tuple[str, int] | None = None, reclaim: Reclaim | None = None) -> None:
        """``reclaim``: closes the connection at once (the listener's), to
        admit a new client at ``max_connections`` while this one has no
        stream open, as an idle HTTP/1.1 connection is closed then."""
        self.downstream = stream
        self._reclaim = reclaim
        self.handler = handler
        self.settings = settings
        self.client = client
        self.peer = peer or client
        self.server = server
        self.listener_state = listener_state or ListenerState()
        # (our fields are made as h2 would normalise them and checked as it
        # would, by ``_add_fields``; and encoded by ``h2_hpack``)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.encoder = ResponseEncoder()  # type: ignore[assignment]
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            _Setting.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            _Setting.MAX_HEADER_LIST_SIZE: settings.max_header_size,
        })
        self.conn.decoder.max_header_list_size = settings.max_header_size
        self.scanner = FrameScanner(settings.max_header_size + 16384)
        self.resets = ResetBudget(RESET_LIMIT, RESET_WINDOW)
        self.streams: dict[int, _Stream] = {}
        self._nursery: trio.Nursery | None = None
        # the sender's bookkeeping: flush requests are numbered; _sent is the last one written
        self._want = trio.Event()
        self._progress = trio.Event()
        self._queued = 0
        self._sent = 0
        self._extra = b""  # bytes written after h2's (our graceful GOAWAY)
        self._taken = b""  # bytes the reader took from h2, written before h2's
        self._broken = False
        self._window = trio.Event()  # set (and replaced) when a send window may have grown
        self._last_active = trio.current_time()
        self._served = 0
        self._goaway_at: int | None = None  # the last stream id our graceful GOAWAY took
        self._client_gone = False
        self._state = "idle"
        self._in_handler = 0  # streams whose handler runs (the state "waiting_php")
        self._read_scope: trio.CancelScope | None = None
        #: the handler's ``ready`` (``http.prepared``), if it has one
        self._ready_handler: Callable[[Request], Prepared | None] | None = getattr(handler, "ready", None)
        #: streams answered by ``_answer_ready`` whose frames are not yet written
        self._answered: list[tuple[_Stream, Request, Response]] = []

    # -- the connection ------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; close the stream."""
        stats = self.listener_state.stats
        stats.accepted += 1
        stats.http2.connections += 1
        stats.http2.open += 1
        stats.states[self._state] += 1
        linger = False  # (the sender may cancel the nursery before the reader says)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._send_loop)
                self.conn.initiate_connection()
                linger = await self._read_loop()
                if self.streams:  # cut by the client, an attack or a protocol error
                    self._client_gone = True
                    for st in self.streams.values():
                        st.scope.cancel()
                await self._drain()
                if self._answered:
                    self._log_answered(self._sent >= self._queued)
                nursery.cancel_scope.cancel()
            if linger and not self._broken:
                await self.downstream.linger(LINGER_SECONDS, LINGER_BYTES)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except* Exception:
            # a bug, not input: it stays in this connection, which is closed
            log.exception("internal error on the HTTP/2 connection from %s; closing it", self.client[0])
        finally:
            if self._answered:  # the connection broke before they were written
                self._log_answered(False)
            stats.http2.open -= 1
            stats.states[self._state] -= 1
            await trio.aclose_forcefully(self.downstream)

    def _set_state(self) -> None:
        if not self.streams:
            state = "idle"
        elif self._in_handler:
            state = "waiting_php"
        else:
            state = "writing"
        if state != self._state:
            states = self.listener_state.stats.states
            states[self._state] -= 1
            states[state] += 1
            self._state = state

    def _read_deadline(self) -> float:
        if self.streams:
            return math.inf  # each stream has its own timers (body, send)
        if self._served and not self.scanner.in_block:
            return self._last_active + self.settings.keepalive_timeout
        return self._last_active + self.settings.header_timeout

    async def _read_loop(self) -> bool:
        """Read and dispatch until the connection is to close; True if the
        client should be given time to read our GOAWAY before the close."""
        listener_state = self.listener_state
        while True:
            if listener_state.shutting_down and self._goaway_at is None:
                self._graceful_goaway()
            if self._goaway_at is not None and not self.streams:
                await self._flush()
                return False
            scope = self._read_scope = trio.CancelScope(deadline=self._read_deadline())
            # begin_shutdown cancels these: a connection with streams open
            # stops taking new ones, an idle one closes
            listener_state.idle_scopes.add(scope)
            if not self.streams and self._reclaim is not None:
                listener_state.silent[scope] = (trio.current_time(), self._reclaim)
                listener_state.notify_idle()
            try:
                with scope:
                    data = await self.downstream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""  # reset by the client: as its close
            finally:
                listener_state.idle_scopes.discard(scope)
                listener_state.silent.pop(scope, None)
                self._read_scope = None
            if scope.cancelled_caught:
                if listener_state.shutting_down or self._goaway_at is not None:
                    continue
                if self.streams:
                    continue  # woken for a new deadline (a stream ended meanwhile and another began)
                if self.scanner.in_block:
                    log.info("closing HTTP/2 connection from %s: header block incomplete after %gs "
                             "(timeouts.client_header)", self.client[0], self.settings.header_timeout)
                self.conn.close_connection()
                await self._flush()
                return False
            if not data:
                self._client_gone = True
                return False
            try:
                self.scanner.feed(data)
                events = self.conn.receive_data(data)
            except Flood as exc:
                return await self._refuse(exc.kind, str(exc))
            except h2.exceptions.H2Error as exc:
                # anything a client sends that h2 refuses ends here (h2 queued
                # GOAWAY(PROTOCOL_ERROR) for its ProtocolErrors)
                if not isinstance(exc, h2.exceptions.ProtocolError):
                    self.conn.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
                self.listener_state.stats.http2.refused["protocol_error"] += 1
                why = str(exc)
                if not why.startswith(type(exc).__name__):
                    why = f"{type(exc).__name__}: {why}"
                log.info("closing HTTP/2 connection from %s: protocol error: %s", self.client[0], why)
                await self._flush()
                return True
            if not self._dispatch(events):
                return False
            if self.resets.over(self.scanner.resets, trio.current_time()):
                return await self._refuse("rapid_reset", f"more than {RESET_LIMIT} streams reset within "
                                                         f"{RESET_WINDOW:g}s (rapid reset)")
            if self.scanner.acks_owed > MAX_ACKS_OWED:
                return await self._refuse("control_flood", f"more than {MAX_ACKS_OWED} PING/SETTINGS frames "
                                                           "not yet answered (flood)")
            # what this read made h2 queue (ACKs, WINDOW_UPDATEs, answers at
            # hand) is written before the next read, and so is anything still
            # being written: our backpressure, no reading while the client
            # does not read. A read that queued nothing while the sender is
            # idle (a new stream for PHP) costs no round trip to the sender.
            queued = self.conn.data_to_send()
            if queued or self._extra or self._sent < self._queued:
                self._taken += queued
                await self._flush()
            self.scanner.acks_sent()
            if self._answered:
                self._log_answered(True)

    async def _refuse(self, kind: str, why: str) -> bool:
        self.listener_state.stats.http2.refused[kind] += 1
        log.warning("closing HTTP/2 connection from %s with GOAWAY(ENHANCE_YOUR_CALM): %s", self.client[0], why)
        self.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        await self._flush()
        return True

    def _graceful_goaway(self) -> None:
        """RFC 9113 6.8: the streams up to the last one we took are served, newer ones refused."""
        last = self.conn.highest_inbound_stream_id
        self._goaway_at = last
        self._extra += (8).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00" + last.to_bytes(4, "big") \
            + b"\x00\x00\x00\x00"
        self._want.set()

    def _dispatch(self, events: list[h2.events.Event]) -> bool:
        """Act on one read's events; False if the connection is over (the client's GOAWAY)."""
        now = trio.current_time()
        new: list[_Stream] = []
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                if self._goaway_at is not None and event.stream_id > self._goaway_at:
                    self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                st = _Stream(event.stream_id, [(bytes(n), bytes(v)) for n, v in event.headers], now)
                self.streams[st.id] = st
                new.append(st)
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                st_or_none = self.streams.get(event.stream_id)
                if st_or_none is not None:
                    self._body_data(st_or_none, event.data, now)
            elif isinstance(event, h2.events.StreamEnded):
                st_or_none = self.streams.get(event.stream_id)
                if st_or_none is not None:
                    st_or_none.ended = True
                    st_or_none.body_done.set()
            elif isinstance(event, h2.events.StreamReset):
                st_or_none = self.streams.get(event.stream_id)
                if st_or_none is not None:
                    st_or_none.reset = st_or_none.ended = True
                    st_or_none.body_done.set()
                    st_or_none.scope.cancel()
                self._wake_writers()
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._wake_writers()
            elif isinstance(event, h2.events.ConnectionTerminated):
                # the client's GOAWAY: h2 sends nothing more on this connection
                self._client_gone = True
                return False
        assert self._nursery is not None
        ready = self._ready_handler
        for st in new:
            if st.reset:  # opened and reset in one read: never started (rapid reset costs nothing)
                self.streams.pop(st.id, None)
                continue
            self.listener_state.stats.http2.streams += 1
            if ready is not None and st.ended and st.body is None and self._answer_ready(st, ready):
                continue
            self._nursery.start_soon(self._serve_stream, st)
        self._set_state()
        return True

    def _answer_ready(self, st: _Stream, ready: Callable[[Request], Prepared | None]) -> bool:
        """Answer bodiless stream ``st`` here if the handler has its answer at
        hand (``http.prepared``): HEADERS and DATA queued now, written with
        this read's other frames, logged once written (``_log_answered``).
        False: a stream task answers it (what was made of it goes along)."""
        made = self._check(st)
        if not isinstance(made, CheckedHead):
            st.made = made
            return False
        request = self._request(st, made, None)
        try:
            prepared = ready(request)
        except Exception:
            log.exception("[%s] fast path failed on %s; the full path answers", st.request_id, _line(st))
            prepared = None
        if prepared is None:
            st.made = request
            return False
        body = prepared.body
        response = Response(prepared.status)  # (what the access log reads)
        if body and (len(body) > WRITE_CHUNK or len(body) > self.conn.local_flow_control_window(st.id)):
            # more than the client's window, or than a stream queues at once:
            # a stream task writes it in pieces, as the window opens
            st.made = request, Response(prepared.status, prepared.headers, body, prepared.reason)
            return False
        stats = self.listener_state.stats
        stats.requests += 1
        stats.in_flight += 1
        try:
            self.conn.send_headers(st.id, self._prepared_head(prepared), end_stream=not body)
            if body:
                frame = self.conn.max_outbound_frame_size
                n = len(body)
                for i in range(0, n, frame):
                    self.conn.send_data(st.id, body[i : i + frame] if n > frame else body, end_stream=i + frame >= n)
        except h2.exceptions.ProtocolError as exc:  # (as ``_serve_stream``)
            log.info("[%s] HTTP/2 stream %d from %s reset: %s", st.request_id, st.id, self.client[0], exc)
            self._reset(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            response.bytes_sent = len(body)
        self.streams.pop(st.id, None)
        self._answered.append((st, request, response))
        return True

    def _prepared_head(self, prepared: Prepared) -> list[tuple[bytes, bytes]]:
        """``_head``'s list for a prepared answer."""
        out = [(b":status", b"%d" % prepared.status)]
        if prepared.ours:
            out += ((b"server", self.settings.server_software), (b"date", http_date()))
        else:
            names = {n.lower() for n, _ in prepared.headers}
            out += [h for h in ((b"server", self.settings.server_software), (b"date", http_date()))
                    if h[0] not in names]
        _add_fields(out, prepared.headers)
        return out

    def _log_answered(self, written: bool) -> None:
        """The access-log lines of the streams ``_answer_ready`` answered,
        once their frames are written (``written``), or the connection broke
        first (499, as for a stream task's answer)."""
        answered, self._answered = self._answered, []
        stats = self.listener_state.stats
        now = trio.current_time()
        json_format = self.settings.access_log_json
        for st, request, response in answered:
            stats.in_flight -= 1
            self._served += 1
            self._last_active = now
            status = response.status
            if not written:
                status, response.bytes_sent = 499, 0
            log_access(json_format=json_format, client=request.client[0], peer=self.peer[0],
                       method=request.method, target=_pseudo(st.headers, b":path"), http_version=HTTP2,
                       headers=request.headers, request_id=st.request_id, started=st.started, status=status,
                       response=response)

    def _body_data(self, st: _Stream, data: bytes, now: float) -> None:
        st.last_data = now
        if st.body_status or not data:
            return
        s = self.settings
        if st.body is None:
            st.body = Spool(s.body_buffer_size, s.temp_dir)
        try:
            st.body.write(data)
        except SpoolWriteError as exc:
            log.error("%s: request body from %s refused: %s", exc.status, self.client[0], exc)
            st.body_status = exc.status
        else:
            if st.body.size > s.max_body_size:
                st.body_status = 413
        if st.body_status:
            st.body.close()
            st.body_done.set()  # the handler is not waited for: the answer is known

    def _wake_writers(self) -> None:
        self._window.set()
        self._window = trio.Event()

    # -- writing -------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """The only writer: whatever h2 (and ``_extra``) holds, as it comes."""
        try:
            while True:
                await self._want.wait()
                self._want = trio.Event()
                mine = self._queued
                data = self.conn.data_to_send()
                if self._taken:  # (taken from h2 by the reader before data: it goes first)
                    data, self._taken = self._taken + data, b""
                if self._extra:
                    data, self._extra = data + self._extra, b""
                if data:
                    await self.downstream.send_all(data)
                self._sent = mine
                self._progress.set()
                self._progress = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            if isinstance(exc, trio.TooSlowError):
                log.info("closing HTTP/2 connection from %s: client did not read for %gs (send timeout)",
                         self.client[0], self.settings.send_timeout)
            self._broken = True
            self._client_gone = True
            self._progress.set()
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()

    async def _flush(self) -> None:
        """Have everything queued so far written (the sender does it)."""
        self._queued += 1
        mine = self._queued
        self._want.set()
        while self._sent < mine:
            if self._broken:
                raise trio.BrokenResourceError("the client connection broke")
            await self._progress.wait()

    async def _drain(self) -> None:
        """Before closing: our last frames (GOAWAY) out, within the send timeout."""
        if self._broken:
            return
        with trio.move_on_after(self.settings.send_timeout):
            try:
                await self._flush()
            except trio.BrokenResourceError:
                pass

    # -- one stream ----------------------------------------------------------------

    async def _serve_stream(self, st: _Stream) -> None:
        started = st.started
        stats = self.listener_state.stats
        stats.requests += 1
        stats.in_flight += 1
        request_id = st.request_id
        response: Response | None = None
        request: Request | None = None
        status = 0
        try:
            with st.scope:
                try:
                    request, response = await self._respond(st)
                    status = response.status
                    await self._write(st, request, response)
                except (ClientGone, h2.exceptions.StreamClosedError, trio.BrokenResourceError,
                        trio.ClosedResourceError):
                    pass  # the client reset the stream, or left (the sender saw the connection break)
                except h2.exceptions.ProtocolError as exc:
                    # h2 refused what we were to send (a header it does not
                    # allow), or the connection is closing
                    if not self._client_gone:
                        log.info("[%s] HTTP/2 stream %d from %s reset: %s", request_id, st.id, self.client[0], exc)
                    self._reset(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
                except trio.TooSlowError:
                    log.info("[%s] HTTP/2 stream %d from %s reset: no flow-control window for %gs (send timeout)",
                             request_id, st.id, self.client[0], self.settings.send_timeout)
                    self._reset(st, h2.errors.ErrorCodes.CANCEL)
                except GatewayError as exc:  # a streamed body failed after the head
                    log.error("[%s] %s -> %d after the head was sent: %s", request_id, _line(st), exc.status, exc)
                    self._reset(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
                except Exception:  # a bug stays in its stream: the connection's others go on
                    log.exception("[%s] internal error on HTTP/2 stream %d from %s; resetting it", request_id,
                                  st.id, self.client[0])
                    self._reset(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
        finally:
            if (st.reset or self._client_gone) and not st.answered:
                status = 499  # the client left before any byte of its response went out
            if st.body is not None:
                st.body.close()
            stats.in_flight -= 1
            self.streams.pop(st.id, None)
            self._last_active = trio.current_time()
            self._served += 1
            self._set_state()
            if status:
                head = request.headers if request is not None else st.headers
                log_access(json_format=self.settings.access_log_json,
                           client=(request.client if request is not None else self.client)[0], peer=self.peer[0],
                           method=_pseudo(st.headers, b":method"),
                           target=_pseudo(st.headers, b":path"), http_version=HTTP2, headers=head,
                           request_id=request_id, started=started, status=status, response=response)
            if not self.streams and self._read_scope is not None:
                # the reader waits with no deadline while streams are open:
                # now the idle timeout runs (or, after our GOAWAY, the end)
                self._read_scope.deadline = -math.inf if self._goaway_at is not None else self._read_deadline()

    def _reset(self, st: _Stream, code: h2.errors.ErrorCodes) -> None:
        try:
            self.conn.reset_stream(st.id, code)
        except h2.exceptions.ProtocolError:
            pass
        self._want.set()

    async def _respond(self, st: _Stream) -> tuple[Request | None, Response]:
        """The response to stream ``st``: an error for a bad head or body, else the handler's."""
        made, st.made = st.made if st.made is not None else self._check(st), None
        if isinstance(made, Response):
            return None, made
        if isinstance(made, Request):
            return made, await self._run_handler(st, made)
        if isinstance(made, tuple):
            return made
        checked = made
        if not st.body_done.is_set() and any(n == b"expect" and v.lower() == b"100-continue"
                                             for n, v in checked.headers):
            # RFC 9110 10.1.1: the client waits for this before it sends the body
            self.conn.send_headers(st.id, [(b":status", b"100")])
            await self._flush()
        body = await self._read_body(st)
        if st.body_status:
            return None, self._error(st.body_status)
        request = self._request(st, checked, body)
        return request, await self._run_handler(st, request)

    def _check(self, st: _Stream) -> CheckedHead | Response:
        """``st``'s head checked (``http.head``), or the error response for it."""
        s = self.settings
        method = path = authority = b""
        host: bytes | None = None
        length: bytes | None = None
        headers = [(b"host", b"")]  # (its value set below, or the entry dropped)
        for n, v in st.headers:  # (h2 checked: pseudo-headers first, each once)
            if n[:1] == b":":
                if n == b":method":
                    method = v
                elif n == b":path":
                    path = v
                elif n == b":authority":
                    authority = v
            elif n == b"host":
                if host is None:
                    host = v
            else:
                if n == b"content-length" and length is None:
                    length = v
                headers.append((n, v))
        host = authority or host
        if host:
            headers[0] = (b"host", host)
        else:
            del headers[0]
        if len(path) > s.max_uri_size:
            return self._error(414)
        if len(headers) > s.max_header_count:
            return self._error(431)
        try:
            check_method(method)
            checked = check_request_head(path, HTTP2, headers)
            if length is None:
                length = b"0"
            if not length.isdigit():  # (h2 checked it is a number)
                raise BadRequestHead(f"invalid Content-Length {length[:32]!r}")
            if int(length) > s.max_body_size:
                raise BadRequestHead("body over client_max_body_size", status=413)
        except BadRequestHead as exc:
            log.info("[%s] %d from %s: %s", st.request_id, exc.status, self.client[0], exc)
            return self._error(exc.status)
        return checked

    def _request(self, st: _Stream, checked: CheckedHead, body: Spool | None) -> Request:
        s = self.settings
        client, https = self.client, self.downstream.tls
        if s.real_ip.trusted:
            client, forwarded_https = real_client(self.client, checked.headers, s.real_ip)
            https = https or forwarded_https
        downstream = self.downstream

        def client_left() -> bool:
            return st.reset or self._client_gone or downstream.peer_closed()

        return Request(_pseudo(st.headers, b":method"), checked.target, HTTP2, checked.headers, client, self.server,
                       body, st.request_id, host=checked.host, https=https, client_left=client_left,
                       peer=self.client)

    async def _read_body(self, st: _Stream) -> Spool | None:
        """Wait for the end of the request body: ``timeouts.client_body`` at
        most between two DATA frames, and after ``BODY_RATE_GRACE`` seconds an
        average of ``client_body_min_rate`` (as ``h1_body``) -> 408."""
        s = self.settings
        started = trio.current_time()
        while not st.body_done.is_set():
            deadline = st.last_data + s.body_timeout
            if s.body_min_rate:
                size = st.body.size if st.body is not None else 0
                deadline = min(deadline, started + max(BODY_RATE_GRACE, size / s.body_min_rate))
            with trio.move_on_at(deadline):
                await st.body_done.wait()
            if not st.body_done.is_set() and trio.current_time() >= deadline:
                log.info("HTTP/2 stream %d from %s: request body too slow (%d bytes in %.0fs)", st.id,
                         self.client[0], st.body.size if st.body is not None else 0, trio.current_time() - started)
                st.body_status = 408
                return None
        if st.body is None and not st.body_status:
            return None
        body, st.body = st.body, None  # the request owns it now (closed by _write's caller)
        return body

    async def _run_handler(self, st: _Stream, request: Request) -> Response:
        st.in_handler = True
        self._in_handler += 1
        self._set_state()
        try:
            return await self.handler(request)
        except ClientGone:
            raise
        except GatewayError as exc:
            log.error("[%s] %s %s -> %d: %s", request.request_id, request.method.decode(),
                      request.target.decode("latin-1"), exc.status, exc)
            return self._error(exc.status)
        except Exception:
            log.exception("[%s] unhandled error while handling %s %s", request.request_id,
                          request.method.decode(), request.target.decode("latin-1"))
            return self._error(500)
        finally:
            st.in_handler = False
            self._in_handler -= 1
            self._set_state()
            if request.body is not None:
                request.body.close()

    def _error(self, status: int) -> Response:
        return error_response(status, server=self.settings.server_software)

    async def _write(self, st: _Stream, request: Request | None, resp: Response) -> None:
        """HEADERS, then DATA within the windows; the body is always closed."""
        try:
            head_only = (request is not None and request.method == b"HEAD") or resp.status in (204, 304)
            body = resp.body
            if isinstance(body, Spool) and body.in_memory:
                body = body.getvalue()
            headers = self._head(resp, body)
            empty = head_only or (isinstance(body, bytes) and not body) \
                or (isinstance(body, FileRange) and not body.length)
            self.conn.send_headers(st.id, headers, end_stream=empty)
            if empty:
                await self._flush()
                st.answered = True
            elif isinstance(body, bytes):
                await self._send_data(st, body, end=True, resp=resp)
            elif isinstance(body, (Spool, FileRange)):
                fr = FileRange(body.file, 0, body.size, close_file=False) if isinstance(body, Spool) else body
                for chunk, last in _file_chunks(fr):
                    await self._send_data(st, chunk, end=last, resp=resp)
            else:
                async for chunk in body:
                    if chunk:
                        await self._send_data(st, chunk, end=False, resp=resp)
                self.conn.end_stream(st.id)
                await self._flush()
                st.answered = True
            if not st.ended:
                # answered before the request body ended (413, 408): the rest is not wanted
                self._reset(st, h2.errors.ErrorCodes.NO_ERROR)
        finally:
            if resp.streamed:
                with trio.CancelScope(shield=True):
                    await resp.aclose()
            else:
                resp.close()

    def _head(self, resp: Response, body: object) -> list[tuple[bytes, bytes]]:
        ours = [(b"server", self.settings.server_software), (b"date", http_date())]
        names = {n.lower() for n, _ in resp.headers}
        ours = [h for h in ours if h[0] not in names]
        out = [(b":status", b"%d" % resp.status), *ours]
        _add_fields(out, resp.headers)
        if isinstance(body, bytes) and body and b"content-length" not in names:
            out.append((b"content-length", b"%d" % len(body)))
        return out

    async def _send_data(self, st: _Stream, data: bytes, *, end: bool, resp: Response) -> None:
        """Queue ``data`` as DATA frames as the windows allow, and have it written."""
        view = memoryview(data)
        while view:
            n = await self._window_for(st, len(view))
            frame = self.conn.max_outbound_frame_size
            for i in range(0, n, frame):
                piece = view[i : min(n, i + frame)]
                self.conn.send_data(st.id, bytes(piece), end_stream=end and n == len(view) and i + frame >= n)
            view = view[n:]
            await self._flush()
            resp.bytes_sent += n
            st.answered = True
        if not data and end:
            self.conn.end_stream(st.id)
            await self._flush()

    async def _window_for(self, st: _Stream, wanted: int) -> int:
        """How much of ``wanted`` may go now (> 0), waiting for the client's
        WINDOW_UPDATE at most ``timeouts.send`` (``trio.TooSlowError``)."""
        deadline = trio.current_time() + self.settings.send_timeout
        while True:
            window = self.conn.local_flow_control_window(st.id)
            if window > 0:
                return min(window, wanted, WRITE_CHUNK)
            await self._flush()  # what is queued (our HEADERS) goes out meanwhile
            if self.conn.local_flow_control_window(st.id) > 0:
                continue
            with trio.move_on_at(deadline) as scope:
                await self._window.wait()
            if scope.cancelled_caught:
                raise trio.TooSlowError()


def _add_fields(out: list[tuple[bytes, bytes]], headers: list[tuple[bytes, bytes]]) -> None:
    """``headers`` onto ``out`` as h2's outbound normalisation made them
    (names lower-cased, whitespace around names and values stripped,
    connection-specific fields dropped), checked as its outbound validation
    checked them: no pseudo-header, no TE but ``trailers``."""
    for n, v in headers:
        n = n.lower().strip()
        if n in CONNECTION_HEADERS:
            continue
        if n[:1] == b":" or (n == b"te" and v.strip().lower() != b"trailers"):
            raise h2.exceptions.ProtocolError(f"response header {n!r} may not be sent over HTTP/2")
        out.append((n, v.strip()))


def _pseudo(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for n, v in headers:
        if n == name:
            return v
        if n[:1] != b":":
            break  # pseudo-headers come first (h2 checks it)
    return b""


def _line(st: _Stream) -> str:
    return f"{_pseudo(st.headers, b':method').decode('latin-1')} {_pseudo(st.headers, b':path').decode('latin-1')}"


def _file_chunks(fr: FileRange) -> Iterator[tuple[bytes, bool]]:
    """``fr`` in ``WRITE_CHUNK`` reads, each with "is it the last"."""
    fd = fr.file.fileno()
    offset, remaining = fr.offset, fr.length
    while remaining:
        data = os.pread(fd, min(remaining, WRITE_CHUNK), offset)
        if not data:
            raise trio.BrokenResourceError("file shrank while being sent")
        offset += len(data)
        remaining -= len(data)
        yield data, not remaining

