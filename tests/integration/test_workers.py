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


def _conf(tmp_path: Path, port: int, admin: int, flags: str = "") -> Path:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}{flags}"]\n'
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


def listen_inodes(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on 127.0.0.1:``port``."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            out.add(fields[9])
    return out


def held_inodes(pid: int, among: set[str]) -> set[str]:
    """Which of the socket inodes ``among`` process ``pid`` has open."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in among:
            out.add(link[8:-1])
    return out


async def test_with_reuseport_a_killed_workers_socket_is_kept_and_what_waits_in_it_is_served(tmp_path):
    """``reuseport``: a listen socket per worker, all held by the master too;
    a worker killed with SIGKILL is replaced on the same socket, and the
    connections the kernel queued in it meanwhile are answered, none refused."""
    port, admin = free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, port, admin, " reuseport"))])
    try:
        with trio.fail_after(20):
            while True:
                st = await _status(admin)
                if all(w["up"] for w in st["workers"]):
                    break
                await trio.sleep(0.05)  # polling the admin listener, bounded
        sockets = listen_inodes(port)
        assert len(sockets) == 2
        assert held_inodes(proc.pid, sockets) == sockets  # the master keeps every one
        mine = {w["index"]: held_inodes(w["pid"], sockets) for w in st["workers"]}
        assert len(mine[0]) == len(mine[1]) == 1 and mine[0] != mine[1]  # one each, none of the other's
        victim = st["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(10):
            while victim in _worker_pids(proc.pid):  # noqa: ASYNC110 - nothing to wait on
                await trio.sleep(0.02)
        # the restart waits RESTART_BACKOFF (0.5 s); meanwhile half the new connections queue in its socket
        waited: list[float] = []

        async def one() -> None:
            t0 = trio.current_time()
            assert (await _get(port, "/hello.txt"))[0] == 200
            waited.append(trio.current_time() - t0)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(one)
        assert len(waited) == 16
        assert max(waited) >= 0.3  # (the chance that none went to the dead worker's socket: 2^-16)
        st = await _status(admin)
        assert victim not in {w["pid"] for w in st["workers"]}
        assert held_inodes(st["workers"][0]["pid"], sockets) == mine[0]  # the same socket again
        assert listen_inodes(port) == sockets
    finally:
        log = await stop(proc, stderr)
    assert proc.returncode == 0, log.decode()
    assert not listen_inodes(port)


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
