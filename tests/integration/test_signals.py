"""Signals, as nginx (README "Signals", ``gateway.serve.signals``), with real
processes and real signals: HUP reloads under load without a failed request,
an invalid configuration on HUP changes nothing, USR1 reopens the logs after
``mv``, QUIT stops gracefully, and a SIGKILLed master leaves no php-fpm and
no worker behind (``gateway.serve.watchdog``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.helpers import HttpClient

from .conftest import DOCROOT, free_port, start_cli
from .reload_load import LoadResult, run_load
from .test_workers import _worker_pids, held_inodes, listen_inodes

GATEWAY = [sys.executable, "-m", "gateway"]


class LogWatch:
    """Drains the gateway's standard error (so it never blocks on a full pipe)
    and lets a test wait, bounded, for a line to appear ``count`` times."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.text = ""
        self._changed = trio.Event()
        self.closed = False

    async def run(self) -> None:
        while chunk := await self.stream.receive_some(65536):
            self.text += chunk.decode(errors="replace")
            self._changed.set()
            self._changed = trio.Event()
        self.closed = True
        self._changed.set()

    async def changed(self) -> None:
        """Wait for more log (or its end)."""
        if not self.closed:
            await self._changed.wait()

    async def until_closed(self) -> None:
        while not self.closed:
            await self._changed.wait()

    async def wait_for(self, text: str, count: int = 1) -> None:
        with trio.fail_after(20):
            while self.text.count(text) < count:
                assert not self.closed, f"gateway exited; waiting for {text!r}:\n{self.text}"
                await self._changed.wait()


def write_conf(conf: Path, port: int, run: Path, *, processes: int = 2, software: str = "gw-0", pool_size: int = 4,
               extra: str = "", logs: Path | None = None, admin: int = 0, flags: str = "") -> None:
    logs_conf = (f'access_log = "{logs / "access.log"}"\nerror_log = "{logs / "error.log"}"\n' if logs
                 else 'access_log = "off"\n')
    (conf / "00.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}{flags}"]\nruntime_dir = "{run}"\n{logs_conf}'
        f'processes = {processes}\nuser = "root"\nserver_software = "{software}"\n'
        f'pid_file = "{run.parent / "gateway.pid"}"\n'
        f'[timeouts]\ngraceful = "5s"\n'
        f'[admin]\nlisten = "{f"127.0.0.1:{admin}" if admin else "off"}"\n'
        f'[backends.php]\npool_size = {pool_size}\nphp_fpm.user = "root"\n'
        f'[sites.t]\nroot = "{DOCROOT}"\nphp = "php"\ndefault = true\n{extra}'
    )


async def _get(port: int, target: str, host: str = "localhost") -> tuple[int, dict[bytes, bytes], bytes]:
    client = await HttpClient.connect(port)
    try:
        r = await client.request("GET", target, host=host)
    finally:
        await client.aclose()
    return r.status, r.headers, r.body


async def _start(tmp_path: Path, nursery: trio.Nursery, **conf_kw) -> tuple[trio.Process, LogWatch, Path, int]:
    conf = tmp_path / "conf.d"
    conf.mkdir(exist_ok=True)
    port = free_port()
    write_conf(conf, port, tmp_path / "run", **conf_kw)
    if conf_kw.get("logs") is None:
        proc, stderr = await start_cli(["serve", "--config", str(conf)])
    else:  # the log goes to a file: wait there
        proc = await trio.lowlevel.open_process([*GATEWAY, "serve", "--config", str(conf)], stderr=subprocess.PIPE,
                                                stdout=subprocess.DEVNULL)
        assert proc.stderr is not None
        stderr = proc.stderr
        error_log = conf_kw["logs"] / "error.log"
        try:
            with trio.fail_after(20):
                while not error_log.exists() or b"listening on" not in error_log.read_bytes():  # noqa: ASYNC110
                    assert proc.returncode is None
                    await trio.sleep(0.02)  # nothing to wait on but the file's content
        except BaseException:
            proc.send_signal(signal.SIGTERM)  # ours: never left running
            raise
    watch = LogWatch(stderr)
    nursery.start_soon(watch.run)
    return proc, watch, conf, port


async def _stop(proc: trio.Process, watch: LogWatch) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        await proc.wait()
        await watch.until_closed()  # its php-fpm and workers (which share the pipe) are gone too


