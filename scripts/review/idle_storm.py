"""Idle keep-alive connections against a small max_connections.

Phase 1: N clients each make one request and stay idle (they get parked).
Phase 2: M new clients arrive; each must be served (the parker closes the
oldest idle ones for room). Phase 3: the survivors send a second request at
once; each must get a response or a clean close (EOF before any byte), never
a reset or a truncated response. Bounded: N + M connections, ~15 s.

Usage: idle_storm.py PORT [--idle 500] [--new 100] [--path /hello.php]
"""

import argparse
import asyncio
import time
from collections import Counter

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("--idle", type=int, default=500)
ap.add_argument("--new", type=int, default=100)
ap.add_argument("--path", default="/hello.php")
args = ap.parse_args()
REQ = f"GET {args.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def one_response(r: asyncio.StreamReader) -> str:
    """'ok', 'eof' (closed before any byte), or what went wrong."""
    try:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    except asyncio.IncompleteReadError as e:
        return "eof" if not e.partial else f"truncated-head {e.partial[:40]!r}"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    try:
        await r.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionResetError) as e:
        return f"truncated-body {e!r}"
    return "ok " + head.split(b"\r\n")[0].decode()


async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", args.port)


async def main() -> None:
    t0 = time.time()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    phase1: Counter[str] = Counter()

    async def first(i: int) -> None:
        try:
            r, w = await asyncio.wait_for(connect(), 5)
        except Exception as e:  # noqa: BLE001 - a connect that waits in the backlog past max_connections
            phase1[f"connect {type(e).__name__}"] += 1
            return
        w.write(REQ)
        res = await one_response(r)
        phase1[res] += 1
        idle.append((r, w))

    # in waves, so each wave's connections go idle (and get parked) before the next
    for start in range(0, args.idle, 25):
        await asyncio.gather(*(first(i) for i in range(start, min(args.idle, start + 25))))
        await asyncio.sleep(0.15)
    print(f"phase 1 ({time.time() - t0:.1f}s): {dict(phase1)}")

    phase2: Counter[str] = Counter()

    async def newcomer() -> None:
        try:
            r, w = await asyncio.wait_for(connect(), 5)
            w.write(REQ)
            phase2[await one_response(r)] += 1
            w.close()
        except Exception as e:  # noqa: BLE001
            phase2[f"error {e!r}"] += 1

    await asyncio.gather(*(newcomer() for _ in range(args.new)))
    print(f"phase 2 ({time.time() - t0:.1f}s): {dict(phase2)}")

    phase3: Counter[str] = Counter()

    async def again(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(REQ)
            await w.drain()
        except ConnectionError as e:
            phase3[f"write {type(e).__name__}"] += 1
            return
        phase3[await one_response(r)] += 1
        w.close()

    await asyncio.gather(*(again(r, w) for r, w in idle))
    print(f"phase 3 ({time.time() - t0:.1f}s): {dict(phase3)}")
    bad = {k: v for c in (phase2,) for k, v in c.items() if not k.startswith("ok")}
    bad.update({k: v for k, v in phase3.items() if not (k.startswith("ok") or k == "eof" or k.startswith("write"))})
    print("bad:", bad)
    raise SystemExit(1 if bad else 0)


asyncio.run(main())
