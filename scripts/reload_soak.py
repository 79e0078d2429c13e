"""Reload soak: ``clients`` closed-loop clients against a gateway on 127.0.0.1
for ``seconds``, with a SIGHUP (and a changed ``server_software``; every
third reload also resizes the php-fpm pool, so php-fpm is replaced) once a
second. Prints requests answered, failed (should be 0) and the stale
keep-alive resends every HTTP client makes (see
tests/integration/reload_load.py, which the test suite runs for a few seconds
in tests/integration/test_signals.py). Starts and stops its own gateway, by pid.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.conftest import DOCROOT, free_port  # noqa: E402
from tests.integration.reload_load import run_load  # noqa: E402


def write_conf(conf: Path, port: int, run: Path, n: int, processes: int, flags: str = "") -> None:
    (conf / "00.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}{flags}"]\nruntime_dir = "{run}"\naccess_log = "off"\n'
        f'processes = {processes}\nuser = "root"\nserver_software = "gw-{n}"\n[timeouts]\ngraceful = "5s"\n'
        f'[admin]\nlisten = "off"\n[backends.php]\npool_size = {4 + 2 * ((n // 3) % 2)}\nphp_fpm.user = "root"\n'
        f'[sites.t]\nroot = "{DOCROOT}"\nphp = "php"\ndefault = true\n')


async def main(seconds: float, clients: int, processes: int, reuseport: bool = False) -> int:
    flags = " reuseport" if reuseport else ""
    with tempfile.TemporaryDirectory(prefix="reload-soak-") as tmp:
        conf, run = Path(tmp) / "conf.d", Path(tmp) / "run"
        conf.mkdir()
        port = free_port()
        write_conf(conf, port, run, 0, processes, flags)
        log_path = Path(tmp) / "gateway.log"
        with open(log_path, "wb") as log_file:  # noqa: ASYNC230 - once, before anything runs
            proc = await trio.lowlevel.open_process([sys.executable, "-m", "gateway", "serve", "--config", str(conf)],
                                                    stderr=log_file, stdout=subprocess.DEVNULL)
        try:
            with trio.fail_after(30):
                while b"listening on" not in log_path.read_bytes():
                    assert proc.returncode is None, log_path.read_text()
                    await trio.sleep(0.05)
            stop = trio.Event()
            reloads = 0

            async def reloader() -> None:
                nonlocal reloads
                started = time.monotonic()
                while time.monotonic() - started < seconds:
                    await trio.sleep(1.0)
                    reloads += 1
                    write_conf(conf, port, run, reloads, processes, flags)
                    proc.send_signal(signal.SIGHUP)
                await trio.sleep(3.0)  # the last reload lands under load too
                stop.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reloader)
                result = await run_load(port, stop, clients)
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
        text = log_path.read_text()
    print(f"{seconds:g} s, {clients} clients, {processes} processes{flags}, {reloads} SIGHUPs "
          f"({text.count('reloaded:') + text.count('restarting in place')} reloads done)")
    print(f"answered {result.ok}, failed {result.failed} {dict(result.errors) or ''}, "
          f"stale keep-alive resends {result.stale_retries}")
    print("by Server header:", dict(sorted(result.servers.items(), key=lambda kv: int(kv[0][3:]))))
    return 1 if result.failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--reuseport", action="store_true", help="listen with reuseport (a socket per process)")
    args = parser.parse_args()
    sys.exit(trio.run(main, min(args.seconds, 3600.0), args.clients, args.processes, args.reuseport))