async def reload_under_load(proc: trio.Process, watch: LogWatch, conf: Path, port: int, run: Path, *,
                            reloads: int, clients: int, processes: int = 2, flags: str = "",
                            processes_at: Callable[[int], int] | None = None) -> LoadResult:
    """``clients`` clients while a reload is sent every second, ``reloads`` times
    (the third also resizes the php-fpm pool; ``processes_at(n)``: the
    processes of the n-th); the load goes on until the last configuration
    answers."""
    stop = trio.Event()

    async def reload_every_second() -> None:
        for n in range(1, reloads + 1):
            await trio.sleep(1.0)  # pacing the reloads, not waiting for anything
            write_conf(conf, port, run, software=f"gw-{n}", pool_size=6 if n >= 3 else 4, flags=flags,
                       processes=processes_at(n) if processes_at is not None else processes)
            proc.send_signal(signal.SIGHUP)
        with trio.fail_after(30):
            while (await _get(port, "/hello.txt"))[1].get(b"server") != f"gw-{reloads}".encode():
                await watch.changed()
        await trio.sleep(0.5)  # pacing: some load on the last configuration
        stop.set()

    async with trio.open_nursery() as load:
        load.start_soon(reload_every_second)
        return await run_load(port, stop, clients)


@pytest.mark.parametrize("flags", ["", " reuseport"])
async def test_hup_under_load_fails_no_request_and_the_new_config_takes_over(tmp_path, nursery, flags):
    """50 clients, a reload every second for 4 s (the third also resizes the
    php-fpm pool, so php-fpm is replaced under load): not one failed request;
    with one shared listen socket, and with ``reuseport`` (a socket per worker,
    handed from each old worker to the new one)."""
    proc, watch, conf, port = await _start(tmp_path, nursery, flags=flags)
    try:
        result = await reload_under_load(proc, watch, conf, port, tmp_path / "run", reloads=4, clients=50,
                                         flags=flags)
        with trio.fail_after(20):
            while watch.text.count("previous configuration have stopped") < watch.text.count("reloaded:"):
                await watch.changed()
        print(f"reload under load: {result.ok} ok, {result.failed} failed, {result.stale_retries} stale keep-alive "
              f"resends, {watch.text.count('reloaded:')} reloads, by Server: {dict(result.servers)}")
        assert result.failed == 0, (result.errors, watch.text)
        assert result.ok > 200
        assert result.servers["gw-0"] and result.servers["gw-4"]
        status, headers, _ = await _get(port, "/pid.php")
        assert status == 200 and headers[b"server"] == b"gw-4"
        # php-fpm was replaced (pool_size 4 -> 6) once, under load
        assert watch.text.count("php-fpm for backend php is ready") == 1  # (start_cli read the first start's)
        # one php-fpm (of 6 workers) and 2 workers are left: the old ones have stopped
        assert len(_worker_pids(proc.pid)) == 2
        fpm_masters = [p for p in _children(proc.pid) if b"php-fpm" in _cmdline(p)]
        assert len(fpm_masters) == 1
        conf_path = _cmdline(fpm_masters[0]).split(b"(", 1)[1].split(b")", 1)[0].decode()
        assert "pm.max_children = 6" in Path(conf_path).read_text()  # noqa: ASYNC240 - the new one
        # (its status pool starts workers on demand: the count is 6 and one or two)
        assert len(_children(fpm_masters[0])) >= 6 + 1
    finally:
        await _stop(proc, watch)
    assert proc.returncode == 0
    assert "Traceback" not in watch.text


async def test_reuseport_reloads_to_more_and_fewer_processes_under_load_fail_no_request(tmp_path, nursery):
    """``reuseport``, 2 -> 3 -> 2 worker processes by reloads under load: a
    socket is added for the third; going back to 2, it is kept (closing it
    would reset what waits in it) and served by worker 0 beside its own."""
    proc, watch, conf, port = await _start(tmp_path, nursery, flags=" reuseport")
    try:
        result = await reload_under_load(proc, watch, conf, port, tmp_path / "run", reloads=4, clients=50,
                                         flags=" reuseport", processes_at=lambda n: 3 if n in (1, 2) else 2)
        with trio.fail_after(20):
            while watch.text.count("previous configuration have stopped") < watch.text.count("reloaded:"):
                await watch.changed()
        print(f"reuseport 2 -> 3 -> 2 processes under load: {result.ok} ok, {result.failed} failed, "
              f"{result.stale_retries} stale keep-alive resends, by Server: {dict(result.servers)}")
        assert result.failed == 0, (result.errors, watch.text)
        assert result.servers["gw-1"] and result.servers["gw-4"]
        sockets = listen_inodes(port)
        assert len(sockets) == 3 and held_inodes(proc.pid, sockets) == sockets
        workers = sorted(_worker_pids(proc.pid))
        assert len(workers) == 2
        assert sorted(len(held_inodes(pid, sockets)) for pid in workers) == [1, 2]
    finally:
        await _stop(proc, watch)
    assert proc.returncode == 0
    assert "Traceback" not in watch.text


