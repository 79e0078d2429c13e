"""The gateway's CPU per request over HTTP/2, one process, interleaved (optionally vs a baseline tree).

``scripts/path-cpu`` for HTTP/2: one gateway process (``processes = 1``,
access log off, ``http2_cleartext`` on, or ``--tls``) serves a 1 KiB file
(``static``), ``/hello.php`` through php-fpm (``php``) and a 50 KB page-cache
HIT (``cache``); h2load sends ``-n`` requests over ``-c`` connections of
``-m`` streams each (h2c, or TLS with ``--tls``; ``--h1``: HTTP/1.1 over
``c x m`` connections, for the same paths' HTTP/1.1 cost), and the figure is
the gateway's CPU time over the requests answered. With ``--baseline TREE``
a gateway from that source tree runs beside this checkout's and every run
alternates between the two.

    scripts/h2-cpu [--reps 3] [--n 10000] [-c 16] [-m 10] [--only static,php,cache] [--baseline TREE] [--tls] [--h1]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from _harness import REPO, Stack, cpu_dirs, free_port, make_certificate, port_open, print_cpu_table, wait_for
from bench import cpu_seconds

PATHS = {"static": "/1k.txt", "php": "/hello.php", "cache": "/page.php"}


H1 = False


def h2load(url: str, n: int, c: int, m: int, headers=()) -> dict[str, float]:
    if H1:
        c, m = c * m, 1
    out = subprocess.run(["h2load", *(["--h1"] if H1 else []), f"-c{c}", f"-m{m}", f"-t{min(2, c)}", f"-n{n}",
                          *(a for h in headers for a in ("-H", h)), url],
                         capture_output=True, text=True, timeout=600).stdout
    def num(p):
        mm = re.search(p, out)
        return float(mm.group(1)) if mm else 0.0
    return {"rps": num(r"finished in [\d.]+m?s, ([\d.]+) req/s"),
            "done": num(r"requests: \d+ total, \d+ started, (\d+) done"),
            "ok": num(r"(\d+) 2xx"), "raw": out}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("-c", type=int, default=16)
    p.add_argument("-m", type=int, default=10)
    p.add_argument("--only", default="static,php")
    p.add_argument("--baseline", type=Path)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--h1", action="store_true")
    args = p.parse_args()
    global H1
    H1 = args.h1
    trees = {"this": REPO} if args.baseline is None else {"baseline": args.baseline.resolve(), "this": REPO}
    root, run = cpu_dirs("h2cpu")
    cert, key = make_certificate(run)
    procs = []
    results: dict = {}
    try:
        with Stack(root, workers=8) as stack:
            gateways = {}
            for label, tree in trees.items():
                port = free_port()
                confd = run / f"conf-this-{label}"
                confd.mkdir()
                listen = f'"127.0.0.1:{port} tls"' if args.tls else f'"127.0.0.1:{port}"'
                tls = f'[sites.cmp.tls]\ncert = "{cert}"\nkey = "{key}"\n' if args.tls else ""
                tls2 = f'[sites.cached.tls]\ncert = "{cert}"\nkey = "{key}"\n' if args.tls else ""
                (confd / "00.toml").write_text(
                    f'[server]\nlisten = [{listen}]\naccess_log = "off"\nprocesses = 1\nhttp2_cleartext = true\n'
                    + ('user = "root"\n' if os.geteuid() == 0 else "")
                    + '[admin]\nlisten = "off"\n'
                    f'[backends.php]\naddress = "unix:{stack.fpm_socket}"\npool_size = 4\n'
                    '[sites.cmp]\ndefault = true\nserver_names = ["localhost", "127.0.0.1"]\n'
                    f'root = "{root}"\nphp = "php"\n{tls}'
                    f'[sites.cached]\nserver_names = ["cached.test"]\nroot = "{root}"\nphp = "php"\n{tls2}'
                    '[sites.cached.cache]\nenabled = true\nttl = "1h"\n')
                env = {**os.environ, "PYTHONPATH": str(tree)}
                proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(confd),
                                         "--log-level", "warning"], cwd=tree, env=env)
                procs.append(proc)
                gateways[label] = (port, proc.pid)
                wait_for(lambda port=port: port_open(port), timeout=60, what=f"gateway {tree}")
                scheme = "https" if args.tls else "http"
                for name, path in PATHS.items():
                    if name in args.only.split(","):
                        h = (":authority: cached.test",) if name == "cache" else ()
                        r = h2load(f"{scheme}://127.0.0.1:{port}{path}", 2000, args.c, args.m, headers=h)
                        if r["ok"] < 1900:
                            print(r["raw"], file=sys.stderr)
            print("gateway pids (py-spy record -p PID)", {k: v[1] for k, v in gateways.items()}, file=sys.stderr,
                  flush=True)
            for rep in range(args.reps):
                for name in args.only.split(","):
                    path = PATHS[name]
                    h = (":authority: cached.test",) if name == "cache" else ()
                    for label, (port, pid) in gateways.items():
                        n = args.n
                        cpu0 = cpu_seconds(pid)
                        r = h2load(f"{scheme}://127.0.0.1:{port}{path}", n, args.c, args.m, headers=h)
                        us = (cpu_seconds(pid) - cpu0) / r["done"] * 1e6 if r["done"] else float("nan")
                        if r["ok"] < r["done"]:
                            print("NOT OK", r["raw"], file=sys.stderr)
                        results.setdefault((name, label), []).append((us, r["rps"]))
                        print(f"  rep {rep + 1} {name:6} {label:8} {r['rps']:8.0f} req/s {us:6.0f} us/req "
                              f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}; {args.reps} reps of -n{args.n} -c{args.c} -m{args.m} "
          f"{'tls' if args.tls else 'h2c'}, 1 process")
    print_cpu_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
