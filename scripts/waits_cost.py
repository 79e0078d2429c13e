"""What sampling the busy php-fpm workers costs (``observe.sampler``), at
64 busy workers: the README's "What is PHP waiting on?" numbers.

    scripts/waits-cost [--workers 64] [--samples 50]

Starts php-fpm (static pool of --workers, as root) and a RESP server on
127.42.0.1:6379 that reads and never answers; sends every worker a request
to tests/integration/docroot/waits/cache.php, so each waits in poll() on a
socket (the costliest path: its pollfd array read from its memory, the
socket looked up in /proc/net); then times ``WorkerSampler.sample`` over
all of them (thread CPU time, as the monitor runs it in a thread). Local
only, bounded: stops php-fpm and the server when done.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.config import BackendConfig, PhpFpmConfig  # noqa: E402
from gateway.observe.sampler import WorkerSampler, fastcgi_addresses  # noqa: E402
from gateway.observe.waits import describe  # noqa: E402
from gateway.serve.php_fpm import find_php_fpm, write_pool_config  # noqa: E402
from gateway.upstream.php_fpm_status import fastcgi_get  # noqa: E402

SCRIPT = ROOT / "tests" / "integration" / "docroot" / "waits" / "cache.php"
HOST, PORT = "127.42.0.1", 6379


async def silent_server(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some(4096):
                pass

    listeners = await trio.open_tcp_listeners(PORT, host=HOST)
    task_status.started()
    await trio.serve_listeners(handle, listeners)


async def main(workers: int, samples: int) -> None:
    directory = tempfile.mkdtemp(prefix="waits-cost-")
    backend = BackendConfig(pool_size=workers, php_fpm=PhpFpmConfig(user="root"))
    paths = write_pool_config("cost", backend, directory)
    fpm = subprocess.Popen([find_php_fpm(), "-F", "-R", "-y", paths.config],  # noqa: ASYNC220 - once, at start
                           start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        async with trio.open_nursery() as n:
            await n.start(silent_server)
            with trio.fail_after(15):
                while not os.path.exists(paths.socket):  # noqa: ASYNC110, ASYNC240 - php-fpm's readiness is its socket
                    await trio.sleep(0.05)
            for _ in range(workers):
                n.start_soon(fastcgi_get, "unix:" + paths.socket, str(SCRIPT), f"host={HOST}&port={PORT}".encode())
            with trio.fail_after(15):
                while True:
                    _, body = await fastcgi_get("unix:" + paths.status_socket, "/fpm-status", b"json&full")
                    processes = json.loads(body)["processes"]
                    running = [p["pid"] for p in processes if p["state"] == "Running"]
                    if len(running) == workers:
                        break
                    await trio.sleep(0.1)
            sampler = WorkerSampler({}, fastcgi_addresses("unix:" + paths.socket), paths.slowlog)
            waits = sampler.sample(running, workers, 0.0)  # warm
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            for i in range(samples):
                waits = sampler.sample(running, workers, float(i))
            cpu = (time.thread_time() - cpu0) / samples
            wall = (time.perf_counter() - wall0) / samples
            # the worst case: every socket new since the last sample (a connection per request): each asked anew
            cpu1 = time.thread_time()
            for i in range(samples):
                sampler._sockets.clear()
                sampler.sample(running, workers, float(i))
            fresh = (time.thread_time() - cpu1) / samples
            tcp_lines = len(Path("/proc/net/tcp").read_text().splitlines()) - 1  # noqa: ASYNC240 - once
            print(f"{workers} busy workers, {samples} samples: {cpu * 1000:.2f} ms CPU and {wall * 1000:.2f} ms wall "
                  f"per sample; at 1 sample/s {cpu:.2%} of a core (/proc/net/tcp had {tcp_lines} sockets)")
            print(f"with no socket remembered from the last sample: {fresh * 1000:.2f} ms CPU per sample, "
                  f"{fresh:.2%} of a core")
            print("what it found:", describe(waits))
            n.cancel_scope.cancel()
    finally:
        os.killpg(fpm.pid, signal.SIGKILL)
        fpm.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    trio.run(main, max(1, min(args.workers, 256)), max(1, min(args.samples, 1000)))
