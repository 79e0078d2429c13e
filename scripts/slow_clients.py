"""Slow clients against the gateway and against nginx + php-fpm, in one run.

One php-fpm pool of 2 workers serves both front ends. For each front end:

1. baseline: one fast client requests /hello.php back to back; its p50/p99.
2. slow clients: 50 uploaders (1 MiB bodies at ~64 KB/s) and 50 downloaders
   (4 MiB PHP responses read at ~64 KB/s) run while the fast client measures
   again. Good front ends buffer both, so PHP workers stay free and the fast
   client barely notices: we want p99 within 1.5x of the baseline.
3. slowloris: 1000 connections each send one header byte every 5 s; the
   header timeout (10 s on both) must cut them while the fast client is served.

Load goes to 127.0.0.1 only, is bounded in time, and stops by itself.
Run through scripts/slow-clients (installs nginx if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h11
import trio
from _harness import Stack

RATE = 64 * 1024  # bytes per second per slow client
PIECE = 8 * 1024
HEADER_TIMEOUT = 10

DOCROOT_FILES = {
    "hello.php": "<?php echo 'hello';\n",
    "upload.php": "<?php echo strlen(file_get_contents('php://input'));\n",
    "big.php": "<?php $mb = (int)($_GET['mb'] ?? 4); $b = str_repeat('x', 1 << 20);\n"
               "for ($i = 0; $i < $mb; $i++) { echo $b; }\n",
}


# -- the fast client ------------------------------------------------------------

async def fast_client(port: int, seconds: float) -> list[float]:
    """Back-to-back GET /hello.php on one keep-alive connection; latencies in s."""
    lat: list[float] = []
    deadline = time.monotonic() + seconds
    stream = None
    conn = None
    while time.monotonic() < deadline:
        if stream is None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            conn = h11.Connection(h11.CLIENT)
        assert conn is not None
        t0 = time.monotonic()
        try:
            with trio.fail_after(30):
                await stream.send_all(conn.send(h11.Request(method="GET", target="/hello.php",
                                                            headers=[("Host", "localhost")])))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
        except (trio.TooSlowError, OSError, trio.BrokenResourceError, h11.ProtocolError):
            lat.append(30.0)
            await trio.aclose_forcefully(stream)
            stream = None
            continue
        lat.append(time.monotonic() - t0)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await stream.aclose()
            stream = None
    if stream is not None:
        await stream.aclose()
    return lat


def pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, max(0, int(q * len(data) + 0.5) - 1))] if data else float("nan")


# -- slow clients, run in a child process so they do not share the fast client's loop --

async def _small_buffer_connect(port: int) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def slow_uploader(port: int, deadline: float, stats: dict[str, int]) -> None:
    body_len = 1 << 20
    # stagger the starts so uploads do not all finish, and hit PHP, at the same moment
    await trio.sleep(random.uniform(0, body_len / RATE))
    while time.monotonic() < deadline:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"POST /upload.php HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                                      b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                                      % body_len)
                sent = 0
                while sent < body_len and time.monotonic() < deadline:
                    n = min(PIECE, body_len - sent)
                    await stream.send_all(b"u" * n)
                    sent += n
                    await trio.sleep(PIECE / RATE)
                if sent < body_len:
                    return
                while await stream.receive_some(65536):
                    pass
                stats["uploads"] += 1
        except (OSError, trio.BrokenResourceError):
            stats["upload_errors"] += 1
            await trio.sleep(0.1)


async def slow_downloader(port: int, deadline: float, stats: dict[str, int]) -> None:
    await trio.sleep(random.uniform(0, 2))
    while time.monotonic() < deadline:
        try:
            stream = await _small_buffer_connect(port)
            async with stream:
                await stream.send_all(b"GET /big.php?mb=4 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                while time.monotonic() < deadline:
                    data = await stream.receive_some(PIECE)
                    if not data:
                        stats["downloads"] += 1
                        break
                    await trio.sleep(len(data) / RATE)
        except (OSError, trio.BrokenResourceError):
            stats["download_errors"] += 1
            await trio.sleep(0.1)


async def slowloris(port: int, deadline: float, stats: dict[str, int]) -> None:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        stats["loris_connect_errors"] += 1
        return
    stats["loris_open"] += 1
    t0 = time.monotonic()
    try:
        for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            if time.monotonic() > deadline:
                stats["loris_survived"] += 1
                return
            await stream.send_all(bytes([byte]))
            with trio.move_on_after(5):
                if not await stream.receive_some(4096):  # server closed (maybe after a 408)
                    raise trio.BrokenResourceError
                # a 408 arrived; the close follows
                while await stream.receive_some(4096):
                    pass
                raise trio.BrokenResourceError
    except (OSError, trio.BrokenResourceError):
        stats["loris_cut"] += 1
        stats["loris_cut_after_ms_total"] += int((time.monotonic() - t0) * 1000)
    finally:
        stats["loris_open"] -= 1
        await trio.aclose_forcefully(stream)


async def child(kind: str, port: int, seconds: float, n: int) -> None:
    stats = dict.fromkeys(("uploads", "upload_errors", "downloads", "download_errors", "loris_open", "loris_cut",
                           "loris_survived", "loris_connect_errors", "loris_cut_after_ms_total"), 0)
    deadline = time.monotonic() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            if kind == "slow":
                nursery.start_soon(slow_uploader, port, deadline, stats)
                nursery.start_soon(slow_downloader, port, deadline, stats)
            else:
                nursery.start_soon(slowloris, port, deadline, stats)
    print(json.dumps(stats), flush=True)


# -- orchestration ---------------------------------------------------------------

async def measure(name: str, port: int, args: argparse.Namespace) -> dict[str, object]:
    base = await fast_client(port, args.seconds)
    row: dict[str, object] = {"server": name, "base_p50": pct(base, 0.5), "base_p99": pct(base, 0.99)}
    for kind, n in (("slow", 50), ("loris", 1000)):
        proc = await trio.lowlevel.open_process(
            [sys.executable, __file__, "--child", kind, "--port", str(port), "--seconds", str(args.seconds + 5),
             "--n", str(n)], stdout=subprocess.PIPE)
        await trio.sleep(4)  # let the slow clients connect and get going
        lat = await fast_client(port, args.seconds)
        out = b""
        assert proc.stdout is not None
        while chunk := await proc.stdout.receive_some(65536):
            out += chunk
        await proc.wait()
        row[f"{kind}_p50"] = pct(lat, 0.5)
        row[f"{kind}_p99"] = pct(lat, 0.99)
        row[f"{kind}_requests"] = len(lat)
        row[f"{kind}_stats"] = json.loads(out.decode().strip().splitlines()[-1])
    return row


def make_docroot() -> Path:
    root = Path(tempfile.mkdtemp(prefix="slowclients-root-"))
    root.chmod(0o755)
    for name, text in DOCROOT_FILES.items():
        (root / name).write_text(text)
    return root


async def run(args: argparse.Namespace, root: Path) -> None:
    gateway_extra = (f'[timeouts]\nclient_header = "{HEADER_TIMEOUT}s"\n'
                     '[limits]\nmax_connections = 5000\n')
    nginx_extra = f"client_header_timeout {HEADER_TIMEOUT}s; client_body_buffer_size 64k;"
    try:
        with Stack(root, workers=2, gateway_pool_size=2, nginx_http_extra=nginx_extra,
                   gateway_extra=gateway_extra) as stack:
            rows = []
            for name, port in (("gateway", stack.gateway_port), ("nginx", stack.nginx_port)):
                print(f"measuring {name} ...", flush=True)
                rows.append(await measure(name, port, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print("fast client /hello.php latency in ms (php-fpm pool of 2 workers shared by both)")
    print(f"{'server':8} {'base p50':>9} {'base p99':>9} | {'slow p50':>9} {'slow p99':>9} {'ratio':>6} "
          f"| {'loris p50':>9} {'loris p99':>9} {'ratio':>6} | slow clients done (up/down) | slowloris cut/survived")
    for r in rows:
        s, lo = r["slow_stats"], r["loris_stats"]
        assert isinstance(s, dict) and isinstance(lo, dict)
        bp99 = float(r["base_p99"])  # type: ignore[arg-type]
        cut = lo["loris_cut"]
        avg_cut = lo["loris_cut_after_ms_total"] / cut / 1000 if cut else float("nan")
        print(f"{r['server']:8} {float(r['base_p50']) * 1000:9.2f} {bp99 * 1000:9.2f} | "  # type: ignore[arg-type]
              f"{float(r['slow_p50']) * 1000:9.2f} {float(r['slow_p99']) * 1000:9.2f} "  # type: ignore[arg-type]
              f"{float(r['slow_p99']) / bp99:6.2f} | "  # type: ignore[arg-type]
              f"{float(r['loris_p50']) * 1000:9.2f} {float(r['loris_p99']) * 1000:9.2f} "  # type: ignore[arg-type]
              f"{float(r['loris_p99']) / bp99:6.2f} | "  # type: ignore[arg-type]
              f"{s['uploads']}/{s['downloads']} (errors {s['upload_errors']}/{s['download_errors']})"
              f" | {cut}/{lo['loris_survived']} (avg {avg_cut:.1f}s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each measurement (max 120)")
    p.add_argument("--child", choices=("slow", "loris"))
    p.add_argument("--port", type=int)
    p.add_argument("--n", type=int, default=50)
    args = p.parse_args()
    args.seconds = max(5.0, min(args.seconds, 120.0))
    if args.child:
        trio.run(child, args.child, args.port, args.seconds, min(args.n, 2000))
    else:
        trio.run(run, args, make_docroot())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
