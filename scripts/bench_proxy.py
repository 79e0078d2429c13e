"""Benchmark the gateway's reverse proxy against nginx ``proxy_pass`` (keepalive) and Caddy ``reverse_proxy``.

One upstream application serves all three: an nginx server block answering
``GET /hello`` with 5 bytes and ``GET /64k.bin`` from a file (a fast upstream,
so the proxies, not the app, are measured). In front of it, on 127.0.0.1:
nginx (``upstream app { server ...; keepalive N; }``, ``proxy_http_version
1.1``, ``proxy_set_header Connection ""``, buffering on, access log off), the
gateway (``type = "http"`` backend, ``pool_size`` N, access log off) and Caddy
(``reverse_proxy`` with N idle connections kept per host, its defaults
otherwise; unless --no-caddy), measured in alternation A B C A B C; each cell
is the median of --reps runs.

``ProxyStack`` and ``measure`` are also what ``scripts/bench`` runs for its
"proxy hello c64" row (``scripts/bench --only proxy``); this script adds the
c16 and 64 KiB rows and defaults to one process each.

Output: req/s, p50, p99, errors, the ratio to nginx's req/s, and the gateway's
CPU time per request. Loopback only; every run is bounded by --duration.
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
from types import TracebackType

from _harness import REPO, free_port, port_open, wait_for

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

CADDYFILE = """
{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    reverse_proxy 127.0.0.1:{upstream} {{
        transport http {{
            keepalive_idle_conns_per_host {keepalive}
        }}
    }}
}}
"""

WORKLOADS = [("proxy hello c16", "/hello", 16, 10), ("proxy hello c64", "/hello", 64, 10),
             ("proxy 64KiB c64", "/64k.bin", 64, 10)]

Result = dict[str, float]


class ProxyStack:
    """The upstream nginx, and in front of it nginx, the gateway and (``caddy``)
    Caddy, on 127.0.0.1; stopped by pid and its directory removed on exit."""

    def __init__(self, *, processes: int, pool_size: int, caddy: bool = True) -> None:
        self.processes = processes
        self.pool_size = pool_size
        self.caddy = caddy
        #: server name -> port, in the order they are measured
        self.ports: dict[str, int] = {}
        self.gateway_pid = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.run = Path(tempfile.mkdtemp(prefix="gateway-proxy-bench-"))

    def __enter__(self) -> ProxyStack:
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()

    def _start(self) -> None:
        run = self.run
        os.chmod(run, 0o755)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        root = run / "root"
        root.mkdir()
        (root / "64k.bin").write_bytes(os.urandom(64 * 1024))
        os.chmod(root, 0o755)
        os.chmod(root / "64k.bin", 0o644)
        for d in ("ubody", "body", "proxy", "empty"):
            (run / d).mkdir()
        upstream, proxy, gateway = free_port(), free_port(), free_port()
        (run / "upstream.conf").write_text(UPSTREAM_CONF.format(run=run, port=upstream, root=root))
        self.procs.append(subprocess.Popen([nginx, "-c", str(run / "upstream.conf")], stderr=subprocess.DEVNULL))
        wait_for(lambda: port_open(upstream), what="the upstream nginx")
        (run / "proxy.conf").write_text(PROXY_CONF.format(run=run, port=proxy, upstream=upstream,
                                                          processes=self.processes,
                                                          keepalive=max(1, self.pool_size // self.processes)))
        self.procs.append(subprocess.Popen([nginx, "-c", str(run / "proxy.conf")], stderr=subprocess.DEVNULL))
        wait_for(lambda: port_open(proxy), what="the proxy nginx")
        self.ports["nginx"] = proxy
        confd = run / "conf.d"
        confd.mkdir()
        (confd / "00.toml").write_text(
            f'[server]\nlisten = ["127.0.0.1:{gateway}"]\naccess_log = "off"\nprocesses = {self.processes}\n'
            + ('user = "root"\n' if os.geteuid() == 0 else "")
            + '[admin]\nlisten = "off"\n'
            f'[backends.app]\ntype = "http"\naddresses = ["127.0.0.1:{upstream}"]\npool_size = {self.pool_size}\n'
            f'[sites.cmp]\nroot = "{run / "empty"}"\nproxy = "app"\ndefault = true\n')
        self.procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(confd),
                                            "--log-level", "warning"], cwd=REPO))
        wait_for(lambda: port_open(gateway), what="the gateway")
        self.ports["gateway"] = gateway
        self.gateway_pid = self.procs[-1].pid
        if self.caddy:
            port = free_port()
            (run / "Caddyfile").write_text(CADDYFILE.format(port=port, upstream=upstream, keepalive=self.pool_size))
            env = {**os.environ, "XDG_DATA_HOME": str(run / "caddy"), "XDG_CONFIG_HOME": str(run / "caddy"),
                   "HOME": str(run)}
            self.procs.append(subprocess.Popen(["caddy", "run", "--config", str(run / "Caddyfile"),
                                                "--adapter", "caddyfile"], env=env, stderr=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL))
            wait_for(lambda: port_open(port), what="caddy")
            self.ports["caddy"] = port

    def _stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT if "nginx" in str(proc.args[0]) else signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.run, ignore_errors=True)


def measure(stack: ProxyStack, workloads: list[tuple[str, str, int, int]], reps: int, duration: float,
            results: dict[tuple[str, str], list[Result]]) -> None:
    """Each workload ``reps`` times on every server of ``stack``, in alternation."""
    from bench import cpu_seconds, wrk

    for name, path, conns, timeout in workloads:
        for rep in range(reps):
            for server, port in stack.ports.items():
                pid = stack.gateway_pid if server == "gateway" else 0
                cpu0 = cpu_seconds(pid) if pid else 0.0
                r = wrk(port, path, conns, duration, timeout)
                r["gw_cpu_us"] = ((cpu_seconds(pid) - cpu0) / r["requests"] * 1e6
                                  if pid and r["requests"] else float("nan"))
                r["wasted_php"] = 0.0
                results.setdefault((name, server), []).append(r)
                print(f"  {name:22} {server:8} rep {rep + 1}: {r['rps']:9.0f} req/s  p99 {r['p99']:8.1f} ms  "
                      f"errors {r['errors']:.0f}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="nginx worker_processes and gateway processes")
    parser.add_argument("--pool-size", type=int, default=16, help="upstream connections kept (all three)")
    parser.add_argument("--no-caddy", dest="caddy", action="store_false", help="leave Caddy out")
    args = parser.parse_args()
    results: dict[tuple[str, str], list[Result]] = {}
    with ProxyStack(processes=args.processes, pool_size=args.pool_size, caddy=args.caddy) as stack:
        measure(stack, WORKLOADS, args.reps, args.duration, results)
        servers = list(stack.ports)
    print(f"\n{'workload':18} {'server':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'vs nginx':>9} {'gw CPU us/req':>14}")
    for name, *_ in WORKLOADS:
        base = statistics.median(r["rps"] for r in results[(name, "nginx")])
        for server in servers:
            runs = results[(name, server)]

            def med(key: str, runs: list[Result] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            ratio = med("rps") / base if base else float("nan")
            cpu = f"{med('gw_cpu_us'):14.0f}" if server == "gateway" else " " * 14
            print(f"{name:18} {server:8} {med('rps'):9.0f} {med('p50'):8.2f} {med('p99'):8.2f} "
                  f"{med('errors'):7.0f} {ratio:9.2f} {cpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
