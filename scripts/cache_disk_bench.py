"""What the page cache's disk tier costs the event loop: the README's "Page
cache" disk-tier numbers.

    .venv/bin/python scripts/cache_disk_bench.py [--entries 20000] [--hits 2000]

1. A hit from the disk tier: ``SiteCache.handle`` for a 52 KB page that the
   memory tier cannot keep (``max_size`` 0 for the run), so that every request
   reads the entry file (in the OS page cache, as a hot entry is): wall-clock
   microseconds per request, one request at a time; and the read alone
   (``DiskStore.get``) on the loop and in a thread, the choice
   ``app.cache_disk`` made; and a write of that entry (``put``), which the
   miss that stores it no longer does on the loop.
2. The loop's lag while the tier is swept and purged, with ``--entries`` 1 KB
   entries: a task that sleeps 1 ms in a loop records how late it wakes (the
   longest and the 99th percentile), during a sweep and during a URL purge
   (and during 1 s of nothing: the noise of a shared machine).

Local only, bounded: a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.app.cache import MemoryStore, SiteCache  # noqa: E402
from gateway.config.cache import CacheConfig  # noqa: E402
from gateway.http.cache_policy import Lifetime, Purge, cache_key  # noqa: E402
from gateway.http.request import Request  # noqa: E402
from gateway.http.response import Response  # noqa: E402
from gateway.metrics import CacheStats  # noqa: E402


def request(path: str) -> Request:
    return Request(b"GET", path.encode(), b"1.1", [], ("192.0.2.7", 40000),
                   ("192.0.2.1", 80), None, "t", host=b"example.com")


async def never(detached: bool) -> Response:
    raise AssertionError("a hit went to PHP")


async def disk_hits(directory: str, hits: int) -> None:
    cache = SiteCache("s", CacheConfig(enabled=True, ttl=3600, disk_dir=directory), CacheStats())
    assert cache.disk is not None
    where = cache_key(cache.policy, https=False, host=b"example.com", path="/", query="", headers=[])
    body = os.urandom(26 * 1024).hex().encode()  # 52 KB, as the WordPress home page
    await cache.disk.store(where, 200, b"OK", [(b"content-type", b"text/html")], body, frozenset(),
                           Lifetime(3600, 0, 0), time.time())
    cache.store = MemoryStore(0, cache.stats)  # nothing kept in memory: each hit reads the file
    for _ in range(100):  # warm up
        await cache.handle(request("/"), "/", "", never)
    t0 = time.perf_counter()
    for _ in range(hits):
        resp = await cache.handle(request("/"), "/", "", never)
        assert resp.body == body
    per_hit = (time.perf_counter() - t0) / hits * 1e6
    disk = cache.disk
    t0 = time.perf_counter()
    for _ in range(hits):
        disk.get(where.key)
    on_loop = (time.perf_counter() - t0) / hits * 1e6
    t0 = time.perf_counter()
    for _ in range(hits):
        await trio.to_thread.run_sync(disk.get, where.key)
    in_thread = (time.perf_counter() - t0) / hits * 1e6
    t0 = time.perf_counter()
    for _ in range(hits // 4):
        disk.put(where, 200, b"OK", [(b"content-type", b"text/html")], body, frozenset(), Lifetime(3600, 0, 0),
                 time.time())
    write = (time.perf_counter() - t0) / (hits // 4) * 1e6
    print(f"disk-tier hit, 52 KB page: {per_hit:.0f} us per request; the read alone {on_loop:.0f} us on the loop, "
          f"{in_thread:.0f} us in a thread; a write {write:.0f} us")


async def lag_during(work: object) -> tuple[float, float, float]:
    """(longest lag ms, p99 lag ms, seconds the work took) while ``work`` runs."""
    lags: list[float] = []
    done = trio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t = trio.current_time()
            await trio.sleep(0.001)
            lags.append(trio.current_time() - t - 0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0.05)
        t0 = time.perf_counter()
        await work()  # type: ignore[operator]
        took = time.perf_counter() - t0
        done.set()
    lags.sort()
    return lags[-1] * 1e3, lags[int(len(lags) * 0.99)] * 1e3, took


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--hits", type=int, default=2000)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="cache-disk-bench-")
    try:
        await disk_hits(os.path.join(directory, "hits"), args.hits)
        cache = SiteCache("s", CacheConfig(enabled=True, ttl=3600, disk_dir=os.path.join(directory, "sweep"),
                                           disk_max_size=1 << 40), CacheStats())
        assert cache.disk is not None
        body = b"x" * 1000
        now = time.time()
        for i in range(args.entries):
            where = cache_key(cache.policy, https=False, host=b"example.com", path=f"/p/{i}", query="", headers=[])
            cache.disk.put(where, 200, b"OK", [(b"content-type", b"text/html")], body, frozenset(),
                           Lifetime(3600, 0, 0), now)
        disk = cache.disk

        async def sweep() -> None:
            await disk.sweep_async()

        async def purge() -> None:
            await cache.purge(Purge(host="example.com", path="/p/1"))

        async def idle() -> None:
            await trio.sleep(1)

        for name, work in (("1 s of nothing (the machine's noise)", idle), (f"sweep of {args.entries} entries", sweep),
                           (f"purge of one URL among {args.entries} entries", purge)):
            longest, p99, took = await lag_during(work)
            print(f"{name}: took {took * 1e3:.0f} ms, loop lag max {longest:.1f} ms, p99 {p99:.1f} ms")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main)
