"""The whole request path in memory: h11 client -> HttpConnection -> App ->
pool -> FastCGI -> an in-memory php-fpm stand-in, on the autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from gateway.app.site import App
from gateway.config import validate
from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.serve.process import pool_from_config
from tests.helpers import FakeFpm, HttpClient, php_output


def make_app(tmp_path, fpm: FakeFpm, nursery, **backend):
    (tmp_path / "index.php").write_text("front controller")
    (tmp_path / "style.css").write_text("body{}")
    cfg = validate({"backends": {"php": {"pool_size": 1, **backend}},
                    "sites": {"s": {"root": str(tmp_path), "php": "php", "server_names": ["example.com"]}}})
    pool = pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)
    return App(cfg, {"php": pool}), pool


async def client_for(app, nursery) -> HttpClient:
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, app.handle, ConnectionSettings.from_config(), client=("192.0.2.7", 40000),
                          server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    return HttpClient(client)


async def test_php_request_end_to_end(tmp_path, nursery, autojump_clock):
    async def script(req):
        return [php_output(b"ran " + req.params[b"SCRIPT_NAME"] + b" for " + req.params[b"REQUEST_URI"],
                           headers=(b"Set-Cookie: a=1", b"Set-Cookie: b=2"))]

    fpm = FakeFpm(script)
    app, _ = make_app(tmp_path, fpm, nursery)
    c = await client_for(app, nursery)
    r = await c.request("GET", "/hello-world/?x=1", host="example.com")
    assert (r.status, r.body) == (200, b"ran /index.php for /hello-world/?x=1")
    assert [v for n, v in r.header_list if n == b"set-cookie"] == [b"a=1", b"b=2"]
    assert r.header("content-length") == str(len(r.body))
    params = fpm.requests_seen[0].params
    assert params[b"REMOTE_ADDR"] == b"192.0.2.7" and params[b"SERVER_NAME"] == b"example.com"


async def test_full_queue_is_503_with_retry_after_over_http(tmp_path, nursery, autojump_clock):
    async def slow(req):
        await trio.sleep(10)
        return [php_output()]

    app, pool = make_app(tmp_path, FakeFpm(slow), nursery, queue_depth=0)
    first = await client_for(app, nursery)
    nursery.start_soon(first.request, "GET", "/")
    await trio.testing.wait_all_tasks_blocked()
    assert pool.busy == 1
    second = await client_for(app, nursery)
    r = await second.request("GET", "/")
    assert (r.status, r.header("retry-after")) == (503, "1")


async def test_queue_timeout_is_504_over_http(tmp_path, nursery, autojump_clock):
    async def slow(req):
        await trio.sleep(1000)
        return [php_output()]

    app, _ = make_app(tmp_path, FakeFpm(slow), nursery, queue_timeout="3s")
    first = await client_for(app, nursery)
    nursery.start_soon(first.request, "GET", "/")
    await trio.testing.wait_all_tasks_blocked()
    t0 = trio.current_time()
    r = await (await client_for(app, nursery)).request("GET", "/")
    assert r.status == 504 and trio.current_time() - t0 == 3


async def test_dead_backend_is_502(tmp_path, nursery, autojump_clock):
    async def crash(req):
        raise trio.BrokenResourceError  # the stand-in drops the connection

    app, _ = make_app(tmp_path, FakeFpm(crash), nursery)
    r = await (await client_for(app, nursery)).request("GET", "/")
    assert r.status == 502
    assert b"<h1>502 Bad Gateway</h1>" in r.body
    assert b"Traceback" not in r.body


async def test_static_file_and_method_not_allowed(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, FakeFpm(lambda req: None), nursery)
    c = await client_for(app, nursery)
    r = await c.request("GET", "/style.css")
    assert (r.status, r.body, r.header("content-type")) == (200, b"body{}", "text/css")
    r = await c.request("POST", "/style.css", body=b"x")
    assert (r.status, r.header("allow")) == (405, "GET, HEAD")


async def test_x_accel_buffering_no_streams_record_by_record(tmp_path, nursery, autojump_clock):
    go = [trio.Event() for _ in range(3)]
    sent = []

    def gate(i):
        async def wait():
            sent.append(i)
            await go[i].wait()

        return wait

    async def script(req):
        return [php_output(b"event 0\n", headers=(b"X-Accel-Buffering: no",)), gate(0),
                b"event 1\n", gate(1), b"event 2\n", gate(2)]

    app, pool = make_app(tmp_path, FakeFpm(script), nursery)
    client = await client_for(app, nursery)
    stream = client.stream
    await stream.send_all(b"GET /sse HTTP/1.1\r\nHost: example.com\r\n\r\n")
    got = b""
    for i in range(3):
        while f"event {i}\n".encode() not in got:
            got += await stream.receive_some(65536)
        # event i reached the client while PHP is still held at gate i
        assert sent == list(range(i + 1)) and pool.busy == 1
        go[i].set()
    assert b"transfer-encoding: chunked" in got.lower()
    assert b"x-accel-buffering" not in got.lower()


async def test_response_beyond_the_temp_file_limit_passes_through_intact(tmp_path, nursery, autojump_clock):
    payload = bytes(range(256)) * 400  # 100 KiB

    async def script(req):
        return [php_output(b""), *(payload[i : i + 10_000] for i in range(0, len(payload), 10_000))]

    app, pool = make_app(tmp_path, FakeFpm(script), nursery, response_buffer_size="1k", max_temp_file_size="8k")
    c = await client_for(app, nursery)
    r = await c.request("GET", "/big")
    assert r.status == 200 and r.body == payload
    assert r.header("transfer-encoding") == "chunked" and r.header("content-length") is None
    await trio.testing.wait_all_tasks_blocked()  # the slot is released just after the last chunk
    assert pool.busy == 0


async def test_error_after_streaming_started_cuts_the_connection(tmp_path, nursery, autojump_clock):
    async def script(req):
        await trio.lowlevel.checkpoint()
        return [php_output(b"partial", headers=(b"X-Accel-Buffering: no",)), trio.sleep_forever]

    app, _ = make_app(tmp_path, FakeFpm(script), nursery, read_timeout="5s")
    c = await client_for(app, nursery)
    await c.stream.send_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    from tests.helpers import read_all

    data = await read_all(c.stream)
    assert data.startswith(b"HTTP/1.1 200 ") and b"partial" in data
    assert not data.endswith(b"0\r\n\r\n")  # no clean end of the chunked body: the client can tell


async def test_client_leaving_during_a_long_php_run_is_noticed(tmp_path, nursery, autojump_clock):
    from gateway.front.h1 import ListenerState
    from gateway.front.liveness import WATCH_AFTER, InFlightWatcher

    async def slow(req):
        await trio.sleep(30)
        return [php_output()]

    app, pool = make_app(tmp_path, FakeFpm(slow), nursery)
    listener_state = ListenerState()
    listener_state.inflight = InFlightWatcher()
    nursery.start_soon(listener_state.inflight.run)
    ours, theirs = trio.socket.socketpair()  # the watcher waits on the client's socket
    nursery.start_soon(HttpConnection(trio.SocketStream(theirs), app.handle, ConnectionSettings.from_config(),
                                      client=("192.0.2.7", 40000), server=("192.0.2.1", 80),
                                      listener_state=listener_state).run)
    client = trio.SocketStream(ours)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    while not pool.busy:
        await pool.changed()
    t0 = trio.current_time()
    await client.aclose()
    await pool.wait_idle()
    # watching starts WATCH_AFTER into the request; the departure is noticed then, not after 30 s
    assert trio.current_time() - t0 == pytest.approx(WATCH_AFTER)
    assert pool.open_connections == 0


@pytest.mark.parametrize(("method", "status"), [("HEAD", b"200"), ("GET", b"204"), ("GET", b"304")])
async def test_a_header_only_answer_from_a_stream_is_not_drained(tmp_path, nursery, autojump_clock, method, status):
    # PHP sends no body for HEAD: an event stream would stay silent until
    # read_timeout, holding the slot and the client's next request (nginx
    # finalizes the upstream of a header-only response at once)
    async def script(req):
        if req.params[b"SCRIPT_NAME"] != b"/index.php" or req.params[b"REQUEST_URI"] != b"/sse":
            return [php_output(b"next")]
        return [php_output(b"", headers=(b"X-Accel-Buffering: no", b"Status: " + status)), trio.sleep_forever]

    app, pool = make_app(tmp_path, FakeFpm(script), nursery, read_timeout="60s")
    c = await client_for(app, nursery)
    t0 = trio.current_time()
    r = await c.request(method, "/sse", host="example.com")
    assert r.status == int(status) and r.body == b""
    r2 = await c.request("GET", "/next", host="example.com")  # the same connection, at once
    assert (r2.status, r2.body) == (200, b"next")
    assert trio.current_time() - t0 == 0
    await trio.testing.wait_all_tasks_blocked()
    assert pool.busy == 0 and pool.open_connections == pool.idle  # the stream's connection was closed
