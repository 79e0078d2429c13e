"""WebSocket (and any Upgrade) through the gateway, end to end: the real
gateway in front of a real WebSocket server (the ``websockets`` library's, in
a subprocess: ``ws_app``), with that library's client in a thread."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from gateway.config import validate
from gateway.serve.process import Running, serve
from tests.helpers import HttpClient

from .http_app import App
from .test_slow_clients import wait_until

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture
def ws_port() -> Iterator[int]:
    """The port of a WebSocket echo server in a subprocess (``ws_app``)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.ws_app"], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            pytest.fail(f"the WebSocket server did not start (printed {line!r})")
        yield int(line)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Gateway:
    def __init__(self, running: Running) -> None:
        self.running = running
        self.port = next(listener.socket.getsockname()[1] for listener in running.listeners)

    @property
    def pool(self) -> Any:
        return self.running.pools["app"]

    @property
    def tunnels(self) -> Any:
        return self.running.listener_state.stats.tunnels

    def ws(self, path: str) -> ClientConnection:
        """A WebSocket client connected through the gateway (blocking: call it in a thread)."""
        return connect(f"ws://127.0.0.1:{self.port}{path}", proxy=None, max_size=None, compression=None,
                       ping_interval=None, open_timeout=10, close_timeout=10)


@pytest.fixture
async def start_gateway(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Running] = []

    async def start(address: str, *, tunnel_idle: str = "60s", graceful: str = "10s", **backend: Any) -> Gateway:
        cfg: dict[str, Any] = {
            "server": {"listen": ["127.0.0.1:0"], "access_log": "off", "runtime_dir": str(tmp_path / "run")},
            "timeouts": {"tunnel_idle": tunnel_idle, "graceful": graceful},
            "backends": {"app": {"type": "http", "addresses": [address], "pool_size": 2, **backend}},
            "sites": {"t": {"root": str(tmp_path), "proxy": "app", "default": True}},
        }
        running: Running = await nursery.start(partial(serve, validate(cfg), handle_signals=False))
        started.append(running)
        return Gateway(running)

    yield start
    for running in started:
        running.shutdown.set()


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def counters(gw: Gateway) -> tuple[int, int, int, int]:
    """From the client's thread: tunnels open and in all, pool slots busy, the pool's tunnels."""
    return trio.from_thread.run_sync(
        lambda: (gw.tunnels.open, gw.tunnels.total, gw.pool.busy, gw.pool.stats.tunnels))


