"""Drive a scenario against a running gateway and print its verdict each second.

    scripts/saturate SCENARIO [--url URL] [--admin http://127.0.0.1:9180]
                              [--seconds 30] [--concurrency N]

Scenarios (against the demo site in conf.d/, whose pool has 4 workers):
  healthy       a trickle of requests to the home page
  php-waiting   many clients on /slow.php?ms=300 (PHP sleeps, like a slow query)
  php-cpu       many clients on /cpu.php?ms=50 (PHP burns CPU)
  listener      many clients on a static file (the gateway itself works hardest)
  listener-tls  new TLS connections, one per request (HTTP/1.0 GET of a static
                file, every handshake full: no session is resumed), from
                --concurrency `openssl s_time -new` processes (default 4; C
                clients, lighter than Python ones, so the gateway gets a core);
                give the https listener, --url https://127.0.0.1:8443; README
                "Where does the time go?" has what each kind of certificate
                gives (listener-tls needs handshakes to be >= 50 % of the CPU)
  backend-down  a trickle of PHP requests; stop php-fpm (or point the backend at a
                dead address) to see it
  php-uncached  many clients on /slow.php?ms=300, each with a WordPress
                logged-in cookie: cacheable pages that all bypass the page
                cache. Needs the demo site's cache on (a conf.d/50-cache.toml
                with `[sites.demo.cache]` `enabled = true`; restart); with it
                on, php-waiting's and php-cpu's pages are cached, so take it
                off again for those

Traffic goes to loopback only, is bounded by --seconds (max 600) and
--concurrency (max 5000), and stops by itself. Watch `gateway top` meanwhile.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import trio
from _load import LoadStats, loopback_target, run_load

#: At most this many ``openssl s_time`` processes (listener-tls).
MAX_S_TIME = 16

SCENARIOS = {
    "healthy": ("/", 1),
    "php-waiting": ("/slow.php?ms=300", 64),
    "php-cpu": ("/cpu.php?ms=50", 32),
    "listener": ("/style.css", 256),
    "listener-tls": ("/style.css", 4),
    "backend-down": ("/info.php", 4),
    "php-uncached": ("/slow.php?ms=300", 64),
}
#: Request headers a scenario's clients send.
HEADERS = {"php-uncached": (("Cookie", "wordpress_logged_in_saturate=1"),)}


_last_tls: dict[str, tuple[float, int, float]] = {}


def verdict(admin: str) -> str:
    try:
        with urllib.request.urlopen(admin.rstrip("/") + "/status", timeout=2) as resp:  # noqa: S310
            st = json.loads(resp.read())
    except OSError as exc:
        return f"(admin unreachable: {exc})"
    p = next(iter(st["pools"].values()), None)
    pool = f" pool {p['busy']}/{p['size']} queue {p['queue_depth']}" if p else ""
    tls = st["listener"].get("tls") or {}
    hs = ""
    if tls.get("handshakes_total"):
        # per second since the last poll, as the diagnosis sees it (/status's
        # rates are over 10 s and lag behind process_cpu while load ramps up)
        now = time.monotonic()
        prev = _last_tls.get(admin)
        _last_tls[admin] = (now, tls["handshakes_total"], tls["cpu_seconds_total"])
        if prev is not None and now > prev[0]:
            span = now - prev[0]
            cpu = st["listener"]["process_cpu"]
            share = (tls["cpu_seconds_total"] - prev[2]) / span / cpu if cpu else 0.0
            hs = f" handshakes {(tls['handshakes_total'] - prev[1]) / span:.0f}/s, {share:.0%} of cpu"
    return (f"{st['verdict']['bottleneck']:<13}{pool} lag p99 {st['listener']['loop_lag_ms']['p99']:.0f} ms "
            f"cpu {st['listener']['process_cpu']:.0%}{hs}")


async def s_time(url: str, processes: int, seconds: float, stats: LoadStats) -> None:
    """``processes`` concurrent ``openssl s_time -new``: a full TLS handshake
    and one HTTP/1.0 GET per connection, for ``seconds``; their totals go to
    ``stats`` (ok: connections made) at the end."""
    host, port, target = loopback_target(url)
    if shutil.which("openssl") is None:
        raise SystemExit("listener-tls needs the openssl command (Debian's openssl package)")
    cmd = ["openssl", "s_time", "-connect", f"{host}:{port}", "-new", "-www", target,
           "-time", str(max(1, int(seconds)))]

    async def one() -> None:
        out = await trio.run_process(cmd, capture_stdout=True, stderr=subprocess.DEVNULL, check=False)
        m = re.search(rb"(\d+) connections in [\d.]+s", out.stdout)
        if m:
            stats.ok += int(m.group(1))
        else:
            stats.error(f"s_time-exit-{out.returncode}")

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(processes, MAX_S_TIME))):
            nursery.start_soon(one)


async def main(args: argparse.Namespace) -> None:
    path, default_c = SCENARIOS[args.scenario]
    concurrency = args.concurrency or default_c
    stats = LoadStats()
    base = args.url or ("https://127.0.0.1:8443" if args.scenario == "listener-tls" else "http://127.0.0.1:8080")
    url = base.rstrip("/") + path
    clients = "openssl s_time processes (a new connection per request)" if args.scenario == "listener-tls" \
        else "clients"
    print(f"{args.scenario}: {concurrency} {clients} on {url} for {args.seconds:g}s", flush=True)

    async def report() -> None:
        start = time.monotonic()
        last = 0
        while True:
            await trio.sleep(1)
            v = await trio.to_thread.run_sync(verdict, args.admin)
            done = stats.ok + sum(stats.errors.values())
            errors = ",".join(f"{k}={n}" for k, n in stats.errors.items()) or "0"
            rate = f"{done - last:6d} req/s" if args.scenario != "listener-tls" else "(s_time counts at the end)"
            print(f"{time.monotonic() - start:5.0f}s {rate} errors {errors:<16} verdict {v}", flush=True)
            last = done

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        if args.scenario == "healthy":
            # one request every 200 ms
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                await run_load(url, concurrency=1, seconds=0.01, stats=stats)
                await trio.sleep(0.2)
        elif args.scenario == "listener-tls":
            await s_time(url, concurrency, min(args.seconds, 600.0), stats)
        else:
            await run_load(url, concurrency=concurrency, seconds=args.seconds, stats=stats,
                           headers=HEADERS.get(args.scenario, ()))
        nursery.cancel_scope.cancel()
    lat = sorted(stats.latencies)
    p99 = lat[int(len(lat) * 0.99) - 1] if lat else 0.0
    print(f"done: {stats.ok} ok, errors {stats.errors or 0}, p99 {p99 * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--url", default="", help="default http://127.0.0.1:8080 (https://127.0.0.1:8443 for "
                        "listener-tls)")
    parser.add_argument("--admin", default="http://127.0.0.1:9180")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=0)
    trio.run(main, parser.parse_args())
    sys.exit(0)
