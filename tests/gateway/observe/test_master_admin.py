"""The master's admin listener: it asks each worker's admin socket (h11's client
role) and answers one merged /status and /metrics. The workers here are admin
listeners on unix sockets, each over a frozen monitor or a hand-written
answer; no processes. Real sockets, so trio's real clock."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.front.listen import open_listeners
from gateway.http._h11 import PARSER
from gateway.observe.admin import AdminApp
from gateway.serve.master import MasterAdmin, _get, admin_socket

from .observe_fixture import frozen_monitor
from .test_admin import admin_client

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_unix(nursery: trio.Nursery, path: str, handler: Handler) -> None:
    """Serve ``handler`` on unix socket ``path``; it accepts once this returns."""
    listeners = await open_listeners([f"unix:{path}"])
    nursery.start_soon(trio.serve_listeners, handler, listeners)


def worker_admin(app: AdminApp) -> Handler:
    async def handler(stream: trio.SocketStream) -> None:
        await HttpConnection(stream, app.handle, ConnectionSettings.from_config(), client=("", 0), server=("", 0)).run()

    return handler


def answer(response: bytes) -> Handler:
    """A worker that reads the request head, writes ``response`` and closes."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(4096)
                if not data:
                    return
                head += data
            assert head.startswith(b"GET /status HTTP/1.1\r\n")
            await stream.send_all(response)

    return handler


async def test_get_reads_a_workers_status_and_metrics(nursery, tmp_path: Path):
    path = str(tmp_path / "w.sock")
    await serve_unix(nursery, path, worker_admin(AdminApp(frozen_monitor())))
    status = json.loads(await _get(path, b"/status"))
    assert status["listener"]["requests_total"] == 120 and status["pools"]["php"]["size"] == 4
    text = (await _get(path, b"/metrics")).decode()
    assert text.startswith("# HELP gateway_connections Open client connections by state.\n")


@pytest.mark.parametrize(("response", "body"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"hi"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n3\r\n yo\r\n0\r\n\r\n", b"hi yo"),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", b"until the end"),  # framed by the close
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!", b"!"),
])
async def test_get_takes_any_framing(nursery, tmp_path: Path, response: bytes, body: bytes):
    path = str(tmp_path / "w.sock")
    await serve_unix(nursery, path, answer(response))
    assert await _get(path, b"/status") == body


@pytest.mark.parametrize(("response", "error"), [
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", "status 500"),
    (b"HTTP/1.1 200 OK\r\n", "bad response"),  # the head never ends
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "bad response"),  # the body is cut
    (b"SMTP ready\r\n\r\n", "bad response"),
    (b"", "bad response"),  # closed without a word
])
async def test_get_refuses_anything_but_a_whole_200(nursery, tmp_path: Path, response: bytes, error: str):
    path = str(tmp_path / "w.sock")
    await serve_unix(nursery, path, answer(response))
    with pytest.raises(ValueError, match=error):
        await _get(path, b"/status")


async def test_get_reads_at_most_max_body(nursery, tmp_path: Path):
    path = str(tmp_path / "w.sock")
    await serve_unix(nursery, path, answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100))
    assert await _get(path, b"/status", max_body=100) == b"x" * 100
    with pytest.raises(ValueError, match="over 99 bytes"):
        await _get(path, b"/status", max_body=99)


async def test_master_shows_its_workers_merged(nursery, tmp_path: Path):
    runtime = str(tmp_path)
    await serve_unix(nursery, admin_socket(runtime, 0), worker_admin(AdminApp(frozen_monitor())))
    await serve_unix(nursery, admin_socket(runtime, 1), worker_admin(AdminApp(frozen_monitor(second=True))))
    # worker 2 has no admin socket: it is down, the others are still shown
    c = admin_client(nursery, MasterAdmin(runtime, 3, {}))

    r = await c.request("GET", "/status")
    assert r.status == 200 and r.header("content-type") == "application/json"
    st = json.loads(r.body)
    assert [w["up"] for w in st["workers"]] == [True, True, False]
    assert st["verdict"]["bottleneck"] == "listener"
    assert st["verdict"]["reason"].endswith("(1 of 3 worker processes)")
    assert st["listener"]["requests_total"] == 320
    assert st["http1_parser"]["package"] == PARSER  # the suite's (tests/conftest.py): the workers run it too
    assert st["pools"]["php"]["size"] == 8 and st["pools"]["php"]["errors"] == {"502": 1, "503": 7, "504": 2}

    r = await c.request("GET", "/metrics")
    assert r.status == 200 and r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(r.body.decode()) for s in f.samples}
    assert samples[("gateway_pool_size", (("pool", "php"), ("worker", "0")))] == 4
    assert samples[("gateway_pool_size", (("pool", "php"), ("worker", "1")))] == 4
    assert samples[("gateway_verdict", (("bottleneck", "listener"),))] == 1  # the master's own, no worker label

    assert (await c.request("POST", "/status", body=b"")).status == 405
    assert (await c.request("GET", "/nope")).status == 404