async def test_websocket_echo_text_binary_large_ping_and_close(start_gateway, ws_port, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start_gateway(f"127.0.0.1:{ws_port}")
    big = os.urandom(1024 * 1024)
    messages = ["hello", b"\x00\x01binary\xff", big, "é" * 1000]

    def session() -> tuple[Any, ...]:
        with gw.ws("/echo") as ws:
            assert ws.response is not None
            status = ws.response.status_code
            during = counters(gw)
            got: list[Any] = []
            for message in messages:
                ws.send(message)
                got.append(ws.recv(timeout=10))
            got.append(ws.ping(b"are you there").wait(10))  # the pong came back
        # leaving the block ran the close handshake, through the gateway and back
        return status, during, got, ws.protocol.close_rcvd

    status, during, got, close_rcvd = await in_thread(session)
    assert status == 101
    assert during == (1, 1, 1, 1)  # counted, and the tunnel holds its pool slot
    assert got == [*messages, True]
    assert close_rcvd is not None and close_rcvd.code == 1000  # the server's answer to our close
    await wait_until(lambda: gw.tunnels.open == 0 and gw.pool.busy == 0)
    assert gw.tunnels.total == 1
    # the tunnel's connection is closed, never put back for reuse
    assert (gw.pool.idle, gw.pool.open_connections, gw.pool.stats.tunnels) == (0, 0, 0)
    # one access-log line when it ended: 101, the bytes sent to the client after the head, the backend
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    sent = re.search(r'"GET /echo HTTP/1.1" 101 (\d+) ', line)
    assert sent is not None and len(big) < int(sent[1]) < len(big) + 10_000  # the echoes, framed
    assert f" ua=127.0.0.1:{ws_port} urt=" in line


async def test_the_backend_closing_ends_the_tunnel(start_gateway, ws_port):
    gw = await start_gateway(f"127.0.0.1:{ws_port}")

    def session() -> tuple[Any, Any]:
        with gw.ws("/bye") as ws:
            message = ws.recv(timeout=10)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        return message, ws.protocol.close_rcvd

    message, close_rcvd = await in_thread(session)
    assert message == "bye"
    assert close_rcvd is not None and (close_rcvd.code, close_rcvd.reason) == (4000, "the backend says bye")
    await wait_until(lambda: gw.tunnels.open == 0 and gw.pool.busy == 0)


async def test_an_idle_tunnel_is_closed_after_tunnel_idle(start_gateway, ws_port):
    gw = await start_gateway(f"127.0.0.1:{ws_port}", tunnel_idle="1s")

    def idle() -> tuple[float, Any]:
        with gw.ws("/silent") as ws:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=15)
            return time.monotonic() - started, ws.protocol.close_rcvd

    waited, close_rcvd = await in_thread(idle)
    assert 0.9 <= waited < 10  # cut by the idle timeout, not by the client or the server
    assert close_rcvd is None  # no close frame: the gateway closed the TCP connections
    await wait_until(lambda: gw.tunnels.open == 0 and gw.pool.busy == 0)
    assert gw.tunnels.total == 1

    def chat() -> list[Any]:
        # traffic re-arms the deadline: a tunnel used every 0.5 s outlives 1 s
        got = []
        with gw.ws("/echo") as ws:
            for i in range(5):
                ws.send(str(i))
                got.append(ws.recv(timeout=5))
                time.sleep(0.5)  # a pause shorter than tunnel_idle (what is tested), not a synchronisation
        got.append(ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None)
        return got

    assert await in_thread(chat) == ["0", "1", "2", "3", "4", 1000]


async def test_shutdown_closes_open_tunnels_at_the_graceful_deadline(start_gateway, ws_port):
    gw = await start_gateway(f"127.0.0.1:{ws_port}", graceful="1s")

    def session() -> tuple[str, float]:
        with gw.ws("/echo") as ws:
            ws.send("before")
            echoed = str(ws.recv(timeout=5))
            stopping = time.monotonic()
            trio.from_thread.run_sync(gw.running.shutdown.set)
            while True:  # the tunnel still works during the graceful period, then it is cut
                try:
                    ws.send("during")
                    ws.recv(timeout=10)
                except ConnectionClosed:
                    return echoed, time.monotonic() - stopping
                if time.monotonic() - stopping > 10:
                    pytest.fail("the tunnel outlived the graceful period")

    echoed, waited = await in_thread(session)
    assert echoed == "before"
    assert 0.9 <= waited < 5  # not waited for until the client leaves: closed at the deadline
    assert gw.tunnels.open == 0 and gw.pool.stats.tunnels == 0


@pytest.fixture
def app() -> Iterator[App]:
    server = App("plain").start()
    yield server
    server.stop()


async def test_upgrade_answered_200_is_an_ordinary_response(start_gateway, app):
    gw = await start_gateway(f"127.0.0.1:{app.port}")
    c = await HttpClient.connect(gw.port)
    r = await c.request("GET", "/echo", headers=[("Connection", "Upgrade"), ("Upgrade", "foo")])
    assert r.status == 200
    headers = dict(json.loads(r.body)["headers"])
    assert (headers["upgrade"], headers["connection"]) == ("foo", "upgrade")  # asked of the backend
    r = await c.request("GET", "/echo")  # the client connection goes on as plain HTTP/1.1
    await c.aclose()
    assert r.status == 200 and "upgrade" not in dict(json.loads(r.body)["headers"])
    assert gw.tunnels.total == 0
    assert app.connections == 1  # the backend's answer was a plain one: its connection is reused
