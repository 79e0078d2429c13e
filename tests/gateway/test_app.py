"""The whole request path in memory: h11 client -> HttpConnection -> App ->
pool -> FastCGI -> an in-memory php-fpm stand-in, on the autojump clock."""

from __future__ import annotations

import trio
import trio.testing

from gateway.app import App
from gateway.config import validate
from gateway.http_connection import ConnectionSettings, HttpConnection
from gateway.pool import Pool
from tests.helpers import FakeFpm, HttpClient, php_output


def make_app(tmp_path, fpm: FakeFpm, nursery, **backend):
    (tmp_path / "index.php").write_text("front controller")
    (tmp_path / "style.css").write_text("body{}")
    cfg = validate({"backends": {"php": {"workers": 1, **backend}},
                    "sites": {"s": {"root": str(tmp_path), "php": "php", "server_names": ["example.com"]}}})
    b = cfg.backends["php"]
    pool = Pool("php", fpm.connector(nursery), size=b.workers, queue_depth=b.queue_depth,
                queue_timeout=b.queue_timeout)
    return App(cfg, {"php": pool}), pool


async def client_for(app, nursery) -> HttpClient:
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, app.handle, ConnectionSettings(), client=("192.0.2.7", 40000),
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
    assert (r.status, r.body, r.header("content-type")) == (200, b"body{}", "text/css; charset=utf-8")
    r = await c.request("POST", "/style.css", body=b"x")
    assert (r.status, r.header("allow")) == (405, "GET, HEAD")
