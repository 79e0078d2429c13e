"""The page cache's disk tier: entries as files shared by processes (two Apps
on one directory stand in for two gateway processes), bounded by sweeps,
purged with the memory tier."""

from __future__ import annotations

import os

import pytest
import trio

from gateway.app.cache_disk import DiskStore
from gateway.app.site import App
from gateway.config import ConfigError, validate
from gateway.http.cache_policy import CachePolicy, Lifetime, Purge, cache_key
from gateway.serve.process import pool_from_config
from tests.helpers import FakeFpm

from .test_cache import client_for, counting

POLICY = CachePolicy.build(ttl=60)


class InlineStore(DiskStore):
    """A disk tier that writes and purges on the loop, without a checkpoint:
    for the autojump clock, which does not wait for a thread (it jumps while
    one writes, past the waiters' lock_timeout), and for writes that must
    all land before the next sweep."""

    async def _in_thread(self, work):
        return work()


def where(path: str, host: bytes = b"example.com"):
    return cache_key(POLICY, https=False, host=host, path=path, query="", headers=[])


def test_an_entry_round_trips_and_a_broken_file_is_none(tmp_path) -> None:
    disk = DiskStore(str(tmp_path / "s"), 1 << 20)
    w = where("/a")
    disk.put(w, 200, b"OK", [(b"content-type", b"text/html")], b"body", frozenset({"t"}), Lifetime(60, 5, 7), 1000.0)
    head, body = disk.get(w.key)
    assert body == b"body" and head["status"] == 200 and head["tags"] == ["t"] and head["stored"] == 1000.0
    assert (head["fresh"], head["swr"], head["sie"]) == (60, 5, 7)
    assert disk.get(where("/b").key) is None
    path = disk._path(w.key)
    with open(path, "r+b") as f:
        f.write(b"JUNK")
    assert disk.get(w.key) is None and not os.path.exists(path)  # not an entry: removed


def test_purges_and_sweeps(tmp_path) -> None:
    disk = DiskStore(str(tmp_path / "s"), 2500)
    for i, path in enumerate(("/a/1", "/a/2", "/b", "/c")):
        disk.put(where(path), 200, b"", [], b"x" * 1000, frozenset({"t"} if path == "/b" else ()),
                 Lifetime(60, 0, 0), 1000.0 + i)
        os.utime(disk._path(where(path).key), (1000 + i, 1000 + i))
    assert disk.purge(Purge(host="example.com", prefix="/a/")) == 2
    assert disk.purge(Purge(tag="t")) == 1
    assert disk.get(where("/c").key) is not None
    for i, path in enumerate(("/d", "/e", "/f")):
        disk.put(where(path), 200, b"", [], b"x" * 1000, frozenset(), Lifetime(60, 0, 0), 1010.0 + i)
        os.utime(disk._path(where(path).key), (1010 + i, 1010 + i))
    # over 2500 bytes: the oldest written go first
    entries, size = disk.sweep(now_wall=1030.0)
    assert entries == 2 and size <= 2500
    assert [disk.get(where(p).key) is not None for p in ("/c", "/d", "/e", "/f")] == [False, False, True, True]
    # past their lifetime: gone at the next sweep
    assert disk.sweep(now_wall=1100.0) == (0, 0)


def make_app(tmp_path, fpm: FakeFpm, nursery, **cache) -> App:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "index.php").write_text("front controller")
    cfg = validate({"backends": {"php": {"pool_size": 2}},
                    "sites": {"s": {"root": str(root), "php": "php", "server_names": ["example.com"],
                                    "cache": {"enabled": True, "disk_dir": str(tmp_path / "cache"), **cache}}}})
    app = App(cfg, {"php": pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)})
    for cache in app.caches.values():  # (the autojump clock's tests: see InlineStore)
        assert cache.disk is not None
        cache.disk = InlineStore(cache.disk.directory, cache.disk.max_size)
    return app


