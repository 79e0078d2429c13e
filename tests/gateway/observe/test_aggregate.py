"""Several worker processes seen as one: the split of PHP connections, and the
merged /status and /metrics (pure functions, no processes)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import validate
from gateway.observe.aggregate import merge_prometheus, merge_status, split
from gateway.serve.master import process_count, worker_config


@pytest.mark.parametrize(("total", "parts"), [(4, 2), (5, 2), (1024, 3), (0, 2), (7, 7)])
def test_split_shares_everything_evenly(total, parts):
    shares = split(total, parts)
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1


def _config(processes: Any = "auto", pool_size: int = 4, **extra: Any):
    data = {"server": {"processes": processes, "listen": ["127.0.0.1:8080"]},
            "backends": {"php": {"pool_size": pool_size, "queue_depth": 101}, "unused": {"pool_size": 1}},
            "sites": {"a": {"root": "/tmp", "php": "php"}}}
    data.update(extra)
    return validate(data)


def test_auto_is_one_process_per_core_but_never_more_than_the_pool_size():
    assert process_count(_config("auto", pool_size=64)) == len(os.sched_getaffinity(0))
    assert process_count(_config(8, pool_size=3)) == 3  # each process needs a connection of its own
    # the backend no site uses ("unused", a pool of 1) does not limit anything
    assert process_count(_config(2, pool_size=4)) == 2


def test_worker_configs_split_php_connections_and_max_connections():
    cfg = _config(3, pool_size=5)
    backends = {"php": ("unix:/run/php.sock", "unix:/run/status.sock"), "unused": ("unix:/run/u.sock", "")}
    parts = [validate(worker_config(cfg, i, 3, backends, "/run/gw")) for i in range(3)]
    assert sum(p.backends["php"].pool_size for p in parts) == 5  # php-fpm sees at most its 5 workers
    assert {p.backends["php"].queue_depth for p in parts} == {101}  # per process: they accept unevenly
    assert sum(p.limits.max_connections for p in parts) == cfg.limits.max_connections
    assert {p.backends["php"].address for p in parts} == {"unix:/run/php.sock"}  # nobody spawns php-fpm again
    assert {p.backends["php"].status for p in parts} == {"unix:/run/status.sock"}
    assert len({p.admin.listen for p in parts}) == 3
    assert all(p.admin.listen.startswith("unix:/run/gw/") for p in parts)
    assert all(p.server.processes == 1 for p in parts)
    assert [p.diagnosis.sample_workers for p in parts] == [True, False, False]  # one process reads php-fpm's workers
    assert parts[0].sites == cfg.sites
    assert all(p.backends["unused"].pool_size == 1 for p in parts)  # no site uses it: it never gets a connection


def _status(pid: int, verdict: str, *, requests: int, busy: int, queue: int, responses: int, wait_ms: float,
            lag_p99: float, errors: dict[str, int]) -> dict[str, Any]:
    return {
        "verdict": {"bottleneck": verdict, "reason": f"{verdict} in {pid}", "for_seconds": float(pid % 10)},
        "listener": {"connections": {"idle": 1, "reading": 0, "waiting_php": queue + busy, "writing": 0,
                                     "open": 1 + queue + busy},
                     "accepts_per_second": 1.0, "requests_per_second": 10.0, "requests_total": requests,
                     "in_flight": busy + queue, "loop_lag_ms": {"p50": 0.2, "p99": lag_p99, "max": lag_p99 * 2},
                     "process_cpu": 0.5},
        "host": {"cpu": 0.9, "cpus": 2},
        "pools": {"php": {"size": 2, "busy": busy, "idle": 2 - busy, "queue_depth": queue,
                          "queue_depth_max_window": queue, "queue_depth_max": queue, "queue_limit": 512,
                          "queue_wait_avg_ms": wait_ms, "queue_wait_p50_ms_last_second": wait_ms,
                          "php_time_avg_ms": 100.0, "responses_total": responses, "errors": errors,
                          "queue_full_total": 0, "queue_timeouts_total": 0, "retries_total": 1,
                          "client_gone_in_queue_total": 0, "connect_errors_total": 0, "worker_cpu": 0.1,
                          "php_fpm": {"active_processes": 4}}},
        "uptime_seconds": 5.0, "pid": pid,
    }


def test_merged_status_adds_counts_and_keeps_the_worst_verdict():
    a = _status(101, "php-waiting", requests=30, busy=2, queue=5, responses=10, wait_ms=100.0, lag_p99=1.0,
                errors={"503": 1})
    b = _status(102, "listener", requests=70, busy=1, queue=0, responses=30, wait_ms=20.0, lag_p99=80.0,
                errors={"503": 2, "502": 1})
    st = merge_status([a, b, None], pid=100, uptime=9.0, fpm_restarts={"php": 2})
    assert st["verdict"]["bottleneck"] == "listener"  # one process that cannot keep up is the bottleneck
    assert "1 of 3 worker processes" in st["verdict"]["reason"]
    li = st["listener"]
    assert li["requests_total"] == 100
    assert li["connections"]["open"] == 1 + 7 + 1 + 1
    assert li["in_flight"] == 8
    assert li["loop_lag_ms"]["p99"] == 80.0
    assert li["process_cpu"] == 1.0
    php = st["pools"]["php"]
    assert (php["size"], php["busy"], php["queue_depth"]) == (4, 3, 5)
    assert php["queue_wait_avg_ms"] == pytest.approx((100.0 * 10 + 20.0 * 30) / 40)
    assert php["errors"] == {"502": 1, "503": 3}
    assert php["php_fpm_restarts"] == 2
    assert php["queue_limit"] == 512  # each process's queue_depth, as configured: not doubled
    assert [w["up"] for w in st["workers"]] == [True, True, False]
    assert st["workers"][1]["pid"] == 102


def test_merged_status_when_no_worker_answers():
    st = merge_status([None, None], pid=1, uptime=1.0)
    assert st["verdict"]["bottleneck"] == "backend-down"
    assert "none of the 2 worker processes" in st["verdict"]["reason"]


_METRICS = """# HELP gateway_requests_total HTTP requests received.
# TYPE gateway_requests_total counter
gateway_requests_total {n}
# HELP gateway_pool_queue_wait_seconds Time waiting for a pool slot.
# TYPE gateway_pool_queue_wait_seconds histogram
gateway_pool_queue_wait_seconds_bucket{{pool="php",le="0.1"}} {n}
gateway_pool_queue_wait_seconds_bucket{{pool="php",le="+Inf"}} {n}
gateway_pool_queue_wait_seconds_sum{{pool="php"}} 0.5
gateway_pool_queue_wait_seconds_count{{pool="php"}} {n}
# HELP gateway_verdict 1 for the current bottleneck verdict.
# TYPE gateway_verdict gauge
gateway_verdict{{bottleneck="healthy"}} 1
gateway_verdict{{bottleneck="listener"}} 0
"""


def test_merged_metrics_label_each_worker_and_parse_as_prometheus_text():
    text = merge_prometheus([_METRICS.format(n=3), None, _METRICS.format(n=4)],
                            {"verdict": {"bottleneck": "listener"}})
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {s.labels["worker"]: s.value for s in families["gateway_requests"].samples}
    assert requests == {"0": 3.0, "2": 4.0}
    counts = [s for s in families["gateway_pool_queue_wait_seconds"].samples if s.name.endswith("_count")]
    assert {(s.labels["worker"], s.labels["pool"], s.value) for s in counts} == {("0", "php", 3.0),
                                                                                   ("2", "php", 4.0)}
    verdict = {s.labels["bottleneck"]: s.value for s in families["gateway_verdict"].samples}
    assert verdict["listener"] == 1 and verdict["healthy"] == 0
    assert all("worker" not in s.labels for s in families["gateway_verdict"].samples)
    assert text.count("# TYPE gateway_requests_total counter") == 1



def test_merged_verdict_reason_quotes_the_summed_numbers_the_tables_show():
    """Each of two processes holds half the pool (2 of 4 slots): each says "2/2
    busy", the pool table shows 4/4, and so must the reason beside it."""
    a = _status(101, "php-waiting", requests=30, busy=2, queue=5, responses=10, wait_ms=100.0, lag_p99=1.0,
                errors={})
    b = _status(102, "php-waiting", requests=30, busy=2, queue=3, responses=10, wait_ms=300.0, lag_p99=1.0,
                errors={})
    for st in (a, b):
        st["verdict"]["reason"] = "pool php is saturated: 2/2 workers busy, ..."
    st = merge_status([a, b], pid=100, uptime=9.0)
    php = st["pools"]["php"]
    assert (php["busy"], php["size"], php["queue_depth"]) == (4, 4, 8)
    reason = st["verdict"]["reason"]
    assert reason.startswith("pool php is saturated: 4/4 workers busy, 8 queued (median wait 300 ms)"), reason
    assert "2/2" not in reason and reason.endswith("(2 of 2 worker processes)")
    assert "workers use 10% of a core each, host CPU 90% busy" in reason


