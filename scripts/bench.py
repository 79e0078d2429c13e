"""Benchmark the gateway against nginx + php-fpm in one run, with wrk.

One php-fpm pool (pm = static, 4 workers unless --fpm-workers) serves both
front ends. nginx (Debian's, FastCGI keep-alive on, try_files, sendfile, access
log off) and the gateway (pool of the same size, access log off) are measured
in alternation, A B A B, with a drain between runs so kept-alive FastCGI
connections of one front end never pin the workers the other needs, and php-fpm
has finished any request whose client left. Each cell is the median of
--reps runs.

Caddy (Debian's, php_fastcgi + file_server with its defaults) is measured too
unless --no-caddy, on the same pool, in the same alternation.

Workloads: hello.php at 16/64/256 connections; a ~5 ms CPU script at 64; a
50 ms sleeping script at 256; static 1 KiB and 1 MiB at 64; static 1 KiB over
HTTPS at 64, kept alive (wrk), and with a new connection and a full TLS
handshake per request (8 `openssl s_time -new` processes: wrk resumes its
TLS sessions and spends more CPU reconnecting than the servers do), every
server with the same ECDSA P-256 certificate; HTTP/2 over
TLS (ALPN h2) with h2load, hello.php and static 1 KiB, 16 connections of 10
concurrent streams each, 1000 requests per connection (h2load reports no
percentiles: in those rows p50 is the mean and p99 the slowest request);
1000 connections
on the sleeping script (php-fpm's listen.backlog stays 511, its default); an
overload run where clients give up after 1 s, with the PHP work done for
clients that had already left (requests php-fpm ran minus answers); and, when
Debian's wordpress and mariadb-server are installed (scripts/setup --test),
the WordPress home page at 16 connections (its own nginx + gateway pair on
one php-fpm pool and a private MariaDB), and the same page cached ("wordpress
home cached c16"): nginx with fastcgi_cache (key $scheme$host$request_uri,
fastcgi_cache_valid 200 301 404 10m, fastcgi_cache_lock on, WordPress's
cookies bypass) against the gateway's [sites.X.cache] with ttl 10m, its hit
ratio (requests not run by php-fpm, counted on php-fpm's status page) printed
under the table; and "proxy hello c64", the reverse
proxy: the gateway (``type = "http"`` backend) vs nginx ``proxy_pass`` with
upstream keepalive vs Caddy ``reverse_proxy``, 16 upstream connections kept
each, in front of one fast upstream (an nginx answering 5 bytes), from
``bench_proxy`` (``scripts/bench-proxy`` has more proxy rows; no baseline
row: an older gateway may have no proxy).

Both front ends run --processes processes (nginx worker_processes, gateway
[server] processes; default one per core); nginx's FastCGI keepalive cache and
the gateway's pool are split between them so neither pins more php-fpm
workers than there are.

--baseline REF (a git ref) also measures the gateway as it was at REF, in the
same run and the same alternation (nginx, gateway, baseline, Caddy): REF's
tree is extracted with `git archive` into a temporary directory (removed at
the end; nothing is added to the repository) and run with this venv, with
PYTHONPATH and the working directory set to that tree so its `gateway` and
`fastcgi` packages shadow the editable install (the file imported is printed
and checked). Its configuration uses the old names ([server] workers,
[backends.X] workers), which every version knows. The table then has a
"baseline" row per workload, and a HEAD/REF column: this checkout's req/s over
REF's, and its CPU per request over REF's.

The HTTP/1.1 parser is upstream h11 unless --h11 h11-mypyc (the [fast] extra,
installed by scripts/setup --test): GATEWAY_H11 is set for the gateway and the
baseline (a baseline that predates GATEWAY_H11 gets h11_mypyc hidden from its
imports instead), and the table's header names the parser.

--reuseport gives the gateway's listen entries the ``reuseport`` flag (a
listen socket per process; README "Processes"); nginx and the baseline keep
one shared socket.

--only takes one or more comma-separated parts of names ("hello.php c64,static
1KiB,wordpress").

Output: req/s, p50, p99, errors, the ratio to nginx, and the gateway's CPU
time per request (all its processes). Loopback only; every run is bounded by
--duration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _harness import REPO, Stack

sys.path.insert(0, str(REPO))

DOCROOT = {
    "hello.php": "<?php echo 'hello';\n",
    "cpu.php": "<?php $end = microtime(true) + 0.005; $x = 0; while (microtime(true) < $end) { $x++; } echo $x;\n",
    "sleep.php": "<?php usleep(50000); echo 'slept';\n",
    "1k.txt": "x" * 1024,
}

#: h2load rows: requests per connection (nginx's keepalive_requests default).
H2_REQUESTS_PER_CONNECTION = 1000

WORKLOADS = [
    # name, path, connections, wrk timeout (s)
    ("hello.php c16", "/hello.php", 16, 10),
    ("hello.php c64", "/hello.php", 64, 10),
    ("hello.php c256", "/hello.php", 256, 10),
    ("cpu 5ms c64", "/cpu.php", 64, 10),
    ("sleep 50ms c256", "/sleep.php", 256, 10),
    ("static 1KiB c64", "/1k.txt", 64, 10),
    ("static 1MiB c64", "/1m.bin", 64, 10),
    ("sleep 50ms c1000", "/sleep.php", 1000, 30),
    ("overload 1s timeout", "/sleep.php", 1000, 1),
    # over TLS, every server with the same ECDSA P-256 certificate: kept-alive connections, and a new
    # connection per request (openssl s_time -new: a full handshake each; wrk would resume its sessions)
    ("https static 1KiB c64", "/1k.txt", 64, 10),
    ("https handshake s_time x8", "/1k.txt", 8, 10),
    # HTTP/2 over TLS, h2load: 16 connections x 10 streams in flight each
    ("h2 hello.php c16 m10", "/hello.php", 16, 10),
    ("h2 static 1KiB c16 m10", "/1k.txt", 16, 10),
]


def wrk(port: int, path: str, connections: int, seconds: float, timeout: float, *, https: bool = False,
        close: bool = False, headers: tuple[str, ...] = ()) -> dict[str, float]:
    threads = min(2, connections)
    scheme = "https" if https else "http"
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", f"--timeout={int(timeout)}s",
                          "--latency", *(["-H", "Connection: close"] if close else []),
                          *(arg for h in headers for arg in ("-H", h)),
                          f"{scheme}://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    def lat(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    errors = num(r"Non-2xx or 3xx responses: (\d+)")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    return {"rps": num(r"Requests/sec:\s+([\d.]+)"), "p50": lat("50%"), "p99": lat("99%"), "errors": errors,
            "requests": num(r"(\d+) requests in")}


#: ``openssl s_time`` processes for the "https handshake" rows: each makes one
#: connection at a time, so a few keep every server busy at a fraction of
#: the CPU wrk spends reconnecting (wrk also resumes its sessions).
S_TIME_PROCESSES = 8


def s_time(port: int, path: str, processes: int, seconds: float) -> dict[str, float]:
    """``processes`` concurrent ``openssl s_time -new``: a new connection, a
    full TLS handshake (no session resumed) and one GET per request. s_time
    writes ``GET <path> HTTP/1.0``; a Host header is slipped in after the path
    so every server routes the request to the same site."""
    www = f"{path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nX-Bench: 1"
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-www", www, "-time", str(int(seconds))]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(processes)]
    done, errors, sizes = 0, 0, []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        m = re.search(r"(\d+) connections in \d+ real seconds, (\d+) bytes read per connection", out)
        if m:
            done += int(m.group(1))
            sizes.append(int(m.group(2)))
        else:
            errors += 1
    if sizes and min(sizes) < 1024:  # the 1 KiB file and its headers: anything less is an error page
        errors += done
    return {"rps": done / seconds, "p50": float("nan"), "p99": float("nan"), "errors": errors, "requests": done}


def h2load(port: int, path: str, connections: int, seconds: float, streams: int = 10) -> dict[str, float]:
    """HTTP/2 over TLS (ALPN h2): ``connections`` connections, ``streams``
    requests in flight on each, ``H2_REQUESTS_PER_CONNECTION`` requests on
    each (not a duration: nginx ends a connection after keepalive_requests,
    also an HTTP/2 one, and h2load does not reconnect)."""
    out = subprocess.run(["h2load", f"-c{connections}", f"-m{streams}", f"-t{min(2, connections)}",
                          f"-n{connections * H2_REQUESTS_PER_CONNECTION}", f"https://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 120).stdout

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    m = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    mean, slowest = (ms(m.group(5), m.group(6)), ms(m.group(3), m.group(4))) if m else (float("nan"),) * 2
    failed = num(r"(\d+) failed") + num(r"(\d+) errored") + num(r"(\d+) timeout")
    not_ok = num(r"(\d+) 4xx") + num(r"(\d+) 5xx")
    return {"rps": num(r"finished in [\d.]+m?s, ([\d.]+) req/s"), "p50": mean, "p99": slowest,
            "errors": failed + not_ok, "requests": num(r"requests: \d+ total, \d+ started, (\d+) done")}


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its children (the gateway's worker processes)."""
    from gateway.observe.monitor import children_of, read_proc_cpu

    return sum(read_proc_cpu(p) or 0.0 for p in [pid, *children_of(pid)])


