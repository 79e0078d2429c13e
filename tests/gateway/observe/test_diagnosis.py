from __future__ import annotations

import pytest

from gateway.observe.diagnosis import Diagnosis, Observation, PoolObservation, classify


def pool(**kw):
    args = dict(name="php", size=4, busy=1, waiting=0, queue_wait_p50=0.0, responses=10, connect_errors=0,
                worker_cpu=0.2)
    args.update(kw)
    return PoolObservation(**args)


def obs(*pools, lag=0.001, cpu=0.1, host=0.3):
    return Observation(loop_lag_p99=lag, process_cpu=cpu, host_cpu=host, pools=pools)


def test_idle_is_healthy():
    v = classify(obs(pool()))
    assert v.bottleneck == "healthy"
    assert "1/4 busy" in v.reason


def test_saturated_pool_with_idle_workers_is_php_waiting():
    v = classify(obs(pool(busy=4, waiting=20, queue_wait_p50=0.8, worker_cpu=0.03)))
    assert v.bottleneck == "php-waiting"
    assert "4/4 workers busy, 20 queued" in v.reason and "800 ms" in v.reason and "database" in v.reason


def test_saturated_pool_burning_cpu_is_php_cpu():
    v = classify(obs(pool(busy=4, waiting=20, worker_cpu=0.95)))
    assert v.bottleneck == "php-cpu"
    assert "95% of a core" in v.reason and "only if the host has CPU to spare" in v.reason


def test_cpu_starved_host_counts_as_php_cpu_even_with_low_per_worker_share():
    # 8 CPU-bound workers on 2 cores: each gets 25% of a core, the host is full
    v = classify(obs(pool(size=8, busy=8, waiting=5, worker_cpu=0.25), host=0.98))
    assert v.bottleneck == "php-cpu"
    assert "no CPU to spare" in v.reason


def test_busy_but_not_queueing_is_healthy():
    assert classify(obs(pool(busy=4, waiting=0, worker_cpu=1.0))).bottleneck == "healthy"


def test_loop_lag_with_free_php_slots_is_listener():
    v = classify(obs(pool(busy=1), lag=0.2))
    assert v.bottleneck == "listener"
    assert "lag p99 200 ms" in v.reason and "php 3/4 free" in v.reason


def test_process_cpu_saturated_is_listener():
    assert classify(obs(pool(), cpu=0.99)).bottleneck == "listener"


def test_a_listener_busy_with_tls_handshakes_is_listener_tls():
    o = Observation(loop_lag_p99=0.08, process_cpu=0.98, host_cpu=0.9, pools=(pool(),), tls_cpu=0.69,
                    tls_handshakes=400, tls_resumed=20)
    v = classify(o)
    assert v.bottleneck == "listener-tls"
    assert v.reason.startswith("TLS handshakes use 70% of the gateway's CPU (98% of a core; 400 handshakes/s, "
                               "5% resumed, 1.7 ms CPU each)")
    assert "session resumption" in v.reason and "ECDSA" in v.reason


def test_handshakes_that_are_a_minor_part_leave_it_listener():
    o = Observation(loop_lag_p99=0.08, process_cpu=0.98, host_cpu=0.9, pools=(pool(),), tls_cpu=0.3,
                    tls_handshakes=100, compress_cpu=0.2)
    v = classify(o)
    assert v.bottleneck == "listener"
    assert "98% of a core (20% of it compressing responses)" in v.reason


def test_handshake_cpu_without_saturation_is_healthy():
    o = Observation(loop_lag_p99=0.001, process_cpu=0.4, host_cpu=0.5, pools=(pool(),), tls_cpu=0.35,
                    tls_handshakes=100)
    assert classify(o).bottleneck == "healthy"


def test_connect_errors_without_responses_is_backend_down():
    v = classify(obs(pool(connect_errors=5, responses=0), lag=0.5))
    assert v.bottleneck == "backend-down"
    assert "5 connect error(s)" in v.reason


def test_spawned_php_fpm_not_running_is_backend_down():
    assert classify(obs(pool(backend_running=False))).bottleneck == "backend-down"