async def test_invalid_config_on_hup_keeps_the_old_one_serving_and_says_file_and_key(tmp_path, nursery):
    proc, watch, conf, port = await _start(tmp_path, nursery)
    try:
        (conf / "50-typo.toml").write_text('[limits]\nclient_max_body = "1m"\n')
        proc.send_signal(signal.SIGHUP)
        await watch.wait_for("reload refused")
        line = next(x for x in watch.text.splitlines() if "reload refused" in x)
        assert f"{conf / '50-typo.toml'}: limits.client_max_body: unknown key" in line
        assert "Traceback" not in watch.text
        status, headers, _ = await _get(port, "/pid.php")
        assert status == 200 and headers[b"server"] == b"gw-0"
        # `gateway reload` checks first, as `nginx -s reload` does: nothing is sent
        out = await _cli("reload", "--config", str(conf))
        assert out.returncode == 2 and "limits.client_max_body: unknown key" in out.stderr
        # fixed, and a new site: `gateway reload` (the pid file) takes it up
        (conf / "50-typo.toml").write_text(f'[sites.new]\nserver_names = ["new.test"]\nroot = "{DOCROOT / "sub"}"\n')
        out = await _cli("reload", "--config", str(conf))
        assert out.returncode == 0, out.stderr
        await watch.wait_for("previous configuration have stopped")
        assert (await _get(port, "/pid.php", host="new.test"))[0] == 404  # the new site: no such file there
        assert (await _get(port, "/pid.php"))[0] == 200
    finally:
        await _stop(proc, watch)
    assert proc.returncode == 0


async def test_hup_in_one_process_restarts_in_place_on_the_same_pid_and_socket(tmp_path, nursery):
    proc, watch, conf, port = await _start(tmp_path, nursery, processes=1)
    try:
        # a HUP a second, and a restart takes about that long: some arrive while the
        # new image starts, and must wait for it (blocked across execv), not kill it
        result = await reload_under_load(proc, watch, conf, port, tmp_path / "run", reloads=3, clients=20,
                                         processes=1)
        print(f"one-process reload under load: {result.ok} ok, {result.failed} failed, "
              f"{result.stale_retries} stale keep-alive resends")
        assert result.failed == 0, (result.errors, watch.text)
        assert proc.returncode is None  # the same process, re-executed
        assert int((tmp_path / "gateway.pid").read_text()) == proc.pid
        status, headers, _ = await _get(port, "/pid.php")
        assert status == 200 and headers[b"server"] == b"gw-3"
        assert "restarting in place" in watch.text
    finally:
        await _stop(proc, watch)
    assert proc.returncode == 0
    assert not (tmp_path / "gateway.pid").exists()


@pytest.mark.parametrize("processes", [1, 2])
async def test_usr1_after_mv_writes_to_new_log_files(tmp_path, nursery, processes):
    logs = tmp_path / "logs"
    logs.mkdir()
    proc, watch, conf, port = await _start(tmp_path, nursery, processes=processes, logs=logs)
    try:
        error_log = logs / "error.log"
        assert (await _get(port, "/hello.txt"))[0] == 200
        (logs / "access.log").rename(logs / "access.log.1")
        error_log.rename(logs / "error.log.1")
        out = await _cli("reopen", "--config", str(conf))
        assert out.returncode == 0, out.stderr
        with trio.fail_after(10):
            # every process has reopened once its line is in the new error log
            while (error_log.read_text().count("reopened") if error_log.exists() else 0) < processes:  # noqa: ASYNC110
                await trio.sleep(0.02)
        for _ in range(4):
            assert (await _get(port, "/hello.txt?after"))[0] == 200
        with trio.fail_after(10):  # a line is written just after its response
            while (logs / "access.log").read_text().count("/hello.txt?after") < 4:  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert "?after" not in (logs / "access.log.1").read_text()
        assert "/hello.txt" in (logs / "access.log.1").read_text()
    finally:
        await _stop(proc, watch)
    assert proc.returncode == 0


