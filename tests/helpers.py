"""Shared test helpers: an in-memory php-fpm stand-in, an h11 test client,
and a real TLS ClientHello."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import h11
import trio
import trio.testing

import fastcgi

# -- an in-memory FastCGI application, built on fastcgi's SERVER role ----------


@dataclass
class FakeRequest:
    params: dict[bytes, bytes]
    stdin: bytes


Script = Callable[[FakeRequest], Awaitable[list[fastcgi.Event | bytes]]]


@dataclass
class FakeFpm:
    """A php-fpm stand-in over memory streams.

    ``script`` gets the request and returns what to send: ``bytes`` become STDOUT,
    events are sent as they are, an async callable is awaited at that point (to
    pace the output); an EndRequest is appended if missing. Set
    ``close_after`` to close each connection after that many requests (like
    pm.max_requests), ``die_on_next`` to drop the next connection without a reply.
    """

    script: Script
    close_after: int | None = None
    connections: int = 0
    requests_seen: list[FakeRequest] = field(default_factory=list)
    running: int = 0
    max_running: int = 0
    _server_streams: list[trio.abc.Stream] = field(default_factory=list)

    def connector(self, nursery: trio.Nursery) -> Callable[[], Awaitable[trio.abc.Stream]]:
        async def connect() -> trio.abc.Stream:
            client, server = trio.testing.memory_stream_pair()
            self.connections += 1
            nursery.start_soon(self._serve, server)
            return client

        return connect

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = fastcgi.Connection(fastcgi.SERVER)
        served = 0
        try:
            while True:
                params: dict[bytes, bytes] = {}
                stdin = b""
                while True:
                    event = conn.next_event()
                    if event is fastcgi.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        continue
                    if isinstance(event, fastcgi.ConnectionClosed):
                        return
                    if isinstance(event, fastcgi.Params):
                        params = dict(event.params)
                    elif isinstance(event, fastcgi.Stdin):
                        if not event.data:
                            break
                        stdin += event.data
                req = FakeRequest(params, stdin)
                self.requests_seen.append(req)
                self.running += 1
                self.max_running = max(self.max_running, self.running)
                try:
                    out = await self.script(req)
                finally:
                    self.running -= 1
                if not any(isinstance(e, fastcgi.EndRequest) for e in out):
                    out = [*out, fastcgi.Stdout(), fastcgi.EndRequest(0)]
                rid = conn.request_id
                for item in out:
                    if callable(item):
                        await item()
                        continue
                    # scripts leave the request id out: answer the one the gateway chose
                    event = fastcgi.Stdout(item, rid) if isinstance(item, bytes) else replace(item, request_id=rid)
                    data = conn.send(event)
                    if data:
                        await stream.send_all(data)
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


def php_output(body: bytes = b"hello", status: bytes | None = None, headers: tuple[bytes, ...] = ()) -> bytes:
    head = b"Content-Type: text/html\r\n"
    if status:
        head = b"Status: " + status + b"\r\n" + head
    for h in headers:
        head += h + b"\r\n"
    return head + b"\r\n" + body


# -- an HTTP/1.1 client on h11 --------------------------------------------------


@dataclass
class HttpResponse:
    status: int
    headers: dict[bytes, bytes]
    header_list: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode())
        return None if value is None else value.decode("latin-1")


class HttpClient:
    """A keep-alive HTTP/1.1 client over any trio stream, driven by h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> HttpClient:
        return cls(await trio.open_tcp_stream(host, port))

    async def request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes | list[bytes] | None = None, host: str = "localhost") -> HttpResponse:
        hdrs = [("Host", host), *(headers or [])]
        chunks: list[bytes] = []
        if isinstance(body, list):
            hdrs.append(("Transfer-Encoding", "chunked"))
            chunks = body
        elif body is not None:
            hdrs.append(("Content-Length", str(len(body))))
            chunks = [body]
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        await self.stream.send_all(self.conn.send(h11.Request(method=method, target=target, headers=hdrs)))
        for chunk in chunks:
            await self.stream.send_all(self.conn.send(h11.Data(data=chunk)))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
        return await self.read_response()

    def request_sent_by_hand(self, method: str = "GET", content_length: int | None = None) -> None:
        """Tell h11 about a request whose bytes the test wrote itself, so the
        response can be parsed with ``read_response``."""
        headers = [("Host", "x")]
        if content_length is not None:
            headers.append(("Content-Length", str(content_length)))
        self.conn.send(h11.Request(method=method, target="/", headers=headers))
        if content_length:
            self.conn.send(h11.Data(data=b"\0" * content_length))
        self.conn.send(h11.EndOfMessage())

    async def read_response(self) -> HttpResponse:
        resp = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(1 << 20))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                resp = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert resp is not None
        hl = [(bytes(n), bytes(v)) for n, v in resp.headers]
        return HttpResponse(resp.status_code, dict(hl), hl, body)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_all(stream: trio.abc.Stream, limit: int = 1 << 24) -> bytes:
    """Read until EOF."""
    out = b""
    while len(out) < limit:
        data = await stream.receive_some(65536)
        if not data:
            break
        out += data
    return out