def test_sleeping_workers_on_a_busy_host_are_php_waiting():
    # the workers use no CPU: the host is busy with something else (here: the load generator)
    v = classify(obs(pool(busy=2, size=2, waiting=14, worker_cpu=0.0), host=1.0))
    assert v.bottleneck == "php-waiting" and "host CPU 100% busy" in v.reason


@pytest.mark.parametrize(("host", "expected"), [(0.2, "php-waiting"), (0.95, "php-cpu")])
def test_unknown_worker_cpu_falls_back_to_host_cpu(host, expected):
    assert classify(obs(pool(busy=4, waiting=3, worker_cpu=None), host=host)).bottleneck == expected


def test_verdict_changes_only_after_holding_for_three_seconds():
    d = Diagnosis(hold=3.0)
    waiting = obs(pool(busy=4, waiting=9, worker_cpu=0.0))
    healthy = obs(pool())
    assert d.update(waiting, 0.0).bottleneck == "healthy"
    assert d.update(waiting, 2.0).bottleneck == "healthy"
    assert d.update(waiting, 3.0).bottleneck == "php-waiting"
    # a one-second blip does not flap it
    assert d.update(healthy, 4.0).bottleneck == "php-waiting"
    assert d.update(waiting, 5.0).bottleneck == "php-waiting"
    assert d.update(healthy, 6.0).bottleneck == "php-waiting"
    assert d.update(healthy, 8.0).bottleneck == "php-waiting"
    assert d.update(healthy, 9.0).bottleneck == "healthy"
    assert d.since == 9.0


def test_bucket_quantile_interpolates_inside_a_bucket():
    from gateway.observe.monitor import _bucket_quantile

    buckets = (1.0, 2.0, 4.0)
    assert _bucket_quantile(buckets, [0, 0, 4, 0], 0.5) == 3.0  # all in (2, 4]: the middle
    assert _bucket_quantile(buckets, [2, 2, 0, 0], 0.25) == 0.5
    assert _bucket_quantile(buckets, [0, 0, 0, 0], 0.5) == 0.0


async def test_the_monitor_feeds_compression_cpu_to_the_verdict():
    """CPU the app layer spent compressing reaches the observation the verdict reads."""
    import time

    from gateway.metrics import ListenerStats
    from gateway.observe.monitor import Monitor

    m = Monitor(ListenerStats(), [])
    await m.sample()
    m.compression.cpu_seconds += 0.001
    start = time.monotonic()
    while time.monotonic() == start:  # the next sample needs a later reading of the clock
        pass
    await m.sample()
    assert m.compress_cpu > 0


def test_a_group_with_a_host_down_names_it():
    p = pool(hosts=3, hosts_down=(("10.0.0.2:9000", 12.3, "cannot connect to 10.0.0.2:9000: Connection refused"),))
    v = classify(obs(p))
    assert v.bottleneck == "healthy"
    assert v.reason.endswith("Also: pool php: host 10.0.0.2:9000 down for 12 s (cannot connect to 10.0.0.2:9000: "
                             "Connection refused); 2 of 3 hosts serving.")


def test_a_group_with_every_host_down_is_backend_down():
    p = pool(hosts=2, hosts_down=(("a:9000", 5.0, "refused"), ("b:9000", 3.0, "health check failed: timeout")))
    v = classify(obs(p))
    assert v.bottleneck == "backend-down"
    assert v.reason == ("pool php: every host is out of rotation: a:9000 for 5 s (refused); b:9000 for 3 s (health "
                        "check failed: timeout): start the backends or fix the addresses.")