async def test_two_processes_share_the_disk_tier(tmp_path, nursery, autojump_clock):
    script, runs = counting(headers=(b"X-Cache-Tags: home",))
    first, second = make_app(tmp_path, FakeFpm(script), nursery), make_app(tmp_path, FakeFpm(script), nursery)
    a = await (await client_for(first, nursery)).request("GET", "/", host="example.com")
    b = await (await client_for(second, nursery)).request("GET", "/", host="example.com")
    assert (a.header("x-cache"), b.header("x-cache"), b.body) == ("MISS", "HIT", a.body)
    assert len(runs) == 1 and second.cache_stats.entries == 1  # kept in its memory too
    # a purge in one process removes the shared file; the other's memory copy goes with its own purge
    assert await first.purge(Purge(tag="home")) == 1 and await second.purge(Purge(tag="home")) == 1
    third = make_app(tmp_path, FakeFpm(script), nursery)
    c = await (await client_for(third, nursery)).request("GET", "/", host="example.com")
    assert c.header("x-cache") == "MISS" and len(runs) == 2


def test_disk_dir_is_absolute() -> None:
    with pytest.raises(ConfigError, match=r"sites\.s\.cache\.disk_dir: 'cache': give an absolute path"):
        validate({"sites": {"s": {"root": "/tmp", "cache": {"disk_dir": "cache"}}}})


@pytest.mark.parametrize("status", [206, 304])
def test_a_partial_or_not_modified_answer_is_no_status_to_store(status) -> None:
    with pytest.raises(ConfigError, match=rf"sites\.s\.cache\.statuses\.0: .*{status}: a .* is no page to store"):
        validate({"sites": {"s": {"root": "/tmp", "cache": {"statuses": [status, 200]}}}})


async def test_the_sweeps_numbers_reach_status(tmp_path, nursery):
    # (the real clock: the sweep runs in a thread, which an autojump clock would not wait for)
    from gateway.metrics import ListenerStats
    from gateway.observe.monitor import Monitor

    script, _ = counting()
    app = make_app(tmp_path, FakeFpm(script), nursery)
    monitor = Monitor(ListenerStats(), [], cache=app.cache_stats)
    assert "disk_entries" not in monitor.status()["cache"]  # no sweep yet: unknown, not 0
    await (await client_for(app, nursery)).request("GET", "/", host="example.com")
    nursery.start_soon(app.run)  # its first sweep is at once
    with trio.fail_after(10):
        while app.cache_stats.disk_entries is None:  # noqa: ASYNC110 - a sweep in a thread
            await trio.sleep(0.01)
    cache = monitor.status()["cache"]
    assert cache["disk_entries"] == 1 and cache["disk_bytes"] > len(b"page 1")
    assert "gateway_cache_disk_entries 1" in monitor.prometheus().splitlines()


async def test_a_flood_of_new_entries_is_swept_before_the_next_period(tmp_path, nursery):
    """Query spraying (every ?x=N a new entry) at PHP's pace must not grow
    the disk tier past disk_max_size for 30 s: a process that wrote a quarter
    of it sweeps at once. (The real clock: the sweep runs in a thread.)"""
    disk = InlineStore(str(tmp_path / "s"), 40_000)
    sweeps: list[tuple[int, int]] = []
    nursery.start_soon(disk.run_sweeper, lambda n, size: sweeps.append((n, size)))
    with trio.fail_after(10):
        while not sweeps:  # noqa: ASYNC110 - a sweep in a thread
            await trio.sleep(0.01)
    for i in range(100):  # 100 kB, 2.5 times the bound (no checkpoint: the sweep after sees them all)
        await disk.store(where(f"/?x={i}"), 200, b"", [], b"x" * 1000, frozenset(), Lifetime(60, 0, 0), 1000.0 + i)
    with trio.fail_after(10):  # (the next period's sweep is 30 s away)
        while sweeps[-1][1] > 40_000 or len(sweeps) < 2:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert sum(1 for _ in disk._files()) <= 40


async def test_writes_and_purges_in_threads_count_what_was_written(tmp_path) -> None:
    # (the real clock: threads)
    disk = DiskStore(str(tmp_path / "s"), 4000)
    await disk.store(where("/a"), 200, b"OK", [], b"x" * 1000, frozenset(), Lifetime(60, 0, 0), 1000.0)
    assert disk.get(where("/a").key) is not None
    assert disk.written > 1000 and disk._full.is_set()  # a quarter of max_size written: the sweeper sweeps now
    assert await disk.purge_async(Purge(host="example.com", path="/a")) == 1
    assert disk.get(where("/a").key) is None
