"""``processes = 2``: two gateway processes on one port and one php-fpm, seen as one
through the admin listener; a dead worker is replaced; none outlives the master."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import HttpClient

from .conftest import DOCROOT, free_port, start_cli
from .test_cli import stop


def _conf(tmp_path: Path, port: int, admin: int) -> Path:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}"]\n'
        f'runtime_dir = "{tmp_path / "run"}"\naccess_log = "off"\n'
        f'processes = 2\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[backends.php]\npool_size = 4\nphp_fpm.user = "root"\n'
        f'[sites.t]\nroot = "{DOCROOT}"\nphp = "php"\n'
    )
    return conf


async def _get(port: int, target: str) -> tuple[int, bytes]:
    client = await HttpClient.connect(port)
    try:
        r = await client.request("GET", target)
    finally:
        await client.aclose()
    return r.status, r.body


async def _status(admin: int) -> dict:
    status, body = await _get(admin, "/status")
    assert status == 200
    return json.loads(body)


def _worker_pids(master: int) -> set[int]:
    from gateway.observe.monitor import children_of

    out = set()
    for pid in children_of(master):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"worker" in cmdline and b"gateway" in cmdline:
            out.add(pid)
    return out


async def test_two_processes_share_the_port_split_php_and_report_as_one(tmp_path):
    port, admin = free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, port, admin))])
    try:
        results: list[int] = []

        async def slow() -> None:
            status, _ = await _get(port, "/slow.php?ms=400")
            results.append(status)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(slow)
                # while 12 requests are in: never more than php-fpm's 4 workers busy
                while (st := await _status(admin))["listener"]["in_flight"] < 12:  # noqa: ASYNC110
                    await trio.sleep(0.02)
                php = st["pools"]["php"]
                assert php["size"] == 4
                assert php["busy"] <= 4
                assert php["busy"] + php["queue_depth"] == 12
        assert results == [200] * 12
        st = await _status(admin)
        assert st["listener"]["requests_total"] == 12
        assert st["pools"]["php"]["responses_total"] == 12
        assert [w["up"] for w in st["workers"]] == [True, True]
        assert {w["pid"] for w in st["workers"]} == _worker_pids(proc.pid)
        status, body = await _get(admin, "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        sizes = {s.labels["worker"]: s.value for s in families["gateway_pool_size"].samples}
        assert sizes == {"0": 2.0, "1": 2.0}  # 4 php-fpm workers: 2 connections per process
        out = await trio.run_process([sys.executable, "-m", "gateway", "status", "--admin", f"127.0.0.1:{admin}"],
                                     capture_stdout=True)
        text = out.stdout.decode()
        assert "pool php: 0/4 busy" in text
        assert all(f"pid {w['pid']}" in text for w in st["workers"])
    finally:
        log = await stop(proc, stderr)
    assert proc.returncode == 0, log.decode()
    assert b"Traceback" not in log
    assert not _worker_pids(proc.pid)


async def test_a_killed_worker_is_replaced_and_requests_go_on(tmp_path):
    port, admin = free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, port, admin))])
    try:
        with trio.fail_after(20):
            while True:
                st = await _status(admin)
                if all(w["up"] for w in st["workers"]):
                    break
                await trio.sleep(0.05)
            victim = st["workers"][0]["pid"]
            os.kill(victim, signal.SIGKILL)
            log = b""
            while b"restarting" not in log:
                log += await stderr.receive_some(4096)
            while True:
                workers = (await _status(admin))["workers"]
                if all(w["up"] for w in workers) and victim not in {w["pid"] for w in workers}:
                    break
                await trio.sleep(0.05)
        for _ in range(20):
            assert (await _get(port, "/pid.php"))[0] == 200
    finally:
        log = await stop(proc, stderr)
    assert proc.returncode == 0, log.decode()


async def test_workers_leave_when_the_master_is_killed(tmp_path):
    port, admin = free_port(), free_port()
    proc, _ = await start_cli(["serve", "--config", str(_conf(tmp_path, port, admin))])
    fpm = int((tmp_path / "run" / "fpm-php" / "php-fpm.pid").read_text())
    try:
        with trio.fail_after(20):
            workers = _worker_pids(proc.pid)  # up: the master said "listening" once they served
            assert len(workers) == 2
            proc.kill()  # no chance to clean up
            await proc.wait()
            # the workers see their pipe from the master close, and stop
            while any(os.path.exists(f"/proc/{pid}") for pid in workers):  # noqa: ASYNC110, ASYNC240
                await trio.sleep(0.05)
    finally:
        try:
            os.kill(fpm, signal.SIGTERM)  # php-fpm was the master's to stop
        except ProcessLookupError:
            pass