def test_php_waiting_names_what_the_workers_wait_on():
    from gateway.observe.waits import Wait, summarise

    waits = summarise({1: Wait("database", "127.0.0.1:3306"), 2: Wait("database", "127.0.0.1:3306"),
                       3: Wait("database", "127.0.0.1:3306"), 4: Wait("http", "93.184.216.34:443")}, 4,
                      {1: "mysqli_query from wp-includes/class-wpdb.php"})
    v = classify(obs(pool(busy=4, waiting=9, worker_cpu=0.02, waits=waits)))
    assert v.bottleneck == "php-waiting"
    assert v.waiting_on == {"database": 3, "cache": 0, "http": 1, "socket": 0, "disk": 0, "lock": 0, "cpu": 0}
    assert ("4/4 workers busy, 3 of them waiting on the database at 127.0.0.1:3306 (mysqli_query from "
            "wp-includes/class-wpdb.php), 1 on external HTTP to 93.184.216.34:443") in v.reason
    assert "slow queries" in v.reason


def test_disk_waits_with_high_iowait_say_storage_is_slow():
    from gateway.observe.waits import Wait, summarise

    waits = summarise({1: Wait("disk", "/srv/data.db"), 2: Wait("disk", "/srv/data.db")}, 2)
    busy = pool(size=2, busy=2, waiting=5, worker_cpu=0.01, waits=waits)
    v = classify(Observation(loop_lag_p99=0.001, process_cpu=0.1, host_cpu=0.3, host_iowait=0.45, pools=(busy,)))
    assert v.waiting_on["disk"] == 2 and "Storage is slow: host iowait 45%" in v.reason
    calm = classify(Observation(loop_lag_p99=0.001, process_cpu=0.1, host_cpu=0.3, host_iowait=0.01, pools=(busy,)))
    assert "Storage is slow" not in calm.reason and "disk I/O to /srv/data.db" in calm.reason


def test_a_full_host_mostly_used_by_the_gateway_is_listener():
    # no process at a core and no loop lag: the load generator shares the cores
    full = Observation(loop_lag_p99=0.004, process_cpu=0.65, host_cpu=0.97, gateway_cpu=1.3, cpus=2,
                       pools=(pool(busy=0),))
    v = classify(full)
    assert v.bottleneck == "listener"
    assert "gateway processes use 130% of 2 cores; PHP idle (php 4/4 free)" in v.reason
    # the host is full of something else: not the gateway's doing
    other = Observation(loop_lag_p99=0.004, process_cpu=0.2, host_cpu=0.97, gateway_cpu=0.3, cpus=2,
                        pools=(pool(busy=0),))
    assert classify(other).bottleneck == "healthy"
    # a host with CPU to spare is healthy however busy the gateway
    spare = Observation(loop_lag_p99=0.004, process_cpu=0.6, host_cpu=0.6, gateway_cpu=1.1, cpus=2,
                        pools=(pool(busy=0),))
    assert classify(spare).bottleneck == "healthy"


def test_on_a_full_host_the_gateway_must_be_the_largest_consumer():
    two_workers = dict(loop_lag_p99=0.004, process_cpu=0.27, host_cpu=1.0, gateway_cpu=0.53, cpus=2,
                       pools=(pool(busy=0),))
    v = classify(Observation(**two_workers, other_cpu=0.3))
    assert v.bottleneck == "listener"
    assert "gateway processes use 53% of 2 cores, more than any other process (the busiest: 30% of a core)" in v.reason
    assert classify(Observation(**two_workers, other_cpu=0.9)).bottleneck == "healthy"  # a batch job fills it
    idle = {**two_workers, "gateway_cpu": 0.1}
    assert classify(Observation(**idle, other_cpu=0.05)).bottleneck == "healthy"  # below GATEWAY_MIN_CPU


