"""One request's cycle on an HTTP/1.1 connection: body, handler, response, log.

``RequestCycle`` is the part of ``HttpConnection`` (``h1``) that runs once per
request: check the head (``http.head``), read the body (``h1_body``), build the
``Request``, run the handler with its client watched (``liveness``), write the
``Response`` (``h1_write``) and close it, and log the line. Status policy:
an expected failure (``GatewayError``) is one log line and its status page; a
bug in a handler is a 500 with a traceback, never a dead connection task; a
client that left before any byte of its response went out is 499.

Before the handler runs, a handler that has ``ready`` (``http.prepared``)
is asked for an answer at hand (a small file, a page-cache hit), for a
bodiless request on a connection that stays open (HTTP/1.1, no
``Connection: close``, not its last request, no shutdown): that answer is
written at once (``ResponseWriter.write_prepared``), counted and logged as
any other; None, or a bug in ``ready`` (logged), and the handler runs.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from .._util import _POLL_GONE
from ..http._h11 import h11
from ..http.errors import ClientGone, GatewayError
from ..http.head import BadRequestHead, check_method, check_request_head
from ..http.prepared import Prepared
from ..http.realip import real_client
from ..http.request import Request
from ..http.response import Response, error_response
from .access_log import access_log, log_access
from .downstream import Downstream
from .h1_body import BodyError, read_body
from .tunnel import switch

if TYPE_CHECKING:
    from .h1 import ConnectionSettings, Handler, ListenerState
    from .h1_write import ResponseWriter
    from .liveness import Watch

log = logging.getLogger("gateway.front.h1")

_request_ids = itertools.count(1)
_PID = os.getpid()


class RequestCycle:
    """Mixed into ``HttpConnection``, whose attributes these are."""

    downstream: Downstream
    handler: Handler
    settings: ConnectionSettings
    client: tuple[str, int]
    peer: tuple[str, int]
    request_client: tuple[str, int]
    server: tuple[str, int]
    listener_state: ListenerState
    conn: h11.Connection
    writer: ResponseWriter
    _scope: trio.CancelScope
    _watch: Watch | None
    _probe: Callable[[], bool] | None

    def _set_state(self, state: str) -> None:
        raise NotImplementedError

    async def receive(self, timeout_at: float, *, idle: bool = False) -> None:
        raise NotImplementedError

    async def _handle(self, req: h11.Request, *, last: bool) -> bool:
        """Read the body, run the handler, send the response. Returns keep-alive."""
        started = time.monotonic()
        stats = self.listener_state.stats
        stats.requests += 1
        stats.in_flight += 1
        request_id = f"{_PID:x}-{next(_request_ids):x}"
        keep_alive = not last and not self.listener_state.shutting_down
        response: Response | None = None
        status = 0  # 0: nothing to log (shutdown cut the request)
        sent_before = self.downstream.sent
        self.request_client = self.client
        try:
            answer, keep_alive, plain = await self._respond(req, request_id, keep_alive)
            if isinstance(answer, Prepared):
                response = Response(answer.status)  # (what the access log reads)
                status = answer.status
                sent_before = self.downstream.sent
                self._set_state("writing")
                try:
                    await self.writer.write_prepared(answer, response)
                finally:
                    self._set_state("reading")
            else:
                response = answer
                status = response.status
                sent_before = self.downstream.sent
                await self._write(req, request_id, response, keep_alive, plain)
        except (ClientGone, trio.Cancelled) as exc:
            # 499: the client left before any byte of its response went out (also
            # when the response was ready, its run shielded by ignore_client_abort)
            nothing_sent = response is None or self.downstream.sent == sent_before
            if nothing_sent and (isinstance(exc, ClientGone) or self._client_left()):
                status = 499
            elif not status and self.listener_state.shutting_down:
                # the graceful period ended first: no access-log line, so say it here
                log.warning("[%s] %s %s from %s: cut by shutdown after timeouts.graceful, no response sent",
                            request_id, req.method.decode(), req.target.decode("latin-1"), self.client[0])
            raise
        finally:
            stats.in_flight -= 1
            if status and access_log.isEnabledFor(logging.INFO):  # (log_access's own test, without its call)
                log_access(json_format=self.settings.access_log_json, client=self.request_client[0],
                           peer=self.peer[0], method=req.method,
                           target=req.target, http_version=req.http_version, headers=req.headers,
                           request_id=request_id, started=started, status=status, response=response)
        return keep_alive and not self.listener_state.shutting_down

    async def _respond(self, req: h11.Request, request_id: str,
                       keep_alive: bool) -> tuple[Response | Prepared, bool, bool]:
        """The response to ``req``: an error for a bad head or body, else the
        handler's (``ready``'s when it has one); keep-alive; and whether
        the exchange is a plain one (kept-alive HTTP/1.1, no ``Connection:
        close``: h11 adds no framing of its own, ``ResponseWriter.plain_head``)."""
        s = self.settings
        headers = _pairs(req.headers)  # h11 gives (lower-cased name, value) bytes
        too_big = _head_too_big(req.target, headers, s)
        if too_big:
            return self._error(too_big), False, False
        try:
            check_method(req.method)
            checked = check_request_head(req.target, req.http_version, headers)
            if checked.framed:
                body = await read_body(self, req, headers)
            else:  # no Content-Length nor Transfer-Encoding: no body (h11 still needs to see its end)
                event = self.conn.next_event()
                assert isinstance(event, h11.EndOfMessage), event
                body = None
        except BadRequestHead as exc:
            log.info("[%s] %d from %s: %s", request_id, exc.status, self.client[0], exc)
            return self._error(exc.status), False, False
        except BodyError as exc:
            return self._error(exc.status), False, False
        https = self.downstream.tls
        if s.real_ip.trusted:  # a trusted proxy may name the client, and say it spoke HTTPS
            self.request_client, forwarded_https = real_client(self.client, checked.headers, s.real_ip)
            https = https or forwarded_https
        request = Request(req.method, checked.target, req.http_version, checked.headers, self.request_client,
                          self.server, body, request_id, host=checked.host, https=https,
                          client_left=self._client_left_probe(), peer=self.client)
        plain = keep_alive and req.http_version == b"1.1" and not checked.asks_close
        if body is None and plain:
            ready = getattr(self.handler, "ready", None)
            if ready is not None:
                try:
                    prepared: Prepared | None = ready(request)
                except Exception:
                    log.exception("[%s] fast path failed on %s %s; the full path answers", request_id,
                                  req.method.decode(), req.target.decode("latin-1"))
                    prepared = None
                if prepared is not None:
                    return prepared, keep_alive, plain
        # The handler's response, its client watched meanwhile (and while a
        # streamed body is written: ``_write`` ends the watch). In this frame,
        # not a method of its own: every wait in the handler passes through it.
        self._set_state("waiting_php")
        inflight, fd = self.listener_state.inflight, self.downstream.fileno
        if inflight is not None and fd is not None:
            self._watch = inflight.watch(fd, self._scope)
        try:
            response = await self.handler(request)
        except ClientGone:
            raise  # the client left (a handler's probe saw it): 499, nothing to send
        except GatewayError as exc:
            # expected failures (backend timeout, broken backend): one line, no traceback
            log.error("[%s] %s %s -> %d: %s", request_id, request.method.decode(),
                      request.target.decode("latin-1"), exc.status, exc)
            response = self._error(exc.status)
        except Exception:
            log.exception("[%s] unhandled error while handling %s %s", request_id,
                          request.method.decode(), request.target.decode("latin-1"))
            response = self._error(500)
        finally:
            if body is not None:
                body.close()
        if not response.streamed:
            self._unwatch()
        return response, keep_alive, plain

    async def _write(self, req: h11.Request, request_id: str, response: Response, keep_alive: bool,
                     plain: bool) -> None:
        self._set_state("writing")
        try:
            if response.tunnel is not None:
                await self._switch(request_id, response)
                return
            await self.writer.write(response, head_only=req.method == b"HEAD",
                                    keep_alive=keep_alive and not self.listener_state.shutting_down, plain=plain)
        except GatewayError as exc:  # a streamed body failed halfway: the head is out, cut the connection
            log.error("[%s] %s %s -> %d after the head was sent: %s", request_id, req.method.decode(),
                      req.target.decode("latin-1"), exc.status, exc)
            raise ClientGone() from None
        finally:
            self._unwatch()
            if response.streamed:  # (a shielded scope costs ~5 us: only where an await is needed)
                with trio.CancelScope(shield=True):
                    await response.aclose()
            else:
                response.close()
            self._set_state("reading")

    async def _switch(self, request_id: str, response: Response) -> None:
        """A 101 with a tunnel: the head, then the tunnel until it ends (``tunnel``)."""
        s = self.settings
        self._unwatch()  # the pump reads the client itself, and sees it leave
        end = await switch(self.conn, self.downstream, response, server_software=s.server_software,
                           idle_timeout=s.tunnel_idle_timeout, stats=self.listener_state.stats.tunnels,
                           request_id=request_id)
        if end is None:  # a 101 to a request that did not ask for it (a handler's bug): closed unanswered
            response.status = 502

    def _client_left_probe(self) -> Callable[[], bool]:
        """``Request.client_left`` for this connection's requests (made once)."""
        probe = self._probe
        if probe is None:
            probe = self._probe = client_probe(self.downstream)
        return probe

    def _client_left(self) -> bool:
        return self._watch is not None and self._watch.left

    def _unwatch(self) -> None:
        if self._watch is not None and self.listener_state.inflight is not None:
            self.listener_state.inflight.done(self._watch)

    # -- errors and closing -----------------------------------------------------------

    def _error(self, status: int) -> Response:
        return error_response(status, server=self.settings.server_software)


