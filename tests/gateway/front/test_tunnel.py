"""The tunnel after a 101 (``front.tunnel``), on memory streams and the
autojump clock: order, both directions, the idle deadline, who ends it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.front.tunnel import pump, switch
from gateway.http._h11 import h11
from gateway.http.response import Response
from gateway.metrics import TunnelStats


class FakeTunnel:
    def __init__(self, stream: trio.abc.Stream, prefix: bytes = b"") -> None:
        self.stream = stream
        self.prefix = prefix
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        await self.stream.aclose()


async def read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    got = b""
    while len(got) < n:
        data = await stream.receive_some(n - len(got))
        if not data:
            pytest.fail(f"EOF after {got!r}, expected {n} bytes")
        got += data
    return got


async def test_prefixes_first_then_both_ways_until_the_backend_closes(autojump_clock):
    client, client_gw = trio.testing.memory_stream_pair()
    backend_gw, backend = trio.testing.memory_stream_pair()
    tunnel = FakeTunnel(backend_gw, prefix=b"hello from the backend")
    ends = []

    async def run():
        ends.append(await pump(client_gw, tunnel, client_prefix=b"early client bytes", idle_timeout=60))

    async with trio.open_nursery() as n:
        n.start_soon(run)
        assert await read_exactly(client, 22) == b"hello from the backend"
        assert await read_exactly(backend, 18) == b"early client bytes"
        await client.send_all(b"ping")
        assert await read_exactly(backend, 4) == b"ping"
        await backend.send_all(b"pong!")
        assert await read_exactly(client, 5) == b"pong!"
        await backend.aclose()  # the backend ends it: the client side stops too
    (end,) = ends
    assert (end.reason, end.to_client, end.to_backend) == ("closed by the backend", 27, 22)


async def test_idle_deadline_rearmed_by_traffic_either_way(autojump_clock):
    client, client_gw = trio.testing.memory_stream_pair()
    backend_gw, backend = trio.testing.memory_stream_pair()
    ends = []

    async def run():
        ends.append(await pump(client_gw, FakeTunnel(backend_gw), client_prefix=b"", idle_timeout=10))

    async with trio.open_nursery() as n:
        n.start_soon(run)
        for i in range(6):  # 8 s apart, alternating directions: never idle for 10 s
            await trio.sleep(8)
            if i % 2:
                await client.send_all(b"c")
                await read_exactly(backend, 1)
            else:
                await backend.send_all(b"b")
                await read_exactly(client, 1)
        last = trio.current_time()
    (end,) = ends
    assert end.reason == "idle for 10s (timeouts.tunnel_idle)"
    assert trio.current_time() == pytest.approx(last + 10)
    assert (end.to_client, end.to_backend) == (3, 3)


async def test_switch_sends_the_101_and_counts_the_tunnel(autojump_clock):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nFRAME")
    assert isinstance(conn.next_event(), h11.Request) and isinstance(conn.next_event(), h11.EndOfMessage)
    client, client_gw = trio.testing.memory_stream_pair()
    backend_gw, backend = trio.testing.memory_stream_pair()
    tunnel = FakeTunnel(backend_gw)
    resp = Response(101, [(b"upgrade", b"websocket"), (b"connection", b"upgrade")], tunnel=tunnel)
    stats = TunnelStats()
    ends = []

    async def run():
        ends.append(await switch(conn, client_gw, resp, server_software=b"gw", idle_timeout=60, stats=stats,
                                 request_id="t"))

    async with trio.open_nursery() as n:
        n.start_soon(run)
        head = b""
        while b"\r\n\r\n" not in head:
            head += await client.receive_some()
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"upgrade: websocket\r\n" in head and b"server: gw\r\n" in head
        assert await read_exactly(backend, 5) == b"FRAME"  # sent past the request: the new protocol's
        assert (stats.open, stats.total) == (1, 1)
        await client.send_all(b"x" * 10)
        await read_exactly(backend, 10)
        await client.aclose()
    assert ends[0] is not None and ends[0].reason == "closed by the client"
    assert (stats.open, stats.total, resp.bytes_sent) == (0, 1, 0)
    assert conn.our_state is h11.SWITCHED_PROTOCOL
    await resp.aclose()
    assert tunnel.closed  # closing the response closes the backend connection


async def test_switch_refuses_a_request_that_did_not_ask(autojump_clock):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    conn.next_event(), conn.next_event()
    client, client_gw = trio.testing.memory_stream_pair()
    backend_gw, _ = trio.testing.memory_stream_pair()
    resp = Response(101, [(b"upgrade", b"websocket")], tunnel=FakeTunnel(backend_gw))
    stats = TunnelStats()
    assert await switch(conn, client_gw, resp, server_software=b"gw", idle_timeout=60, stats=stats,
                        request_id="t") is None
    assert stats.total == 0
