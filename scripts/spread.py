"""How evenly the worker processes share connections: wrk holds C keep-alive
connections to a static file (or, with --php, a PHP page echoing its pid, on
a spawned php-fpm of --pool-size workers) on a freshly started gateway (``processes``
worker processes, 127.0.0.1), once with one shared listen socket and once with
``reuseport`` (one socket per process), in alternation; for each run it prints
the open connections of each process halfway through and the requests each
served (from the master's ``/status``, which lists its workers).

    scripts/spread [--connections 64] [--seconds 3] [--reps 3] [--processes 2] [--php] [--pool-size 4]

Loopback only; bounded (reps x 2 runs of --seconds); each gateway it starts is
stopped at the end, by pid.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.observe.admin import admin_request  # noqa: E402
from tests.integration.conftest import DOCROOT, free_port  # noqa: E402


async def _workers(admin: str) -> list[dict[str, int]]:
    status = json.loads(await admin_request(admin, b"/status"))
    return [{"open": w.get("open") or 0, "requests": w.get("requests_total") or 0} for w in status["workers"]]


async def one_run(tmp: Path, reuseport: bool, args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """(open connections per process halfway, requests per process) for one run."""
    conf = tmp / ("conf-reuseport" if reuseport else "conf-shared")
    conf.mkdir()
    port = free_port()
    admin = str(tmp / f"admin-{port}.sock")
    flag = " reuseport" if reuseport else ""
    (conf / "00.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}{flag}"]\naccess_log = "off"\nuser = "root"\n'
        f'processes = {args.processes}\nruntime_dir = "{tmp / f"run-{port}"}"\n'
        f'[admin]\nlisten = "unix:{admin}"\n'
        + (f'[backends.php]\npool_size = {args.pool_size}\nphp_fpm.user = "root"\n' if args.php else "")
        + f'[sites.t]\nroot = "{DOCROOT}"\ndefault = true\n' + ('php = "php"\n' if args.php else ""))
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "gateway", "serve", "--config", str(conf),
                                             "--log-level", "warning"], stdout=subprocess.DEVNULL,
                                             stderr=open(tmp / "gateway.log", "ab"))  # noqa: SIM115, ASYNC230
    try:
        with trio.fail_after(30):
            while True:
                try:
                    before = await _workers(admin)
                    if len(before) == args.processes and all(w["open"] is not None for w in before):
                        break
                except (OSError, ValueError):
                    pass
                assert proc.returncode is None, "the gateway exited"
                await trio.sleep(0.1)  # nothing to wait on but the admin socket's appearance
        async with trio.open_nursery() as nursery:
            url = f"http://127.0.0.1:{port}/{'pid.php' if args.php else 'hello.txt'}"
            wrk = await nursery.start(partial(trio.run_process, [
                "wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds:g}s", url], stdout=subprocess.DEVNULL))
            await trio.sleep(args.seconds / 2)  # halfway through wrk's run
            middle = await _workers(admin)
            await wrk.wait()
        after = await _workers(admin)
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(20):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return [w["open"] for w in middle], [a["requests"] - b["requests"] for a, b in zip(after, before, strict=True)]


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="spread-"))
    try:
        rows: dict[bool, list[tuple[list[int], list[int]]]] = {False: [], True: []}
        for rep in range(args.reps):
            (tmp / f"{rep}").mkdir()
            for reuseport in (False, True):
                rows[reuseport].append(await one_run(tmp / f"{rep}", reuseport, args))
        for reuseport, runs in rows.items():
            name = "reuseport (a socket per process)" if reuseport else "one shared socket"
            print(f"{name}, wrk -c{args.connections} on {'a PHP page' if args.php else 'a static file'}, "
                  f"{args.processes} processes:")
            for opened, served in runs:
                share = max(served) / max(1, sum(served))
                print(f"  open connections per process {'/'.join(map(str, opened))}; requests per process "
                      f"{'/'.join(map(str, served))} (busiest {share:.0%}), {sum(served) / args.seconds:.0f} req/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--php", action="store_true", help="a PHP page, not a static file")
    parser.add_argument("--pool-size", type=int, default=4)
    a = parser.parse_args()
    a.seconds = max(1.0, min(a.seconds, 60.0))
    a.reps = max(1, min(a.reps, 10))
    trio.run(main, a)
