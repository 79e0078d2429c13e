"""The gateway's CPU per request on its three light paths, in one process, interleaved.

One gateway process (``processes = 1``, access log off) serves, from one site:
``/up/hello`` proxied to an upstream nginx that answers 5 bytes (``routes``,
an HTTP backend keeping 16 connections), ``/hello.php`` through php-fpm
(4 connections), a 1 KiB static file, and a page cache HIT: ``/page.php``
(50 KB of HTML) on a second site with ``[sites.X.cache]`` (Host: cached.test),
stored by the warm-up; and two uncached big pages at WordPress's bench
concurrency (16 connections): ``page`` (the same 50 KB, PHP echoes it at
once) and ``wp`` (50 KB in 7 flushed pieces with 3 ms of PHP work before
each: the FastCGI records arrive one by one, and the rate, ~50 pages a
second, is WordPress's, where fixed per-second costs weigh on a page and
every event wakes an idle loop).
wrk runs each path in turn (64 connections unless said,
--duration each), --reps rounds, and the gateway's CPU time over
the requests answered is the figure: µs of gateway CPU per request, the number
that stays comparable on a busy machine where req/s does not.

With ``--baseline TREE`` (a source tree, e.g. ``git archive main | tar -x -C
/tmp/base``) a second gateway from that tree runs beside this checkout's and
every measurement alternates between the two: the before/after of a change,
under the same load. ``GATEWAY_H11`` is passed on (both gateways parse with
the same h11).

With ``--tls`` each gateway also listens with TLS (a self-signed P-256
certificate, ``_harness.make_certificate``) and every path is measured over
kept-alive HTTPS as well (rows ``tls-NAME``, e.g. ``tls-static``), in the
same process, alternated with its plain row: what TLS adds per request.

With ``--profile DIR`` this checkout's gateway runs under cProfile and
writes DIR/gateway.prof when it stops (the CPU figures then include the
profiler's overhead: use it for where the time goes, not how much).

    scripts/path-cpu [--reps 3] [--duration 4] [--only proxy,php,static,cache,page,wp] [--baseline TREE]
                     [--profile DIR] [--tls]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from _harness import REPO, Stack, cpu_dirs, free_port, make_certificate, port_open, print_cpu_table, wait_for
from bench import cpu_seconds, wrk

UPSTREAM_CONF = """
daemon off;
worker_processes 1;
pid {run}/upstream.pid;
error_log {run}/upstream-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000;
    client_body_temp_path {run};
    server {{
        listen 127.0.0.1:{port};
        location /up/ {{ default_type text/plain; return 200 "hello"; }}
    }}
}}
"""

PATHS = {"proxy": "/up/hello", "php": "/hello.php", "static": "/1k.txt", "cache": "/page.php", "page": "/page.php",
         "wp": "/wp.php"}
#: the request headers of each path (the cached page is on its own site)
HEADERS = {"cache": ("Host: cached.test",)}
#: connections per path (default 64): the big pages at WordPress's bench concurrency
CONNECTIONS = {"page": 16, "wp": 16}
#: like a WordPress page: 50 KB made in 8 KB pieces, each flushed after 3 ms of PHP work,
#: so the records reach the gateway one by one as WordPress's do, at WordPress's rate
WP_PAGE = """<?php header('Content-Type: text/html; charset=UTF-8');
for ($i = 0; $i < 7; $i++) {
    $end = microtime(true) + 0.003; while (microtime(true) < $end) {}
    echo str_repeat('<p>page</p>', 745); flush();
}
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=int, default=4)
    p.add_argument("--only", default="proxy,php,static", help="comma-separated: proxy, php, static, cache, page, wp")
    p.add_argument("--profile", type=Path, help="run this checkout's gateway under cProfile, writing DIR/gateway.prof")
    p.add_argument("--baseline", type=Path, help="also run the gateway whose source tree is there")
    p.add_argument("--tls", action="store_true", help="also measure every path over HTTPS (rows tls-NAME)")
    args = p.parse_args()
    paths = {name: PATHS[name] for name in args.only.split(",")}
    #: (row, path, https): each path over plain HTTP, and with --tls over HTTPS after it
    rows = [(f"{prefix}{name}", name, path, https) for name, path in paths.items()
            for prefix, https in ([("", False), ("tls-", True)] if args.tls else [("", False)])]
    trees = {"this": REPO} if args.baseline is None else {"baseline": args.baseline.resolve(), "this": REPO}
    root, run = cpu_dirs("path-cpu", {"wp.php": WP_PAGE})
    cert, key = make_certificate(run) if args.tls else (None, None)
    upstream = free_port()
    (run / "upstream.conf").write_text(UPSTREAM_CONF.format(run=run, port=upstream))
    procs = [subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(run / "upstream.conf")],
                              stderr=subprocess.DEVNULL)]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        wait_for(lambda: port_open(upstream), what="the upstream nginx")
        # php-fpm with room for both gateways' 4 kept connections (the Stack's own gateway stays idle)
        with Stack(root, workers=8) as stack:
            gateways = {}
            for label, tree in trees.items():
                port, tls_port = free_port(), free_port()
                confd = run / f"conf-{label}"
                confd.mkdir()
                listen = f'"127.0.0.1:{port}", "127.0.0.1:{tls_port} tls"' if args.tls else f'"127.0.0.1:{port}"'
                tls = f'cert = "{cert}"\nkey = "{key}"\n' if args.tls else ""
                (confd / "00.toml").write_text(
                    f'[server]\nlisten = [{listen}]\naccess_log = "off"\nprocesses = 1\n'
                    + ('user = "root"\n' if os.geteuid() == 0 else "")
                    + '[admin]\nlisten = "off"\n'
                    f'[backends.php]\naddress = "unix:{stack.fpm_socket}"\npool_size = 4\n'
                    f'[backends.app]\ntype = "http"\naddresses = ["127.0.0.1:{upstream}"]\npool_size = 16\n'
                    f'[sites.cmp]\ndefault = true\nroot = "{root}"\nphp = "php"\nroutes = {{"/up/" = "app"}}\n'
                    + (f'server_names = ["localhost", "127.0.0.1"]\n[sites.cmp.tls]\n{tls}' if tls else "")
                    + f'[sites.cached]\nserver_names = ["cached.test"]\nroot = "{root}"\nphp = "php"\n'
                    + (f'[sites.cached.tls]\n{tls}' if tls else "")
                    + '[sites.cached.cache]\nenabled = true\nttl = "1h"\n')
                env = {**os.environ, "PYTHONPATH": str(tree)}
                profile = ["-m", "cProfile", "-o", str(args.profile.resolve() / "gateway.prof")] \
                    if args.profile is not None and label == "this" else []
                proc = subprocess.Popen([sys.executable, *profile, "-m", "gateway", "serve", "--config", str(confd),
                                         "--log-level", "warning"], cwd=tree, env=env)
                procs.append(proc)
                gateways[label] = (port, tls_port, proc.pid)
                wait_for(lambda port=port: port_open(port), timeout=60, what=f"the gateway from {tree}")
                for _, name, path, https in rows:  # warm-up: connections opened, modules loaded, the page stored
                    wrk(tls_port if https else port, path, CONNECTIONS.get(name, 64), 1, 10, https=https,
                        headers=HEADERS.get(name, ()))
            for rep in range(args.reps):
                for row, name, path, https in rows:
                    for label, (port, tls_port, pid) in gateways.items():
                        cpu0 = cpu_seconds(pid)
                        r = wrk(tls_port if https else port, path, CONNECTIONS.get(name, 64), args.duration, 10,
                                https=https, headers=HEADERS.get(name, ()))
                        us = (cpu_seconds(pid) - cpu0) / r["requests"] * 1e6 if r["requests"] else float("nan")
                        results.setdefault((row, label), []).append((us, r["rps"]))
                        print(f"  rep {rep + 1} {row:10} {label:8} {r['rps']:8.0f} req/s {us:6.0f} µs/req "
                              f"errors {r['errors']:.0f}", file=sys.stderr, flush=True)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGQUIT if proc is procs[0] else signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}; {args.reps} reps of {args.duration}s, 64 connections "
          f"(page, wp: {CONNECTIONS['page']}), "
          f"1 process, GATEWAY_H11={os.environ.get('GATEWAY_H11', '(unset)')}")
    print_cpu_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
