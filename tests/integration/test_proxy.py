"""The reverse proxy end to end over loopback: the real gateway in front of a
real HTTP/1.1 application server (``http_app``: the standard library's
threaded server, keep-alive on), no clock tricks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from gateway.config import validate
from gateway.serve.process import Running, serve
from tests.helpers import HttpClient

from .http_app import App
from .test_slow_clients import wait_until


@pytest.fixture
def app() -> Iterator[App]:
    server = App("one").start()
    yield server
    server.stop()


@pytest.fixture
def other_app() -> Iterator[App]:
    server = App("two").start()
    yield server
    server.stop()


def reserved_port() -> socket.socket:
    """A socket bound to a free loopback port but not listening: connects to
    it are refused, and nothing else (the gateway's own listen on port 0)
    gets that port until it is closed. (``free_port`` alone could hand the
    gateway the very port a test calls dead.)"""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def proxy_config(root: Path, addresses: list[str], **backend: Any) -> dict[str, Any]:
    return {"server": {"listen": ["127.0.0.1:0"], "access_log": "off", "runtime_dir": str(root / "run")},
            "admin": {"listen": "127.0.0.1:0"},
            "backends": {"app": {"type": "http", "addresses": addresses, "pool_size": 4, **backend}},
            "sites": {"t": {"root": str(root), "proxy": "app", "default": True}}}


class Proxy:
    def __init__(self, running: Running) -> None:
        self.running = running
        self.port = next(listener.socket.getsockname()[1] for listener in running.listeners)

    @property
    def pool(self):
        return self.running.pools["app"]

    async def client(self) -> HttpClient:
        return await HttpClient.connect(self.port)


@pytest.fixture
async def start_proxy(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Running] = []
    (tmp_path / "static.txt").write_text("from the root")

    async def start(addresses: list[str], **backend: Any) -> Proxy:
        cfg = validate(proxy_config(tmp_path, addresses, **backend))
        running: Running = await nursery.start(partial(serve, cfg, handle_signals=False))
        started.append(running)
        return Proxy(running)

    yield start
    for running in started:
        running.shutdown.set()


async def test_keep_alive_reuse_one_upstream_connection_for_many_requests(start_proxy, app):
    proxy = await start_proxy([f"127.0.0.1:{app.port}"])
    for i in range(20):  # a new client connection each time: the upstream one is the gateway's
        c = await proxy.client()
        r = await c.request("GET", f"/echo?i={i}", host="site.example")
        await c.aclose()
        data = json.loads(r.body)
        assert (r.status, data["target"], data["connection"]) == (200, f"/echo?i={i}", 1)
        headers = dict(data["headers"])
        assert headers["host"] == "site.example"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["via"] == "1.1 gateway"
    assert (app.connections, app.requests) == (1, 20)
    c = await proxy.client()
    r = await c.request("GET", "/static.txt")
    await c.aclose()
    assert r.body == b"from the root"  # a file of the site's root is served by the gateway
    assert app.requests == 20


async def test_chunked_both_ways(start_proxy, app):
    proxy = await start_proxy([f"127.0.0.1:{app.port}"])
    c = await proxy.client()
    body = [os.urandom(1000) for _ in range(50)]
    r = await c.request("POST", "/upload", body=body)
    got = json.loads(r.body)
    assert got["length"] == 50_000 and got["sha256"] == hashlib.sha256(b"".join(body)).hexdigest()
    assert (got["content_length"], got["transfer_encoding"]) == ("50000", None)  # de-chunked, with its length
    r = await c.request("GET", "/chunked")
    await c.aclose()
    assert (r.status, r.body, r.header("content-length")) == (200, b"one two three", "13")  # drained, then framed
    assert app.connections == 1


async def test_a_large_body_is_spooled_and_a_slow_client_holds_no_upstream_connection(start_proxy, app):
    proxy = await start_proxy([f"127.0.0.1:{app.port}"], pool_size=1, response_buffer_size="64k")
    size = 30 * 1024 * 1024
    slow = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await slow.send_all(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)  # and reads nothing yet
    # the whole response is drained into a temp file: the one upstream connection is free again
    await wait_until(lambda: proxy.pool.stats.requests == 1 and proxy.pool.busy == 0 and proxy.pool.idle == 1)
    c = await proxy.client()
    r = await c.request("GET", "/echo")
    await c.aclose()
    assert json.loads(r.body)["connection"] == 1  # served meanwhile, on the same upstream connection
    got = 0
    while got < size:
        data = await slow.receive_some(1 << 20)
        assert data
        got += len(data)
    await slow.aclose()
    assert app.connections == 1


async def test_sse_streams_through(start_proxy, app):
    proxy = await start_proxy([f"127.0.0.1:{app.port}"])
    s = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await s.send_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    with trio.fail_after(10):
        while b"data: first" not in got:  # arrives while the app still holds the rest back
            got += await s.receive_some(65536)
        assert b"text/event-stream" in got and b"data: second" not in got
        assert proxy.pool.busy == 1  # a stream holds its upstream connection, by choice
        app.release.set()
        while b"data: second" not in got:
            got += await s.receive_some(65536)
    await s.aclose()
    await wait_until(lambda: proxy.pool.busy == 0)


async def test_failover_between_two_addresses_with_one_dead(start_proxy, app, other_app):
    dead = reserved_port()
    proxy = await start_proxy([f"127.0.0.1:{dead.getsockname()[1]}", f"127.0.0.1:{app.port}",
                               f"127.0.0.1:{other_app.port}"], balance="round_robin")
    served = []
    for _ in range(12):
        c = await proxy.client()
        r = await c.request("GET", "/echo")
        await c.aclose()
        assert r.status == 200
        served.append(json.loads(r.body)["app"])
    assert set(served) == {"one", "two"}  # every request answered
    dead_member = proxy.pool.members[0]
    assert dead_member.stats.connect_errors == 1 and dead_member.down_since is not None
    assert proxy.pool.size == 8
    dead.close()


@pytest.fixture
def tls_app(tmp_path: Path) -> Iterator[tuple[App, Path]]:
    ca = trustme.CA()
    server = App("tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    server.start()
    yield server, bundle
    server.stop()


async def test_https_upstream_certificate_verified(start_proxy, tls_app, caplog):
    app, bundle = tls_app
    proxy = await start_proxy([f"https://localhost:{app.port}"], ca_bundle=str(bundle))
    for _ in range(3):
        c = await proxy.client()
        r = await c.request("GET", "/echo")
        await c.aclose()
        assert (r.status, json.loads(r.body)["app"]) == (200, "tls")
    assert app.connections == 1  # kept alive over TLS too
    # without the CA the certificate is not believed: 502 and one line saying why
    untrusting = await start_proxy([f"https://localhost:{app.port}"])
    c = await untrusting.client()
    r = await c.request("GET", "/echo")
    assert r.status == 502
    assert any("TLS with https://localhost" in m and "CERTIFICATE_VERIFY_FAILED" in m for m in caplog.messages)


async def test_active_checks_take_a_dead_address_out_without_traffic_and_bring_it_back(start_proxy, app):
    reserved = reserved_port()
    later = reserved.getsockname()[1]
    proxy = await start_proxy([f"127.0.0.1:{app.port}", f"127.0.0.1:{later}"],
                              health={"path": "/echo", "interval": "200ms", "timeout": "1s"})
    second = proxy.pool.members[1]
    await wait_until(lambda: second.down_since is not None)  # no request needed to know
    assert proxy.pool.size == 4
    assert second.stats.requests == 0
    reserved.close()
    revived = App("revived", port=later).start()
    try:
        await wait_until(lambda: second.down_since is None)
        served = set()
        for _ in range(6):
            c = await proxy.client()
            r = await c.request("GET", "/echo")
            await c.aclose()
            served.add(json.loads(r.body)["app"])
        assert proxy.pool.size == 8
        assert served == {"one", "revived"}  # least_busy with both idle: taken in turn
    finally:
        revived.stop()


async def test_head_keeps_the_backends_length_and_the_connection(start_proxy, app):
    proxy = await start_proxy([f"127.0.0.1:{app.port}"])
    c = await proxy.client()
    r = await c.request("HEAD", "/anything")
    assert (r.status, r.header("content-length"), r.body) == (200, "1234", b"")
    r = await c.request("GET", "/echo")
    await c.aclose()
    assert json.loads(r.body)["connection"] == 1


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers:
    a backend that hangs before its response head."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.access"]


async def test_a_read_timeout_passes_an_idempotent_request_on_and_the_log_names_both(
        start_proxy, app, hung_port, caplog):
    # max_fails 0: the hung address stays in rotation; round_robin's turn moves
    # on at the pass too (``Pool._pick``), so each request here goes to it first
    proxy = await start_proxy([f"127.0.0.1:{app.port}", f"127.0.0.1:{hung_port}"], balance="round_robin",
                              read_timeout="500ms", health={"max_fails": 0})
    hung, ok = f"127.0.0.1:{hung_port}", f"127.0.0.1:{app.port}"
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        c = await proxy.client()
        r = await c.request("GET", "/echo?first")
        assert r.status == 200 and json.loads(r.body)["target"] == "/echo?first"  # answered by the other
        r = await c.request("GET", "/echo?second")
        assert r.status == 200
        r = await c.request("POST", "/echo?third", body=b"once")
        await c.aclose()
        assert r.status == 504  # not passed on: the hung backend may have run it
    assert app.requests == 2  # the POST never reached the live backend
    lines = access_lines(caplog)
    for line in lines[:2]:
        urt = re.search(r" ua=(\S+) urt=(\S+)$", line)
        assert urt is not None and urt[1] == f"{hung},{ok}"  # nginx's $upstream_addr list
        hung_time, ok_time = (float(t) for t in urt[2].split(","))
        assert 0.45 <= hung_time < 5 and ok_time < hung_time
    assert '"POST /echo?third HTTP/1.1" 504' in lines[2] and re.search(f" ua={hung} urt=0\\.5\\d\\d$", lines[2])
    assert proxy.pool.stats.retries == 2


async def test_the_access_log_names_no_upstream_for_a_static_file(start_proxy, app, caplog):
    proxy = await start_proxy([f"127.0.0.1:{app.port}"])
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        c = await proxy.client()
        r = await c.request("GET", "/static.txt")
        await c.aclose()
    assert r.status == 200
    (line,) = access_lines(caplog)
    assert line.endswith(" ua=- urt=-")
