"""The page cache as an operator sees it: the /status ``cache`` object and its
metrics (one process and merged over workers), ``POST /cache/purge`` on the
admin listener, and the summary line of ``gateway status``."""

from __future__ import annotations

import json

import trio

from gateway.app.cache import Entry
from gateway.app.site import App
from gateway.config import validate
from gateway.http.cache_policy import Lifetime, Purge, cache_key
from gateway.http.response import Response
from gateway.metrics import CacheStats, ListenerStats
from gateway.observe.admin import AdminApp, AdminRouter, parse_purge, purge_json
from gateway.observe.aggregate import merge_status
from gateway.observe.monitor import Monitor
from gateway.observe.views import summary_lines
from gateway.serve.master import MasterAdmin
from gateway.serve.process import share_purges

from .test_admin import admin_client
from .test_master_admin import serve_unix, worker_admin


def cache_monitor(hits: int = 6, misses: int = 2, bypass: int = 2) -> Monitor:
    stats = CacheStats(entries=3, bytes=12_000, evictions=1, lock_waits=4, enabled=True)
    stats.requests.update(HIT=hits, MISS=misses, BYPASS=bypass)
    return Monitor(ListenerStats(), [], cache=stats)


async def test_status_and_metrics_show_the_cache(autojump_clock):
    monitor = cache_monitor()
    cache = monitor.status()["cache"]
    assert cache == {"requests": {"HIT": 6, "MISS": 2, "STALE": 0, "BYPASS": 2, "EXPIRED": 0}, "hits": 6,
                     "misses": 2, "hit_ratio": 0.6, "entries": 3, "bytes": 12000, "evictions": 1, "lock_waits": 4,
                     "purged": 0}
    text = monitor.prometheus()
    for line in ('gateway_cache_requests_total{status="HIT"} 6', 'gateway_cache_requests_total{status="STALE"} 0',
                 "gateway_cache_entries 3", "gateway_cache_bytes 12000", "gateway_cache_evictions_total 1",
                 "gateway_cache_lock_waits_total 4"):
        assert line in text.splitlines()
    assert "page cache: hit ratio 60% (6 hit, 0 stale, 2 miss, 0 expired, 2 bypass)" in "\n".join(
        summary_lines(merge_status([monitor.status()], pid=1, uptime=1.0, fpm_restarts={})))


async def test_without_a_cache_there_is_no_cache_object(autojump_clock):
    monitor = Monitor(ListenerStats(), [])
    assert "cache" not in monitor.status() and "gateway_cache" not in monitor.prometheus()


async def test_merged_over_workers_the_ratio_is_of_the_sums(autojump_clock):
    merged = merge_status([cache_monitor(9, 1, 0).status(), cache_monitor(0, 10, 0).status()], pid=1, uptime=1.0,
                          fpm_restarts={})
    assert (merged["cache"]["hits"], merged["cache"]["entries"], merged["cache"]["hit_ratio"]) == (9, 6, 0.45)


async def test_admin_purge(nursery, autojump_clock):
    done: list[Purge] = []

    async def purge(p: Purge) -> int:
        done.append(p)
        return 2

    c = admin_client(nursery, AdminApp(cache_monitor(), purge=purge))
    r = await c.request("POST", "/cache/purge", body=b'{"url": "https://example.com/hello/"}')
    assert (r.status, json.loads(r.body)) == (200, {"purged": 2})
    assert done == [Purge(host="example.com", path="/hello/")]
    for body in (b'{"prefix": "/blog/"}', b'{"all": true}', b'{"tag": "post-7"}'):
        assert (await c.request("POST", "/cache/purge", body=body)).status == 200
    assert done[1:] == [Purge(prefix="/blog/"), Purge(everything=True), Purge(tag="post-7")]
    for bad in (b"{", b"[]", b'{"url": "ftp://x/"}', b'{"url": "/a", "all": true}', b'{"all": false}', b"{}"):
        r = await c.request("POST", "/cache/purge", body=bad)
        assert r.status == 400 and "error" in json.loads(r.body), bad
    assert (await c.request("GET", "/cache/purge")).status == 405
    assert len(done) == 4


async def test_admin_purge_without_a_cache_is_404(nursery, autojump_clock):
    async def status() -> dict:
        return {}

    async def metrics() -> str:
        return ""

    c = admin_client(nursery, AdminRouter(status, metrics))
    assert (await c.request("POST", "/cache/purge", body=b'{"all": true}')).status == 404


def test_the_internal_form_round_trips() -> None:
    for p in (Purge(everything=True), Purge(tag="t", host="a.example"), Purge(host="a", path="/p", query="x=1"),
              Purge(prefix="/d/")):
        assert parse_purge(json.loads(json.dumps(purge_json(p)))) == p


async def test_a_worker_passes_a_php_purge_to_its_siblings(tmp_path, nursery):
    # two "workers" in one test, each App's admin on its unix socket in one runtime dir
    (tmp_path / "root").mkdir()
    cfg = validate({"sites": {"s": {"root": str(tmp_path / "root"), "cache": {"enabled": True}}}})
    apps = [App(cfg, {}) for _ in range(3)]
    for i, app in enumerate(apps[:2]):
        await serve_unix(nursery, str(tmp_path / f"worker-{i}.admin.sock"),
                         worker_admin(AdminApp(cache_monitor(), purge=app.purge)))
    # a worker of the next generation (after a reload) is not a sibling
    await serve_unix(nursery, str(tmp_path / "worker-0.g1.admin.sock"),
                     worker_admin(AdminApp(cache_monitor(), purge=apps[2].purge)))
    share_purges(apps[0], "unix:" + str(tmp_path / "worker-0.admin.sock"))
    where = cache_key(apps[1].caches["s"].policy, https=False, host=b"example.com", path="/post/", query="",
                      headers=[])
    for app in apps:
        app.caches["s"].store.put(Entry(where, 200, b"", [], b"old", frozenset(), Lifetime(60, 0, 0), 0.0))
    with trio.fail_after(5):
        await apps[0].caches["s"].after_php(Response(200, [(b"x-cache-purge", b"/post/")]), b"example.com")
    # done before the purging response goes out: here and in the sibling, not in another generation
    assert [len(app.caches["s"].store) for app in apps] == [0, 0, 1]


async def test_the_masters_purge_reaches_every_worker(tmp_path, nursery):
    purged: list[int] = []

    def worker(i: int):
        async def purge(p: Purge) -> int:
            purged.append(i)
            return i + 1
        return purge

    for i in range(2):
        await serve_unix(nursery, str(tmp_path / f"worker-{i}.admin.sock"),
                         worker_admin(AdminApp(cache_monitor(), purge=worker(i))))
    master = MasterAdmin(str(tmp_path), 3, {})  # worker 2 does not answer
    r = await admin_client(nursery, master).request("POST", "/cache/purge", body=b'{"all": true}')
    assert (r.status, json.loads(r.body)) == (200, {"purged": 3, "processes": 2, "asked": 3})
    assert sorted(purged) == [0, 1]


async def test_the_masters_purge_without_a_cache_is_404(tmp_path, nursery):
    async def status() -> dict:
        return {}

    async def metrics() -> str:
        return ""

    for i in range(2):
        await serve_unix(nursery, str(tmp_path / f"worker-{i}.admin.sock"), worker_admin(AdminRouter(status, metrics)))
    r = await admin_client(nursery, MasterAdmin(str(tmp_path), 2, {})).request("POST", "/cache/purge",
                                                                             body=b'{"all": true}')
    assert r.status == 404 and "enabled = true" in json.loads(r.body)["error"]
