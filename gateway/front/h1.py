"""One task per client connection: h11 in, a handler, h11 out, keep-alive.

The loop is linear, like h11's ``examples/trio-server.py``: wait for a request,
read its body fully into a spool (``h1_body``), hand a ``Request`` to the
handler, write the ``Response`` it returns (``h1_write``), then recycle the
connection or close it. The handler never sees the connection.

Timeout policy (all cancel scopes on ``trio.current_time()``, so the autojump
clock drives them in tests; defaults in config follow nginx):

- ``header``: the request line and headers must be complete within this time,
  counted from accept for the first request (slowloris, connections that never
  send a byte) and from the first byte for later ones. Partial request -> 408;
  nothing at all -> close silently.
- ``keepalive``: an idle kept-alive connection is closed after this.
- ``body``: the longest gap between two reads of the request body -> 408.
- ``send``: the longest the client may take to accept more of a response
  (``Downstream``'s progress deadline) -> close.

Client departure: while the handler runs, and while a streamed body is
written, the request is registered with the listener's ``InFlightWatcher``; if
the client closes its connection, the connection task's scope is cancelled
(the handler unwinds, 499 in the access log).

Switching protocols: a handler's 101 carries a tunnel (WebSocket...); the
101 head goes out and ``tunnel.switch`` pumps bytes both ways until either
side ends or ``timeouts.tunnel_idle`` passes with no byte moving; then the
connection closes.

Shutdown: ``ListenerState.begin_shutdown`` closes idle keep-alive connections at
once and makes busy ones answer with ``Connection: close``. A connection
accepted but with no byte of its first request yet is not idle: its client
has just connected to send one (as nginx, which closes only keep-alive ones),
so it gets ``FIRST_REQUEST_GRACE`` seconds to send it, and is answered. This
is what lets a reload's old workers leave without failing a request that
reached them as they stopped accepting.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..config import LimitsConfig, ServerConfig, TimeoutsConfig
from ..http._h11 import h11
from ..http.errors import ClientGone
from ..http.realip import RealIpSettings
from ..http.request import Request
from ..http.response import Response
from ..metrics import ListenerStats
from .access_log import log_access
from .downstream import Downstream
from .h1_body import ReceiveTimeout
from .h1_cycle import RequestCycle
from .h1_write import ResponseWriter
from .liveness import InFlightWatcher, Watch
from .parking import PARK_AFTER, Parker

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

#: How long, and how much, we read from a client after our response when it was
#: still sending (a 413, say), so that closing does not reset the connection
#: before it has read the response (nginx: lingering_close).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
#: At max_connections, a connection that has sent nothing for this long since
#: its accept may be closed to admit a waiting client (a younger one's request
#: may be on its way).
SILENT_RECLAIM_AFTER = 1.0


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
    #: a TLS handshake (on a ``tls`` listener) must be done in this time
    handshake_timeout: float
    #: whose forwarded client address is believed, and from which header
    real_ip: RealIpSettings
    #: a PROXY protocol header must be complete within this (timeouts.tls_handshake)
    proxy_header_timeout: float
    #: plain listeners also serve HTTP/2 to clients that open with its preface
    http2_cleartext: bool
    #: a switched connection (WebSocket...) idle this long is closed (``tunnel``)
    tunnel_idle_timeout: float

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
            handshake_timeout=t.tls_handshake,
            real_ip=RealIpSettings.from_config(srv.trusted_proxies, srv.real_ip_header),
            proxy_header_timeout=t.tls_handshake,
            http2_cleartext=srv.http2_cleartext,
            tunnel_idle_timeout=t.tunnel_idle,
        )


#: At shutdown, how long a fresh connection (no byte yet) may take to send its first request.
FIRST_REQUEST_GRACE = 1.0


class ListenerState:
    """Shared by a listener's connections: are we shutting down, where idle
    connections park, who watches in-flight clients, and the instruments."""

    def __init__(self, stats: ListenerStats | None = None) -> None:
        #: where idle keep-alive connections wait without a task (set by the server)
        self.parker: Parker | None = None
        #: watches clients of in-flight requests (set by the server; None: unwatched)
        self.inflight: InFlightWatcher | None = None
        self.shutting_down = False
        self.idle_scopes: set[trio.CancelScope] = set()
        #: waits for a first request: cut to FIRST_REQUEST_GRACE at shutdown, not closed
        self.fresh_scopes: set[trio.CancelScope] = set()
        #: connections waiting for their first request since accept, oldest
        #: first: since when, and how to close one at once for room
        self.silent: dict[trio.CancelScope, tuple[float, Reclaim]] = {}
        self._went_idle = trio.Event()
        self.stats = stats or ListenerStats()

    @property
    def open_connections(self) -> int:
        return self.stats.open_connections

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        for scope in list(self.idle_scopes):
            scope.cancel()
        soon = trio.current_time() + FIRST_REQUEST_GRACE
        for scope in self.fresh_scopes:
            scope.deadline = min(scope.deadline, soon)
        if self.parker is not None:
            self.parker.close_all()

    def notify_idle(self) -> None:
        """A connection went idle (waits silent, or was parked): it may make room."""
        self._went_idle.set()
        self._went_idle = trio.Event()

    async def wait_idle(self) -> None:
        """Wait until a connection next goes idle (``notify_idle``)."""
        await self._went_idle.wait()

    def reclaim_silent(self) -> bool:
        """Close the connection silent longest since its accept, if it has been
        for ``SILENT_RECLAIM_AFTER``, releasing what it holds at once, to admit
        a new client (nginx reuses connections that wait for their request, not
        only idle keep-alive ones). False if none is."""
        now = trio.current_time()
        for scope, (since, reclaim) in self.silent.items():
            if now - since < SILENT_RECLAIM_AFTER:
                return False  # the others are younger
            del self.silent[scope]
            reclaim()  # its task wakes up to a closed socket and ends quietly
            return True
        return False

    def next_silent_reclaim(self) -> float:
        """When ``reclaim_silent`` may next close one (inf: none waits)."""
        for since, _ in self.silent.values():
            return since + SILENT_RECLAIM_AFTER
        return math.inf


#: ``_next_request``'s answer when the connection went to the parker.
_PARKED = object()

#: ``hand_over(served, keepalive_deadline)``: give the idle connection to the
#: parker; True if it took it.
HandOver = Callable[[int, float], bool]
#: ``reclaim()``: close an idle connection now and release its slot (the listener's).
Reclaim = Callable[[], None]


class HttpConnection(RequestCycle):
    """One client connection's loop: read heads, idle, park, answer errors;
    each request's cycle is ``RequestCycle``'s (``h1_cycle``)."""

    def __init__(self, stream: trio.abc.Stream, handler: Handler, settings: ConnectionSettings, *,
                 client: tuple[str, int], server: tuple[str, int], listener_state: ListenerState | None = None,
                 served: int = 0, hand_over: HandOver | None = None, reclaim: Reclaim | None = None,
                 peer: tuple[str, int] | None = None) -> None:
        """``stream``: a ``Downstream`` (or any stream, wrapped in one);
        ``client``: the connection's client (a PROXY protocol header's, else
        the TCP peer); ``peer``: the TCP peer (None: ``client``), logged
        beside the client when they differ;
        ``served``: requests this connection served before (it comes back
        from the parker); ``hand_over``: how to park it when it idles;
        ``reclaim``: how to close it while it waits silent for its first
        request, for room at max_connections."""
        self.downstream = stream if isinstance(stream, Downstream) else Downstream(stream, settings.send_timeout)
        self.handler = handler
        self.settings = settings
        self.client = client
        self.peer = peer or client
        #: the current request's client (``client`` unless a trusted proxy named another)
        self.request_client = client
        self.server = server
        self.listener_state = listener_state or ListenerState()
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=settings.max_header_size)
        self.writer = ResponseWriter(self.conn, self.downstream, settings.server_software)
        self._received_any = False
        self._head_start = b""
        self._state = "reading"
        self._served = served
        self._hand_over = hand_over
        self._reclaim = reclaim
        self._parked = False
        #: the connection task's scope: cancelled when an in-flight client leaves
        self._scope = trio.CancelScope()
        self._watch: Watch | None = None
        #: ``Request.client_left`` (``RequestCycle._client_left_probe``), made at the first request
        self._probe: Callable[[], bool] | None = None
        #: the task's yields to the scheduler when the current request began (``_yielded``)
        self._fair_mark: int | None = None

    def _set_state(self, state: str) -> None:
        states = self.listener_state.stats.states
        states[self._state] -= 1
        states[state] += 1
        self._state = state

    # -- the loop ---------------------------------------------------------------

    async def run(self) -> bool:
        """Serve requests until the connection ends, and close the stream; or
        until it was parked (True: the parker owns the stream now)."""
        stats = self.listener_state.stats
        if not self._served:
            stats.accepted += 1
        stats.states[self._state] += 1
        try:
            with self._scope:
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
            self._unwatch()
            stats.states[self._state] -= 1
            if not self._parked:
                await trio.aclose_forcefully(self.downstream)
        return self._parked

    async def _serve(self) -> None:
        while True:
            try:
                event = await self._next_request(first=self._served == 0)
            except ReceiveTimeout:
                if self._received_any:
                    await self._send_error_and_close(408)
                return
            except h11.RemoteProtocolError as exc:
                await self._send_error_and_close(_status_for(self.conn, exc, self.settings.max_uri_size))
                return
            if event is _PARKED:
                self._parked = True
                return
            if event is None or isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            self._served += 1
            keep_alive = await self._handle(event, last=self._served >= self.settings.keepalive_requests)
            if self.conn.our_state is h11.SWITCHED_PROTOCOL:
                return  # a tunnel ran and ended (``tunnel``): both sides are done with this connection
            if not keep_alive or self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                await self.downstream.linger(LINGER_SECONDS, LINGER_BYTES)
                return
            self.conn.start_next_cycle()
            pipelined = self.conn.trailing_data[0]
            self._received_any = bool(pipelined)
            self._head_start = pipelined[:1024]

    async def receive(self, timeout_at: float, *, idle: bool = False) -> None:
        """Read into h11 before ``timeout_at`` or raise ``ReceiveTimeout``; an ``idle``
        wait is also cut short (``ReceiveTimeout``) by ``ListenerState.begin_shutdown``:
        at once on a kept-alive connection, after ``FIRST_REQUEST_GRACE`` on a
        fresh one (no request served yet).

        Bytes already there are read without a cancel scope: the deadline's
        scope is made only for a read that has to wait; the first bytes of a
        request that were already there cost one yield (fairness), unless
        the task yielded since the last request began (``_yielded``)."""
        data: bytes | bytearray | None = await self.downstream.receive_ready(65536)
        if data is None:
            data = await self._receive_waiting(timeout_at, idle)
        elif idle and not self._yielded():
            # Fairness: a request that was already there when the last one
            # ended is served after one yield. A client that always has its
            # next request waiting then gets one request per scheduler round,
            # like every other connection, instead of a run of them while the
            # others' requests wait for the loop (a p99 of seconds at c64).
            # A request that waited (for PHP, its queue, the client) yielded
            # already: another yield would be a task switch for nothing.
            await trio.lowlevel.cancel_shielded_checkpoint()
        if idle:
            self._fair_mark = _schedule_points()
        if data:
            if not self._received_any:
                self._head_start = bytes(data[:1024])  # for the log if this head never parses
            self._received_any = True
        # the compiled h11 takes bytes only; sockets give bytes, memory streams bytearray
        self.conn.receive_data(data if type(data) is bytes else bytes(data))

    def _yielded(self) -> bool:
        """Has this task yielded to the scheduler since the current request's
        first bytes were read (False where that is not known)?"""
        mark = self._fair_mark
        return mark is not None and _schedule_points() not in (None, mark)

    async def _receive_waiting(self, timeout_at: float, idle: bool) -> bytes | bytearray:
        listener_state = self.listener_state
        fresh = idle and not self._served
        if fresh and listener_state.shutting_down:
            timeout_at = min(timeout_at, trio.current_time() + FIRST_REQUEST_GRACE)
        scope = trio.CancelScope(deadline=timeout_at)
        if idle:
            (listener_state.fresh_scopes if fresh else listener_state.idle_scopes).add(scope)
            if fresh and self._reclaim is not None:
                listener_state.silent[scope] = (trio.current_time(), self._reclaim)
                listener_state.notify_idle()
        try:
            with scope:
                return await self.downstream.receive_waiting(65536)
        finally:
            if idle:
                listener_state.idle_scopes.discard(scope)
                listener_state.fresh_scopes.discard(scope)
                listener_state.silent.pop(scope, None)
        raise ReceiveTimeout()

    async def _next_request(self, *, first: bool) -> h11.Request | h11.ConnectionClosed | object | None:
        """Wait for the next request's head, under the header/keep-alive timeouts.

        Returns None when the connection should close quietly (shutdown), and
        ``_PARKED`` when it idled ``PARK_AFTER`` seconds and went to the parker.
        """
        header_deadline = trio.current_time() + self.settings.header_timeout
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._received_any:
                await self.receive(header_deadline)
                continue
            if self.listener_state.shutting_down and not first:
                return None
            self._set_state("idle")
            try:
                if await self._idle(first, header_deadline):
                    return _PARKED
            except ReceiveTimeout:
                if self.listener_state.shutting_down:
                    return None  # shutdown closed us while idle
                raise
            finally:
                self._set_state("reading")
            if not first:
                header_deadline = trio.current_time() + self.settings.header_timeout

    async def _idle(self, first: bool, header_deadline: float) -> bool:
        """Wait for the first byte of the next request (no byte of it yet);
        True if the connection went to the parker instead."""
        now = trio.current_time()
        idle_deadline = header_deadline if first else now + self.settings.keepalive_timeout
        park_at = now + PARK_AFTER if self._hand_over is not None and not first else math.inf
        if park_at >= idle_deadline:
            await self.receive(idle_deadline, idle=True)
            return False
        try:
            await self.receive(park_at, idle=True)
            return False
        except ReceiveTimeout:
            if self.listener_state.shutting_down:
                raise
        # idle for a while: wait without a task (nothing is buffered: h11 is IDLE)
        if self._hand_over is not None and self.downstream.parkable() \
                and self._hand_over(self._served, idle_deadline):
            self.listener_state.notify_idle()
            return True
        await self.receive(idle_deadline, idle=True)
        return False

    # -- one request ------------------------------------------------------------------

    async def _send_error_and_close(self, status: int) -> None:
        """Answer a head that never parsed (or never completed), log it, close."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = self._error(status)
        first_line = self._head_start.split(b"\n", 1)[0].rstrip(b"\r")
        try:
            await self.writer.write(response, head_only=False, keep_alive=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            return
        finally:
            log_access(json_format=self.settings.access_log_json, client=self.client[0], peer=self.peer[0],
                       method=b"", target=b"",
                       http_version=b"", headers=(), request_id="-", started=time.monotonic(), status=status,
                       response=response, request_line=first_line)
        await self.downstream.linger(LINGER_SECONDS, LINGER_BYTES)


def _schedule_points() -> int | None:
    """How many times the current task has yielded to trio's scheduler (each
    wait, each checkpoint): trio's own count, which ``trio.testing``'s
    checkpoint assertions read; None where a trio version lacks it (then
    the fairness yield is always made)."""
    points: int | None = getattr(trio.lowlevel.current_task(), "_schedule_points", None)
    return points


def _status_for(conn: h11.Connection, exc: h11.RemoteProtocolError, max_uri_size: int) -> int:
    """The status for a head h11 refused: its hint, or 414 for an overlong request line."""
    status = exc.error_status_hint
    if status == 431:
        buffered, _ = conn.trailing_data
        first_line = buffered.split(b"\n", 1)[0]
        if b"\n" not in buffered[: max_uri_size + 64] and len(first_line) > max_uri_size:
            return 414
    return status
