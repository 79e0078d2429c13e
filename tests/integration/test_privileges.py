"""Started as root, the gateway serves as ``[server] user`` (``serve.privileges``):
real processes, their ids read from /proc. The master keeps root (as nginx's),
its worker processes and php-fpm's workers do not; a root closed to a user
who needs it is a one-line error at ``check`` and at start."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.observe.monitor import children_of
from tests.helpers import HttpClient

from .conftest import DOCROOT, free_port, start_cli
from .test_cli import stop

GATEWAY = [sys.executable, "-m", "gateway"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def ids(pid: int) -> tuple[list[int], list[int]]:
    """(real, effective, saved, fs uids), (the same gids) of ``pid``, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return [int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _conf(tmp_path: Path, port: int, server: str = "", php_fpm: str = "", root: Path = DOCROOT,
          processes: int = 2, access_log: str = "off") -> Path:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    # no runtime_dir: the default one (/tmp/gateway-*) is made for the user; tmp_path is root's alone
    (conf / "00.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\naccess_log = "{access_log}"\nprocesses = {processes}\n{server}'
        f'[admin]\nlisten = "off"\n'
        f'[backends.php]\npool_size = 2\n[backends.php.php_fpm]\n{php_fpm}'
        f'[sites.t]\nroot = "{root}"\nphp = "php"\n')
    return conf


@pytest.mark.parametrize("processes", [1, 2])
async def test_worker_processes_and_php_fpm_workers_run_as_www_data_by_default(tmp_path, processes):
    www = pwd.getpwnam("www-data")
    port = free_port()
    access_log = tmp_path / "access.log"  # in root's tmp_path: opened before the drop
    conf = _conf(tmp_path, port, processes=processes, access_log=str(access_log))
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    try:
        client = await HttpClient.connect(port)
        assert (await client.request("GET", "/hello.txt")).status == 200  # a static file, read as www-data
        php_pid = int((await client.request("GET", "/pid.php")).body)
        await client.aclose()
        children = children_of(proc.pid)
        workers = [p for p in children if b"worker" in cmdline(p)]
        fpm_master = next(p for p in children if b"php-fpm" in cmdline(p))
        assert len(workers) == processes  # processes = 1 too: the master, root, serves no client
        for pid in workers:
            assert ids(pid) == ([www.pw_uid] * 4, [www.pw_gid] * 4), pid
        assert ids(proc.pid)[0] == [0] * 4  # the master keeps root, as nginx's
        assert ids(fpm_master)[0] == [0] * 4  # php-fpm's master: root, to set its workers' user
        assert php_pid in children_of(fpm_master)
        for pid in children_of(fpm_master):
            assert ids(pid) == ([www.pw_uid] * 4, [www.pw_gid] * 4), pid
    finally:
        await stop(proc, stderr)
    assert proc.returncode == 0
    assert access_log.stat().st_uid == www.pw_uid  # so a worker may reopen it
    assert '"GET /pid.php HTTP/1.1" 200' in access_log.read_text()


async def test_server_user_and_a_different_php_fpm_user(tmp_path):
    nobody, www = pwd.getpwnam("nobody"), pwd.getpwnam("www-data")
    port = free_port()
    conf = _conf(tmp_path, port, server='user = "nobody"\n', php_fpm='user = "www-data"\n', processes=1)
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    try:
        client = await HttpClient.connect(port)
        r = await client.request("GET", "/pid.php")  # the gateway (nobody) reaches php-fpm's (www-data's) socket
        assert r.status == 200
        await client.aclose()
        assert ids(int(r.body))[0] == [www.pw_uid] * 4
        workers = [p for p in children_of(proc.pid) if b"worker" in cmdline(p)]
        assert [ids(p)[0] for p in workers] == [[nobody.pw_uid] * 4]
    finally:
        await stop(proc, stderr)


def test_a_root_closed_to_www_data_is_one_line_at_check_and_at_start(tmp_path):
    site = tmp_path / "site"  # tmp_path is root's alone (0700)
    site.mkdir()
    conf = _conf(tmp_path, free_port(), root=site)
    # FILE: KEY: the path, the user (and the line that set the key)
    line = (f"{conf / '00.toml'}: sites.t.root: {site}: not readable by user www-data (the gateway's user, "
            "[server] user); give it r-x on the directory and x on every one above, or choose another user (line ")
    out = subprocess.run([*GATEWAY, "check", "--config", str(conf)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [line + "11)"], out.stderr
    out = subprocess.run([*GATEWAY, "serve", "--config", str(conf)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [line + "11)"], out.stderr  # before anything starts


def test_php_fpm_workers_are_root_only_when_written(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    conf = _conf(tmp_path, free_port(), server='user = "root"\n', root=site)
    out = subprocess.run([*GATEWAY, "check", "--config", str(conf)], capture_output=True, text=True, timeout=30)
    # the gateway keeps root as written, but php-fpm's workers still default to www-data
    assert out.returncode == 2 and "not readable by user www-data (php-fpm's workers" in out.stderr, out.stderr
    (conf / "00.toml").write_text((conf / "00.toml").read_text().replace("[backends.php.php_fpm]\n",
                                                                         '[backends.php.php_fpm]\nuser = "root"\n'))
    assert subprocess.run([*GATEWAY, "check", "--config", str(conf)], capture_output=True, timeout=30).returncode == 0