def test_loop_lag_on_a_full_host_does_not_ask_for_more_gateway_workers():
    # measured on a shared 2-core host under the static flood: loop lag p99 50-1800 ms
    # with no gateway process near a core; the loops wait for a CPU
    crowded = dict(loop_lag_p99=0.2, process_cpu=0.3, host_cpu=1.0, cpus=2, pools=(pool(busy=0),))
    mine = classify(Observation(**crowded, gateway_cpu=0.6, other_cpu=0.4))
    assert mine.bottleneck == "listener"
    assert ("gateway processes use 60% of 2 cores, more than any other process (the busiest: 40% of a core); "
            "PHP idle (php 4/4 free); loop lag p99 200 ms: run fewer other things") in mine.reason
    theirs = classify(Observation(**crowded, gateway_cpu=0.3, other_cpu=0.9))  # a batch job fills the host
    assert theirs.bottleneck == "listener" and "event-loop lag p99 200 ms" in theirs.reason
    assert ("host CPU 100% busy (gateway processes use 30% of 2 cores, the busiest other process 90% of a core, "
            "the rest other work): the loop waits for a CPU; run fewer other things on this host") in theirs.reason
    assert "run more gateway workers" not in mine.reason + theirs.reason
    # a loop lagging on a host with CPU to spare is the gateway's own: more workers
    spare = classify(Observation(**{**crowded, "host_cpu": 0.5}, gateway_cpu=0.3))
    assert spare.reason.endswith("run more gateway workers or move static files to a CDN.")
    hot = classify(Observation(**{**crowded, "process_cpu": 0.97}, gateway_cpu=1.0, other_cpu=0.4))
    assert "process CPU 97% of a core" in hot.reason and "run more gateway workers" in hot.reason


def test_an_http_backend_is_named_by_its_type_not_as_php():
    app = pool(name="app", kind="http", worker_cpu=None)
    down = classify(obs(pool(name="app", kind="http", connect_errors=3, responses=0)))
    assert down.reason == ("backend app (http): 3 connect error(s) and no response in the last second: start the "
                           "backend or fix the backend address.")
    checked = classify(obs(pool(name="app", kind="http", backend_up=False, responses=0, backend_check="GET /up",
                                backend_down_for=7)))
    assert checked.reason.startswith("backend app (http): the backend has not answered its health check for 7 s")
    slow = classify(obs(pool(name="app", kind="http", worker_cpu=None, busy=4, waiting=6)))
    assert slow.bottleneck == "php-waiting"  # the identifier dashboards match stays
    assert slow.reason.startswith("backend app (http) is saturated: 4/4 connections busy, 6 queued")
    assert "PHP" not in slow.reason and "the backend is slow to answer" in slow.reason
    lagging = classify(obs(pool(), app, lag=0.2))
    assert lagging.bottleneck == "listener" and "while the backends have free slots (php 3/4 free, app 3/4 free)" \
        in lagging.reason
    group = classify(obs(pool(name="app", kind="http", hosts=2, hosts_down=(("10.0.0.9:8080", 4.0, "refused"),))))
    assert group.reason.endswith("Also: backend app (http): host 10.0.0.9:8080 down for 4 s (refused); "
                                 "1 of 2 hosts serving.")


def test_a_backend_full_of_websockets_says_so():
    v = classify(obs(pool(name="app", kind="http", worker_cpu=None, size=4, busy=4, waiting=3, tunnels=3)))
    assert v.reason == ("backend app (http) is saturated: 4/4 connections busy, 3 queued (median wait 0 ms); 3 of "
                        "its connections are WebSocket tunnels, held as long as they are open: raise pool_size, or "
                        "route WebSockets to a backend of their own.")


def test_sampled_workers_decide_between_php_cpu_and_php_waiting_on_a_full_host():
    from gateway.observe.waits import Wait, summarise

    disk = summarise({1: Wait("disk", "/srv/x"), 2: Wait("cpu")}, 2)
    # 20 % of a core each on a full host is php-cpu by the CPU rule; the sample says they wait on the disk
    v = classify(obs(pool(size=2, busy=2, waiting=4, worker_cpu=0.2, waits=disk), host=0.99))
    assert v.bottleneck == "php-waiting" and v.waiting_on["disk"] == 1
    running = summarise({1: Wait("cpu"), 2: Wait("cpu")}, 2)
    assert classify(obs(pool(size=2, busy=2, waiting=4, worker_cpu=0.2, waits=running), host=0.99)).bottleneck == \
        "php-cpu"
    assert classify(obs(pool(size=2, busy=2, waiting=4, worker_cpu=0.9, waits=disk))).bottleneck == "php-cpu"
