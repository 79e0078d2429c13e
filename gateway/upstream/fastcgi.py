"""The php-fpm transport: one FastCGI request and response on a pooled connection.

``FastCgiConn`` is what the pool holds (a stream and its sans-IO
``fastcgi.Connection``); ``FastCgiExchange`` runs one request on it: BEGIN_REQUEST
(keep_conn), PARAMS and STDIN out; STDOUT in as the CGI head (``cgi``) then body
bytes; STDERR to the log, each line with the request id; END_REQUEST checked.
The policy around it (queue, retry, spool or stream) is ``exchange``'s, the
same for every transport.

Request ids count up per connection (1, 2, 3...): a record that turns up late
for an earlier request cannot pass for the current one's output; it is a
protocol error (502) and the connection is dropped.

Reads and writes on a plain socket call it first (``_util.SockIO``): the
read_timeout's cancel scope is made only for a read that has to wait.

Request bodies up to ``SMALL_BODY`` go out with the params in one write; larger
ones are written by ``send_body`` while the response is read (``exchange`` runs
it in a task), so PHP answering before it read all its input cannot deadlock.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import trio

import fastcgi

from .._util import SockIO, events_probe
from ..http.errors import UpstreamClosedEarly, UpstreamOverloaded, UpstreamProtocolError, UpstreamTimeout
from ..http.spool import Spool
from .cgi import CgiHead, CgiResponseError, CgiResponseHead, wants_streaming
from .connect import Connector, has_pending_eof
from .pool import Pool
from .settings import ResponseSettings

log = logging.getLogger(__name__)

STDIN_CHUNK = 4 * fastcgi.MAX_CONTENT
#: Request bodies up to this size are written with the params in one write.
SMALL_BODY = 64 * 1024


#: how this transport's responses are read (shared with the other transport)
PhpSettings = ResponseSettings


class FastCgiConn:
    """A pooled FastCGI connection (``pool.UpstreamConn``)."""

    __slots__ = ("stream", "io", "fcgi", "requests", "idle_since", "_closed", "_probe")

    def __init__(self, stream: trio.abc.Stream, max_params_size: int = fastcgi.DEFAULT_MAX_PARAMS_SIZE) -> None:
        self.stream = stream
        #: the socket's calls without trio's yield per call (None: not a plain socket)
        self.io = SockIO.of(stream.socket) if isinstance(stream, trio.SocketStream) else None
        #: ``peer_closed``'s poll object on the socket, made once
        self._probe = events_probe(stream.socket) if isinstance(stream, trio.SocketStream) else None
        self.fcgi = fastcgi.Connection(fastcgi.CLIENT, max_params_size=max_params_size)
        self.requests = 0
        self.idle_since = 0.0
        self._closed = False

    @property
    def reused(self) -> bool:
        return self.requests > 0

    @property
    def request_id(self) -> int:
        """The FastCGI request id for this connection's next request: 1, 2, 3..."""
        return self.requests % 0xFFFF + 1

    def reusable(self) -> bool:
        """The cycle ended with keep-conn and nothing followed END_REQUEST (stray
        records would otherwise be read as the next request's response)."""
        fc = self.fcgi
        if fc.our_state is not fastcgi.DONE or fc.their_state is not fastcgi.DONE:
            return False
        data, eof = fc.trailing_data
        return not data and not eof

    def start_next_cycle(self) -> None:
        self.fcgi.start_next_cycle()

    @property
    def closed(self) -> bool:
        return self._closed

    def peer_closed(self) -> bool:
        """An idle FastCGI connection has nothing to say: readable means closed
        (``connect.has_pending_eof``'s answer, one poll() on the socket)."""
        if self._probe is None:
            return has_pending_eof(self.stream)
        try:
            return bool(self._probe.poll(0))
        except (OSError, ValueError):
            return True

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await trio.aclose_forcefully(self.stream)


