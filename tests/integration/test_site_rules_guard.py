"""rate_limit, access and basic_auth in front of a real php-fpm, checked as an
operator would: curl and plain HTTP clients, PHP's own view of the request,
the admin listener's metrics.

The issue's case first: a login flood on ``wp-login.php`` gets 429s at the
configured rate while other pages stay fast (and PHP runs only for the
requests that pass). Floods are short (a few seconds) and bounded in clients.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import HttpClient
from tests.integration.conftest import Gateway, StartGateway, free_port, start_cli
from tests.integration.test_cli import stop

OFFICE = "127.0.0.5"  # a client address the tests bind (any 127/8 address is local)
#: how long each flood lasts, seconds
FLOOD = 3.0


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "wp-admin").mkdir(parents=True)
    # every run of the login script leaves a line: what PHP really ran
    (root / "wp-login.php").write_text(
        '<?php file_put_contents(__DIR__ . "/../logins.log", "x\\n", FILE_APPEND | LOCK_EX); echo "login form";')
    (root / "index.php").write_text('<?php echo "home";')
    (root / "wp-admin" / "index.php").write_text('<?php echo "dashboard";')
    (root / "wp-admin" / "admin-ajax.php").write_text('<?php echo "ajax";')
    (root / "whoami.php").write_text(
        "<?php echo json_encode([$_SERVER['REMOTE_USER'] ?? null, $_SERVER['PHP_AUTH_USER'] ?? null]);")
    return root


def php_runs(docroot: Path) -> int:
    log = docroot.parent / "logins.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


async def curl(port: int, path: str, *args: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) as curl gets them."""
    out = await trio.run_process(["curl", "-s", "-D", "-", "--max-time", "20", *args, f"http://127.0.0.1:{port}{path}"],
                                 capture_stdout=True, check=True)
    head, _, body = out.stdout.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def flood(port: int, path: str, clients: int, *, new_connection: bool = False) -> list[tuple[int, str | None]]:
    """``clients`` clients asking for ``path`` as fast as they get answers, for
    FLOOD seconds: (status, Retry-After) of each answer."""
    answers: list[tuple[int, str | None]] = []
    deadline = trio.current_time() + FLOOD

    async def one() -> None:
        client = await HttpClient.connect(port)
        try:
            reconnect = False
            while trio.current_time() < deadline:
                if new_connection or reconnect:
                    await client.aclose()
                    client = await HttpClient.connect(port)
                r = await client.request("GET", path)
                answers.append((r.status, r.header("retry-after")))
                reconnect = r.header("connection") == "close"  # (keepalive_requests, 1000)
        finally:
            await client.aclose()

    with trio.fail_after(FLOOD + 20):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(one)
    return answers


def check_flood(answers: list[tuple[int, str | None]], rate: float, burst: int) -> int:
    """The flood's answers are 200s at the rate (plus the burst) and 429s with
    an integer Retry-After; the number of 200s."""
    passed = sum(1 for status, _ in answers if status == 200)
    refused = [retry for status, retry in answers if status == 429]
    assert passed + len(refused) == len(answers), {s for s, _ in answers}
    assert refused and all(retry is not None and retry.isdigit() and int(retry) >= 1 for retry in refused)
    # the first request, the burst, then one per 1/rate over FLOOD seconds (+1 for the flood's own ragged end)
    assert rate * FLOOD - 1 <= passed <= 1 + burst + rate * FLOOD + 1, (passed, len(answers))
    return passed


