"""The page cache with a real php-fpm and real clients (curl, the CLI): what a
visitor and an operator see. PHP runs are counted by the PHP script itself,
one line per run in a file beside it."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import h11
import pytest
import trio

from gateway.http.cache_lock import HELD, decode
from gateway.http.ratelimit import HEADER_SIZE, KEY_SIZE, SLOT_SIZE
from tests.helpers import HttpClient

from .conftest import Gateway, StartGateway, free_port, start_cli
from .test_cli import stop
from .test_verdict import admin_status, assert_reached_and_held, verdicts_until

PAGE = r"""<?php
file_put_contents(__DIR__ . '/runs.log', $_SERVER['REQUEST_URI'] . "\n", FILE_APPEND | LOCK_EX);
if (isset($_GET['sleep'])) { usleep((int)$_GET['sleep'] * 1000); }
if (isset($_GET['setcookie'])) { setcookie('session', 'abc'); }
if (isset($_GET['purge'])) { header('X-Cache-Purge: ' . $_GET['purge']); }
header('X-Cache-Tags: page');
echo 'page ', $_SERVER['REQUEST_URI'], ' run ', uniqid('', true), "\n";
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.php").write_text(PAGE)
    (root / "runs.log").write_text("")
    return root


def runs(root: Path, uri: str) -> int:
    return (root / "runs.log").read_text().splitlines().count(uri)


async def get(gw: Gateway, target: str, method: str = "GET", headers=None):
    return await gw.get(target, method=method, headers=headers)


async def test_miss_hit_bypass_and_set_cookie_with_php_fpm(start_gateway: StartGateway, site: Path):
    gw = await start_gateway(site, site={"cache": {"enabled": True, "ttl": "1h"}})
    first, second = await get(gw, "/"), await get(gw, "/?utm_campaign=x")
    assert (first.header("x-cache"), second.header("x-cache")) == ("MISS", "HIT")
    assert first.body == second.body and runs(site, "/") == 1
    logged_in = await get(gw, "/", headers=[("Cookie", "wordpress_logged_in_123=admin")])
    assert logged_in.header("x-cache") == "BYPASS" and logged_in.body != first.body and runs(site, "/") == 2
    for _ in range(2):
        r = await get(gw, "/?setcookie=1")
        assert (r.header("x-cache"), r.header("set-cookie")) == ("MISS", "session=abc")
    assert runs(site, "/?setcookie=1") == 2
    assert (await get(gw, "/")).header("x-cache") == "HIT"


async def test_a_500_client_burst_on_a_cold_url_is_one_php_run(start_gateway: StartGateway, site: Path):
    gw = await start_gateway(site, site={"cache": {"enabled": True}})
    url = f"http://127.0.0.1:{gw.port}/cold/?sleep=300"
    result = await trio.run_process(
        ["curl", "-sS", "-Z", "--parallel-max", "500", "--parallel-immediate",
         "-w", "%{http_code} %header{x-cache}\\n", *["-o", "/dev/null", url] * 500], capture_stdout=True,
        capture_stderr=True)
    answers = result.stdout.decode().split("\n")[:-1]
    assert len(answers) == 500
    assert sorted(answers) == ["200 HIT"] * 499 + ["200 MISS"]
    assert runs(site, "/cold/?sleep=300") == 1
    assert gw.running.monitor.cache.lock_waits >= 1


async def test_purges_from_php_purge_requests_and_the_cli(start_gateway: StartGateway, site: Path):
    gw = await start_gateway(site, site={"cache": {"enabled": True}})
    for path in ("/", "/a/", "/b/"):
        await get(gw, path)
    # a comment form posted: PHP names the pages to purge
    r = await get(gw, "/comment/?purge=/a/", method="POST")
    assert r.header("x-cache-purge") is None
    assert [(await get(gw, p)).header("x-cache") for p in ("/", "/a/", "/b/")] == ["HIT", "MISS", "HIT"]
    r = await get(gw, "/b/", method="PURGE")
    assert (r.status, json.loads(r.body)) == (200, {"purged": 1})
    assert (await get(gw, "/b/")).header("x-cache") == "MISS"
    admin = gw.running.admin_listeners[0].socket.getsockname()[1]
    cli = await trio.run_process([sys.executable, "-m", "gateway", "purge", "--all", "--admin",
                                  f"127.0.0.1:{admin}"], capture_stdout=True)
    assert cli.stdout.decode() == "purged 3 entries\n"
    assert (await get(gw, "/")).header("x-cache") == "MISS"


