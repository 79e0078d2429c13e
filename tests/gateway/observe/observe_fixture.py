"""A gateway process frozen in a known state, for the tests of ``/status`` and
``/metrics``: every instrument set by hand, no IO, no task running.

Call ``frozen_monitor()`` inside a trio run on the autojump clock (time stands
still while nothing sleeps, so rates and ``for_seconds`` are exact).
"""

from __future__ import annotations

from typing import Any

import trio

from gateway.metrics import ListenerStats
from gateway.observe.diagnosis import Diagnosis, PoolObservation, Verdict
from gateway.observe.health import BackendHealth
from gateway.observe.monitor import Monitor, PoolMonitor
from gateway.observe.sampler import WorkerSampler
from gateway.observe.slowlog import SlowEntry
from gateway.observe.waits import Wait, summarise
from gateway.upstream.pool import Pool


class FakeSupervisor:
    """What the monitor reads of a php-fpm supervisor: running, restarted twice."""

    process = None
    running = True
    restarts = 2


async def _never_connects() -> trio.abc.Stream:
    raise AssertionError("the frozen pools never connect")


async def _never_probed() -> None:
    raise AssertionError("the frozen monitors never probe")


def _pool(name: str, *, size: int, busy: int, idle: int, waiting: int, queue_depth: int) -> Pool:
    pool = Pool(name, _never_connects, size=size, queue_depth=queue_depth, queue_timeout=5.0)
    for _ in range(busy):
        pool.limiter.acquire_on_behalf_of_nowait(object())
    pool.members[0]._idle.extend(object() for _ in range(idle))  # type: ignore[misc]  # counted, never used
    pool.waiting = waiting
    return pool


FPM_STATUS: dict[str, Any] = {
    "pool": "www", "process manager": "static", "start since": 300, "accepted conn": 1234, "listen queue": 0,
    "max listen queue": 3, "listen queue len": 511, "idle processes": 1, "active processes": 3,
    "total processes": 4, "max active processes": 4, "max children reached": 6, "slow requests": 0,
    "processes": [
        {"pid": 4101, "state": "Running", "start time": 1, "requests": 40, "request duration": 250400,
         "request method": "GET", "request uri": "/slow.php", "content length": 0, "user": "-",
         "script": "/srv/slow.php", "last request cpu": 0.0, "last request memory": 2097152},
        {"pid": 4102, "state": "Idle", "start time": 1, "requests": 38, "request duration": 1200,
         "request method": "GET", "request uri": "/", "content length": 0, "user": "-",
         "script": "/srv/index.php", "last request cpu": 833.33, "last request memory": 2097152},
    ],
}