async def test_a_login_flood_gets_429s_at_the_rate_while_other_pages_stay_fast(start_gateway: StartGateway,
                                                                                 docroot: Path):
    gw: Gateway = await start_gateway(docroot, site={"rate_limit": [
        {"paths": ["/wp-login.php", "/xmlrpc.php"], "rate": "4r/s", "burst": 2, "nodelay": True}]})
    visits: list[tuple[int, float]] = []
    flood_done = trio.Event()

    async def visitor() -> None:
        client = await gw.client()
        try:
            while not flood_done.is_set():
                t0 = trio.current_time()
                r = await client.request("GET", "/index.php")
                visits.append((r.status, trio.current_time() - t0))
                await trio.sleep(0.05)  # a reader, not a flood (pacing, not synchronisation)
        finally:
            await client.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(visitor)
        answers = await flood(gw.port, "/wp-login.php", clients=4)
        flood_done.set()
    passed = check_flood(answers, rate=4.0, burst=2)
    assert len(answers) > 5 * passed  # it was a flood
    assert php_runs(docroot) == passed  # PHP ran for the requests that passed, not for the 429s
    assert len(visits) >= 10 and all(status == 200 for status, _ in visits)
    assert max(t for _, t in visits) < 1.0, sorted(t for _, t in visits)[-5:]
    assert gw.running.monitor.guard.rate_limited == {"t": len(answers) - passed}
    # the limit is the client's: another address is served at once
    status, _, body = await curl(gw.port, "/wp-login.php", "--interface", OFFICE)
    assert (status, body) == (200, "login form")


async def test_without_nodelay_the_burst_waits_for_its_turn(start_gateway: StartGateway, docroot: Path):
    gw = await start_gateway(docroot, site={"rate_limit": [{"paths": ["/wp-login.php"], "rate": "5r/s",
                                                            "burst": 3}]})
    done: list[tuple[int, float]] = []
    t0 = trio.current_time()

    async def login() -> None:
        r = await gw.get("/wp-login.php")
        done.append((r.status, trio.current_time() - t0))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(login)
    served = sorted(t for status, t in done if status == 200)
    assert sorted(status for status, _ in done) == [200, 200, 200, 200, 429]
    # 5r/s: served about 0, 0.2, 0.4, 0.6 s after they came in together
    assert served[-1] >= 0.55 and all(b - a >= 0.15 for a, b in zip(served, served[1:], strict=False)), served


async def test_wp_admin_from_the_office_only_with_admin_ajax_open(start_gateway: StartGateway, docroot: Path):
    gw = await start_gateway(docroot, site={"access": [
        {"paths": ["/wp-admin/"], "allow": [OFFICE, "2001:db8::/32"], "deny": ["all"]},
        {"paths": ["/wp-admin/admin-ajax.php"], "allow": ["all"]},
    ]})
    office = ("--interface", OFFICE)
    assert (await curl(gw.port, "/wp-admin/", *office))[::2] == (200, "dashboard")
    assert (await curl(gw.port, "/wp-admin/index.php", *office))[::2] == (200, "dashboard")
    assert (await curl(gw.port, "/wp-admin/"))[0] == 403  # from 127.0.0.1
    assert (await curl(gw.port, "/wp-admin/index.php"))[0] == 403
    assert (await curl(gw.port, "/wp-admin/%69ndex.php"))[0] == 403  # escapes do not slip past
    assert (await curl(gw.port, "/wp-admin/admin-ajax.php"))[::2] == (200, "ajax")
    assert (await curl(gw.port, "/"))[::2] == (200, "home")
    assert gw.running.monitor.guard.access_denied == {"t": 3}


async def test_behind_a_trusted_proxy_the_rules_see_the_real_client(start_gateway: StartGateway, docroot: Path):
    gw = await start_gateway(docroot, server={"trusted_proxies": ["127.0.0.1"]}, site={
        "rate_limit": [{"paths": ["/wp-login.php"], "rate": "1r/m"}],
        "access": [{"paths": ["/wp-admin/"], "allow": ["203.0.113.0/24"], "deny": ["all"]}]})

    def via(client: str) -> tuple[str, str]:
        return ("-H", f"X-Forwarded-For: {client}")

    assert [(await curl(gw.port, "/wp-login.php", *via("203.0.113.7")))[0] for _ in range(2)] == [200, 429]
    assert (await curl(gw.port, "/wp-login.php", *via("198.51.100.1")))[0] == 200  # another client behind it
    assert (await curl(gw.port, "/wp-admin/", *via("203.0.113.7")))[0] == 200
    assert (await curl(gw.port, "/wp-admin/", *via("198.51.100.1")))[0] == 403
    # from an untrusted peer the header is believed for nothing
    assert (await curl(gw.port, "/wp-admin/", *via("203.0.113.7"), "--interface", OFFICE))[0] == 403


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "staging.htpasswd"
    subprocess.run(["htpasswd", "-cbB", str(path), "editor", "s3cret pass"], check=True, capture_output=True)
    subprocess.run(["htpasswd", "-bm", str(path), "old", "apr1-pass"], check=True, capture_output=True)
    return path


