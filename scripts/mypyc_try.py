"""Does compiling our own pure modules with mypyc pay? Measured on copies, nothing installed.

Two copies of a git revision go to a scratch directory: one left pure, one with
``--modules`` compiled in place by the venv's mypyc (it ships with mypy, a test
dependency). A compiled module is a ``.so`` beside its ``.py``, and Python
imports the ``.so`` first, so ``PYTHONPATH=copy`` runs either. Then, as asked:

- ``--tests PATHS``: pytest on the compiled copy (its modules checked to be the ``.so``).
- micro (unless ``--no-micro``): µs per call of what one hello.php request runs
  in those modules (a FastCGI exchange through ``fastcgi.Connection``, the CGI
  params, the CGI response head, the request head check, split_target and the
  route), best of 5, pure and compiled alternated in fresh processes.
- ``--icount ROUNDS``: instructions per hello.php request of one gateway process
  under callgrind (valgrind), each copy's gateway in turn, 1 connection. CPU time
  per request swings ±10-15 % between reps on a machine shared with other
  benchmarks; instruction counts do not depend on what else runs, except the
  work an idle gateway does per second (timers, health checks), which grows
  with the slowed-down wall time: it is measured (10 s idle) and subtracted.
- ``--path-cpu REPS``: ``scripts/path-cpu --only php`` from the compiled copy with
  the pure one as ``--baseline`` (µs of CPU per request, alternated).

    scripts/mypyc-try [--ref HEAD] [--modules fastcgi,gateway/http/head.py] [--tests tests/fastcgi]
                      [--no-micro] [--icount 5] [--path-cpu 9] [--keep DIR]

Result (issue 19 item 7) and how it was measured: README "Speed", mypyc.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from _harness import REPO, Stack, free_port, port_open, wait_for

DEFAULT_MODULES = ("fastcgi,gateway/upstream/cgi.py,gateway/app/cgi_params.py,gateway/http/head.py,"
                   "gateway/app/routing.py")
DEFAULT_TESTS = ("tests/fastcgi tests/gateway/upstream/test_cgi.py tests/gateway/http/test_request_head.py "
                 "tests/gateway/app/test_routing.py tests/gateway/app/test_try_files.py")

#: How long an idle gateway's instructions are counted for (its rate is subtracted from each round)
IDLE_SECONDS = 10

#: Run in a fresh interpreter with PYTHONPATH at one copy: prints "name µs" lines.
MICRO = r'''
import sys, tempfile, time
from pathlib import Path
import fastcgi
from gateway.app import cgi_params
from gateway.app.routing import PhpScript, Router, split_target
from gateway.config import SiteConfig
from gateway.http.head import check_request_head
from gateway.http.request import Request
from gateway.upstream.cgi import CgiResponseHead

HEADERS = [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"wrk"), (b"accept", b"*/*"), (b"connection", b"keep-alive")]
ROOT = tempfile.mkdtemp()
Path(ROOT, "hello.php").write_text("<?php echo 'hello';\n")
router = Router(SiteConfig(root=ROOT, php="php"))
script = PhpScript(ROOT + "/hello.php", "/hello.php", "/hello.php", "", b"")
req = Request(method=b"GET", target=b"/hello.php", http_version=b"1.1", headers=HEADERS, client=("127.0.0.1", 51234),
              server=("127.0.0.1", 8080), body=None, request_id="t", host=b"127.0.0.1")
PHP_HEAD = b"X-Powered-By: PHP/8.2.29\r\nContent-type: text/html; charset=UTF-8\r\n\r\n"
REPLY = (fastcgi.encode_stream_chunk(6, 1, PHP_HEAD + b"hello") + fastcgi.encode_stream_end(6, 1)
         + fastcgi.encode_record(3, 1, bytes(8)))

if hasattr(cgi_params, "CgiParams"):  # the site's constant part encoded once, pairs in bytes
    cp = cgi_params.CgiParams(b"php-gateway")
    def params():
        return cp.encode(req, router, script, None)
else:
    def params():
        return cgi_params.build_params(
            method=req.method, target=req.target, http_version=req.http_version, headers=req.headers, script=script,
            document_root=router.root, client=req.client, server=req.server, server_name=req.host,
            server_software=b"php-gateway", body_length=None)
PARAMS = params()

def exchange(fc=fastcgi.Connection(fastcgi.CLIENT)):
    """What the gateway asks of fastcgi for one hello.php: the request's bytes, the answer's events."""
    if isinstance(PARAMS, bytes):
        fc.send_request(1, PARAMS, b"")
    else:
        b"".join([fc.send(fastcgi.BeginRequest(keep_conn=True, request_id=1)),
                  fc.send(fastcgi.Params(tuple(PARAMS), 1)), fc.send(fastcgi.Stdin(b"", 1))])
    fc.receive_data(REPLY)
    while not isinstance(fc.next_event(), fastcgi.EndRequest):
        pass
    fc.start_next_cycle()

CASES = {
    "fastcgi exchange": exchange,
    "CGI params": params,
    "CGI response head": lambda: CgiResponseHead(8192).feed(PHP_HEAD + b"hello"),
    "check_request_head": lambda: check_request_head(b"/hello.php", b"1.1", HEADERS),
    "split_target": lambda: split_target(b"/hello.php"),
    "Router.route": lambda: router.route("/hello.php", b"", b"127.0.0.1"),
}
N = int(sys.argv[1])
for name, f in CASES.items():
    for _ in range(N // 10):
        f()
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for _ in range(N):
            f()
        best = min(best, time.process_time() - t)
    print(f"{name}\t{best / N * 1e6:.2f}")
'''


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, **{"text": True, "check": True, **kw})  # type: ignore[call-overload, no-any-return]


def build(copy: Path, modules: list[str]) -> None:
    mypyc = REPO / ".venv/bin/mypyc"
    if not mypyc.exists():
        sys.exit(f"no {mypyc}: scripts/setup --test installs mypy, which ships mypyc")
    if not shutil.which("cc") or not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        sys.exit("mypyc needs a C compiler and Python's headers (Debian: build-essential python3-dev)")
    t = time.monotonic()
    out = subprocess.run([str(mypyc), *modules], cwd=copy, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"mypyc failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    print(f"built {', '.join(modules)} in {time.monotonic() - t:.0f} s", file=sys.stderr)


def compiled_modules(copy: Path, modules: list[str]) -> list[str]:
    """The modules' files as the copy imports them (``.so`` when compiled)."""
    names = [m.removesuffix(".py").replace("/", ".") for m in modules]
    code = f"import importlib; print('\\n'.join(importlib.import_module(n).__file__ for n in {names!r}))"
    return run([sys.executable, "-c", code], cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)},
               capture_output=True).stdout.split()