async def read_until(stream: trio.abc.Stream, marker: bytes, limit: int = 1 << 24) -> bytes:
    """Read until ``marker`` has arrived (or EOF)."""
    out = b""
    while marker not in out and len(out) < limit:
        data = await stream.receive_some(65536)
        if not data:
            break
        out += data
    return out


def client_hello(server_name: str | None, alpn: list[str] | None) -> bytes:
    """The first flight of Python's (OpenSSL's) TLS client: a real ClientHello
    naming ``server_name`` (SNI) and offering ``alpn``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = server_name is not None
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    else:
        raise AssertionError("a client handshake cannot complete without a server")
    return outgoing.read()

# -- an in-memory HTTP/1.1 application, built on h11's SERVER role -------------


@dataclass
class FakeHttpRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    connection: int  # which connection (1, 2...) carried it

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


#: What the app sends: raw bytes (a whole response, or pieces of one), or an
#: async callable awaited at that point (to pace it); ``CLOSE`` closes the connection.
HttpScript = Callable[[FakeHttpRequest], Awaitable[list[object]]]
CLOSE = object()


def http_response(body: bytes = b"", status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A raw HTTP/1.1 response with a Content-Length."""
    head = [b"HTTP/1.1 %d OK" % status, *(n + b": " + v for n, v in headers or [])]
    head.append(b"content-length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclass
class FakeHttp:
    """An HTTP/1.1 application over memory streams: ``script`` answers each
    request with raw bytes (so tests can send anything, malformed included)."""

    script: HttpScript
    connections: int = 0
    requests_seen: list[FakeHttpRequest] = field(default_factory=list)
    running: int = 0
    max_running: int = 0
    fail_connect: bool = False

    def connector(self, nursery: trio.Nursery) -> Callable[[], Awaitable[trio.abc.Stream]]:
        async def connect() -> trio.abc.Stream:
            if self.fail_connect:
                from gateway.http.errors import UpstreamConnectError

                raise UpstreamConnectError("cannot connect to fake: Connection refused")
            client, server = trio.testing.memory_stream_pair()
            self.connections += 1
            nursery.start_soon(self._serve, server, self.connections)
            return client

        return connect

    async def _serve(self, stream: trio.abc.Stream, number: int) -> None:
        trailing = b""
        try:
            while True:
                conn = h11.Connection(h11.SERVER)
                if trailing:
                    conn.receive_data(trailing)
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(event, h11.ConnectionClosed):
                        return
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert request is not None
                trailing = conn.trailing_data[0]
                req = FakeHttpRequest(request.method, request.target, list(request.headers.raw_items()), body, number)
                self.requests_seen.append(req)
                self.running += 1
                self.max_running = max(self.max_running, self.running)
                try:
                    out = await self.script(req)
                finally:
                    self.running -= 1
                for item in out:
                    if item is CLOSE:
                        return
                    if callable(item):
                        await item()
                    else:
                        assert isinstance(item, bytes)
                        await stream.send_all(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
