"""Clients that send their next request just as their connection is parked
(PARK_AFTER = 0.1 s after the response): every request must be answered on
the same connection (no EOF, no reset, no lost request). Bounded: C clients x R rounds.

Usage: park_race.py PORT [--clients 50] [--rounds 20] [--path /hello.php]
"""

import argparse
import asyncio
import random
import time
from collections import Counter

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("--clients", type=int, default=50)
ap.add_argument("--rounds", type=int, default=20)
ap.add_argument("--path", default="/hello.php")
args = ap.parse_args()
results: Counter[str] = Counter()


async def client(n: int) -> None:
    rnd = random.Random(n)
    r, w = await asyncio.open_connection("127.0.0.1", args.port)
    for i in range(args.rounds):
        # split the request around the parking moment now and then
        req = f"GET {args.path}?c={n}&i={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        if rnd.random() < 0.3:
            w.write(req[:5])
            await w.drain()
            await asyncio.sleep(rnd.uniform(0.0, 0.02))
            w.write(req[5:])
        else:
            w.write(req)
        try:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
            await r.readexactly(length)
            results["ok"] += 1
        except Exception as e:  # noqa: BLE001
            results[f"{type(e).__name__}"] += 1
            return
        await asyncio.sleep(rnd.uniform(0.085, 0.115))  # around PARK_AFTER
    w.close()


async def main() -> None:
    t0 = time.time()
    await asyncio.gather(*(client(n) for n in range(args.clients)))
    print(f"{time.time() - t0:.1f}s {dict(results)}")
    raise SystemExit(0 if set(results) == {"ok"} else 1)


asyncio.run(main())