def micro(copies: dict[str, Path], rounds: int = 3, n: int = 20000) -> None:
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for label, copy in copies.items():
            out = run([sys.executable, "-c", MICRO, str(n)], cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)},
                      capture_output=True).stdout
            for line in out.splitlines():
                name, us = line.split("\t")
                results.setdefault(name, {}).setdefault(label, []).append(float(us))
    print(f"\nmicro: µs per call, best of 5 x {n}, median of {rounds} alternated processes")
    print(f"{'':20} {'pure':>8} {'compiled':>9} {'saved':>7}")
    for name, by in results.items():
        pure, comp = statistics.median(by["pure"]), statistics.median(by["compiled"])
        print(f"{name:20} {pure:8.2f} {comp:9.2f} {pure - comp:7.2f}")


def _h2load(port: int, n: int, path: str = "/hello.php") -> int:
    out = run(["h2load", "--h1", "-n", str(n), "-c", "1", f"http://127.0.0.1:{port}{path}"], capture_output=True,
              timeout=1800).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not m or int(m.group(1)) != n:
        raise RuntimeError(f"h2load: not all {n} requests succeeded:\n{out}")
    return n


def _dump(pid: int, out: Path) -> int:
    """Dump callgrind's counters of ``pid`` and return their instruction total."""
    before = set(out.parent.glob(out.name + ".*"))
    run(["callgrind_control", "-d", str(pid)], capture_output=True)
    new = max(set(out.parent.glob(out.name + ".*")) - before, key=os.path.getmtime)
    for line in new.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {new}")


