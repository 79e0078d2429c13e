"""A dead or hung php-fpm on a quiet site (no request at all) is reported as
``backend-down`` within 10 s by the active health check, and clears once
php-fpm answers again; real php-fpm, real sockets, the real monitor."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from gateway.config import BackendConfig, PhpFpmConfig
from gateway.serve.php_fpm import FpmPaths, find_php_fpm, write_pool_config

from .test_verdict import admin_status

WITHIN = 10.0


async def seconds_until(gw, bottleneck: str, limit: float = WITHIN) -> float:
    """Seconds until /status says ``bottleneck`` (TooSlowError past ``limit``)."""
    start = trio.current_time()
    with trio.fail_after(limit):
        while True:
            if (await admin_status(gw))["verdict"]["bottleneck"] == bottleneck:
                return trio.current_time() - start
            await trio.sleep(0.1)


async def until_checked_up(gw) -> None:
    """Until the health check has answered (the verdict is "healthy" from start-up on)."""
    with trio.fail_after(WITHIN):
        while True:
            if (await admin_status(gw))["pools"]["php"]["backend"]["up"]:
                return
            await trio.sleep(0.1)


async def start_fpm(paths: FpmPaths) -> trio.Process:
    for path in (paths.socket, paths.status_socket):
        if os.path.exists(path):  # noqa: ASYNC240 - a local socket file
            os.unlink(path)
    fpm = await trio.lowlevel.open_process([find_php_fpm(), "-F", "-R", "-y", paths.config],
                                           stderr=subprocess.DEVNULL, start_new_session=True)
    with trio.fail_after(10):
        while not os.path.exists(paths.status_socket):  # noqa: ASYNC110, ASYNC240 - php-fpm's readiness is its socket
            await trio.sleep(0.02)
    return fpm


async def kill_fpm(fpm: trio.Process) -> None:
    """SIGKILL php-fpm's whole process group: a worker the master forked just
    before it died would otherwise outlive the test."""
    os.killpg(fpm.pid, signal.SIGKILL)
    await fpm.wait()


@pytest.mark.parametrize("with_status", [True, False], ids=["status-page-check", "connect-check"])
async def test_dead_external_php_fpm_on_a_quiet_site_is_backend_down_within_10s(start_gateway, tmp_path: Path,
                                                                               with_status: bool):
    paths = write_pool_config("ext", BackendConfig(pool_size=2, php_fpm=PhpFpmConfig(user="root")),
                              str(tmp_path / "fpm"))
    fpm = await start_fpm(paths)
    try:
        backend = {"address": f"unix:{paths.socket}"}
        if with_status:
            backend["status"] = f"unix:{paths.status_socket}"
        gw = await start_gateway(backend=backend)
        await until_checked_up(gw)
        await seconds_until(gw, "healthy")
        await kill_fpm(fpm)
        took = await seconds_until(gw, "backend-down")
        print(f"backend-down {took:.1f}s after php-fpm was killed ({'status page' if with_status else 'connect'})")
        st = await admin_status(gw)
        assert "has not answered its health check" in st["verdict"]["reason"]
        assert st["pools"]["php"]["backend"]["up"] is False
        assert st["pools"]["php"]["responses_total"] == 0 and st["pools"]["php"]["errors"] == {}  # no traffic
        fpm = await start_fpm(paths)
        took = await seconds_until(gw, "healthy")
        print(f"healthy again {took:.1f}s after php-fpm was back")
        assert (await admin_status(gw))["pools"]["php"]["backend"]["up"] is True
        assert (await gw.get("/pid.php")).status == 200
    finally:
        if fpm.returncode is None:
            await kill_fpm(fpm)


async def test_hung_spawned_php_fpm_is_backend_down_within_10s(gw):
    """The supervisor sees its php-fpm running; only the ping tells it no longer answers."""
    await until_checked_up(gw)
    await seconds_until(gw, "healthy")
    group = gw.supervisor.process.pid
    os.killpg(group, signal.SIGSTOP)
    try:
        took = await seconds_until(gw, "backend-down")
        print(f"backend-down {took:.1f}s after php-fpm was stopped")
        assert gw.supervisor.running
        st = await admin_status(gw)
        assert "ping unix:" in st["verdict"]["reason"] and "no answer within" in st["verdict"]["reason"]
    finally:
        os.killpg(group, signal.SIGCONT)
    took = await seconds_until(gw, "healthy")
    print(f"healthy again {took:.1f}s after php-fpm was continued")
    assert (await gw.get("/pid.php")).status == 200


async def test_the_check_answers_while_every_worker_is_busy_and_takes_no_slot(gw):
    """Its own connection to php-fpm's status socket: no pool slot, no worker."""
    health = gw.running.monitor.pools[0].health

    async def slow():
        with trio.move_on_after(20):
            await gw.get("/slow.php?ms=3000")

    async with trio.open_nursery() as n:
        for _ in range(4):
            n.start_soon(slow)
        with trio.fail_after(10):
            while not (gw.pool.busy == 2 and gw.pool.waiting == 2):  # noqa: ASYNC110 - observing the pool fill
                await trio.sleep(0.02)
        assert await health.check() is True
        assert (gw.pool.busy, gw.pool.waiting) == (2, 2)  # the probe took no slot and jumped no queue
