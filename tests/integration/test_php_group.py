"""A PHP backend on two php-fpm pools (two "hosts" on loopback): balanced,
and when one dies under load no GET fails: those in flight there are retried
on the other (they had no response byte yet), the dead one leaves rotation.
(Real separate hosts, in network namespaces: test_netns_hosts.py.)"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import trio

from gateway.config import BackendConfig, PhpFpmConfig, validate
from gateway.serve.php_fpm import write_pool_config
from gateway.serve.process import Running, serve
from tests.helpers import HttpClient

from .conftest import DOCROOT, gateway_config
from .test_backend_health import kill_fpm, start_fpm


async def test_two_php_fpm_hosts_balanced_and_one_dies_under_load(nursery, tmp_path: Path):
    pools = [write_pool_config(name, BackendConfig(pool_size=3, php_fpm=PhpFpmConfig(user="root")),
                               str(tmp_path / name)) for name in ("a", "b")]
    fpms = [await start_fpm(paths) for paths in pools]
    try:
        data = gateway_config(DOCROOT, runtime_dir=str(tmp_path / "run"),
                              backend={"pool_size": 3, "balance": "round_robin"})
        backend = data["backends"]["php"]
        del backend["address"], backend["php_fpm"]
        backend["addresses"] = [f"unix:{paths.socket}" for paths in pools]
        running: Running = await nursery.start(partial(serve, validate(data), handle_signals=False))
        port = running.listeners[0].socket.getsockname()[1]
        pool = running.pools["php"]

        async def get(target: str) -> tuple[int, bytes]:
            c = await HttpClient.connect(port)
            try:
                r = await c.request("GET", target)
                return r.status, r.body
            finally:
                await c.aclose()

        pids = [int((await get("/pid.php"))[1]) for _ in range(12)]
        per_member = [m.stats.requests for m in pool.members]
        assert per_member == [6, 6]  # round robin over the two hosts
        assert len(set(pids)) >= 2

        failed: list[tuple[int, bytes]] = []
        answered = 0

        async def client(n: int) -> None:
            nonlocal answered
            for _ in range(n):
                status, body = await get("/slow.php?ms=50")
                if status != 200 or not re.match(rb"slept 50 pid \d+", body):
                    failed.append((status, body[:80]))
                answered += 1

        async with trio.open_nursery() as load:
            for _ in range(6):
                load.start_soon(client, 20)
            with trio.fail_after(30):
                while answered < 30:  # noqa: ASYNC110 - counters, not events; bounded
                    await trio.sleep(0.01)
            await kill_fpm(fpms[0])  # host a dies with requests in flight
        assert answered == 120
        assert failed == []  # 0 failed GETs
        dead = pool.members[0]
        assert dead.down_since is not None
        assert pool.stats.retries >= 1
    finally:
        for fpm in fpms:
            if fpm.returncode is None:
                await kill_fpm(fpm)


async def test_a_dead_php_fpm_host_leaves_rotation_without_traffic_and_comes_back(nursery, tmp_path: Path):
    from .test_slow_clients import wait_until

    pools = [write_pool_config(name, BackendConfig(pool_size=2, php_fpm=PhpFpmConfig(user="root")),
                               str(tmp_path / name)) for name in ("a", "b")]
    fpms = [await start_fpm(paths) for paths in pools]
    try:
        data = gateway_config(DOCROOT, runtime_dir=str(tmp_path / "run"),
                              backend={"pool_size": 2, "health": {"interval": "200ms", "timeout": "1s"}})
        backend = data["backends"]["php"]
        del backend["address"], backend["php_fpm"]
        backend["addresses"] = [f"unix:{paths.socket}" for paths in pools]
        running: Running = await nursery.start(partial(serve, validate(data), handle_signals=False))
        pool = running.pools["php"]
        # both pinned by nothing yet; a's php-fpm dies: the connect check sees it, no request needed
        await kill_fpm(fpms[0])
        await wait_until(lambda: pool.members[0].down_since is not None)
        assert pool.members[0].stats.requests == 0 and pool.size == 2
        fpms[0] = await start_fpm(pools[0])
        await wait_until(lambda: pool.members[0].down_since is None)
        assert pool.size == 4
    finally:
        for fpm in fpms:
            if fpm.returncode is None:
                await kill_fpm(fpm)
