"""Each listen socket keeps its entry's flags, through a reload and into the
worker processes (which get fds, not addresses)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

from gateway.config import validate
from gateway.front.listen import reuses_port
from gateway.serve.master import listen_sets, read_spec, worker_listeners, write_spec
from gateway.serve.process import listen_specs, open_listen_map


async def test_flags_follow_their_socket_and_a_flag_change_keeps_the_socket():
    entries = ["127.0.0.1:0", "127.0.0.2:0 tls proxy_protocol"]
    by_address = await open_listen_map(entries)
    try:
        assert list(by_address) == ["127.0.0.1:0", "127.0.0.2:0"]
        listeners, specs = listen_specs(entries, by_address)
        assert [(s.tls, s.proxy_protocol) for s in specs] == [(False, False), (True, True)]
        assert listeners[1].socket.getsockname()[0] == "127.0.0.2"
        # a reload that drops a flag keeps the bound socket (same address key)
        kept = await open_listen_map(["127.0.0.1:0", "127.0.0.2:0 tls"], keep=by_address)
        assert kept["127.0.0.2:0"] is by_address["127.0.0.2:0"]
        assert [s.proxy_protocol for s in listen_specs(["127.0.0.1:0", "127.0.0.2:0 tls"], kept)[1]] == [False, False]
    finally:
        for ls in by_address.values():
            for listener in ls:
                await trio.aclose_forcefully(listener)


def test_a_worker_spec_carries_each_fds_entry(tmp_path):
    config = validate({"sites": {"a": {"root": str(tmp_path)}}, "server": {"listen": ["127.0.0.1:8443 tls"]}})
    path = write_spec(config, 0, 1, {}, str(tmp_path), [7], 9, "info", listen_entries=["127.0.0.1:8443 tls"])
    assert json.loads(Path(path).read_text())["listen_entries"] == ["127.0.0.1:8443 tls"]
    _, inherited, _ = read_spec(path)
    assert inherited.listen_fds == [7] and inherited.listen_entries == ["127.0.0.1:8443 tls"]


def _ports(listeners: list[trio.SocketListener]) -> set[int]:
    return {listener.socket.getsockname()[1] for listener in listeners}


async def _accept_one(sets: list[list[trio.SocketListener]], port: int) -> int:
    """Connect once to ``port``; the index of the set whose socket got it."""
    got: list[int] = []

    async def accept(j: int, listener: trio.SocketListener, cancel: trio.CancelScope) -> None:
        stream = await listener.accept()
        got.append(j)
        cancel.cancel()
        await stream.aclose()

    client = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for j, ls in enumerate(sets):
                nursery.start_soon(accept, j, ls[0], nursery.cancel_scope)
    await client.aclose()
    return got[0]


async def test_a_reuseport_address_gets_a_socket_per_worker_kept_through_reloads(caplog):
    entries = ["127.0.0.1:0 reuseport", "127.0.0.1:0"]
    first = await open_listen_map(entries[:1], reuseport=True)
    plain = await open_listen_map(entries[1:], reuseport=True)
    opened: list[trio.SocketListener] = []
    try:
        [(address, listeners)] = first.items()
        port = _ports(listeners).pop()
        with socket.socket() as other, pytest.raises(OSError):  # a plain bind is refused: no stranger joins
            other.bind(("127.0.0.1", port))
        # two workers: the first set and a clone on the same port
        two = await listen_sets(entries[:1], first, 2, {}, opened)
        assert len(two[address]) == 2 and len(opened) == 1 and _ports(opened) == {port}
        assert [worker_listeners(entries[:1], two, i, 2)[0] for i in (0, 1)] == [two[address][0], two[address][1]]
        # the kernel spreads connections over both
        got = {await _accept_one(two[address], port) for _ in range(40)}
        assert got == {0, 1}
        # a reload to 3 workers keeps both sets and adds one; back to 2, none is closed
        three = await listen_sets(entries[:1], first, 3, two, opened)
        assert three[address][:2] == two[address] and len(three[address]) == 3
        again = await listen_sets(entries[:1], first, 2, three, opened)
        assert again[address] == three[address]
        w0, specs0 = worker_listeners(entries[:1], again, 0, 2)
        assert w0 == [*three[address][0], *three[address][2]] and all(s.reuseport for s in specs0)
        assert worker_listeners(entries[:1], again, 1, 2)[0] == three[address][1]
        assert {await _accept_one(again[address], port) for _ in range(60)} == {0, 1, 2}
        # a shared address: one set, every worker serves it
        shared = await listen_sets(entries[1:], plain, 2, {}, opened)
        [(plain_address, plain_sets)] = shared.items()
        assert len(plain_sets) == 1 and not reuses_port(plain_sets[0])
        assert worker_listeners(entries[1:], shared, 1, 2)[0] == plain_sets[0]
        # the flag added on a kept socket waits for the next start, and says so
        flagged = ["127.0.0.1:0 reuseport"]
        assert len((await listen_sets(flagged, plain, 2, shared, opened))[plain_address]) == 1
        assert "reuseport added; it takes effect at the next start" in caplog.text
    finally:
        for listener in [*opened, *first["127.0.0.1:0"], *plain["127.0.0.1:0"]]:
            await trio.aclose_forcefully(listener)