async def test_basic_auth_for_a_staging_site(start_gateway: StartGateway, docroot: Path, user_file: Path):
    gw = await start_gateway(docroot, site={"basic_auth": [
        {"realm": "Staging site", "user_file": str(user_file), "max_failures": 3, "failure_window": "1m"}]})
    status, headers, _ = await curl(gw.port, "/whoami.php")
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="Staging site"'
    status, _, body = await curl(gw.port, "/whoami.php", "-u", "editor:s3cret pass")
    assert (status, json.loads(body)) == (200, ["editor", "editor"])  # REMOTE_USER and PHP_AUTH_USER, as nginx
    assert (await curl(gw.port, "/whoami.php", "-u", "old:apr1-pass"))[0] == 200
    for guess in ("a", "b", "c"):
        assert (await curl(gw.port, "/whoami.php", "-u", f"editor:{guess}"))[0] == 401
    status, headers, _ = await curl(gw.port, "/whoami.php", "-u", "editor:s3cret pass")
    assert status == 429 and 1 <= int(headers["retry-after"]) <= 60  # that address is locked out for the window
    assert (await curl(gw.port, "/whoami.php", "-u", "editor:s3cret pass", "--interface", OFFICE))[0] == 200
    guard = gw.running.monitor.guard
    assert (guard.auth_failures, guard.auth_blocked) == ({"t": 3}, {"t": 1})


def _conf(tmp_path: Path, docroot: Path, port: int, admin: int) -> Path:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}"]\n'
        f'runtime_dir = "{tmp_path / "run"}"\naccess_log = "off"\n'
        f'processes = 2\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[backends.php]\npool_size = 2\nphp_fpm.user = "root"\n'
        f'[sites.t]\nroot = "{docroot}"\nphp = "php"\n'
        '[[sites.t.rate_limit]]\npaths = ["/wp-login.php"]\nrate = "2r/s"\nnodelay = true\n'
        '[[sites.t.rate_limit]]\npaths = ["/xmlrpc.php"]\nrate = "1r/m"\n'
    )
    return conf


async def test_two_processes_hold_one_limit(tmp_path: Path, docroot: Path):
    """A flood on new connections lands on both processes; the limit is the
    configured one for the whole, not one per process."""
    port, admin = free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, docroot, port, admin))])
    try:
        answers = await flood(port, "/wp-login.php", clients=4, new_connection=True)
        passed = check_flood(answers, rate=2.0, burst=0)
        assert php_runs(docroot) == passed
        client = await HttpClient.connect(admin)
        try:
            body = (await client.request("GET", "/metrics")).body.decode()
        finally:
            await client.aclose()
        by_worker = {s.labels["worker"]: s.value for f in text_string_to_metric_families(body) for s in f.samples
                     if s.name == "gateway_rate_limited_total" and s.labels["site"] == "t"}
        assert set(by_worker) == {"0", "1"} and all(n > 0 for n in by_worker.values())  # both were flooded
        assert sum(by_worker.values()) == len(answers) - passed
        # a reload (new worker processes) keeps the clients' states, as nginx keeps its zones
        assert [(await curl(port, "/xmlrpc.php"))[0] for _ in range(2)] == [404, 429]
        proc.send_signal(signal.SIGHUP)
        log = b""
        with trio.fail_after(30):
            while b"previous configuration have stopped" not in log:
                chunk = await stderr.receive_some(4096)
                assert chunk, log.decode()
                log += chunk
        status, headers, _ = await curl(port, "/xmlrpc.php")
        assert status == 429 and 50 <= int(headers["retry-after"]) <= 60
    finally:
        log = await stop(proc, stderr)
    assert proc.returncode == 0, log.decode()
    assert b"Traceback" not in log


def test_curl_is_installed():
    # never skip: scripts/setup --test installs curl and apache2-utils
    assert subprocess.run(["curl", "--version"], capture_output=True).returncode == 0
    assert subprocess.run(["htpasswd", "-nb", "u", "p"], capture_output=True).returncode == 0
    assert sys.executable
