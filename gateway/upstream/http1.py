"""The HTTP/1.1 transport: one request and response on a pooled connection (h11's client role).

``HttpConn`` is what the pool holds (a stream and its ``h11.Connection``);
``HttpExchange`` runs one request on it, with the same verbs as
``FastCgiExchange``, so ``exchange`` (queue, retry, spool or stream) and the
pool are the ones PHP uses: kept-alive connections bounded per address, the
FIFO queue, the response drained into a spool before the slot is freed, and
streaming by choice (``X-Accel-Buffering: no``, ``text/event-stream``).

Rules:

- The request goes out as the handler built it (``forwarding`` rewrote its
  headers); the body is the one the front end already read (a ``Spool``), so
  it always goes with a ``Content-Length``, never chunked, and a backend never
  waits on a slow client. Bodies past ``SMALL_BODY`` are written by
  ``send_body`` while the response is read (a backend may answer early).
- The response head is validated before it crosses into the app, as PHP's CGI
  head is: h11 bounds its size (``max_header_size``, nginx's
  proxy_buffer_size) and checks its syntax (no control bytes, tokens for
  names, one agreed Content-Length); here the count of header lines is bounded,
  the status must be a final one (200-599; interim 1xx are skipped, a 101 we
  never asked for is a protocol error), hop-by-hop headers are dropped
  (``forwarding``) and Content-Length is taken out of the list (the gateway
  frames what it drained by its own count, as for PHP).
- Upgrade (WebSocket...): a request with ``upgrade`` set goes out with
  ``Upgrade`` and ``Connection: upgrade``; a ``101`` answering it is checked
  by ``http.upgrade.switch_headers`` (it must name a protocol the client
  offered) and ``read_head`` returns it with the bytes the backend sent
  past its head: ``exchange`` then makes the connection a tunnel, never
  reused. Any other answer is an ordinary response (the switch refused).
- Timeouts: each read waits at most ``read_timeout`` (re-armed on every
  byte, nginx's proxy_read_timeout); the connect timeout is the pool's.
- Reuse: a connection goes back to the pool only when h11 says both sides
  are DONE with keep-alive and nothing trails the response.
- Retry: a kept-alive connection the backend closed before any response byte
  is ``UpstreamClosedEarly`` (retried on a fresh one for idempotent methods,
  ``exchange``); when not even the request head could be written it is
  ``sent = False``: safe to retry whatever the method.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..http._h11 import h11
from ..http.errors import UpstreamClosedEarly, UpstreamProtocolError, UpstreamTimeout
from ..http.forwarding import connection_tokens, is_hop_by_hop
from ..http.spool import Spool
from ..http.upgrade import BadSwitch, switch_headers
from .cgi import BAD_VALUE_BYTE, CgiHead, wants_streaming
from .connect import Connector, has_pending_eof
from .pool import Pool
from .settings import ResponseSettings

log = logging.getLogger(__name__)

#: Request bodies up to this size go out with the head in one write.
SMALL_BODY = 64 * 1024
#: Bodies are written in pieces of this size.
BODY_CHUNK = 256 * 1024
#: Most header lines a backend's response may have; past it, 502.
MAX_RESPONSE_HEADERS = 256
#: h11's own bound on a response head, when none is given.
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
#: Bytes read from the backend at once.
RECEIVE_SIZE = 65536


#: how this transport's responses are read (shared with the other transport)
HttpSettings = ResponseSettings


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What goes to the backend: the head as the handler built it (hop-by-hop
    headers removed, forwarding headers set, no Content-Length) and the body."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: Spool | None = None
    #: the protocols the client asked to switch to (``Upgrade``; b"": none);
    #: ``headers`` then carry ``Upgrade`` and ``Connection: upgrade``
    upgrade: bytes = b""


class HttpConn:
    """A pooled HTTP/1.1 connection (``pool.UpstreamConn``)."""

    __slots__ = ("stream", "h11", "requests", "idle_since", "switched", "_closed")

    def __init__(self, stream: trio.abc.Stream, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_size)
        self.requests = 0
        self.idle_since = 0.0
        #: a 101 made it a tunnel: it is never reused
        self.switched = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<HttpConn {self.h11.our_state.__name__}/{self.h11.their_state.__name__} requests={self.requests}>"

    def reusable(self) -> bool:
        """Both sides DONE with keep-alive, and nothing after the response."""
        if self.switched:
            return False
        if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            return False
        data, closed = self.h11.trailing_data
        return not data and not closed

    def start_next_cycle(self) -> None:
        self.h11.start_next_cycle()

    @property
    def closed(self) -> bool:
        return self._closed

    def peer_closed(self) -> bool:
        """An idle HTTP connection has nothing to say: readable means closed
        (or garbage, which makes it unusable too)."""
        return has_pending_eof(self.stream)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await trio.aclose_forcefully(self.stream)


class HttpTransport:
    """Opens ``HttpConn``s: what a pool needs to speak HTTP/1.1."""

    def __init__(self, connector: Connector, max_header_size: int) -> None:
        self.connector = connector
        self.max_header_size = max_header_size

    async def connect(self) -> HttpConn:
        return HttpConn(await self.connector(), self.max_header_size)


def response_head(event: h11.Response, max_size: int = DEFAULT_MAX_HEADER_SIZE) -> CgiHead:
    """Validate a backend's response head for the client side (the module's rules).

    h11 bounds a head only while it is incomplete; one that arrived whole is
    measured here. h11 lets control bytes other than NUL through in values:
    such a header is dropped (named in ``dropped``), as PHP's are.

    Raises:
        UpstreamProtocolError: a head over ``max_size`` bytes or more than
            ``MAX_RESPONSE_HEADERS`` lines, or a status that is not a final
            HTTP status.
    """
    if not 200 <= event.status_code <= 599:
        raise UpstreamProtocolError(f"backend answered status {event.status_code}: not a final HTTP status")
    raw = _bounded(event, max_size)
    reason, dropped = _reason(event.reason)
    named = connection_tokens(raw)
    headers: list[tuple[bytes, bytes]] = []
    length = None
    for name, value in raw:
        lname = name.lower()
        if BAD_VALUE_BYTE.search(value):
            dropped.append(f"{name.decode('latin-1')} (control byte in its value)")
        elif lname == b"content-length":
            length = int(value)  # h11 checked it: digits, copies agree
        elif not is_hop_by_hop(lname, named):
            headers.append((name, value))
    return CgiHead(event.status_code, reason, headers, length, tuple(dropped))


def switch_head(event: h11.InformationalResponse, offered: bytes,
                max_size: int = DEFAULT_MAX_HEADER_SIZE) -> CgiHead:
    """Validate a backend's ``101 Switching Protocols`` to a request that
    offered ``offered`` (its ``Upgrade``): bounded as ``response_head``, its
    headers as ``http.upgrade.switch_headers`` passes them.

    Raises:
        UpstreamProtocolError: over the bounds, a control byte in a header it
            keeps, or a switch to a protocol the client did not offer.
    """
    raw = _bounded(event, max_size)
    reason, dropped = _reason(event.reason)
    for name, value in raw:
        if BAD_VALUE_BYTE.search(value):
            raise UpstreamProtocolError(f"backend's 101 has a control byte in {name.decode('latin-1')}")
    try:
        headers = switch_headers(raw, offered)
    except BadSwitch as exc:
        raise UpstreamProtocolError(str(exc)) from None
    return CgiHead(101, reason, headers, None, tuple(dropped))


def _bounded(event: h11.Response | h11.InformationalResponse, max_size: int) -> list[tuple[bytes, bytes]]:
    """The head's raw headers, once its line count and size are within bounds."""
    raw = event.headers.raw_items()
    if len(raw) > MAX_RESPONSE_HEADERS:
        raise UpstreamProtocolError(f"backend sent {len(raw)} header lines (at most {MAX_RESPONSE_HEADERS})")
    size = 15 + len(event.reason) + sum(len(n) + len(v) + 4 for n, v in raw)
    if size > max_size:
        raise UpstreamProtocolError(f"backend's response head exceeds {max_size} bytes (max_response_header_size)")
    return list(raw)