def test_merged_listener_and_healthy_reasons_quote_the_summed_pool():
    a = _status(101, "listener", requests=30, busy=1, queue=0, responses=10, wait_ms=0.0, lag_p99=80.0, errors={})
    b = _status(102, "healthy", requests=30, busy=0, queue=0, responses=10, wait_ms=0.0, lag_p99=1.0, errors={})
    st = merge_status([a, b], pid=100, uptime=9.0)
    assert st["verdict"]["bottleneck"] == "listener"
    assert "php 3/4 free" in st["verdict"]["reason"] and "busiest process CPU 50%" in st["verdict"]["reason"]
    st = merge_status([b, b], pid=100, uptime=9.0)
    assert "php 0/4 busy, 0 queued" in st["verdict"]["reason"]
    down = _status(101, "backend-down", requests=0, busy=0, queue=0, responses=0, wait_ms=0.0, lag_p99=1.0,
                   errors={})
    st = merge_status([down, b], pid=100, uptime=9.0)
    assert st["verdict"]["reason"] == "backend-down in 101 (1 of 2 worker processes)"  # the worker's own words


def test_merged_php_waiting_keeps_what_the_workers_wait_on():
    """Every process samples the same php-fpm workers: the merged reason names
    their targets, and waiting_on is theirs."""
    from gateway.observe.waits import Wait, describe, summarise

    waits = summarise({1: Wait("database", "10.0.0.5:3306", "primary db"), 2: Wait("cache", "10.0.0.6:6379"),
                       3: Wait("database", "10.0.0.5:3306", "primary db"), 4: Wait("database", "10.0.0.5:3306",
                                                                                 "primary db")}, 4)
    shown = {"busy": waits.busy, "workers": waits.workers, "unknown": 0, "error": "", "reason": describe(waits),
             "on": waits.counts, "targets": [{"kind": t.kind, "workers": t.count, "target": t.target,
                                              "name": t.name, "frame": t.frame} for t in waits.targets]}
    parts = []
    for pid in (101, 102):
        st = _status(pid, "php-waiting", requests=30, busy=2, queue=4, responses=10, wait_ms=100.0, lag_p99=1.0,
                     errors={})
        st["verdict"]["waiting_on"] = waits.counts
        st["pools"]["php"]["waiting_on"] = shown
        parts.append(st)
    st = merge_status(parts, pid=100, uptime=9.0)
    assert st["verdict"]["waiting_on"] == waits.counts
    assert ("3 of them waiting on the database at 10.0.0.5:3306 (primary db), 1 on the cache server at "
            "10.0.0.6:6379") in st["verdict"]["reason"]


def test_php_waiting_held_by_a_process_that_does_not_sample_gets_waiting_on_from_the_pool():
    from gateway.observe.waits import Wait, describe, summarise

    waits = summarise({1: Wait("cache", "10.0.0.6:6379")}, 2)
    sampling = _status(101, "healthy", requests=30, busy=1, queue=0, responses=10, wait_ms=0.0, lag_p99=1.0,
                       errors={})
    sampling["pools"]["php"]["waiting_on"] = {"busy": 1, "workers": 2, "unknown": 0, "error": "",
                                              "reason": describe(waits), "on": waits.counts, "targets": []}
    saturated = _status(102, "php-waiting", requests=30, busy=1, queue=4, responses=10, wait_ms=100.0,
                        lag_p99=1.0, errors={})
    st = merge_status([sampling, saturated], pid=100, uptime=9.0)
    assert st["verdict"]["bottleneck"] == "php-waiting" and st["verdict"]["waiting_on"]["cache"] == 1
