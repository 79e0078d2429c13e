"""Slow clients never hold PHP workers: checked with real php-fpm."""

from __future__ import annotations

import hashlib
import json
import os
import time

import trio
import trio.testing

from tests.helpers import HttpClient

from .conftest import DOCROOT, free_port, start_cli


async def wait_until(predicate) -> None:
    with trio.fail_after(20):
        while not predicate():  # noqa: ASYNC110 - the gateway exposes counters, not events; poll, bounded
            await trio.sleep(0.01)


async def test_slow_uploads_hold_no_php_worker(start_gateway):
    gw = await start_gateway(backend={"pool_size": 2})
    body = os.urandom(100_000)
    streams = []
    for _ in range(20):
        s = await trio.open_tcp_stream("127.0.0.1", gw.port)
        await s.send_all(b"POST /server.php HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:50_000])
        streams.append(s)
    # all 20 request heads are parsed and the gateway has read what was sent:
    # every upload is half way through its body
    await wait_until(lambda: gw.running.listener_state.stats.requests == 20)
    await trio.testing.wait_all_tasks_blocked()
    assert gw.running.listener_state.stats.in_flight == 20
    assert gw.pool.busy == 0 and gw.pool.stats.requests == 0
    for s in streams:
        await s.send_all(body[50_000:])
    for s in streams:
        client = HttpClient(s)
        client.request_sent_by_hand("POST", len(body))
        r = await client.read_response()
        assert json.loads(r.body)["input_md5"] == hashlib.md5(body).hexdigest()
    assert gw.pool.stats.requests == 20


async def test_slow_readers_release_php_workers_when_php_is_done(start_gateway):
    gw = await start_gateway(backend={"pool_size": 2})
    clients = []
    for _ in range(20):
        c = await gw.client()
        await c.stream.send_all(b"GET /big.php?mb=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        c.request_sent_by_hand()
        clients.append(c)
    # PHP has produced all 20 responses while no client has read a byte beyond the socket buffers
    await wait_until(lambda: gw.pool.instruments.responses == 20)
    assert gw.pool.busy == 0
    assert gw.running.listener_state.stats.states["writing"] == 20
    block = b"0123456789abcdef" * 65536
    want = hashlib.md5(block * 5).hexdigest()
    for c in clients:
        r = await c.read_response()
        assert r.status == 200 and hashlib.md5(r.body).hexdigest() == want


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def test_one_gigabyte_to_a_slow_reader_with_bounded_memory(tmp_path):
    port = free_port()
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}"]\naccess_log = "off"\ntemp_dir = "{tmp_path}"\n'
        f'[admin]\nlisten = "off"\n[backends.php]\npool_size = 1\nread_timeout = "120s"\nphp_fpm.user = "root"\n'
        f'[sites.t]\nroot = "{DOCROOT}"\nphp = "php"\n'
    )
    proc, _ = await start_cli(["serve", "--config", str(conf)])
    try:
        baseline = _rss_kib(proc.pid)
        peak = baseline
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /big.php?mb=1024 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        digest = hashlib.md5()
        head = b""
        received = 0
        last_sample = time.monotonic()
        with trio.fail_after(300):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(65536)
            head, _, first = head.partition(b"\r\n\r\n")
            digest.update(first)
            received = len(first)
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                digest.update(data)
                received += len(data)
                if received % (16 << 20) < 65536:
                    await trio.sleep(0.05)  # a reader slower than PHP: let the gateway buffer
                if time.monotonic() - last_sample > 0.1:
                    peak = max(peak, _rss_kib(proc.pid))
                    last_sample = time.monotonic()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert received == 1024 << 20
        block = b"0123456789abcdef" * 65536
        want = hashlib.md5()
        for _ in range(1024):
            want.update(block)
        assert digest.hexdigest() == want.hexdigest()
        print(f"gateway RSS: baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
        assert peak - baseline < 100 * 1024, f"RSS grew by {(peak - baseline) / 1024:.0f} MiB"
        assert peak < 100 * 1024, f"RSS peaked at {peak / 1024:.0f} MiB"
    finally:
        proc.terminate()
        with trio.move_on_after(15):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