def frozen_monitor(second: bool = False) -> Monitor:
    """One gateway process with three pools: ``php`` (spawned php-fpm, its status
    read, busy and queueing, its health check up), ``ext`` (an external php-fpm
    whose status socket refuses, connect errors, its health check down) and ``bare`` (no status address at all).

    ``second``: another worker process of the same gateway, in another state
    (the listener verdict, php-fpm's status read for ``ext``, no ``bare`` pool),
    to merge with the first.
    """
    now = trio.current_time()
    stats = ListenerStats(accepted=40, requests=120, in_flight=3)
    stats.states.update(idle=5, reading=1, waiting_php=2, writing=1)
    stats.tunnels.open, stats.tunnels.total = 2, 7
    for lag in (0.0004, 0.003, 0.07):
        stats.loop_lag.observe(lag)

    php = _pool("php", size=4, busy=3, idle=1, waiting=5, queue_depth=50)
    php.stats.max_waiting, php.stats.queue_full, php.stats.queue_timeouts = 9, 2, 1
    php.stats.retries, php.stats.client_gone_in_queue = 1, 3
    php.stats.errors = {504: 2, 502: 1}
    for wait in (0.02, 0.3):
        php.instruments.queue_wait.observe(wait)
    for took in (0.1, 0.2, 0.05):
        php.instruments.php_time.observe(took)
    php.instruments.responses = 3
    pm_php = PoolMonitor(php, FakeSupervisor(), "unix:/run/gw/php-status.sock")
    pm_php.fpm_status = FPM_STATUS
    pm_php.worker_cpu = 0.4567
    pm_php.queue_window.add(now - 2, 7)
    pm_php.queue_window.add(now, 5)
    pm_php.last = PoolObservation(name="php", size=4, busy=3, waiting=5, queue_wait_p50=0.01234, responses=1,
                                  connect_errors=0)
    # the last 10 s: of its 2 waits and 3 PHP responses, the newest (0.3 s; 0.2 s and 0.05 s) came after the
    # oldest reading in the window
    pm_php.wait_window.add(now - 8, 1, 0.02)
    pm_php.php_window.add(now - 8, 1, 0.1)
    pm_php.health = BackendHealth("php", _never_probed, "ping unix:/run/gw/php-status.sock /fpm-ping", up=True,
                                  since=now - 300, checked_at=now - 1.5)
    # its one running worker waits on the database; the slowlog caught it in mysqli_query
    pm_php.sampler = WorkerSampler({}, frozenset({"/run/gw/php.sock"}), "/run/gw/fpm-php/slow.log")
    assert pm_php.sampler.slowlog is not None
    pm_php.sampler.slowlog.frames.add(now - 5, [SlowEntry("php", 4101, "/srv/index.php", (
        ("mysqli_query", "/srv/wp-includes/class-wpdb.php", 2056), ("_do_query", "/srv/wp-includes/class-wpdb.php",
                                                                   1980)))])
    pm_php.waits = summarise({4101: Wait("database", "127.0.0.1:3306")}, 2, pm_php.sampler.slowlog.frames.by_pid())

    ext = _pool("ext", size=2, busy=0, idle=0, waiting=0, queue_depth=10)
    ext.stats.connect_errors = 4
    ext.stats.errors = {502: 4}
    pm_ext = PoolMonitor(ext, None, "unix:/run/ext-status.sock")
    pm_ext.fpm_status_error = "ConnectionRefusedError: [Errno 111] Connection refused"
    pm_ext.health = BackendHealth("ext", _never_probed, "status page unix:/run/ext-status.sock /fpm-status",
                                  up=False, error="cannot connect to unix:/run/ext-status.sock: Connection refused",
                                  since=now - 12.0, checked_at=now - 0.5)

    bare = _pool("bare", size=1, busy=1, idle=0, waiting=0, queue_depth=1)
    pm_bare = PoolMonitor(bare)

    monitor = Monitor(stats, [pm_php, pm_ext, pm_bare])
    for at, lag in ((now - 1, 0.0004), (now, 0.003), (now, 0.07)):
        monitor.lag.add(at, lag)
    monitor.accepted.add(now - 4, 0)
    monitor.accepted.add(now, 40)
    monitor.requests.add(now - 3, 0)
    monitor.requests.add(now, 10)
    stats.tls.handshakes, stats.tls.resumed, stats.tls.cpu_seconds = 30, 20, 0.0456
    stats.tls.failures.update(timeout=1, protocol=2)
    monitor.tls_handshakes.add(now - 4, 0)
    monitor.tls_handshakes.add(now, 30)
    monitor.tls_resumed.add(now - 4, 0)
    monitor.tls_resumed.add(now, 20)
    monitor.tls_cpu.add(now - 4, 0.0)
    monitor.tls_cpu.add(now, 0.0456)
    monitor.process_cpu = 0.123456
    monitor.compression.cpu_seconds = 1.23456
    monitor.compression.bytes_in, monitor.compression.bytes_out = 1_000_000, 150_000
    monitor.compression.responses.update(br=30, gzip=5)
    monitor.compression.threaded = 12
    monitor.compression.precompressed.update(br=4)
    monitor.guard.rate_limited.update(blog=7)
    monitor.guard.delayed.update(blog=3)
    monitor.guard.access_denied.update(blog=2)
    monitor.guard.auth_failures.update(staging=4)
    monitor.guard.auth_blocked.update(staging=1)
    monitor.guard.evictions = 5
    monitor.host_cpu = 0.98765
    monitor.cache.enabled = True
    monitor.cache.requests.update(HIT=60, STALE=5, MISS=20, BYPASS=10, EXPIRED=5)
    monitor.cache.entries, monitor.cache.bytes = 40, 2_500_000
    monitor.cache.evictions, monitor.cache.lock_waits, monitor.cache.purged = 3, 7, 2
    php.instruments.cacheable, php.instruments.cache_bypassed, php.instruments.cache_on = 30, 10, True
    monitor.host_iowait = 0.0123
    monitor.gateway_cpu = 0.123456
    monitor.other_cpu = 0.0789
    monitor.diagnosis = Diagnosis(current=Verdict("php-waiting", "pool php is saturated: 3/4 workers busy",
                                                  pm_php.waits.counts), since=now - 12.34)

    if second:
        stats.accepted, stats.requests, stats.in_flight = 60, 200, 0
        stats.tls.handshakes, stats.tls.resumed, stats.tls.failures["no_certificate"] = 10, 9, 1
        stats.states.update(idle=2, reading=0, waiting_php=0, writing=3)
        stats.tunnels.open, stats.tunnels.total = 0, 3
        php.limiter = trio.CapacityLimiter(4)
        php.waiting = 0
        php.stats.errors = {503: 7}
        php.instruments.responses = 9
        php.instruments.queue_wait.observe(0.9)
        php.instruments.php_time.observe(0.4)
        pm_php.worker_cpu = None
        pm_php.last = None
        pm_php.waits = None
        pm_ext.fpm_status = {**FPM_STATUS, "active processes": 1, "idle processes": 1, "processes": []}
        pm_ext.fpm_status_error = ""
        pm_ext.health = BackendHealth("ext", _never_probed, "status page unix:/run/ext-status.sock /fpm-status",
                                      up=True, since=now - 2.0, checked_at=now - 2.0)
        monitor.pools = [pm_php, pm_ext]
        monitor.requests.add(now, 12)
        monitor.process_cpu = 0.5
        monitor.compression.cpu_seconds = 0.5
        monitor.compression.responses.update(br=1, gzip=0)
        monitor.guard.rate_limited.update(blog=1, shop=2)
        monitor.guard.evictions = 0
        monitor.cache.requests.update(HIT=10, STALE=0, MISS=10, BYPASS=0, EXPIRED=0)
        monitor.cache.entries, monitor.cache.bytes, monitor.cache.purged = 10, 500_000, 0
        monitor.host_cpu = None
        monitor.host_iowait = None
        monitor.gateway_cpu = 0.5
        monitor.lag.add(now, 0.2)
        monitor.diagnosis = Diagnosis(current=Verdict("listener", "the gateway itself is the bottleneck"),
                                      since=now - 1.0)
    return monitor