class FastCgiTransport:
    """Opens ``FastCgiConn``s and starts exchanges on them: what a pool and
    ``exchange.run`` need to speak FastCGI."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    async def connect(self) -> FastCgiConn:
        return FastCgiConn(await self.connector())


class FastCgiExchange:
    """One request on ``conn``: ``send_head`` (and ``send_body`` for a large body),
    then ``read_head``, then ``read_chunk`` until it returns None."""

    def __init__(self, conn: FastCgiConn, params: bytes | Sequence[tuple[bytes, bytes]], body: Spool | None,
                 settings: PhpSettings, request_id: str) -> None:
        self.conn = conn
        #: the PARAMS as encoded pairs (``app.cgi_params`` gives them so; a list of pairs is encoded here)
        self.params = params if isinstance(params, bytes) else fastcgi.encode_pairs(params)
        self.body = body
        self.settings = settings
        self.request_id = request_id
        self.rid = conn.request_id
        self._got_response = False
        #: no read yet: PHP cannot have answered a request just sent (``read_chunk``)
        self._first_read = True
        self._stderr_tail = b""
        #: a large body is written by ``send_body``, concurrently with reading
        self.large_body = body is not None and body.size > SMALL_BODY

    async def send_head(self) -> None:
        """BEGIN_REQUEST and PARAMS, and the whole STDIN unless ``large_body``:
        one join (``fastcgi.Connection.send_request``), one send."""
        body = self.body
        stdin: bytes | None = None  # None: a large body, send_body's
        if not self.large_body:
            stdin = b""
            if body is not None and body.size:
                stdin = body.getvalue() if body.in_memory else b"".join(body.chunks())
        await self._send(self.conn.fcgi.send_request(self.rid, self.params, stdin))

    async def send_body(self) -> None:
        """The rest of a large body; a failure is left for the reader to see."""
        fc, rid = self.conn.fcgi, self.rid
        assert self.body is not None
        for chunk in self.body.chunks(STDIN_CHUNK):
            if not await self._send(fc.send(fastcgi.Stdin(chunk, rid)) or b""):
                return
        await self._send(fc.send(fastcgi.Stdin(b"", rid)) or b"")

    async def _send(self, data: bytes) -> bool:
        io = self.conn.io
        try:
            if io is None:
                await self.conn.stream.send_all(data)
            else:
                try:
                    await io.send_all(data)
                except OSError as exc:
                    raise trio.BrokenResourceError(f"send failed: {exc}") from exc
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The reader sees the EOF or reset and decides (retry or 502).
            self.conn.fcgi.send_failed()
            return False
        except BaseException:  # cancelled mid-record: the connection is never reused
            self.conn.fcgi.send_failed()
            raise

    async def read_head(self) -> tuple[CgiHead, bytes]:
        """PHP's CGI head and the body bytes that came with it.

        Raises:
            UpstreamClosedEarly: the connection closed before any response record.
            UpstreamProtocolError, UpstreamTimeout, UpstreamOverloaded.
        """
        parser = CgiResponseHead(self.settings.max_header_size)
        while True:
            data = await self.read_chunk()
            if data is None:
                raise UpstreamProtocolError("PHP ended the request without a complete CGI header block")
            try:
                done = parser.feed(data)
            except CgiResponseError as exc:
                raise UpstreamProtocolError(str(exc)) from None
            if done is not None:
                head, rest = done
                if head.dropped:
                    log.warning("[%s] PHP sent headers that cannot go to a client, dropped: %s",
                                self.request_id, "; ".join(head.dropped))
                return head, rest

    @staticmethod
    def wants_streaming(head: CgiHead) -> bool:
        return wants_streaming(head)

    async def read_chunk(self) -> bytes | None:
        """The next STDOUT bytes, or None at a successful END_REQUEST."""
        fc = self.conn.fcgi
        eof = False
        while True:
            try:
                event = fc.next_event()
            except fastcgi.RemoteProtocolError as exc:
                if eof:
                    raise UpstreamProtocolError("backend closed the connection mid-response") from None
                raise UpstreamProtocolError(f"backend broke the FastCGI protocol: {exc}") from None
            if event is fastcgi.NEED_DATA:
                # The next bytes from PHP within read_timeout. What is there
                # already is read without a cancel scope; the scope (hand-made:
                # cheaper than fail_after's generator) only for a read that has
                # to wait. The first read of a request waits at once: PHP has
                # not answered a request sent microseconds ago, and a recv that
                # fails with EAGAIN costs ~6 us. (Inline, not a method: the wait
                # for PHP is a request's deepest, each frame in it passed twice.)
                io = self.conn.io
                data: bytes | bytearray | None = None
                try:
                    if io is not None and not self._first_read:
                        data = await io.recv_ready(65536)
                    if data is None:
                        self._first_read = False
                        with trio.CancelScope(deadline=trio.current_time() + self.settings.read_timeout):
                            data = await (self.conn.stream.receive_some(65536) if io is None
                                          else io.recv_waiting(65536))
                except (trio.BrokenResourceError, OSError) as exc:
                    raise self._reset(exc) from exc
                if data is None:
                    raise UpstreamTimeout(f"PHP sent nothing for {self.settings.read_timeout:g}s")
                eof = not data
                fc.receive_data(data)
                continue
            if isinstance(event, fastcgi.ConnectionClosed):
                if not self._got_response:
                    raise UpstreamClosedEarly("backend closed the connection before responding")
                raise UpstreamProtocolError("backend closed the connection mid-response")
            self._got_response = True
            if isinstance(event, fastcgi.Stdout):
                if event.data:
                    return event.data
            elif isinstance(event, fastcgi.Stderr):
                self._stderr_tail = _log_stderr(self.request_id, self._stderr_tail + event.data,
                                                final=not event.data)
            elif isinstance(event, fastcgi.EndRequest):
                if self._stderr_tail:
                    _log_stderr(self.request_id, self._stderr_tail, final=True)
                if event.protocol_status == fastcgi.ProtocolStatus.OVERLOADED:
                    raise UpstreamOverloaded("backend answered FCGI_OVERLOADED")
                if event.protocol_status != fastcgi.ProtocolStatus.REQUEST_COMPLETE:
                    raise UpstreamProtocolError(f"backend refused the request: {event.protocol_status.name}")
                return None

    def _reset(self, exc: Exception) -> UpstreamClosedEarly | UpstreamProtocolError:
        """What a failed read from PHP is (``exc``: the socket's error)."""
        if not self._got_response:
            return UpstreamClosedEarly("backend reset the connection before responding")
        return UpstreamProtocolError("backend reset the connection mid-response")


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


def fastcgi_pool(name: str, connector: Connector | Sequence[tuple[str, Connector]], **limits: Any) -> Pool[FastCgiConn]:
    """A pool of FastCGI connections opened with ``connector`` (or, for a
    group, one per address); ``limits`` are ``Pool``'s keywords (size,
    queue_depth, queue_timeout, connect_timeout, idle_timeout, balance...)."""
    if callable(connector):
        return Pool(name, FastCgiTransport(connector).connect, **limits)
    return Pool(name, [(address, FastCgiTransport(c).connect) for address, c in connector], **limits)
