"""The HTTP/1.1 transport on the shared pool and exchange, against an
in-memory HTTP application (h11's SERVER role), on the autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.config import BackendConfig
from gateway.http import _h11
from gateway.http._h11 import h11
from gateway.http.errors import UpstreamClosedEarly, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from gateway.http.spool import Spool
from gateway.upstream import http1
from gateway.upstream.exchange import UpstreamBody, run_http
from gateway.upstream.http1 import HttpConn, HttpSettings, UpstreamRequest, http_pool, response_head
from tests.helpers import CLOSE, FakeHttp, http_response


def pause(seconds: float):
    async def wait() -> None:
        await trio.sleep(seconds)

    return wait


SETTINGS = HttpSettings.from_config(BackendConfig(type="http", addresses=["h:80"], read_timeout=30,
                                                  max_response_header_size=4096, response_buffer_size=1024))
GET = UpstreamRequest(b"GET", b"/x?y=1", [(b"host", b"example.com"), (b"x-forwarded-for", b"1.2.3.4")])


def make_pool(app: FakeHttp, nursery: trio.Nursery, **kw):
    args = dict(size=2, queue_depth=100, queue_timeout=60, idle_timeout=10, max_header_size=4096)
    args.update(kw)
    return http_pool("app", app.connector(nursery), **args)


def spool(data: bytes, memory: int = 1 << 20) -> Spool:
    s = Spool(memory)
    s.write(data)
    return s


async def hello(req):
    return [http_response(b"hello " + req.method + b" " + req.target, headers=[(b"Content-Type", b"text/plain")])]


def test_the_transport_parses_with_the_processs_chosen_h11():
    # GATEWAY_H11 (gateway/http/_h11.py) chooses for the whole process: with the
    # [fast] extra chosen, the proxy's client side is compiled too (~60 -> ~20 us
    # of h11 per proxied request)
    assert http1.h11 is _h11.h11
    conn = HttpConn(trio.testing.MemoryReceiveStream())
    assert type(conn.h11).__module__.split(".")[0] == _h11.PARSER.replace("-", "_")


async def test_keep_alive_reuse_one_connection_for_many_requests(nursery, autojump_clock):
    app = FakeHttp(hello)
    pool = make_pool(app, nursery)
    for _ in range(5):
        result = await run_http(pool, GET, SETTINGS, request_id="t")
        assert (result.head.status, result.body.getvalue()) == (200, b"hello GET /x?y=1")
        assert result.head.headers == [(b"Content-Type", b"text/plain")]
        assert result.head.content_length == 16
    assert app.connections == 1
    assert repr(pool) == "<Pool app [slots 0/2 busy, 1 idle, 0 waiting]>"
    seen = app.requests_seen[0]
    assert seen.headers == [(b"host", b"example.com"), (b"x-forwarded-for", b"1.2.3.4")]
    assert seen.target == b"/x?y=1"


@pytest.mark.parametrize("size", [0, 5, 64 * 1024 + 1, 3 * 1024 * 1024])
async def test_request_bodies_go_with_their_length(nursery, autojump_clock, size):
    async def echo(req):
        return [http_response(b"%d %s" % (len(req.body), req.header(b"content-length")))]

    app = FakeHttp(echo)
    pool = make_pool(app, nursery)
    body = spool(b"x" * size, memory=1024)  # a large one is in a temp file
    result = await run_http(pool, UpstreamRequest(b"POST", b"/", [(b"host", b"h")], body), SETTINGS, request_id="t")
    assert result.body.getvalue() == b"%d %d" % (size, size)
    assert app.requests_seen[0].body == b"x" * size
    assert app.requests_seen[0].header(b"transfer-encoding") is None


async def test_chunked_response_and_hop_by_hop_headers_removed(nursery, autojump_clock):
    async def chunked(req):
        return [b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
                b"Keep-Alive: timeout=5\r\nProxy-Authenticate: x\r\nX-Kept: 2\r\n\r\n",
                b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]

    app = FakeHttp(chunked)
    pool = make_pool(app, nursery)
    for _ in range(2):
        result = await run_http(pool, GET, SETTINGS, request_id="t")
        assert (result.head.status, result.head.reason, result.body.getvalue()) == (201, b"Created", b"hello world")
        assert result.head.headers == [(b"X-Kept", b"2")]
        assert result.head.content_length is None
    assert app.connections == 1  # chunked ends cleanly: kept


async def test_close_delimited_response_is_read_to_eof_and_not_kept(nursery, autojump_clock):
    async def old(req):
        return [b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ", b"it", CLOSE]

    app = FakeHttp(old)
    pool = make_pool(app, nursery)
    for _ in range(2):
        result = await run_http(pool, GET, SETTINGS, request_id="t")
        assert result.body.getvalue() == b"all of it"
    assert app.connections == 2
    assert pool.idle == 0


async def test_a_large_response_is_spooled_and_the_slot_freed_before_the_client_reads(nursery, autojump_clock):
    big = b"y" * (5 * 1024 * 1024)

    async def large(req):
        return [http_response(big)]

    app = FakeHttp(large)
    pool = make_pool(app, nursery, size=1)
    result = await run_http(pool, GET, SETTINGS, request_id="t")
    assert isinstance(result.body, Spool) and not result.body.in_memory  # past response_buffer_size: a temp file
    assert (pool.busy, pool.idle) == (0, 1)  # the backend is free, the client has not read a byte
    assert b"".join(result.body.chunks()) == big
    result.body.close()


@pytest.mark.parametrize("header", [(b"Content-Type", b"text/event-stream"), (b"X-Accel-Buffering", b"no")])
async def test_streaming_opt_out_holds_the_slot_until_the_body_is_closed(nursery, autojump_clock, header):
    async def sse(req):
        out: list[object] = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n%s: %s\r\n\r\n" % header]
        for i in range(3):
            out += [b"9\r\ndata: %d\n\n\r\n" % i, pause(1)]
        return [*out, b"0\r\n\r\n"]

    app = FakeHttp(sse)
    pool = make_pool(app, nursery, size=1)
    start = trio.current_time()
    result = await run_http(pool, GET, SETTINGS, request_id="t")
    assert isinstance(result.body, UpstreamBody)
    assert pool.busy == 1
    got = []
    async for chunk in result.body:
        got.append((chunk, trio.current_time() - start))
    assert [c for c, _ in got] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert [round(t) for _, t in got] == [0, 1, 2]  # each event as it came, not at the end
    await result.body.aclose()
    assert (pool.busy, pool.idle) == (0, 1)


async def test_read_timeout_and_rearmed_on_progress(nursery, autojump_clock):
    async def trickle(req):
        out: list[object] = [b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"]
        for piece in (b"a", b"b", b"c"):
            out += [pause(20), piece]
        return out

    pool = make_pool(FakeHttp(trickle), nursery)
    start = trio.current_time()
    result = await run_http(pool, GET, SETTINGS, request_id="t")  # 60 s in all, never 30 s of silence
    assert result.body.getvalue() == b"abc"
    assert trio.current_time() - start == pytest.approx(60)

    async def silent(req):
        await trio.sleep(1000)
        return []

    pool = make_pool(FakeHttp(silent), nursery)
    start = trio.current_time()
    with pytest.raises(UpstreamTimeout, match="sent nothing for 30s"):
        await run_http(pool, GET, SETTINGS, request_id="t")
    assert trio.current_time() - start == pytest.approx(30)
    assert (pool.busy, pool.idle, pool.open_connections) == (0, 0, 0)


async def test_a_kept_connection_closed_by_the_backend_is_retried_only_when_safe(nursery, autojump_clock):
    """The backend closes a kept-alive connection without saying so (its
    keepalive_requests limit, a restart): a request written on it gets EOF
    before any byte of a response. (Memory streams have no socket to probe,
    so the pool hands out the dead connection as a real race would.)"""

    async def close_after(req):
        return [http_response(b"ok"), CLOSE]

    app = FakeHttp(close_after)
    pool = make_pool(app, nursery, size=1)
    await run_http(pool, GET, SETTINGS, request_id="t")  # kept; the backend then closes it
    result = await run_http(pool, GET, SETTINGS, request_id="t", retry_safe=True)
    assert result.body.getvalue() == b"ok"
    assert (pool.stats.retries, app.connections) == (1, 2)

    # not even the head could be written: the backend cannot have run it, retried whatever the method
    post = UpstreamRequest(b"POST", b"/", [(b"host", b"h")], spool(b"data"))
    result = await run_http(pool, post, SETTINGS, request_id="t", retry_safe=False)
    assert (pool.stats.retries, app.connections) == (2, 3)

    # written, then silence and EOF: it may have run; a POST is not retried, a GET is
    async def swallow(req):
        return [CLOSE]

    async def ok_then_swallow(req):
        app.script = swallow
        return [http_response(b"ok")]

    app.script = ok_then_swallow
    await run_http(pool, GET, SETTINGS, request_id="t")
    with pytest.raises(UpstreamClosedEarly, match="not retried"):
        await run_http(pool, post, SETTINGS, request_id="t", retry_safe=False)
    assert app.requests_seen[-1].method == b"POST"
    with pytest.raises(UpstreamClosedEarly, match="before responding"):  # retried once, on a fresh one: same
        await run_http(pool, GET, SETTINGS, request_id="t", retry_safe=True)
    assert (pool.busy, pool.idle, pool.open_connections) == (0, 0, 0)


@pytest.mark.parametrize(("raw", "says"), [
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", "exceeds 4096 bytes"),
    (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "broke HTTP/1.1"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", "broke HTTP/1.1"),
    (b"HTTP/1.1 600 Odd\r\ncontent-length: 0\r\n\r\n", "not a final HTTP status"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "broke HTTP/1.1"),
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n", "header lines"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "broke HTTP/1.1"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "closed the connection mid-response"),
])
async def test_a_bad_response_head_is_a_502_and_the_connection_dropped(nursery, autojump_clock, raw, says):
    async def bad(req):
        return [raw, CLOSE]

    pool = make_pool(FakeHttp(bad), nursery)
    with pytest.raises(UpstreamProtocolError, match=says):
        await run_http(pool, GET, SETTINGS, request_id="t")
    assert (pool.busy, pool.idle, pool.open_connections) == (0, 0, 0)


async def test_interim_responses_are_skipped(nursery, autojump_clock):
    async def hints(req):
        return [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
                http_response(b"final")]

    pool = make_pool(FakeHttp(hints), nursery)
    result = await run_http(pool, GET, SETTINGS, request_id="t")
    assert (result.head.status, result.body.getvalue()) == (200, b"final")


async def test_head_and_304_have_no_body_but_keep_their_length(nursery, autojump_clock):
    async def head(req):
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"]

    app = FakeHttp(head)
    pool = make_pool(app, nursery)
    for _ in range(2):
        result = await run_http(pool, UpstreamRequest(b"HEAD", b"/", [(b"host", b"h")]), SETTINGS, request_id="t")
        assert (result.head.content_length, result.body.size) == (1234, 0)
    assert app.connections == 1


async def test_connect_errors_are_the_pools(nursery, autojump_clock):
    app = FakeHttp(hello, fail_connect=True)
    pool = make_pool(app, nursery)
    with pytest.raises(UpstreamConnectError):
        await run_http(pool, GET, SETTINGS, request_id="t")
    assert pool.stats.connect_errors == 1


async def test_a_header_with_a_control_byte_is_dropped_not_the_page(nursery, autojump_clock):
    async def odd(req):
        return [b"HTTP/1.1 200 OK\r\nX-Odd: a\x01b\r\nX-Fine: c\r\ncontent-length: 2\r\n\r\nok"]

    pool = make_pool(FakeHttp(odd), nursery)
    result = await run_http(pool, GET, SETTINGS, request_id="t")
    assert result.head.headers == [(b"X-Fine", b"c")]
    assert result.head.dropped == ("X-Odd (control byte in its value)",)


def test_response_head_validation_sans_io():
    event = h11.Response(status_code=200, headers=[(b"Content-Length", b"3"), (b"Set-Cookie", b"a=1"),
                                                   (b"Set-Cookie", b"b=2"), (b"Upgrade", b"h2c")])
    head = response_head(event)
    assert head.headers == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
    assert head.content_length == 3