def _conf(tmp_path: Path, root: Path, port: int, admin: int, cache: str = "") -> Path:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}"]\n'
        f'runtime_dir = "{tmp_path / "run"}"\naccess_log = "off"\n'
        f'processes = 2\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[backends.php]\npool_size = 4\nphp_fpm.user = "root"\n'
        f'[sites.t]\nroot = "{root}"\nphp = "php"\ncache.enabled = true\n{cache}'
    )
    return conf


async def _request(port: int, method: str, target: str) -> tuple[int, bytes]:
    client = await HttpClient.connect(port)
    try:
        r = await client.request(method, target)
    finally:
        await client.aclose()
    return r.status, r.body


async def _entries(admin: int) -> int:
    status, body = await _request(admin, "GET", "/status")
    assert status == 200
    return int(json.loads(body)["cache"]["entries"])


async def test_a_purge_reaches_every_worker_process(tmp_path: Path, site: Path):
    port, admin = free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, site, port, admin))])
    try:
        with trio.fail_after(20):
            while await _entries(admin) < 2:  # noqa: ASYNC110 - both workers hold /p/ once each has served it
                await _request(port, "GET", "/p/")
        # one PURGE, answered by one worker, has emptied the other's copy too by the time it is answered
        status, _ = await _request(port, "PURGE", "/p/")
        assert status == 200
        assert await _entries(admin) == 0
        with trio.fail_after(20):
            while await _entries(admin) < 2:  # noqa: ASYNC110 - bounded
                await _request(port, "GET", "/p/")
        cli = await trio.run_process([sys.executable, "-m", "gateway", "purge", "http://localhost/p/", "--admin",
                                      f"127.0.0.1:{admin}"], capture_stdout=True, stderr=subprocess.DEVNULL)
        assert cli.stdout.decode() == "purged 2 entries in 2 of 2 worker processes\n"
        assert await _entries(admin) == 0
    finally:
        await stop(proc, stderr)


async def _flood(gw: Gateway, target: str, clients: int, headers: list[tuple[str, str]], stop: trio.Event) -> None:
    async def one() -> None:
        while not stop.is_set():
            c = await gw.client()
            try:
                while not stop.is_set() and c.conn.our_state is not h11.MUST_CLOSE:
                    await c.request("GET", target, headers)
            except (trio.BrokenResourceError, OSError):
                pass
            finally:
                await c.aclose()

    async with trio.open_nursery() as n:
        for _ in range(clients):
            n.start_soon(one)


async def _verdict_under(gw: Gateway, target: str, headers: list[tuple[str, str]], verdict: str) -> dict:
    stop = trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(_flood, gw, target, 16, headers, stop)
        seen = await verdicts_until(gw, verdict)
        st = await admin_status(gw)
        stop.set()
    assert_reached_and_held(seen, verdict)
    return st


async def test_a_bypass_cookie_on_every_request_is_php_uncached_within_10s(start_gateway: StartGateway):
    # every visitor carries a cookie the site bypasses the cache for (a cookie
    # set too broadly): cacheable pages all go to PHP, which is saturated
    gw = await start_gateway(site={"cache": {"enabled": True}})
    st = await _verdict_under(gw, "/slow.php?ms=200", [("Cookie", "wordpress_logged_in_x=1")], "php-uncached")
    assert "bypass_cookies" in st["verdict"]["reason"]
    assert st["pools"]["php"]["cache_on"] is True and st["cache"]["requests"]["BYPASS"] > 0


async def test_without_a_cache_the_verdict_says_what_one_would_take(start_gateway: StartGateway):
    gw = await start_gateway()
    st = await _verdict_under(gw, "/slow.php?ms=200", [], "php-waiting")
    assert re.search(r"A page cache would take (9\d|100)% of this load off PHP", st["verdict"]["reason"])
    assert "cache" not in st


