"""Hold N idle keep-alive connections on a freshly started gateway; report the
memory each costs (RSS delta / N) and the latency of fresh requests meanwhile.

    scripts/idle [--connections 10000] [--fresh 300]

Loopback only; bounded; the gateway it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]


def _rss_one(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rss_kib(pid: int) -> int:
    """RSS of the gateway: its master and worker processes (not php-fpm)."""
    sys.path.insert(0, str(REPO))
    from gateway.observe.monitor import children_of

    total = _rss_one(pid)
    for child in children_of(pid):
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"gateway" in f.read():
                total += _rss_one(child)
    return total


async def one_request(stream: trio.SocketStream) -> None:
    await stream.send_all(b"GET /style.css HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += await stream.receive_some(65536)


async def main(args: argparse.Namespace, port: int, pid: int) -> None:
    held: list[trio.SocketStream] = []
    limiter = trio.CapacityLimiter(200)

    async def open_idle() -> None:
        async with limiter:
            s = await trio.open_tcp_stream("127.0.0.1", port)
            await one_request(s)  # a real keep-alive connection, now idle
            held.append(s)

    await trio.sleep(1)
    before = rss_kib(pid)
    t0 = time.monotonic()
    async with trio.open_nursery() as n:
        for _ in range(args.connections):
            n.start_soon(open_idle)
    await trio.sleep(2)
    after = rss_kib(pid)
    print(f"{len(held)} idle keep-alive connections opened in {time.monotonic() - t0:.1f}s")
    print(f"gateway RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: "
          f"{(after - before) * 1024 / max(1, len(held)):.0f} bytes per idle connection")
    lat = []
    for _ in range(args.fresh):
        t = time.monotonic()
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await one_request(s)
        lat.append(time.monotonic() - t)
        await s.aclose()
    lat.sort()
    print(f"fresh requests (new connection + GET) while they are held: p50 {lat[len(lat) // 2] * 1000:.2f} ms, "
          f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.2f} ms, max {lat[-1] * 1000:.2f} ms")
    for s in held:
        await trio.aclose_forcefully(s)


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--fresh", type=int, default=300)
    args = p.parse_args()
    args.connections = max(1, min(args.connections, 18000))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 1000), hard))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = Path(tempfile.mkdtemp(prefix="idle-conf-"))
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}"]\naccess_log = "off"\n[admin]\nlisten = "off"\n'
        f"[limits]\nmax_connections = {args.connections + 1000}\n"
        f'[backends.php]\npool_size = 2\n[sites.demo]\nroot = "{REPO / "demo"}"\nphp = "php"\n')
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(conf), "--log-level", "warning"],
                          cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as c:
                if c.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or gw.poll() is not None:
                raise SystemExit("the gateway did not start")
            time.sleep(0.05)
        trio.run(main, args, port, gw.pid)
    finally:
        gw.terminate()
        try:
            gw.wait(20)
        except subprocess.TimeoutExpired:
            gw.kill()
    return 0


if __name__ == "__main__":
    sys.exit(run())
