"""Benchmark the gateway's reverse proxy against nginx ``proxy_pass`` (keepalive), in one run, with wrk.

One upstream application serves both: an nginx server block answering
``GET /hello`` with 5 bytes and ``GET /64k.bin`` from a file (a fast upstream,
so the proxies, not the app, are measured). In front of it, on 127.0.0.1:
nginx (``upstream app { server ...; keepalive N; }``, ``proxy_http_version
1.1``, ``proxy_set_header Connection ""``, buffering on, access log off) and
the gateway (``type = "http"`` backend, ``pool_size`` N, access log off),
measured in alternation A B A B; each cell is the median of --reps runs.

Output: req/s, p50, p99, errors, the gateway's req/s over nginx's, and the
gateway's CPU time per request. Loopback only; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import REPO, free_port, port_open, wait_for
from bench import cpu_seconds, wrk

UPSTREAM_CONF = """
daemon off;
worker_processes 1;
pid {run}/upstream.pid;
error_log {run}/upstream-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    client_body_temp_path {run}/ubody;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /hello {{ default_type text/plain; return 200 "hello"; }}
    }}
}}
"""

PROXY_CONF = """
daemon off;
worker_processes {processes};
pid {run}/proxy.pid;
error_log {run}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive {keepalive}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""

WORKLOADS = [("proxy hello c16", "/hello", 16), ("proxy hello c64", "/hello", 64),
             ("proxy 64KiB c64", "/64k.bin", 64)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="nginx worker_processes and gateway processes")
    parser.add_argument("--pool-size", type=int, default=16, help="upstream connections kept (both)")
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="gateway-proxy-bench-"))
    os.chmod(run, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        root = run / "root"
        root.mkdir()
        (root / "64k.bin").write_bytes(os.urandom(64 * 1024))
        os.chmod(root, 0o755)
        os.chmod(root / "64k.bin", 0o644)
        for d in ("ubody", "body", "proxy"):
            (run / d).mkdir()
        upstream, proxy, gateway = free_port(), free_port(), free_port()
        (run / "upstream.conf").write_text(UPSTREAM_CONF.format(run=run, port=upstream, root=root))
        procs.append(subprocess.Popen([nginx, "-c", str(run / "upstream.conf")], stderr=subprocess.DEVNULL))
        wait_for(lambda: port_open(upstream), what="the upstream nginx")
        (run / "proxy.conf").write_text(PROXY_CONF.format(run=run, port=proxy, upstream=upstream,
                                                          processes=args.processes,
                                                          keepalive=max(1, args.pool_size // args.processes)))
        procs.append(subprocess.Popen([nginx, "-c", str(run / "proxy.conf")], stderr=subprocess.DEVNULL))
        wait_for(lambda: port_open(proxy), what="the proxy nginx")
        confd = run / "conf.d"
        confd.mkdir()
        (confd / "00.toml").write_text(
            f'[server]\nlisten = ["127.0.0.1:{gateway}"]\naccess_log = "off"\nprocesses = {args.processes}\n'
            + ('user = "root"\n' if os.geteuid() == 0 else "")
            + f'[admin]\nlisten = "off"\n'
            f'[backends.app]\ntype = "http"\naddresses = ["127.0.0.1:{upstream}"]\npool_size = {args.pool_size}\n'
            f'[sites.cmp]\nroot = "{run / "empty"}"\nproxy = "app"\ndefault = true\n')
        (run / "empty").mkdir()
        procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(confd),
                                       "--log-level", "warning"], cwd=REPO))
        wait_for(lambda: port_open(gateway), what="the gateway")
        gateway_pid = procs[-1].pid
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for name, path, conns in WORKLOADS:
            for rep in range(args.reps):
                for server, port, pid in (("nginx", proxy, 0), ("gateway", gateway, gateway_pid)):
                    cpu0 = cpu_seconds(pid) if pid else 0.0
                    r = wrk(port, path, conns, args.duration, 10)
                    r["gw_cpu_us"] = ((cpu_seconds(pid) - cpu0) / r["requests"] * 1e6
                                      if pid and r["requests"] else float("nan"))
                    results.setdefault((name, server), []).append(r)
                    print(f"  {name:18} {server:8} rep {rep + 1}: {r['rps']:9.0f} req/s  p99 {r['p99']:8.1f} ms  "
                          f"errors {r['errors']:.0f}", file=sys.stderr, flush=True)
        print(f"\n{'workload':18} {'server':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
              f"{'vs nginx':>9} {'gw CPU us/req':>14}")
        for name, _, _ in WORKLOADS:
            base = statistics.median(r["rps"] for r in results[(name, "nginx")])
            for server in ("nginx", "gateway"):
                runs = results[(name, server)]

                def med(key: str, runs: list[dict[str, float]] = runs) -> float:
                    return statistics.median(r[key] for r in runs)

                ratio = med("rps") / base if base else float("nan")
                cpu = f"{med('gw_cpu_us'):14.0f}" if server == "gateway" else " " * 14
                print(f"{name:18} {server:8} {med('rps'):9.0f} {med('p50'):8.2f} {med('p99'):8.2f} "
                      f"{med('errors'):7.0f} {ratio:9.2f} {cpu}")
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if "gateway" in " ".join(map(str, proc.args)) else signal.SIGQUIT)
        for proc in reversed(procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