async def test_worker_processes_share_the_disk_tier(tmp_path: Path, site: Path):
    port, admin = free_port(), free_port()
    disk = tmp_path / "page-cache"
    proc, stderr = await start_cli(["serve", "--config",
                                    str(_conf(tmp_path, site, port, admin, f'cache.disk_dir = "{disk}"\n'))])
    try:
        first = await _request(port, "GET", "/shared/")
        # new connections land on either process: until both hold the page, all answer from the one PHP run
        with trio.fail_after(20):
            while await _entries(admin) < 2:  # noqa: ASYNC110 - bounded
                assert await _request(port, "GET", "/shared/") == first
        assert runs(site, "/shared/") == 1
        assert len([f for f in disk.rglob("*") if f.is_file()]) == 1
        status, _ = await _request(port, "PURGE", "/shared/")
        assert status == 200 and not [f for f in disk.rglob("*") if f.is_file()]
        assert await _entries(admin) == 0
    finally:
        await stop(proc, stderr)


async def _burst(url: str, n: int) -> list[str]:
    """``n`` parallel curl requests for ``url``: "STATUS X-CACHE" of each (000: no answer)."""
    result = await trio.run_process(
        ["curl", "-sS", "-Z", "--parallel-max", str(n), "--parallel-immediate",
         "-w", "%{http_code} %header{x-cache}\\n", *["-o", "/dev/null", url] * n], capture_stdout=True,
        capture_stderr=True, check=False)
    return result.stdout.decode().split("\n")[:-1]


async def test_a_500_client_burst_over_two_worker_processes_is_one_php_run(tmp_path: Path, site: Path):
    port, admin = free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, site, port, admin))])
    try:
        answers = await _burst(f"http://127.0.0.1:{port}/cold/?sleep=300", 500)
        assert sorted(answers) == ["200 HIT"] * 499 + ["200 MISS"]
        assert runs(site, "/cold/?sleep=300") == 1
        status, body = await _request(admin, "GET", "/status")
        st = json.loads(body)
        # both processes served the burst: each holds the page, from the one PHP run
        assert st["cache"]["entries"] == 2 and all(w["requests_total"] > 0 for w in st["workers"])
    finally:
        await stop(proc, stderr)


def _lock_holders(table: Path) -> set[int]:
    """The processes holding a page-cache lock in the workers' shared table."""
    buf = table.read_bytes()
    holders = set()
    for offset in range(HEADER_SIZE, len(buf) - SLOT_SIZE + 1, SLOT_SIZE):
        key, a, b, expires = struct.unpack_from(f"<{KEY_SIZE}sddd", buf, offset)
        lock = decode((a, b)) if key != bytes(KEY_SIZE) and expires > time.monotonic() else None
        if lock is not None and lock.phase == HELD:
            holders.add(lock.owner)
    return holders


async def test_a_lock_holder_killed_mid_fetch_leaves_no_waiter_hanging(tmp_path: Path, site: Path):
    port, admin = free_port(), free_port()
    conf = _conf(tmp_path, site, port, admin, 'cache.lock_timeout = "30s"\n')
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    url = f"http://127.0.0.1:{port}/slow/?sleep=3000"
    answers: list[str] = []

    async def clients() -> None:
        answers.extend(await _burst(url, 40))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(clients)
            with trio.fail_after(10):
                while True:  # one process holds the lock, and the other has clients waiting for it
                    holders = _lock_holders(tmp_path / "run" / "cache.locks")
                    st = json.loads((await _request(admin, "GET", "/status"))[1])
                    others = [w for w in st["workers"] if w.get("pid") not in holders and w.get("open", 0) > 0]
                    if len(holders) == 1 and others:
                        break
                    await trio.sleep(0.05)
            os.kill(holders.pop(), signal.SIGKILL)
            killed = trio.current_time()
        took = trio.current_time() - killed
    finally:
        await stop(proc, stderr)
    # the killed process's clients got no answer; the other's went to PHP at the next poll, once, not
    # after the 30 s lock_timeout (PHP takes 3 s)
    served = sorted(a for a in answers if not a.startswith("000"))
    assert len(answers) == 40 and served and served == ["200 HIT"] * (len(served) - 1) + ["200 MISS"]
    assert runs(site, "/slow/?sleep=3000") == 2 and took < 10