async def test_quit_stops_gracefully(tmp_path, nursery):
    admin = free_port()
    proc, watch, _, port = await _start(tmp_path, nursery, admin=admin)
    fpm = int((tmp_path / "run" / "fpm-php" / "php-fpm.pid").read_text())
    client = await HttpClient.connect(port)
    result: list[int] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            async def slow() -> None:
                result.append((await client.request("GET", "/slow.php?ms=700")).status)

            inner.start_soon(slow)
            while json.loads((await _get(admin, "/status"))[2])["listener"]["in_flight"] < 1:  # noqa: ASYNC110
                await trio.sleep(0.02)
            proc.send_signal(signal.SIGQUIT)
    assert result == [200]
    with trio.fail_after(20):
        await proc.wait()
    assert proc.returncode == 0
    assert "received SIGQUIT" in watch.text
    assert not _alive(fpm)


@pytest.mark.parametrize("processes", [1, 2])
async def test_sigkill_of_the_master_leaves_no_php_fpm_and_no_worker(tmp_path, nursery, processes):
    proc, watch, _, port = await _start(tmp_path, nursery, processes=processes)
    try:
        fpm = int((tmp_path / "run" / "fpm-php" / "php-fpm.pid").read_text())
        left = [fpm, *_children(fpm), *_worker_pids(proc.pid)]
        # php-fpm, its 4 workers (+ pm.status_listen's), our workers: all there before the kill
        assert len(left) >= 1 + 4 + 1 + (processes if processes > 1 else 0)
        assert (await _get(port, "/pid.php"))[0] == 200
    except BaseException:
        await _stop(proc, watch)
        raise
    proc.kill()
    killed = time.monotonic()
    await proc.wait()
    pid_file = tmp_path / "gateway.pid"
    with trio.fail_after(5):
        while (alive := [p for p in left if _alive(p)]) or pid_file.exists():  # noqa: ASYNC110
            await trio.sleep(0.05)
    took = time.monotonic() - killed
    print(f"processes = {processes}: php-fpm and workers gone {took:.2f}s after SIGKILL of the master")
    assert not alive
    assert "the gateway's master died: stopping php-fpm" in watch.text


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    with trio.fail_after(30):
        out = await trio.run_process([*GATEWAY, *args], capture_stdout=True, capture_stderr=True, check=False)
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(), out.stderr.decode())


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    from gateway.observe.monitor import children_of

    return [p for p in children_of(pid) if _alive(p)]


async def test_a_runtime_dir_left_by_a_killed_master_and_watchdog_is_cleaned_at_the_next_start(tmp_path, nursery):
    proc, watch, conf, port = await _start(tmp_path, nursery)
    run = tmp_path / "run"
    write_conf(conf, port, run, software="gw-1", pool_size=6)  # a new php-fpm, in fpm-php.g1
    proc.send_signal(signal.SIGHUP)
    await watch.wait_for("previous configuration have stopped")
    stale_fpm = int((run / "fpm-php.g1" / "php-fpm.pid").read_text())
    dog = next(p for p in _children(proc.pid) if b"gateway.serve.watchdog" in _cmdline(p))
    os.kill(dog, signal.SIGKILL)  # nothing left to clean up after the master...
    proc.kill()
    await proc.wait()
    assert _alive(stale_fpm)  # ...so php-fpm runs on, orphaned
    try:
        proc2, watch2, _, port2 = await _start(tmp_path, nursery)  # the same runtime_dir
        try:
            with trio.fail_after(5):
                while _alive(stale_fpm):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert not (run / "fpm-php.g1").exists()
            assert (await _get(port2, "/pid.php"))[0] == 200
        finally:
            await _stop(proc2, watch2)
    finally:
        if _alive(stale_fpm):
            os.kill(stale_fpm, signal.SIGTERM)  # its master stops its workers


async def test_term_during_a_reload_stops_at_once_and_leaves_nothing(tmp_path, nursery):
    proc, watch, conf, port = await _start(tmp_path, nursery)
    write_conf(conf, port, tmp_path / "run", software="gw-1", pool_size=6)  # a new php-fpm, then new workers
    proc.send_signal(signal.SIGHUP)
    await watch.wait_for("the configuration is valid")
    everything = [*_children(proc.pid)]
    proc.send_signal(signal.SIGTERM)  # while the new generation starts
    with trio.fail_after(10):
        await proc.wait()
        await watch.until_closed()  # the pipe: every process that shares it is gone
    assert proc.returncode == 0
    assert not [p for p in everything if _alive(p)]
    assert "reloaded:" not in watch.text
    assert "Traceback" not in watch.text
