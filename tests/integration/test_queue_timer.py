"""The PHP queue under a burst, with the pool's queue timer (``Pool.run_reaper``)
and a real php-fpm: every waiter ends exactly queue_timeout after it
queued (a 504) or when its client leaves, nothing is left in line, and a
shutdown ends a waiting line after timeouts.graceful, not its queue_timeout."""

from __future__ import annotations

from functools import partial

import trio

from gateway.config import validate
from gateway.serve.process import serve
from tests.helpers import HttpClient

from .conftest import DOCROOT, gateway_config


async def test_a_burst_on_two_hung_workers_is_504_at_queue_timeout_and_leavers_leave(start_gateway):
    gw = await start_gateway(backend={"pool_size": 2, "queue_timeout": "2s", "queue_depth": 1000})
    pool = gw.pool
    hung = [await gw.client() for _ in range(2)]
    stayed: list[tuple[int, float]] = []
    async with trio.open_nursery() as n:
        for c in hung:
            n.start_soon(c.request, "GET", "/slow.php?ms=5000")
        with trio.fail_after(10):
            while pool.busy < 2:
                await pool.changed()

        async def one(i: int) -> None:
            c = await HttpClient.connect(gw.port)
            t0 = trio.current_time()
            if i % 2:  # half leave from just before to just after their deadline, as the timer fires
                await c.stream.send_all(b"GET /slow.php?ms=10 HTTP/1.1\r\nHost: x\r\n\r\n")
                await trio.sleep(1.9 + (i % 20) * 0.01)
            else:
                r = await c.request("GET", "/slow.php?ms=10")
                stayed.append((r.status, trio.current_time() - t0))
            await c.aclose()

        with trio.fail_after(20):
            async with trio.open_nursery() as burst:
                for i in range(256):
                    burst.start_soon(one, i)
        n.cancel_scope.cancel()
    assert {status for status, _ in stayed} == {504} and len(stayed) == 128
    waits = sorted(wait for _, wait in stayed)
    assert waits[0] >= 2.0 and waits[-1] < 3.5, (waits[0], waits[-1])
    with trio.fail_after(10):
        while pool.waiting:
            await pool.changed()
    assert pool.stats.queue_timeouts + pool.stats.client_gone_in_queue == 256
    assert pool.stats.queue_timeouts >= 128


async def test_shutdown_ends_a_waiting_line_after_graceful_not_queue_timeout(tmp_path):
    cfg = validate({**gateway_config(DOCROOT, backend={"pool_size": 1, "queue_timeout": "30s"},
                                     runtime_dir=str(tmp_path / "run")),
                    "timeouts": {"graceful": "1s"}})
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(partial(serve, cfg, handle_signals=False))
            port = running.listeners[0].socket.getsockname()[1]
            pool = running.pools["php"]
            clients = [await HttpClient.connect(port) for _ in range(6)]
            await clients[0].stream.send_all(b"GET /slow.php?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
            while not pool.busy:
                await pool.changed()
            for c in clients[1:]:
                await c.stream.send_all(b"GET /slow.php?ms=10 HTTP/1.1\r\nHost: x\r\n\r\n")
            while pool.waiting < 5:
                await pool.changed()
            t0 = trio.current_time()
            running.shutdown.set()
        took = trio.current_time() - t0
        for c in clients:  # each connection was closed (EOF), none left hanging
            while await c.stream.receive_some(65536):
                pass
            await c.aclose()
    assert 1 <= took < 5  # graceful (1 s) and php-fpm's stop, not the queue's 30 s
    assert pool.waiting == 0 and pool.busy == 0
