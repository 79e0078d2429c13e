"""Real client addresses behind HAProxy (Debian's haproxy), in front of the
gateway and a real php-fpm: what PHP's ``$_SERVER`` says, as a user checks it.

HAProxy runs in the foreground with a configuration the test writes; it
listens on a socket the test bound to port 0 and hands over (``bind fd@N``),
so there is no port to guess and no wait for it to be ready (the kernel
queues connects until it accepts). The client binds 127.0.0.5, so its
address differs from HAProxy's (127.0.0.1, the one trusted proxy).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers import HttpClient
from tests.integration.conftest import Gateway, StartGateway

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CLIENT = "127.0.0.5"
PROXY_LISTEN = "127.0.0.1:0 proxy_protocol"
PLAIN_LISTEN = "127.0.0.3:0"  # HAProxy reaches it from 127.0.0.1 too (its `source`)


def _port(gw: Gateway, host: str) -> int:
    return next(ls.socket.getsockname()[1] for ls in gw.running.listeners if ls.socket.getsockname()[0] == host)


@pytest.fixture
async def gw2(start_gateway: StartGateway) -> Gateway:
    """A gateway with a proxy_protocol listener (127.0.0.1) and a plain one
    (127.0.0.3), trusting 127.0.0.1 only."""
    return await start_gateway(server={"listen": [PROXY_LISTEN, PLAIN_LISTEN], "trusted_proxies": ["127.0.0.1"]},
                               timeouts={"tls_handshake": "1s"})


Haproxy = Callable[[str], Awaitable[int]]


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[Haproxy]:
    """``await haproxy(CONFIG)``: run HAProxy with ``CONFIG`` (``{fd}`` becomes
    its listening socket's descriptor); the port it listens on."""
    procs: list[tuple[trio.Process, socket.socket]] = []

    async def start(config: str) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        path = tmp_path / f"haproxy{len(procs)}.cfg"
        path.write_text(config.replace("{fd}", str(sock.fileno())))
        proc = await trio.lowlevel.open_process([HAPROXY, "-db", "-f", str(path)], pass_fds=(sock.fileno(),),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((proc, sock))
        return int(sock.getsockname()[1])

    yield start
    for proc, sock in procs:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()


def tcp_config(gateway_port: int, send_proxy: str) -> str:
    return f"""
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind fd@{{fd}}
    default_backend be
backend be
    server gw 127.0.0.1:{gateway_port} {send_proxy} source 127.0.0.1
"""


def http_config(gateway_port: int) -> str:
    return f"""
defaults
    mode http
    option forwardfor
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind fd@{{fd}}
    http-request set-header X-Forwarded-Proto https
    default_backend be
backend be
    server gw 127.0.0.3:{gateway_port} source 127.0.0.1
"""


async def connect(port: int, host: str = "127.0.0.1", source: str = CLIENT) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((host, port))
    return trio.SocketStream(sock)


async def server_vars(stream: trio.SocketStream, headers: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    with trio.fail_after(20):
        r = await HttpClient(stream).request("GET", "/server.php", headers=headers)
    assert r.status == 200, r.body
    server: dict[str, Any] = json.loads(r.body)["server"]
    return server


async def closed_without_answer(stream: trio.SocketStream) -> bytes:
    out = b""
    try:
        while data := await stream.receive_some(65536):
            out += data
    except trio.BrokenResourceError:
        pass  # a reset: the gateway closed with our bytes unread
    return out


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
async def test_haproxy_with_the_proxy_protocol_gives_php_the_clients_address(
        gw2: Gateway, haproxy: Haproxy, caplog: pytest.LogCaptureFixture, send_proxy: str) -> None:
    front = await haproxy(tcp_config(_port(gw2, "127.0.0.1"), send_proxy))
    stream = await connect(front)
    client_port = stream.socket.getsockname()[1]
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        s = await server_vars(stream)
        await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert (s["REMOTE_ADDR"], s["REMOTE_PORT"]) == (CLIENT, str(client_port))
    assert (s["SERVER_ADDR"], s["SERVER_PORT"]) == ("127.0.0.1", str(front))  # where the client connected
    log = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(log) == 1 and log[-1].startswith(f"{CLIENT} - - [") and log[-1].endswith(" peer=127.0.0.1")


async def test_haproxy_with_x_forwarded_for_gives_php_the_clients_address(gw2: Gateway, haproxy: Haproxy) -> None:
    front = await haproxy(http_config(_port(gw2, "127.0.0.3")))
    # a client that forges X-Forwarded-For: HAProxy adds the address it saw after it
    s = await server_vars(await connect(front), headers=[("X-Forwarded-For", "6.6.6.6")])
    assert s["REMOTE_ADDR"] == CLIENT and s["REMOTE_PORT"] == ""  # XFF carries no port (nginx: empty)
    assert s["HTTPS"] == "on" and s["REQUEST_SCHEME"] == "https"  # X-Forwarded-Proto from the trusted proxy
    assert s["HTTP_X_FORWARDED_FOR"] == f"6.6.6.6, {CLIENT}"  # PHP still sees the header, as under nginx


async def test_forwarded_headers_from_an_untrusted_client_are_ignored(gw2: Gateway) -> None:
    stream = await connect(_port(gw2, "127.0.0.3"), host="127.0.0.3")
    s = await server_vars(stream, headers=[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")])
    assert (s["REMOTE_ADDR"], s["REMOTE_PORT"]) == (CLIENT, str(stream.socket.getsockname()[1]))
    assert "HTTPS" not in s and s["REQUEST_SCHEME"] == "http"
    assert s["HTTP_X_FORWARDED_FOR"] == "6.6.6.6"


async def test_a_proxy_header_from_an_untrusted_client_gets_the_connection_closed(gw2: Gateway) -> None:
    stream = await connect(_port(gw2, "127.0.0.1"))
    request = b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\nGET /server.php HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(5):
        try:
            await stream.send_all(request)
        except trio.BrokenResourceError:
            pass
        assert await closed_without_answer(stream) == b""


async def test_a_client_that_sends_nothing_is_closed_after_the_header_timeout(gw2: Gateway) -> None:
    stream = await connect(_port(gw2, "127.0.0.1"), source="127.0.0.1")  # trusted, silent
    start = trio.current_time()
    with trio.fail_after(10):
        assert await closed_without_answer(stream) == b""
    assert 0.9 <= trio.current_time() - start < 5  # timeouts.tls_handshake = 1s
