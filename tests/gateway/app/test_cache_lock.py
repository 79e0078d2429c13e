"""The stampede lock across worker processes (``app.cache_lock``): two Apps
sharing one lock table stand in for two gateway processes (each its own
process id in the table, and a stated set of live ones), on the autojump
clock. With real processes and php-fpm: tests/integration/test_cache.py."""

from __future__ import annotations

import trio

from gateway.app.cache_lock import HANDOFF_KEEP, CacheLocks
from gateway.app.guard_table import GuardTable
from gateway.app.site import App
from tests.helpers import FakeFpm

from .test_cache import client_for, counting, make_app
from .test_cache_disk import InlineStore


def share(apps: list[App], tmp_path, live: set[int]) -> None:
    """One table for ``apps``, the i-th with process id 1000 + i."""
    table = GuardTable.memory(16, clock=trio.current_time)
    for i, app in enumerate(apps):
        locks = CacheLocks(table, str(tmp_path / "run" / "cache-handoff"), pid=1000 + i, alive=live.__contains__)
        for cache in app.caches.values():
            cache.locks = locks
            if cache.disk is not None:  # (its writes on the loop too)
                cache.disk = InlineStore(cache.disk.directory, cache.disk.max_size)
            else:
                cache.handoff = InlineStore(str(tmp_path / "run" / "cache-handoff" / cache.site), 1 << 20, flat=True)


async def burst(apps: list[App], nursery, n: int, target: str = "/cold/") -> list:
    answers: list = []

    async def visit(app: App) -> None:
        c = await client_for(app, nursery)
        answers.append((await c.request("GET", target, host="example.com"), trio.current_time()))

    async with trio.open_nursery() as group:
        for i in range(n):
            group.start_soon(visit, apps[i % len(apps)])
    return answers


def handoff_files(tmp_path) -> list:
    return [p for p in (tmp_path / "run").rglob("*") if p.is_file()]


async def test_a_burst_over_two_processes_runs_php_once_without_a_disk_tier(tmp_path, nursery, autojump_clock):
    script, runs = counting(delay=0.3)
    apps = [make_app(tmp_path, FakeFpm(script), nursery) for i in range(2)]
    share(apps, tmp_path, {1000, 1001})
    answers = await burst(apps, nursery, 100)
    assert len(runs) == 1
    assert {(r.status, r.body) for r, _ in answers} == {(200, b"page 1")}
    assert sorted(r.header("x-cache") for r, _ in answers) == ["HIT"] * 99 + ["MISS"]
    assert [app.cache_stats.entries for app in apps] == [1, 1]
    # the other process got the page from the hand-off file, which goes soon after
    assert handoff_files(tmp_path)
    await trio.sleep(HANDOFF_KEEP + 1)
    assert not handoff_files(tmp_path) and [p.name for p in (tmp_path / "run").rglob("*")] == ["cache-handoff", "s"]


async def test_a_burst_over_two_processes_runs_php_once_with_a_disk_tier(tmp_path, nursery, autojump_clock):
    script, runs = counting(delay=0.3)
    disk = str(tmp_path / "disk")
    apps = [make_app(tmp_path, FakeFpm(script), nursery, disk_dir=disk) for i in range(2)]
    share(apps, tmp_path, {1000, 1001})
    answers = await burst(apps, nursery, 100)
    assert len(runs) == 1 and sorted(r.header("x-cache") for r, _ in answers) == ["HIT"] * 99 + ["MISS"]
    assert not handoff_files(tmp_path)  # (the disk tier is where the other process looks)
    assert sum(app.cache_stats.lock_waits for app in apps) == 99


async def test_when_the_holders_process_dies_a_waiter_elsewhere_leads(tmp_path, nursery, autojump_clock):
    script, runs = counting(delay=10)
    apps = [make_app(tmp_path, FakeFpm(script), nursery, lock_timeout="30s") for i in range(2)]
    live = {1000, 1001}
    share(apps, tmp_path, live)
    t0 = trio.current_time()
    first = trio.Event()
    answers: list = []

    async def holder() -> None:
        c = await client_for(apps[0], nursery)
        first.set()
        await c.request("GET", "/cold/", host="example.com")

    async def waiter() -> None:
        c = await client_for(apps[1], nursery)
        answers.append((await c.request("GET", "/cold/", host="example.com"), trio.current_time() - t0))

    async with trio.open_nursery() as group:
        group.start_soon(holder)
        await first.wait()
        await trio.sleep(1)  # the holder runs PHP
        for _ in range(5):
            group.start_soon(waiter)
        await trio.sleep(1)
        assert len(runs) == 1 and apps[1].cache_stats.lock_waits == 5
        live.discard(1000)  # the holder's process is killed
        with trio.fail_after(15):
            while len(answers) < 5:  # noqa: ASYNC110 - the waiters' answers
                await trio.sleep(0.1)
        group.cancel_scope.cancel()
    # the next poll saw the dead holder: one waiter ran PHP (10 s), the others waited for it
    assert len(runs) == 2
    assert sorted(r.header("x-cache") for r, _ in answers) == ["HIT"] * 4 + ["MISS"]
    assert all(12 <= t < 12.2 for _, t in answers), [(r.header("x-cache"), t) for r, t in answers]


async def test_a_live_holders_lock_bounds_the_wait_by_lock_timeout(tmp_path, nursery, autojump_clock):
    script, runs = counting(delay=10)
    apps = [make_app(tmp_path, FakeFpm(script), nursery, lock_timeout="2s") for i in range(2)]
    share(apps, tmp_path, {1000, 1001})
    answers = await burst(apps, nursery, 2)
    # the one in the other process waited 2 s, then went to PHP itself
    assert len(runs) == 2 and sorted(round(t) for _, t in answers) == [10, 12]


async def test_an_uncacheable_page_sends_the_other_processes_waiters_to_php_together(tmp_path, nursery,
                                                                                      autojump_clock):
    script, runs = counting(headers=(b"Cache-Control: no-store",), delay=1)
    apps = [make_app(tmp_path, FakeFpm(script), nursery) for i in range(2)]
    share(apps, tmp_path, {1000, 1001})
    t0 = trio.current_time()
    answers = await burst(apps, nursery, 6)
    assert len(runs) == 6
    # the first answer says "not cacheable": the waiters of both processes went at once (within a poll)
    times = sorted(t - t0 for _, t in answers)
    assert times[0] == 1 and all(2 <= t < 2.1 for t in times[1:])
    # and for a while the page skips the lock in both
    t1 = trio.current_time()
    answers = await burst(apps, nursery, 4)
    assert len(runs) == 10 and all(t - t1 == 1 for _, t in answers)


async def test_a_request_of_another_process_just_after_the_fetch_takes_the_hand_off(tmp_path, nursery,
                                                                                   autojump_clock):
    # (its memory tier has no copy, and the lock is free again: without the file it would run PHP)
    script, runs = counting(delay=0.3)
    apps = [make_app(tmp_path, FakeFpm(script), nursery) for _ in range(2)]
    share(apps, tmp_path, {1000, 1001})
    first = await (await client_for(apps[0], nursery)).request("GET", "/cold/", host="example.com")
    second = await (await client_for(apps[1], nursery)).request("GET", "/cold/", host="example.com")
    assert (first.header("x-cache"), second.header("x-cache"), second.body) == ("MISS", "HIT", first.body)
    assert len(runs) == 1
