"""Idle keep-alive connections are parked (no task) and come back when the
client speaks again; the keep-alive timeout, keepalive_requests and shutdown
apply to them as to any connection. A real server on 127.0.0.1 (static site, no
PHP) under the autojump clock: parking needs real sockets."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.config import validate
from gateway.front import h1 as http_connection
from gateway.front.parking import Parked, Parker
from gateway.metrics import ListenerStats
from gateway.serve.process import Running, serve
from tests.helpers import HttpClient

#: long enough for a kept-alive connection to be parked (time is the autojump clock's)
IDLE = http_connection.PARK_AFTER + 0.5


async def _start(nursery: trio.Nursery, tmp_path: Path, **limits: int) -> Running:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.txt").write_text("hello")
    cfg = validate({
        "server": {"listen": ["127.0.0.1:0"], "access_log": "off", "runtime_dir": str(tmp_path / "run")},
        "admin": {"listen": "off"},
        "timeouts": {"keepalive": 30},
        "limits": {"keepalive_requests": 3, **limits},
        "sites": {"s": {"root": str(tmp_path / "www"), "default": True}},
    })
    return await nursery.start(partial(serve, cfg, handle_signals=False))


@pytest.fixture
async def server(nursery, tmp_path: Path):
    running = await _start(nursery, tmp_path)
    yield running
    running.shutdown.set()


@pytest.fixture
async def server_of_four(nursery, tmp_path: Path):
    """At most 4 connections open."""
    running = await _start(nursery, tmp_path, max_connections=4)
    yield running
    running.shutdown.set()


def _port(running: Running) -> int:
    return running.listeners[0].socket.getsockname()[1]


async def test_an_idle_keepalive_connection_is_parked_and_served_again(server, autojump_clock):
    client = await HttpClient.connect(_port(server))
    assert (await client.request("GET", "/a.txt")).status == 200
    parker = server.listener_state.parker
    assert parker is not None and len(parker) == 0  # still in its task
    await trio.sleep(IDLE)
    assert len(parker) == 1
    assert server.listener_state.stats.states["idle"] == 1
    assert server.listener_state.stats.open_connections == 1
    r = await client.request("GET", "/a.txt")
    assert (r.status, r.body) == (200, b"hello")
    assert len(parker) == 0
    assert server.listener_state.stats.accepted == 1  # the same connection, not a new one
    await client.aclose()


async def test_keepalive_requests_count_across_parking(server, autojump_clock):
    client = await HttpClient.connect(_port(server))
    for _ in range(2):
        r = await client.request("GET", "/a.txt")
        assert r.header("connection") != "close"
        await trio.sleep(IDLE)  # parked in between
    r = await client.request("GET", "/a.txt")  # the third of keepalive_requests = 3
    assert r.header("connection") == "close"
    await client.aclose()


async def test_the_keepalive_timeout_closes_a_parked_connection(server, autojump_clock):
    stream = await trio.open_tcp_stream("127.0.0.1", _port(server))
    client = HttpClient(stream)
    assert (await client.request("GET", "/a.txt")).status == 200
    t0 = trio.current_time()
    with trio.fail_after(60):
        assert await stream.receive_some(100) == b""  # closed by the server
    assert 29 <= trio.current_time() - t0 <= 31
    await trio.testing.wait_all_tasks_blocked()
    assert server.listener_state.stats.open_connections == 0
    assert len(server.listener_state.parker) == 0


async def test_a_client_that_leaves_while_parked_is_forgotten(server, autojump_clock):
    stream = await trio.open_tcp_stream("127.0.0.1", _port(server))
    client = HttpClient(stream)
    assert (await client.request("GET", "/a.txt")).status == 200
    await trio.sleep(IDLE)
    assert len(server.listener_state.parker) == 1
    await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert len(server.listener_state.parker) == 0
    assert server.listener_state.stats.open_connections == 0


async def test_shutdown_closes_parked_connections_at_once(server, autojump_clock):
    stream = await trio.open_tcp_stream("127.0.0.1", _port(server))
    client = HttpClient(stream)
    assert (await client.request("GET", "/a.txt")).status == 200
    await trio.sleep(IDLE)
    t0 = trio.current_time()
    server.shutdown.set()
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b""
    assert trio.current_time() - t0 < 1


async def _closed_by_server(client: HttpClient) -> bool:
    with trio.move_on_after(1):
        try:
            return await client.stream.receive_some(100) == b""
        except trio.BrokenResourceError:  # reset
            return True
    return False


async def test_at_max_connections_the_oldest_idle_keepalive_connection_makes_room(server_of_four, autojump_clock):
    port = _port(server_of_four)
    busy = await HttpClient.connect(port)  # the oldest: mid-request, its head not complete yet
    await busy.stream.send_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n")
    idle = []
    for _ in range(3):  # then three kept-alive clients, each idle (parked) before the next comes
        client = await HttpClient.connect(port)
        assert (await client.request("GET", "/a.txt")).status == 200
        await trio.sleep(IDLE)
        idle.append(client)
    assert len(server_of_four.listener_state.parker) == 3
    assert server_of_four.listener_state.stats.open_connections == 4  # the limit
    newcomer = await HttpClient.connect(port)
    with trio.fail_after(5):
        r = await newcomer.request("GET", "/a.txt")
    assert (r.status, r.body) == (200, b"hello")
    assert await _closed_by_server(idle[0])  # the one idle longest made room
    for client in idle[1:]:  # the others stay open and served
        assert (await client.request("GET", "/a.txt")).status == 200
    await busy.stream.send_all(b"\r\n")  # never closed for room: mid-request
    busy.request_sent_by_hand()
    assert (await busy.read_response()).status == 200
    for client in [busy, *idle, newcomer]:
        await client.aclose()


async def test_at_max_connections_connections_mid_request_are_never_closed_for_room(server_of_four,
                                                                                     autojump_clock):
    port = _port(server_of_four)
    busy = []
    for _ in range(4):
        client = await HttpClient.connect(port)
        await client.stream.send_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n")
        busy.append(client)
    newcomer = await HttpClient.connect(port)  # waits in the backlog
    await newcomer.stream.send_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    newcomer.request_sent_by_hand()
    with trio.move_on_after(10) as waited:
        await newcomer.read_response()
    assert waited.cancelled_caught  # not admitted: nobody was idle
    for client in busy:
        await client.stream.send_all(b"Connection: close\r\n\r\n")
        client.request_sent_by_hand()
        assert (await client.read_response()).status == 200
        await client.aclose()
    with trio.fail_after(5):
        assert (await newcomer.read_response()).status == 200
    await newcomer.aclose()


async def test_at_max_connections_a_newcomer_waits_only_until_an_idle_connection_is_parked(server_of_four,
                                                                                           autojump_clock):
    port = _port(server_of_four)
    clients = []
    for _ in range(4):  # all kept-alive, none idle long enough to be parked yet
        client = await HttpClient.connect(port)
        assert (await client.request("GET", "/a.txt")).status == 200
        clients.append(client)
    t0 = trio.current_time()
    newcomer = await HttpClient.connect(port)
    with trio.fail_after(5):
        assert (await newcomer.request("GET", "/a.txt")).status == 200
    assert trio.current_time() - t0 <= http_connection.PARK_AFTER + 0.01
    closed = [await _closed_by_server(client) for client in clients]
    assert closed.count(True) == 1  # one made room (they went idle at the same instant)
    for client in [*clients, newcomer]:
        await client.aclose()


async def test_at_max_connections_a_silent_connection_makes_room_first(server_of_four, autojump_clock):
    # connections that never sent a byte (slowloris, a port scan) must not lock
    # new clients out until client_header_timeout: nginx reuses them too
    port = _port(server_of_four)
    kept = await HttpClient.connect(port)
    assert (await kept.request("GET", "/a.txt")).status == 200
    await trio.sleep(IDLE)  # parked, idle longest
    silent = []
    for _ in range(3):
        silent.append(await trio.open_tcp_stream("127.0.0.1", port))
        await trio.sleep(1)
    assert server_of_four.listener_state.stats.open_connections == 4  # the limit
    t0 = trio.current_time()
    newcomer = await HttpClient.connect(port)
    with trio.fail_after(5):
        assert (await newcomer.request("GET", "/a.txt")).status == 200
    assert trio.current_time() - t0 < 0.1
    with trio.move_on_after(1):
        assert await silent[0].receive_some(100) == b""  # the oldest silent one made room, quietly
    assert (await kept.request("GET", "/a.txt")).status == 200  # not the parked keep-alive client
    for stream in silent:
        await stream.aclose()
    for client in (kept, newcomer):
        await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server_of_four.listener_state.stats.open_connections == 0


async def test_at_max_connections_silent_connections_do_not_lock_new_clients_out(server_of_four, autojump_clock):
    port = _port(server_of_four)
    silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
    await trio.sleep(1)
    newcomer = await HttpClient.connect(port)
    with trio.fail_after(5):  # not client_header_timeout (60 s)
        assert (await newcomer.request("GET", "/a.txt")).status == 200
    assert server_of_four.listener_state.stats.open_connections == 4
    for stream in silent:
        await stream.aclose()
    await newcomer.aclose()


class _Owner:
    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.closed: list[str] = []

    def resume(self, parked: Parked) -> None:
        pass

    def close(self, parked: Parked) -> None:
        self.closed.append(self.names[parked.fd])


async def test_close_oldest_spares_a_parked_connection_whose_request_has_arrived():
    parker = Parker(ListenerStats())
    owner = _Owner()
    closed = owner.closed
    peers = {}
    sockets = []
    for name in ("oldest", "next", "newest"):
        ours, theirs = trio.socket.socketpair()
        peers[name] = theirs
        sockets += [ours, theirs]
        owner.names[ours.fileno()] = name
        assert parker.park(Parked(ours.fileno(), 1, math.inf, owner))
    await peers["oldest"].send(b"GET / HTTP/1.1\r\n")  # its next request, not resumed yet
    assert parker.close_oldest() and closed == ["next"]
    assert parker.close_oldest() and closed == ["next", "newest"]
    assert not parker.close_oldest() and len(parker) == 1
    parker.close_all()
    for sock in sockets:
        sock.close()


async def _refused_as_too_many_from_ip(port: int) -> bool:
    client = await HttpClient.connect(port)
    try:
        return (await client.request("GET", "/a.txt")).status == 503
    finally:
        await client.aclose()


async def test_a_parked_connection_keeps_its_slot_and_per_ip_count_until_it_closes(nursery, tmp_path, autojump_clock):
    running = await _start(nursery, tmp_path, max_connections=3, max_connections_per_ip=2)
    port = _port(running)
    first, second = await HttpClient.connect(port), await HttpClient.connect(port)
    for client in (first, second):
        assert (await client.request("GET", "/a.txt")).status == 200
    await trio.sleep(IDLE)
    assert len(running.listener_state.parker) == 2  # parked as their fds alone
    assert await _refused_as_too_many_from_ip(port)
    assert (await first.request("GET", "/a.txt")).status == 200  # served again: counted once, still
    await trio.sleep(IDLE)
    assert await _refused_as_too_many_from_ip(port)
    await first.aclose()  # leaves while parked: its count and slot go
    await trio.testing.wait_all_tasks_blocked()
    third = await HttpClient.connect(port)
    assert (await third.request("GET", "/a.txt")).status == 200
    await third.aclose()
    await trio.sleep(31)  # the keep-alive timeout closes the parked one
    assert await _closed_by_server(second)
    await trio.testing.wait_all_tasks_blocked()
    assert running.listener_state.stats.open_connections == 0
    with trio.fail_after(5):  # both slots and both counts are free again
        clients = [await HttpClient.connect(port) for _ in range(2)]
        for client in clients:
            assert (await client.request("GET", "/a.txt")).status == 200
        for client in clients:
            await client.aclose()
    running.shutdown.set()