def icount(copies: dict[str, Path], rounds: int, requests: int = 400) -> None:
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if not shutil.which(tool):
            sys.exit(f"--icount needs {tool} (Debian: valgrind, nghttp2-client)")
    root = Path(tempfile.mkdtemp(prefix="mypyc-try-root-"))
    work = Path(tempfile.mkdtemp(prefix="mypyc-try-"))
    for d in (root, work):
        d.chmod(0o755)
    (root / "hello.php").write_text("<?php echo 'hello';\n")
    (root / "hello.php").chmod(0o644)
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, list[float]] = {}
    try:
        with Stack(root, workers=8) as stack:
            gateways = {}
            for label, copy in copies.items():
                port, confd, out = free_port(), work / f"conf-{label}", work / f"callgrind-{label}"
                confd.mkdir()
                (confd / "00.toml").write_text(
                    f'[server]\nlisten = ["127.0.0.1:{port}"]\naccess_log = "off"\nprocesses = 1\n'
                    + ('user = "root"\n' if os.geteuid() == 0 else "")
                    + '[admin]\nlisten = "off"\n'
                    f'[backends.php]\naddress = "unix:{stack.fpm_socket}"\npool_size = 4\n'
                    f'[sites.cmp]\ndefault = true\nroot = "{root}"\nphp = "php"\n')
                procs.append(subprocess.Popen(
                    ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p",
                     sys.executable, "-m", "gateway", "serve", "--config", str(confd), "--log-level", "warning"],
                    cwd=copy, env={**os.environ, "PYTHONPATH": str(copy), "PYTHONHASHSEED": "0"},
                    stderr=subprocess.DEVNULL))
                wait_for(lambda port=port: port_open(port), timeout=300, what=f"the {label} gateway under valgrind")
                _h2load(port, 200)  # warm-up, not counted
                pid = procs[-1].pid
                run(["callgrind_control", "-i", "on", str(pid)], capture_output=True)
                run(["callgrind_control", "-z", str(pid)], capture_output=True)
                t = time.monotonic()
                time.sleep(IDLE_SECONDS)
                idle = _dump(pid, out) / (time.monotonic() - t)
                run(["callgrind_control", "-i", "off", str(pid)], capture_output=True)
                print(f"idle {label}: {idle / 1000:.0f} k instructions/s", file=sys.stderr)
                gateways[label] = (port, pid, out, idle)
            for rep in range(rounds):
                for label, (port, pid, out, idle) in gateways.items():
                    run(["callgrind_control", "-i", "on", str(pid)], capture_output=True)
                    run(["callgrind_control", "-z", str(pid)], capture_output=True)
                    t = time.monotonic()
                    n = _h2load(port, requests)
                    seconds = time.monotonic() - t
                    total = _dump(pid, out)
                    run(["callgrind_control", "-i", "off", str(pid)], capture_output=True)
                    per = (total - idle * seconds) / n
                    results.setdefault(label, []).append(per)
                    print(f"  round {rep + 1} {label:8} {total / n / 1000:7.1f} k instructions/request, "
                          f"{per / 1000:7.1f} k without the idle rate ({seconds:.0f} s)", file=sys.stderr)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    pure = statistics.median(results["pure"])
    print(f"\ninstructions per hello.php request (callgrind, 1 connection, {requests} requests x {rounds} rounds, "
          f"idle rate subtracted; GATEWAY_H11={os.environ.get('GATEWAY_H11', '(unset)')})")
    for label, values in results.items():
        median = statistics.median(values)
        print(f"{label:9} median {median / 1000:7.1f} k ({(median - pure) / pure * 100:+.1f} %), "
              f"rounds {', '.join(f'{v / 1000:.0f}' for v in values)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", default="HEAD", help="git revision to copy (default HEAD; uncommitted edits are not in it)")
    p.add_argument("--modules", default=DEFAULT_MODULES, help="comma-separated packages or .py files for mypyc")
    p.add_argument("--tests", nargs="?", const=DEFAULT_TESTS, help=f"run pytest on the compiled copy "
                   f"(default paths: {DEFAULT_TESTS})")
    p.add_argument("--no-micro", action="store_true")
    p.add_argument("--icount", type=int, default=0, metavar="ROUNDS")
    p.add_argument("--path-cpu", type=int, default=0, metavar="REPS")
    p.add_argument("--keep", type=Path, help="make the copies here and keep them (default: a temporary directory)")
    args = p.parse_args()
    modules = args.modules.split(",")
    scratch = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="mypyc-try-copies-"))
    copies = {"pure": scratch / "pure", "compiled": scratch / "compiled"}
    try:
        archive = run(["git", "archive", args.ref], cwd=REPO, capture_output=True, text=False).stdout
        for copy in copies.values():
            shutil.rmtree(copy, ignore_errors=True)
            copy.mkdir(parents=True)
            subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
        build(copies["compiled"], modules)
        files = compiled_modules(copies["compiled"], modules)
        print("compiled copy imports " + ", ".join(os.path.basename(f) for f in files), file=sys.stderr)
        if args.tests:
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests.split()],
                           cwd=copies["compiled"], env={**os.environ, "PYTHONPATH": str(copies["compiled"])},
                           check=True)
        if not args.no_micro:
            micro(copies)
        if args.icount:
            icount(copies, args.icount)
        if args.path_cpu:
            subprocess.run([sys.executable, "scripts/path_cpu.py", "--only", "php", "--reps", str(args.path_cpu),
                            "--baseline", str(copies["pure"])], cwd=copies["compiled"], check=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
