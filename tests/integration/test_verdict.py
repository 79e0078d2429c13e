"""The verdict, reproduced with real php-fpm: each answer appears within 10 s of
its load starting and, once there, does not change while the load lasts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import h11
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import BackendConfig, PhpFpmConfig
from gateway.serve.php_fpm import find_php_fpm, write_pool_config
from tests.helpers import HttpClient

from .conftest import free_port

WITHIN = 10.0


async def load(gw, target: str, clients: int, stop: trio.Event) -> None:
    async def one():
        while not stop.is_set():
            c = await gw.client()
            try:
                while not stop.is_set() and c.conn.our_state is not h11.MUST_CLOSE:
                    await c.request("GET", target)
            except (trio.BrokenResourceError, OSError):
                pass
            finally:
                await c.aclose()

    async with trio.open_nursery() as n:
        for _ in range(clients):
            n.start_soon(one)


async def admin_status(gw) -> dict:
    port = gw.running.admin_listeners[0].socket.getsockname()[1]
    c = await HttpClient.connect(port)
    try:
        return json.loads((await c.request("GET", "/status")).body)
    finally:
        await c.aclose()


async def verdicts_until(gw, target: str, hold_after: float = 3.0) -> list[str]:
    """Sample /status every 250 ms until ``target`` has been seen and held for
    ``hold_after`` more seconds, or WITHIN seconds pass without it. Returns the
    sequence of verdicts seen."""
    seen: list[str] = []
    first_at = None
    start = trio.current_time()
    while True:
        st = await admin_status(gw)
        seen.append(st["verdict"]["bottleneck"])
        now = trio.current_time()
        if seen[-1] == target and first_at is None:
            first_at = now
        if first_at is None and now - start > WITHIN:
            return seen
        if first_at is not None and now - first_at >= hold_after:
            return seen
        await trio.sleep(0.25)


def assert_reached_and_held(seen: list[str], target: str) -> None:
    assert target in seen, f"{target} never appeared within {WITHIN}s: {seen}"
    first = seen.index(target)
    assert set(seen[:first]) <= {"healthy"}, seen
    assert set(seen[first:]) == {target}, seen


async def test_idle_is_healthy_and_metrics_parse(gw):
    for _ in range(5):
        assert (await gw.get("/pid.php")).status == 200
    # Sample until php-fpm's aggregate counters agree with its process list: its
    # master refreshes them once a second, so right after start they still
    # count the processes it has just replaced.
    monitor = gw.running.monitor
    with trio.fail_after(10):
        while True:
            await monitor.sample()
            fpm = monitor.pools[0].fpm_status
            if fpm and fpm["total processes"] == len(fpm["processes"]):
                break
            await trio.sleep(0.1)
    st = await admin_status(gw)
    assert st["verdict"]["bottleneck"] == "healthy"
    assert st["pools"]["php"]["size"] == 2 and st["pools"]["php"]["responses_total"] == 5
    assert st["pools"]["php"]["php_fpm"]["total_processes"] == 2
    port = gw.running.admin_listeners[0].socket.getsockname()[1]
    c = await HttpClient.connect(port)
    text = (await c.request("GET", "/metrics")).body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["gateway_pool_queue_wait_seconds"].type == "histogram"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("gateway_pool_size", (("pool", "php"),))] == 2
    assert samples[("gateway_pool_responses_total", (("pool", "php"),))] == 5
    assert samples[("gateway_pool_queue_wait_seconds_count", (("pool", "php"),))] == 5
    assert samples[("gateway_verdict", (("bottleneck", "healthy"),))] == 1
    assert samples[("gateway_requests_total", ())] >= 5


async def flood_until(gw, target: str, clients: int, verdict: str) -> dict:
    """Load ``target`` with ``clients`` until ``verdict`` holds (or WITHIN passes);
    assert it was reached and held; return /status as it was then."""
    stop = trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(load, gw, target, clients, stop)
        seen = await verdicts_until(gw, verdict)
        st = await admin_status(gw)
        stop.set()
    assert_reached_and_held(seen, verdict)
    return st


async def test_sleeping_php_flood_is_php_waiting(gw):
    st = await flood_until(gw, "/slow.php?ms=200", 16, "php-waiting")
    # usleep(): the sampled workers are asleep (test_waiting_on.py has the downstreams)
    assert "of them sleeping" in st["verdict"]["reason"] and st["verdict"]["waiting_on"]["lock"] >= 1
    assert st["pools"]["php"]["busy"] == 2 and st["pools"]["php"]["queue_depth"] > 0


async def test_cpu_bound_php_flood_is_php_cpu(gw):
    st = await flood_until(gw, "/cpu.php?ms=40", 12, "php-cpu")
    assert "CPU-bound" in st["verdict"]["reason"]


async def test_busy_event_loop_with_free_php_slots_is_listener(gw):
    stop = trio.Event()

    async def hog_the_loop():
        # Stands in for a gateway process that is itself overloaded: the loop
        # is blocked 150 ms at a time, so every task wakes late.
        while not stop.is_set():
            time.sleep(0.15)  # noqa: ASYNC251 - blocking on purpose
            await trio.sleep(0.01)

    async with trio.open_nursery() as n:
        n.start_soon(hog_the_loop)
        n.start_soon(load, gw, "/pid.php", 1, stop)
        seen = await verdicts_until(gw, "listener")
        st = await admin_status(gw)
        stop.set()
    assert_reached_and_held(seen, "listener")
    assert st["pools"]["php"]["busy"] < 2
    assert st["listener"]["loop_lag_ms"]["p99"] >= 50


async def test_stopped_php_fpm_is_backend_down(start_gateway, tmp_path: Path):
    backend = BackendConfig(pool_size=2, php_fpm=PhpFpmConfig(user="root"))
    paths = write_pool_config("ext", backend, str(tmp_path / "fpm"))
    # its own process group, killed whole: a worker the master forks between a listing of its
    # children and their SIGKILL would outlive the test (orphaned "pool ext_status" workers were seen)
    fpm = await trio.lowlevel.open_process([find_php_fpm(), "-F", "-R", "-y", paths.config],
                                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with trio.fail_after(10):
            while not os.path.exists(paths.socket):  # noqa: ASYNC110, ASYNC240 - php-fpm's readiness is its socket
                await trio.sleep(0.02)
        gw = await start_gateway(backend={"address": f"unix:{paths.socket}",
                                          "status": f"unix:{paths.status_socket}"})
        assert (await gw.get("/pid.php")).status == 200
        os.killpg(fpm.pid, signal.SIGKILL)
        await fpm.wait()
        st = await flood_until(gw, "/pid.php", 2, "backend-down")
        assert "connect error" in st["verdict"]["reason"]
        assert st["pools"]["php"]["errors"]["502"] > 0
    finally:
        if fpm.returncode is None:
            os.killpg(fpm.pid, signal.SIGKILL)
            await fpm.wait()


async def test_gateway_status_and_top_commands(gw):
    import sys

    admin = f"http://127.0.0.1:{gw.running.admin_listeners[0].socket.getsockname()[1]}"
    out = await trio.run_process([sys.executable, "-m", "gateway", "status", "--json", "--admin", admin],
                                 capture_stdout=True)
    st = json.loads(out.stdout)
    assert st["verdict"]["bottleneck"] in ("healthy", "listener", "php-cpu", "php-waiting", "backend-down")
    assert st["verdict"]["reason"]
    out = await trio.run_process([sys.executable, "-m", "gateway", "status", "--admin", admin], capture_stdout=True)
    assert out.stdout.decode().startswith("verdict: healthy")
    out = await trio.run_process([sys.executable, "-m", "gateway", "top", "--count", "1", "--admin", admin],
                                 capture_stdout=True, env={**os.environ, "COLUMNS": "160"})
    screen = out.stdout.decode()
    assert "verdict: healthy" in screen and "busy/size" in screen and "0/2" in screen
    bad = await trio.run_process([sys.executable, "-m", "gateway", "status", "--admin", "http://127.0.0.1:9"],
                                 capture_stderr=True, check=False)
    assert bad.returncode == 1 and b"cannot read http://127.0.0.1:9/status" in bad.stderr


async def test_new_tls_connections_with_an_rsa_4096_certificate_are_listener_tls(start_gateway, tmp_path: Path):
    # scripts/saturate listener-tls as operators meet it: every request a new
    # connection and a full handshake (`openssl s_time -new`: C clients, so
    # the server's signatures, not the clients, use the CPU) to one process
    # with an RSA-4096 certificate. Its handshakes take ~75 % of the process's
    # CPU (RSA-2048: ~40 %, ECDSA P-256: ~30 %, below TLS_SHARE: the rest of a
    # connection, accept to close, costs ~1 ms of Python; README "Where does
    # the time go?").
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    await trio.run_process(["openssl", "req", "-x509", "-newkey", "rsa:4096", "-nodes", "-keyout", str(key),
                            "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_stdout=True,
                           capture_stderr=True)
    tls_port = free_port()
    gw = await start_gateway(server={"listen": ["127.0.0.1:0", f"127.0.0.1:{tls_port} tls"]},
                             site={"tls": {"cert": str(cert), "key": str(key)}})
    s_time = ["openssl", "s_time", "-connect", f"127.0.0.1:{tls_port}", "-new", "-www", "/hello.txt",
              "-time", str(int(WITHIN + 5))]
    async with trio.open_nursery() as n:
        for _ in range(4):
            n.start_soon(partial(trio.run_process, s_time, capture_stdout=True, capture_stderr=True, check=False))
        seen = await verdicts_until(gw, "listener-tls")
        st = await admin_status(gw)
        n.cancel_scope.cancel()
    assert "listener-tls" in seen, (seen, st["verdict"], st["listener"]["process_cpu"], st["listener"]["tls"])
    assert_reached_and_held(seen, "listener-tls")
    assert "TLS handshakes use" in st["verdict"]["reason"] and "0% resumed" in st["verdict"]["reason"]
    tls = st["listener"]["tls"]
    assert tls["handshakes_total"] > 100 and tls["resumed_total"] == 0