def fpm_requests(status_socket: str) -> int:
    """Requests php-fpm's workers have run (the sum of their counters in the
    'full' status; 'accepted conn' counts connections, not requests)."""
    import trio

    from gateway.serve.php_fpm import fastcgi_get

    async def get() -> int:
        with trio.fail_after(5):
            _, body = await fastcgi_get("unix:" + status_socket, "/fpm-status", b"json&full")
        return sum(int(p["requests"]) for p in json.loads(body)["processes"])

    return trio.run(get)


def drain(status_socket: str, seconds: float) -> None:
    """Let idle FastCGI connections time out (1 s on both sides), then wait until
    php-fpm has stopped running requests: after a run it still executes what
    clients queued in its backlog and then left (up to 60 s)."""
    time.sleep(seconds)
    last, stable, deadline = -1, 0, time.monotonic() + 60
    while stable < 3 and time.monotonic() < deadline:
        ran = fpm_requests(status_socket)
        stable = stable + 1 if ran == last else 0
        last = ran
        time.sleep(0.5)


def run_workloads(stack: Stack, workloads: list[tuple[str, str, int, int]], args: argparse.Namespace,
                  duration: float, results: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    status_socket = stack.fpm_socket.replace("php.sock", "status.sock")
    for name, path, conns, timeout in workloads:
        http2 = name.startswith("h2 ")
        https = name.startswith("https") or http2
        for rep in range(args.reps):
            servers = [("nginx", stack.nginx_port, 0), ("gateway", stack.gateway_port, stack.gateway_pid)]
            if stack.baseline and not https:  # (a baseline may predate TLS)
                servers.append(("baseline", stack.baseline_port, stack.baseline_pid))
            if stack.caddy:
                servers.append(("caddy", stack.caddy_port, 0))
            if https:
                servers = [(server, stack.tls_ports[server], pid) for server, _, pid in servers]
            for server, port, gw_pid in servers:
                ran0 = fpm_requests(status_socket)
                cpu0 = cpu_seconds(gw_pid) if gw_pid else 0.0
                if "handshake" in name:
                    r = s_time(port, path, S_TIME_PROCESSES, duration)
                elif http2:
                    r = h2load(port, path, conns, duration)
                else:
                    r = wrk(port, path, conns, duration, timeout, https=https)
                r["gw_cpu_us"] = ((cpu_seconds(gw_pid) - cpu0) / r["requests"] * 1e6
                                  if gw_pid and r["requests"] else float("nan"))
                drain(status_socket, 1.5)
                # PHP work done for clients that were no longer there for the answer
                ran = fpm_requests(status_socket) - ran0
                r["wasted_php"] = max(0, ran - r["requests"])
                # requests answered without a PHP run (a page cache's hits)
                r["hit_ratio"] = max(0.0, 1 - ran / r["requests"]) if r["requests"] else float("nan")
                results.setdefault((name, server), []).append(r)
                print(f"  {name:22} {server:8} rep {rep + 1}: {r['rps']:9.0f} req/s  p99 {r['p99']:8.1f} ms  "
                      f"errors {r['errors']:.0f}", file=sys.stderr, flush=True)


#: the reverse-proxy rows (bench_proxy.ProxyStack), and the upstream connections each proxy keeps
PROXY_WORKLOADS = [("proxy hello c64", "/hello", 64, 10)]
PROXY_POOL_SIZE = 16


def run_proxy(args: argparse.Namespace, workloads: list[tuple[str, str, int, int]], duration: float,
              results: dict[tuple[str, str], list[dict[str, float]]]) -> list[tuple[str, str, int, int]]:
    from bench_proxy import ProxyStack, measure

    with ProxyStack(processes=args.processes, pool_size=PROXY_POOL_SIZE, caddy=args.caddy) as stack:
        measure(stack, workloads, args.reps, duration, results)
    return workloads


def wordpress_installed() -> bool:
    from tests.wordpress.wp_parts import WP_CORE

    return (WP_CORE / "wp-settings.php").exists() and bool(shutil.which("mariadbd") or shutil.which("mysqld")
                                                              or os.path.exists("/usr/sbin/mariadbd"))


def run_wordpress(args: argparse.Namespace, duration: float, results: dict[tuple[str, str], list[dict[str, float]]],
                  baseline: Path | None) -> list[tuple[str, str, int, int]]:
    from wordpress_parity import gateway_site, nginx_locations

    from tests.wordpress.wp_parts import WP_CORE, start_wordpress

    parts = [part for part in args.only.split(",") if part]
    plain, cached = ("wordpress home c16", "/", 16, 10), ("wordpress home cached c16", "/", 16, 10)
    workloads = [w for w in (plain, cached) if not parts or any(part in w[0] for part in parts)]
    base = Path(tempfile.mkdtemp(prefix="bench-wp-"))
    wp = start_wordpress(base / "wp")
    try:
        for workload in workloads:
            cache = workload is cached
            nginx_extra = gateway_extra = ""
            fastcgi_extra = ""
            if cache:
                nginx_extra = (f"fastcgi_cache_path {base}/nginx-cache levels=1:2 keys_zone=wp:32m max_size=256m "
                               "inactive=1h use_temp_path=off;\n"
                               "map $http_cookie $wp_nocache { default 0; ~*wordpress_logged_in_ 1; "
                               "~*wp-postpass_ 1; ~*comment_author_ 1; ~*woocommerce_items_in_cart 1; }")
                fastcgi_extra = (' fastcgi_cache wp; fastcgi_cache_key "$scheme$host$request_uri"; '
                                 "fastcgi_cache_valid 200 301 404 10m; fastcgi_cache_lock on; "
                                 "fastcgi_cache_bypass $wp_nocache; fastcgi_no_cache $wp_nocache;")
                gateway_extra = '[sites.wordpress.cache]\nenabled = true\nttl = "10m"\n'
            with Stack(WP_CORE, workers=args.fpm_workers, idle_timeout=1.0, processes=args.processes,
                       run_as="root", nginx_http_extra=nginx_extra,
                       nginx_locations=nginx_locations(str(wp.content_dir), wp.config_name, fastcgi_extra),
                       gateway_site=gateway_site(str(wp.content_dir), wp.config_name) + gateway_extra,
                       baseline=None if cache else baseline) as stack:
                for server_port in (stack.nginx_port, stack.gateway_port, stack.baseline_port):
                    if server_port:  # warm opcache and WordPress's caches (and the page caches)
                        wrk(server_port, "/", 4, 2, 10)
                run_workloads(stack, [workload], args, duration, results)
    finally:
        wp.stop()
        shutil.rmtree(base, ignore_errors=True)
    return workloads


@contextlib.contextmanager
def source_tree(ref: str) -> Iterator[tuple[Path, str]]:
    """The files of ``ref`` in a temporary directory, and its commit; removed afterwards."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO, capture_output=True,
                            text=True, check=True, timeout=30).stdout.strip()
    tree = Path(tempfile.mkdtemp(prefix="bench-baseline-")).resolve()
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, capture_output=True,
                                 check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=60)
        yield tree, commit
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (max 60)")
    p.add_argument("--reps", type=int, default=3, help="runs per cell (median reported)")
    p.add_argument("--fpm-workers", type=int, default=4)
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="nginx worker_processes and gateway processes (default: one per core)")
    p.add_argument("--only", default="",
                   help="run workloads whose name contains this (or one of these, comma-separated)")
    p.add_argument("--no-caddy", dest="caddy", action="store_false", help="leave Caddy out")
    p.add_argument("--baseline", metavar="REF", default="",
                   help="also measure the gateway as it was at this git ref (HEAD/REF column)")
    p.add_argument("--reuseport", action="store_true",
                   help="the gateway listens with reuseport (a socket per process; not the baseline, nor nginx)")
    p.add_argument("--h11", choices=["h11", "h11-mypyc"], default="h11",
                   help="the gateway's HTTP/1.1 parser: upstream h11 (default) or the [fast] extra")
    args = p.parse_args()
    # the gateway processes inherit it (gateway/http/_h11.py); asked as they will be, so a missing extra fails here
    os.environ["GATEWAY_H11"] = args.h11
    version = subprocess.run([sys.executable, "-m", "gateway", "--version"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    if version.returncode != 0:
        print(f"bench: {version.stderr.strip()}", file=sys.stderr)
        return 2
    args.parser = version.stdout.strip().split(", ", 1)[-1]
    if not args.baseline:
        return bench(args, None, "")
    with source_tree(args.baseline) as (tree, commit):
        return bench(args, tree, commit)


def bench(args: argparse.Namespace, baseline: Path | None, baseline_commit: str) -> int:
    duration = float(int(max(1.0, min(args.duration, 60.0))))
    root = Path(tempfile.mkdtemp(prefix="bench-root-"))
    root.chmod(0o755)
    for name, text in DOCROOT.items():
        (root / name).write_text(text)
    (root / "1m.bin").write_bytes(os.urandom(1 << 20))
    parts = [part for part in args.only.split(",") if part]

    def selected(name: str) -> bool:
        return not parts or any(part in name for part in parts)

    workloads = [w for w in WORKLOADS if selected(w[0])]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    if workloads:
        with Stack(root, workers=args.fpm_workers, idle_timeout=1.0, processes=args.processes,
                   caddy=args.caddy, baseline=baseline, reuseport=args.reuseport,
                   tls=any(name.startswith(("https", "h2 ")) for name, *_ in workloads)) as stack:
            run_workloads(stack, workloads, args, duration, results)
    shutil.rmtree(root, ignore_errors=True)
    proxy_workloads = [w for w in PROXY_WORKLOADS if selected(w[0])]
    if proxy_workloads:
        workloads += run_proxy(args, proxy_workloads, duration, results)
    if selected("wordpress home c16") or selected("wordpress home cached c16"):
        if wordpress_installed():
            workloads += run_wordpress(args, duration, results, baseline)
        else:
            print("wordpress home: skipped (Debian's wordpress and mariadb-server are not installed; "
                  "scripts/setup --test installs them)", file=sys.stderr)

    def med(name: str, server: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(name, server)])

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    print(f"\nmedians of {args.reps} runs of {duration:g}s; php-fpm pm=static, {args.fpm_workers} workers shared; "
          f"{args.processes} nginx / gateway processes; gateway {args.parser}")
    if baseline:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "fastcgi"], cwd=REPO,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        print(f"gateway: this checkout, HEAD {head[:12]}{' + uncommitted changes' if dirty else ''}; "
              f"baseline: {args.baseline} = {baseline_commit[:12]}; "
              "HEAD/REF: gateway req/s / baseline req/s (CPU us/req / CPU us/req)")
    print(f"{'workload':22} {'server':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'vs nginx':>8} "
          f"{'gw CPU us/req':>13} {'wasted PHP':>10}" + (f" {'HEAD/REF':>16}" if baseline else ""))
    for name, *_ in workloads:
        base = med(name, "nginx", "rps")
        for server in ("nginx", "gateway", "baseline", "caddy"):
            if (name, server) not in results:
                continue
            rps = med(name, server, "rps")
            cpu = med(name, server, "gw_cpu_us")
            head_ref = ""
            if server == "gateway" and (name, "baseline") in results:
                cpu_ratio = ratio(cpu, med(name, "baseline", "gw_cpu_us"))
                head_ref = f"{ratio(rps, med(name, 'baseline', 'rps')):.3f} ({cpu_ratio:.3f})"
            print(f"{name:22} {server:8} {rps:9.0f} {med(name, server, 'p50'):8.2f} {med(name, server, 'p99'):8.2f} "
                  f"{med(name, server, 'errors'):7.0f} {ratio(rps, base):8.2f} "
                  f"{'' if cpu != cpu else f'{cpu:.0f}':>13} {med(name, server, 'wasted_php'):10.0f}"
                  + (f" {head_ref:>16}" if baseline else ""))
    for name, *_ in workloads:
        if "cached" in name:
            print(f"{name}: hit ratio (requests php-fpm did not run) "
                  + ", ".join(f"{server} {med(name, server, 'hit_ratio'):.4f}"
                              for server in ("nginx", "gateway") if (name, server) in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