def _reason(reason: bytes) -> tuple[bytes, list[str]]:
    if BAD_VALUE_BYTE.search(reason):
        return b"", ["the reason phrase (control byte)"]
    return reason, []


class HttpExchange:
    """One request on ``conn``: ``send_head`` (and ``send_body`` for a large
    body), then ``read_head``, then ``read_chunk`` until it returns None."""

    def __init__(self, conn: HttpConn, request: UpstreamRequest, settings: HttpSettings, request_id: str) -> None:
        self.conn = conn
        self.request = request
        self.settings = settings
        self.request_id = request_id
        self._got_response = False
        self._eof = False
        body = request.body
        #: a large body is written by ``send_body``, concurrently with reading
        self.large_body = body is not None and body.size > SMALL_BODY

    def _head_event(self) -> h11.Request:
        req = self.request
        headers = list(req.headers)
        if req.body is not None or req.method in (b"POST", b"PUT", b"PATCH"):
            headers.append((b"content-length", b"%d" % (req.body.size if req.body is not None else 0)))
        try:
            return h11.Request(method=req.method, target=req.target, headers=headers)
        except h11.LocalProtocolError as exc:  # the handler passed what h11 will not send: a bug upstream of us
            raise UpstreamProtocolError(f"cannot send the request upstream: {exc}") from None

    async def send_head(self) -> None:
        """The request head, and the whole body unless ``large_body``.

        Raises:
            UpstreamClosedEarly: (``sent`` False) the head could not be written.
        """
        h = self.conn.h11
        out = h.send(self._head_event()) or b""
        body = self.request.body
        if not self.large_body:
            if body is not None and body.size:
                data = body.getvalue() if body.in_memory else b"".join(body.chunks())
                out += h.send(h11.Data(data=data)) or b""
            out += h.send(h11.EndOfMessage()) or b""
        if not await self._send(out):
            raise UpstreamClosedEarly("backend closed the connection before the request was written", sent=False)

    async def send_body(self) -> None:
        """The rest of a large body; a failure is left for the reader to see."""
        h = self.conn.h11
        assert self.request.body is not None
        for chunk in self.request.body.chunks(BODY_CHUNK):
            if not await self._send(h.send(h11.Data(data=chunk)) or b""):
                return
        await self._send(h.send(h11.EndOfMessage()) or b"")

    async def _send(self, data: bytes) -> bool:
        try:
            await self.conn.stream.send_all(data)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.conn.h11.send_failed()
            return False
        except BaseException:  # cancelled mid-write: never reused
            self.conn.h11.send_failed()
            raise

    async def read_head(self) -> tuple[CgiHead, bytes]:
        """The validated response head (no body bytes: ``read_chunk`` has them);
        for a ``101`` to an upgrade request, the bytes the backend sent past it
        (the switched protocol's first bytes).

        Raises:
            UpstreamClosedEarly: the connection closed before any response byte.
            UpstreamProtocolError, UpstreamTimeout.
        """
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    if not self.request.upgrade or self.conn.h11.our_state is not h11.SWITCHED_PROTOCOL:
                        raise UpstreamProtocolError("backend switched protocols (101) without being asked")
                    head = switch_head(event, self.request.upgrade, self.settings.max_header_size)
                    self.conn.switched = True
                    return head, bytes(self.conn.h11.trailing_data[0])
                continue  # 100 Continue, 103 Early Hints: this hop's
            if isinstance(event, h11.Response):
                head = response_head(event, self.settings.max_header_size)
                if head.dropped:
                    log.warning("[%s] the backend sent headers that cannot go to a client, dropped: %s",
                                self.request_id, "; ".join(head.dropped))
                return head, b""
            raise UpstreamProtocolError(f"backend sent {type(event).__name__} before a response head")

    @staticmethod
    def wants_streaming(head: CgiHead) -> bool:
        return wants_streaming(head)

    async def read_chunk(self) -> bytes | None:
        """The next body bytes, or None at the end of the response."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return None
            else:
                raise UpstreamProtocolError(f"backend sent {type(event).__name__} inside a response body")

    async def _next_event(self) -> h11.Event:
        h = self.conn.h11
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                if h.their_state is h11.CLOSED or h11.CLOSED in h.states.values() or self._eof:
                    if not self._got_response:
                        raise UpstreamClosedEarly("backend closed the connection before responding") from None
                    raise UpstreamProtocolError("backend closed the connection mid-response") from None
                raise UpstreamProtocolError(f"backend broke HTTP/1.1: {exc}") from None
            if event is h11.NEED_DATA:
                data = await self._receive()
                try:
                    h.receive_data(data)
                except h11.RemoteProtocolError as exc:
                    raise UpstreamProtocolError(f"backend broke HTTP/1.1: {exc}") from None
                continue
            if isinstance(event, h11.ConnectionClosed):
                if not self._got_response:
                    raise UpstreamClosedEarly("backend closed the connection before responding")
                raise UpstreamProtocolError("backend closed the connection mid-response")
            assert event is not h11.PAUSED  # (we never read past one response)
            return event  # type: ignore[return-value]

    async def _receive(self) -> bytes:
        """The next bytes within read_timeout (b"": EOF)."""
        scope = trio.CancelScope(deadline=trio.current_time() + self.settings.read_timeout)
        with scope:
            try:
                data = await self.conn.stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError as exc:
                if not self._got_response:
                    raise UpstreamClosedEarly("backend reset the connection before responding") from exc
                raise UpstreamProtocolError("backend reset the connection mid-response") from exc
            if data:
                self._got_response = True
            else:
                self._eof = True
            return bytes(data)
        what = "a response" if not self._got_response else "more of the response"
        raise UpstreamTimeout(f"backend sent nothing for {self.settings.read_timeout:g}s (waiting for {what})")


def http_pool(name: str, connector: Connector | Sequence[tuple[str, Connector]], *,
              max_header_size: int = DEFAULT_MAX_HEADER_SIZE, **limits: Any) -> Pool[HttpConn]:
    """A pool of HTTP/1.1 connections opened with ``connector`` (or, for a
    group, one per address); ``limits`` are ``Pool``'s keywords."""
    if callable(connector):
        return Pool(name, HttpTransport(connector, max_header_size).connect, **limits)
    return Pool(name, [(address, HttpTransport(c, max_header_size).connect) for address, c in connector], **limits)