def _pairs(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``list(headers)`` of h11's ``Headers``: from its list of (raw name, name,
    value) where it has one (upstream h11), not through ``Sequence.__iter__``,
    which calls ``__getitem__`` in Python for each header."""
    full: list[tuple[bytes, bytes, bytes]] | None = getattr(headers, "_full_items", None)
    if type(full) is list:
        return [(name, value) for _, name, value in full]
    return list(headers)


def client_probe(downstream: Downstream) -> Callable[[], bool]:
    """``downstream.peer_closed``'s answer (has the client closed or reset the
    connection?) from one poll object on its socket, made once: the question is
    asked once per PHP request, and a fresh poll object each time costs more
    than the poll() itself. A socket closed meanwhile (POLLNVAL) counts as gone,
    as ``peer_closed`` counts it."""
    fd = downstream.fileno
    if fd is None or fd < 0:
        return downstream.peer_closed
    poller = select.poll()
    poller.register(fd, select.POLLIN | _POLL_GONE)

    def left() -> bool:
        try:
            ready = poller.poll(0)
        except (OSError, ValueError):
            return True
        return bool(ready and ready[0][1] & _GONE)

    return left


_GONE = _POLL_GONE | select.POLLNVAL


def _head_too_big(target: bytes, headers: list[tuple[bytes, bytes]], s: ConnectionSettings) -> int:
    """414 or 431 for a complete head over the limits (h11 bounds only an
    *incomplete* one; a head that arrived in one read is checked here); else 0."""
    if len(target) > s.max_uri_size:
        return 414
    if (len(headers) > s.max_header_count
            or sum(len(n) + len(v) + 4 for n, v in headers) + len(target) + 16 > s.max_header_size):
        return 431
    return 0
