"""Proxy sites and routes end to end in memory: h11 client -> HttpConnection ->
App -> the HTTP/1.1 pool -> an in-memory HTTP application, on the autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.app.routing import ProxyPass, Refuse, Router, StaticFile
from gateway.app.site import App
from gateway.config import SiteConfig, validate
from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.serve.process import pool_from_config
from tests.helpers import CLOSE, FakeFpm, FakeHttp, HttpClient, http_response, php_output


async def echo(req):
    body = b"%s %s xff=%s host=%s" % (req.method, req.target, req.header(b"x-forwarded-for"), req.header(b"host"))
    return [http_response(body, headers=[(b"Content-Type", b"text/plain"), (b"X-Accel-Expires", b"10"),
                                         (b"Server", b"upstream/1.0"), (b"Date", b"Thu, 01 Jan 1970 00:00:00 GMT")])]


def make_app(tmp_path, app: FakeHttp, nursery, *, site=None, backend=None, server=None, fpm: FakeFpm | None = None):
    (tmp_path / "style.css").write_text("body{}")
    (tmp_path / "dir").mkdir(exist_ok=True)
    (tmp_path / "index.php").write_text("<?php")
    backends = {"app": {"type": "http", "addresses": ["10.0.0.5:3000"], "pool_size": 2, **(backend or {})}}
    if fpm is not None:
        backends["php"] = {"pool_size": 1}
    cfg = validate({"server": server or {}, "backends": backends,
                    "sites": {"s": {"root": str(tmp_path), "server_names": ["example.com"],
                                    **(site if site is not None else {"proxy": "app"})}}})
    pools = {"app": pool_from_config("app", app.connector(nursery), cfg.backends["app"], cfg.limits)}
    if fpm is not None:
        pools["php"] = pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)
    return App(cfg, pools), pools["app"]


async def client_for(app, nursery, client=("192.0.2.7", 40000)) -> HttpClient:
    c, s = trio.testing.memory_stream_pair()
    conn = HttpConnection(s, app.handle, ConnectionSettings.from_config(), client=client, server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    return HttpClient(c)


async def test_everything_but_files_goes_to_the_backend(tmp_path, nursery, autojump_clock):
    upstream = FakeHttp(echo)
    app, pool = make_app(tmp_path, upstream, nursery)
    c = await client_for(app, nursery)
    r = await c.request("GET", "/style.css", host="example.com")
    assert (r.status, r.body) == (200, b"body{}")  # a file of the root
    for target in ("/", "/dir/", "/api/x?y=%2F", "/.env"):
        r = await c.request("GET", target, host="example.com")
        assert (r.status, r.body) == (200, b"GET %s xff=192.0.2.7 host=example.com" % target.encode())
        assert r.header("x-accel-expires") is None  # the gateway's, not the client's
        assert r.header("server") == "gateway" and "1970" not in r.header("date")  # ours, as nginx
        assert r.header("content-length") == str(len(r.body))
    r = await c.request("GET", "/index.php", host="example.com")
    assert r.status == 403  # PHP source is never a static file, and this site runs no PHP
    assert upstream.connections == 1  # one kept-alive connection for all of them


async def test_routes_send_a_prefix_elsewhere_and_php_keeps_the_rest(tmp_path, nursery, autojump_clock):
    upstream = FakeHttp(echo)
    fpm = FakeFpm(lambda req: _php())
    app, _ = make_app(tmp_path, upstream, nursery, fpm=fpm, site={"php": "php", "routes": {"/api/": "app"}})
    c = await client_for(app, nursery)
    r = await c.request("GET", "/api/v1/users?x=1", host="example.com")
    assert r.body.startswith(b"GET /api/v1/users?x=1 ")
    r = await c.request("GET", "/blog/post/", host="example.com")
    assert r.body == b"php"
    r = await c.request("GET", "/api/../blog/", host="example.com")  # normalised before matching: PHP's
    assert r.body == b"php"


async def _php():
    return [php_output(b"php")]


async def test_a_post_body_and_a_chunked_upload_go_with_their_length(tmp_path, nursery, autojump_clock):
    async def got(req):
        text = f"{len(req.body)} {req.header(b'content-length')} {req.header(b'transfer-encoding')}"
        return [http_response(text.encode())]

    app, _ = make_app(tmp_path, FakeHttp(got), nursery)
    c = await client_for(app, nursery)
    r = await c.request("POST", "/upload", body=b"x" * 100_000, host="example.com")
    assert r.body == b"100000 b'100000' None"
    r = await c.request("POST", "/upload", body=[b"abc", b"defg"], host="example.com")
    assert r.body == b"7 b'7' None"


async def test_errors_are_the_php_paths(tmp_path, nursery, autojump_clock, caplog):
    async def slow(req):
        await trio.sleep(1000)
        return []

    upstream = FakeHttp(slow)
    app, pool = make_app(tmp_path, upstream, nursery, backend={"read_timeout": "5s"})
    c = await client_for(app, nursery)
    r = await c.request("GET", "/x", host="example.com")
    assert r.status == 504
    assert pool.stats.errors == {504: 1}
    assert any("GET /x -> 504: backend sent nothing for 5s" in m for m in caplog.messages)

    upstream.fail_connect = True
    r = await c.request("GET", "/x", host="example.com")
    assert r.status == 502

    async def garbage(req):
        return [b"NOT HTTP\r\n\r\n", CLOSE]

    upstream.fail_connect, upstream.script = False, garbage
    r = await c.request("GET", "/x", host="example.com")
    assert r.status == 502
    assert pool.stats.errors == {504: 1, 502: 2}


async def test_queue_full_is_503(tmp_path, nursery, autojump_clock):
    async def slow(req):
        await trio.sleep(10)
        return [http_response(b"late")]

    app, pool = make_app(tmp_path, FakeHttp(slow), nursery, backend={"pool_size": 1, "queue_depth": 0})
    first = await client_for(app, nursery)
    nursery.start_soon(first.request, "GET", "/a", None, None, "example.com")
    await trio.testing.wait_all_tasks_blocked()
    second = await client_for(app, nursery)
    r = await second.request("GET", "/b", host="example.com")
    assert (r.status, r.header("retry-after")) == (503, "1")


async def test_trusted_proxy_chain_upstream_host_and_https(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, FakeHttp(echo), nursery, backend={"upstream_host": "app.internal"},
                      server={"trusted_proxies": ["10.0.0.0/8"]})
    c = await client_for(app, nursery, client=("10.1.1.1", 5000))
    r = await c.request("GET", "/", [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")],
                        host="example.com")
    assert r.body == b"GET / xff=203.0.113.9, 10.1.1.1 host=app.internal"
    untrusted = await client_for(app, nursery, client=("198.51.100.1", 5000))
    r = await untrusted.request("GET", "/", [("X-Forwarded-For", "203.0.113.9")], host="example.com")
    assert r.body == b"GET / xff=198.51.100.1 host=app.internal"


async def test_a_slow_client_does_not_hold_the_backend(tmp_path, nursery, autojump_clock):
    """The response is drained before the client reads a byte: the one
    connection serves the next request while the first client sits on its
    unread 2 MB."""
    big = b"z" * (2 * 1024 * 1024)

    async def large(req):
        return [http_response(big if req.target == b"/big" else b"small")]

    upstream = FakeHttp(large)
    app, pool = make_app(tmp_path, upstream, nursery, backend={"pool_size": 1})
    stalled, s = trio.testing.memory_stream_pair()
    conn = HttpConnection(s, app.handle, ConnectionSettings.from_config(), client=("192.0.2.8", 1),
                          server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    await stalled.send_all(b"GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n")  # and never reads
    await trio.testing.wait_all_tasks_blocked()
    assert (pool.busy, pool.idle) == (0, 1)
    c = await client_for(app, nursery)
    r = await c.request("GET", "/small", host="example.com")
    assert r.body == b"small"
    assert upstream.connections == 1


async def test_sse_streams_through(tmp_path, nursery, autojump_clock):
    async def events(req):
        out: list[object] = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n"]
        for i in range(3):
            out += [b"9\r\ndata: %d\n\n\r\n" % i, _pause]
        return [*out, b"0\r\n\r\n"]

    upstream = FakeHttp(events)
    app, pool = make_app(tmp_path, upstream, nursery)
    c = await client_for(app, nursery)
    await c.stream.send_all(b"GET /events HTTP/1.1\r\nHost: example.com\r\n\r\n")
    got = b""
    start = trio.current_time()
    times = []
    while b"data: 2" not in got:
        piece = await c.stream.receive_some(65536)
        got += piece
        if b"data: " in piece:
            times.append(round(trio.current_time() - start))
    assert b"transfer-encoding: chunked" in got.lower()
    assert times == [0, 1, 2]  # as they came
    while not got.endswith(b"0\r\n\r\n"):
        got += await c.stream.receive_some(65536)
    await trio.testing.wait_all_tasks_blocked()
    assert pool.busy == 0  # the stream ended: the slot is back


async def _pause():
    await trio.sleep(1)


@pytest.mark.parametrize(("path", "route"), [
    ("/style.css", StaticFile),
    ("/", ProxyPass),
    ("/nope", ProxyPass),
    ("/api/x", ProxyPass),
    ("/secret/x", Refuse),
])
def test_routing_of_a_proxy_site(tmp_path, path, route):
    (tmp_path / "style.css").write_text("x")
    site = SiteConfig(root=str(tmp_path), proxy="app", routes={"/api/": "api"}, deny=["/secret/"])
    got = Router(site).route(path, b"")
    assert isinstance(got, route)
    if path == "/api/x":
        assert got == ProxyPass("api")


async def test_an_upgrade_to_a_php_route_is_answered_as_plain_http(tmp_path, nursery, autojump_clock):
    """php-fpm cannot switch protocols: PHP answers the request (which refuses
    the upgrade), and a Status: 101 from PHP is a broken backend (502)."""
    answers = [php_output(b"php"), php_output(b"", status=b"101 Switching Protocols")]

    async def php(req):
        return [answers.pop(0)]

    app, _ = make_app(tmp_path, FakeHttp(echo), nursery, fpm=FakeFpm(php), site={"php": "php"})
    c = await client_for(app, nursery)
    ws = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
          ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
    r = await c.request("GET", "/chat", headers=ws, host="example.com")
    assert (r.status, r.body, r.header("upgrade")) == (200, b"php", None)
    r = await c.request("GET", "/chat", headers=ws, host="example.com")  # the connection went on as HTTP/1.1
    assert r.status == 502


async def test_a_switch_to_a_protocol_the_client_did_not_offer_is_a_502(tmp_path, nursery, autojump_clock, caplog):
    async def wrong(req):
        assert (req.header(b"upgrade"), req.header(b"connection")) == (b"websocket", b"upgrade")
        return [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"]

    app, pool = make_app(tmp_path, FakeHttp(wrong), nursery)
    c = await client_for(app, nursery)
    r = await c.request("GET", "/ws", headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")],
                        host="example.com")
    assert r.status == 502
    assert any("switched to 'h2c', which the client did not offer (websocket)" in m for m in caplog.messages)
    assert (pool.busy, pool.open_connections, pool.stats.tunnels) == (0, 0, 0)
