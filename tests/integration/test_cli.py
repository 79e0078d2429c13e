"""The ``gateway`` command as a user runs it: check, serve --root, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from gateway.config import BackendConfig, PhpFpmConfig
from gateway.observe.monitor import children_of
from gateway.serve.php_fpm import find_php_fpm, write_pool_config
from tests.helpers import HttpClient

from .conftest import DOCROOT, free_port, start_cli

REPO = Path(__file__).parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]


def test_check_prints_the_effective_configuration():
    out = subprocess.run([*GATEWAY, "check", "--config", str(REPO / "conf.d")], capture_output=True, text=True,
                         check=True)
    assert '"try_files": [\n        "$uri",\n        "$uri/",\n        "/index.php?$args"' in out.stdout
    assert '"client_max_body_size": 67108864' in out.stdout


def test_check_names_file_and_key_of_a_mistake(tmp_path):
    (tmp_path / "00.toml").write_text('[sites.a]\nroot = "/srv"\n[server]\nlisten = "not-a-list"\n')
    out = subprocess.run([*GATEWAY, "check", "--config", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{tmp_path / '00.toml'}: server.listen:" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "localhost"])
def test_check_refuses_an_address_serve_could_not_listen_on(tmp_path, listen):
    (tmp_path / "00.toml").write_text(f'[sites.a]\nroot = "/srv"\n[server]\nlisten = ["{listen}"]\n')
    out = subprocess.run([*GATEWAY, "check", "--config", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{tmp_path / '00.toml'}: server.listen.0: listen address '{listen}'" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_reads_old_names_and_says_once_per_key_which_new_key_to_write(tmp_path):
    (tmp_path / "00.toml").write_text('[server]\nworkers = 2\n[backends.php]\nworkers = 3\nuser = "www-data"\n'
                                      '[sites.a]\nroot = "/srv"\nphp = "php"\n')
    out = subprocess.run([*GATEWAY, "check", "--config", str(tmp_path)], capture_output=True, text=True, check=True)
    effective = json.loads(out.stdout)
    assert effective["server"]["processes"] == 2 and "workers" not in effective["server"]
    php = effective["backends"]["php"]
    assert php["pool_size"] == 3 and php["php_fpm"]["user"] == "www-data" and "user" not in php
    f = tmp_path / "00.toml"
    warnings = [line for line in out.stderr.splitlines() if "deprecated" in line]
    assert len(warnings) == 3
    assert f"{f}: server.workers: deprecated, write server.processes instead" in warnings[0]
    assert f"{f}: backends.php.workers: deprecated, write backends.php.pool_size instead" in warnings[1]
    assert f"{f}: backends.php.user: deprecated, write backends.php.php_fpm.user instead" in warnings[2]


@pytest.mark.parametrize(("flags", "error"), [
    (["--listen", "127.0.0.1:99999"], "--listen: server.listen.0: listen address '127.0.0.1:99999': port 99999 is out"),
    (["--listen", "localhost"], "--listen: server.listen.0: listen address 'localhost' is not HOST:PORT"),
    (["--admin", "9180x"], "--admin: admin.listen: admin listen address '9180x' is not HOST:PORT"),
    (["--php", "php-fpm.sock"], "--php: backends.php.address: backend address 'php-fpm.sock' is not HOST:PORT"),
    (["--pool-size", "0"], "--pool-size: backends.php.pool_size: 0 is too small: it must be 1 or more"),
    (["--processes", "many"], "--processes: server.processes: 'many' is neither a whole number from 1 to 256"),
])
def test_serve_flags_are_validated_as_the_configuration_is(flags, error):
    out = subprocess.run([*GATEWAY, "serve", "--root", str(DOCROOT), *flags], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert error in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_flags_override_a_configuration_directory_through_validation():
    out = subprocess.run([*GATEWAY, "serve", "--config", str(REPO / "conf.d"), "--listen", "127.0.0.1:99999"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--listen: server.listen.0: listen address '127.0.0.1:99999'" in out.stderr


async def stop(proc: trio.Process, stderr: trio.abc.ReceiveStream, *, sigterm: bool = True) -> bytes:
    """SIGTERM the gateway (unless ``sigterm`` is False: it was sent already) and
    wait for it to exit; its log from here on."""
    if sigterm:
        proc.send_signal(signal.SIGTERM)
    rest = b""
    with trio.fail_after(20):
        while True:
            chunk = await stderr.receive_some(4096)
            if not chunk:
                break
            rest += chunk
        await proc.wait()
    return rest


async def test_serve_root_against_an_already_running_php_fpm(tmp_path):
    # php-fpm started by someone else (here: this test), reached at its socket.
    backend = BackendConfig(pool_size=2, php_fpm=PhpFpmConfig(user="root"))
    paths = write_pool_config("external", backend, str(tmp_path / "fpm"))
    fpm = await trio.lowlevel.open_process([find_php_fpm(), "-F", "-R", "-y", paths.config],
                                           stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(10):
            # php-fpm gives no readiness event but its socket file; poll for it, bounded
            while not os.path.exists(paths.socket):  # noqa: ASYNC110, ASYNC240
                await trio.sleep(0.02)
        port = free_port()
        proc, stderr = await start_cli(["serve", "--root", str(DOCROOT), "--listen", f"127.0.0.1:{port}",
                                        "--php", f"unix:{paths.socket}", "--admin", "off",
                                        "--user", "root"])  # its socket is in root's tmp_path
        client = await HttpClient.connect(port)
        r = await client.request("GET", "/some/permalink/")
        assert r.body == b"front:/index.php uri:/some/permalink/ qs:"
        pid = int((await client.request("GET", "/pid.php")).body)
        assert pid in children_of(fpm.pid)
        await client.aclose()
        await stop(proc, stderr)
        assert proc.returncode == 0
        assert fpm.returncode is None  # not ours to stop
    finally:
        # SIGTERM: php-fpm's master stops its workers (SIGKILL would orphan them)
        workers = children_of(fpm.pid)
        fpm.terminate()
        with trio.move_on_after(10):
            await fpm.wait()
        if fpm.returncode is None:
            fpm.kill()
            await fpm.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def test_serve_spawns_php_fpm_and_sigterm_stops_everything(tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}"]\nruntime_dir = "{run_dir}"\naccess_log = "off"\n'
        f'[admin]\nlisten = "127.0.0.1:0"\n'
        f'[backends.php]\npool_size = 2\nphp_fpm.user = "root"\n'
        f'[sites.t]\nroot = "{DOCROOT}"\nphp = "php"\n'
    )
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    client = await HttpClient.connect(port)
    r = await client.request("GET", "/pid.php")
    assert r.status == 200
    master = int((run_dir / "fpm-php" / "php-fpm.pid").read_text())
    assert master in children_of(proc.pid)
    # an idle kept-alive connection must not hold up shutdown
    log = await stop(proc, stderr)
    assert proc.returncode == 0, log.decode()
    assert not os.path.exists(f"/proc/{master}")  # noqa: ASYNC240
    assert b"Traceback" not in log


@pytest.mark.parametrize("processes", [1, 2])
async def test_sigterm_refuses_new_connections_at_once_and_finishes_the_request_in_flight(tmp_path, processes):
    port = free_port()
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "00.toml").write_text(  # php-fpm as root: it reads the test's go-files under tmp_path
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}"]\n'
        f'runtime_dir = "{tmp_path / "run"}"\naccess_log = "off"\n'
        f'processes = {processes}\n[admin]\nlisten = "off"\n'
        f'[backends.php]\npool_size = 2\nphp_fpm.user = "root"\n'
        f'[sites.t]\nroot = "{DOCROOT}"\nphp = "php"\n'
    )
    # with worker processes the master closes its copies first, then each worker
    closers = 1 if processes == 1 else 1 + processes
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    signalled = False
    held = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        # hold a streamed PHP response open: sse.php waits for go-files
        await held.send_all(f"GET /sse.php?dir={tmp_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = b""
        with trio.fail_after(20):
            while b"data: event 0" not in got:  # PHP is running it now
                got += await held.receive_some(65536)
        proc.send_signal(signal.SIGTERM)
        signalled = True
        log = b""
        with trio.fail_after(5):
            while log.count(b"listeners closed") < closers:
                chunk = await stderr.receive_some(4096)
                assert chunk, log.decode()
                log += chunk
        sock = trio.socket.socket()
        # refused, as by nginx (accepted, it would wait in the backlog until the gateway exits, then be reset)
        with trio.fail_after(1), sock, pytest.raises(ConnectionRefusedError):
            await sock.connect(("127.0.0.1", port))
    finally:
        for i in range(3):  # let PHP finish
            (tmp_path / f"go-{i}").touch()
        if not signalled:
            await stop(proc, stderr)
    with trio.fail_after(20):
        while chunk := await held.receive_some(65536):  # to the end: the gateway closes after it
            got += chunk
    await held.aclose()
    assert b"data: event 2\n\n" in got and got.endswith(b"\r\n0\r\n\r\n")  # the response in flight is whole
    log = await stop(proc, stderr, sigterm=False)
    assert proc.returncode == 0, log.decode()


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("taken_by", ["server", "admin"])
def test_a_port_in_use_is_named_and_php_fpm_never_starts(tmp_path, processes, taken_by):
    # php-fpm is a script that leaves a mark if it is ever run
    marker, fake = tmp_path / "php-fpm-ran", tmp_path / "php-fpm"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen, admin = (port, free_port()) if taken_by == "server" else (free_port(), port)
        conf = tmp_path / "conf.d"
        conf.mkdir()
        (conf / "00.toml").write_text(
            f'[server]\nlisten = ["127.0.0.1:{listen}"]\nprocesses = {processes}\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
            f'[backends.php]\npool_size = 2\nphp_fpm.binary = "{fake}"\n'
            f'[sites.t]\nroot = "{DOCROOT}"\nphp = "php"\n')
        out = subprocess.run([*GATEWAY, "serve", "--config", str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr and "php-fpm" not in out.stderr
    assert not marker.exists()


def test_old_flags_still_work_with_one_warning_line_each():
    # the values are wrong on purpose: the errors show where each old flag went
    out = subprocess.run([*GATEWAY, "serve", "--root", str(DOCROOT), "--workers", "0", "--php-workers", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    warnings = [line for line in out.stderr.splitlines() if "deprecated" in line]
    assert len(warnings) == 2
    assert "--workers is deprecated, write --processes instead" in warnings[0]
    assert "--php-workers is deprecated, write --pool-size instead" in warnings[1]
    assert "--workers: server.processes: 0 is neither a whole number from 1 to 256" in out.stderr
    assert "--php-workers: backends.php.pool_size: 0 is too small: it must be 1 or more" in out.stderr


def test_an_old_and_a_new_flag_together_are_refused():
    out = subprocess.run([*GATEWAY, "serve", "--root", str(DOCROOT), "--workers", "2", "--processes", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--workers and --processes are the same option: give --processes only" in out.stderr


def test_check_gives_one_line_per_problem_with_file_key_and_line(tmp_path):
    f = tmp_path / "00.toml"
    f.write_text('[server]\nlisten = ["127.0.0.1:8080"]\n[admin]\nlisten = "127.0.0.1:8080"\n'
                 '[sites.a]\nroot = "/srv/no-such-site"\n[sites.b]\nroot = "/srv"\ntry_files = ["$uri", "x.html"]\n')
    out = subprocess.run([*GATEWAY, "check", "--config", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"{f}: sites.b.try_files: the last entry, 'x.html', is not supported: every entry but the last is a "
        'file to look for, or a directory when it ends with "/" (a path starting with "/" or "$uri", using $uri, '
        '$host, $args, $query_string, $is_args; no "?"); the last is "=CODE" (400-599) or the URI to go to (a path, '
        'a "?" before its query, the same variables) (line 9)',
        f"{f}: admin.listen: 127.0.0.1:8080 overlaps server.listen.0 (127.0.0.1:8080): each listener needs its own "
        "address or port (line 4)",
        f"{f}: sites.a.root: /srv/no-such-site does not exist (a typo? serve would answer 404 to everything) (line 6)",
    ]
    assert "Traceback" not in out.stderr


def test_version_and_short_help():
    out = subprocess.run([*GATEWAY, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("gateway ") and out.stdout.split()[1][0].isdigit()
    out = subprocess.run([*GATEWAY, "-h"], capture_output=True, text=True, check=True)
    assert "serve" in out.stdout and "check" in out.stdout
    out = subprocess.run([*GATEWAY, "serve", "-h"], capture_output=True, text=True, check=True)
    assert "--root" in out.stdout


@pytest.mark.parametrize("flags", [["--php", "unix:/run/php.sock"], ["--pool-size", "8"]])
def test_a_root_only_flag_without_root_is_an_error(flags):
    out = subprocess.run([*GATEWAY, "serve", "--config", str(REPO / "conf.d"), *flags], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert f"{flags[0]} goes with --root" in out.stderr


@pytest.mark.parametrize("processes", [1, 2])
async def test_start_up_logs_urls_and_status_reads_the_admin_address_from_config(tmp_path, processes):
    port, admin = free_port(), free_port()
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "00.toml").write_text(  # an external backend that is not there: nothing PHP is asked
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nprocesses = {processes}\naccess_log = "off"\n'
        f'[admin]\nlisten = ":{admin}"\n'
        f'[backends.php]\naddress = "unix:{tmp_path}/none.sock"\npool_size = 2\n'
        f'[sites.t]\nroot = "{DOCROOT}"\nphp = "php"\n')
    proc = await trio.lowlevel.open_process([*GATEWAY, "serve", "--config", str(conf)], stderr=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    log = b""
    try:
        with trio.fail_after(20):
            while b"listening on" not in log or b"admin (" not in log:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, log.decode()
                log += chunk
        assert f"listening on http://127.0.0.1:{port}".encode() in log
        assert b"admin (/status, /metrics) on http://" in log and f":{admin}".encode() in log
        assert b"('" not in log  # no Python tuples
        out = await trio.run_process([*GATEWAY, "status", "--config", str(conf), "--json"], capture_stdout=True,
                                     capture_stderr=True, check=False)
        assert out.returncode == 0, out.stderr.decode()
        assert "verdict" in json.loads(out.stdout)
    finally:
        await stop(proc, proc.stderr)


def test_status_with_config_names_the_address_it_tried(tmp_path):
    port = free_port()
    (tmp_path / "00.toml").write_text(f'[admin]\nlisten = "0.0.0.0:{port}"\n[sites.a]\nroot = "/nowhere"\n')
    out = subprocess.run([*GATEWAY, "status", "--config", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"cannot read http://127.0.0.1:{port}/status" in out.stderr
    (tmp_path / "00.toml").write_text('[admin]\nlisten = "off"\n[sites.a]\nroot = "/srv"\n')
    out = subprocess.run([*GATEWAY, "status", "--config", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "admin.listen is off: there is no admin listener to read" in out.stderr
