"""What operators, scripts and dashboards read: the admin listener's ``/status``
JSON and ``/metrics`` text, of one process and of several merged by the master.

Every metric family (name, type, help, labels) and every JSON key is pinned
here, and the whole output of a frozen gateway (``observe_fixture.py``) is
compared with ``observe_golden/``: renaming a metric, a label or a key, or
changing a help text or a merge rule, fails a test. README ("Where does the
time go?") and users' dashboards rely on these names. ``gateway status`` and
``gateway top`` are pinned on the same data.

To change the output on purpose, change the golden files in the same commit.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from gateway.observe.aggregate import merge_prometheus, merge_status
from gateway.observe.views import summary_lines, top_view
from gateway.observe.waits import KINDS

from .observe_fixture import frozen_monitor

GOLDEN = Path(__file__).parent / "observe_golden"

#: (family, type, help, label names) of every metric family /metrics can show.
FAMILIES = [
    ("gateway_connections", "gauge", "Open client connections by state.", ("state",)),
    ("gateway_connections_accepted", "counter", "Client connections accepted.", ()),
    ("gateway_requests", "counter", "HTTP requests received.", ()),
    ("gateway_requests_in_flight", "gauge", "Requests being handled now.", ()),
    ("gateway_requests_per_second", "gauge", "Requests per second over the last 10 s.", ()),
    ("gateway_loop_lag_seconds", "histogram", "Event-loop lag: how late a fixed-tick sleep wakes.", ()),
    ("gateway_tls_handshakes", "counter", "TLS handshakes completed on tls listeners.", ()),
    ("gateway_tls_handshakes_resumed", "counter",
     "TLS handshakes that resumed a session (ticket), of the completed ones.", ()),
    ("gateway_tls_handshake_failures", "counter",
     "TLS handshakes failed, by reason: timeout, protocol (error or alert), no_certificate.", ("reason",)),
    ("gateway_tls_handshake_cpu_seconds", "counter", "Thread CPU seconds spent in TLS handshakes (done or failed).",
     ()),
    ("gateway_tls_handshake_cpu_ratio", "gauge", "CPU in TLS handshakes over the last 10 s, share of one core.", ()),
    ("gateway_http2_connections", "counter",
     "Client connections served over HTTP/2 (ALPN h2, or h2c with prior knowledge).", ()),
    ("gateway_http2_connections_open", "gauge", "HTTP/2 client connections open now.", ()),
    ("gateway_http2_streams", "counter", "HTTP/2 streams (requests) started.", ()),
    ("gateway_http2_refused", "counter",
     "HTTP/2 connections closed for abuse or a protocol error, by reason: rapid_reset, "
     "header_flood (CONTINUATION), control_flood (PING/SETTINGS), protocol_error.", ("reason",)),
    ("gateway_tunnels_open", "gauge", "Switched connections (WebSocket, any Upgrade) the gateway pumps now.", ()),
    ("gateway_tunnels", "counter", "Switched connections (WebSocket, any Upgrade) opened.", ()),
    ("gateway_process_cpu_ratio", "gauge", "Gateway process CPU, share of one core.", ()),
    ("gateway_host_cpu_ratio", "gauge", "Host CPU busy, share of all cores.", ()),
    ("gateway_host_iowait_ratio", "gauge", "Host CPU idle waiting for storage, share of all cores.", ()),
    ("gateway_processes_cpu_ratio", "gauge", "CPU of all the gateway's processes (master and workers), share of "
     "one core.", ()),
    ("gateway_compression_seconds", "counter",
     "CPU seconds spent compressing responses (br, gzip), on the event loop and in threads.", ()),
    ("gateway_compression_in_bytes", "counter", "Response bytes given to the compressor.", ()),
    ("gateway_compression_out_bytes", "counter", "Compressed bytes the compressor produced.", ()),
    ("gateway_compression_responses", "counter", "Responses compressed, by coding.", ("encoding",)),
    ("gateway_compression_threaded", "counter",
     "Compression calls run in a worker thread (bodies too large to compress on the event loop).", ()),
    ("gateway_precompressed_responses", "counter", "Precompressed files (x.br, x.gz beside x) served, by coding.",
     ("encoding",)),
    ("gateway_rate_limited", "counter", "Requests answered 429 by a [[sites.X.rate_limit]] rule, by site.",
     ("site",)),
    ("gateway_rate_limit_delayed", "counter",
     "Requests a rate_limit rule delayed to its rate (within burst, without nodelay), by site.", ("site",)),
    ("gateway_rate_limit_evictions", "counter", "Client states pushed out of the full rate-limit table before "
     "they expired (an address flood larger than the table).", ()),
    ("gateway_access_denied", "counter", "Requests answered 403 by a [[sites.X.access]] rule, by site.", ("site",)),
    ("gateway_auth_failures", "counter",
     "Requests with wrong credentials for a [[sites.X.basic_auth]] rule, by site.", ("site",)),
    ("gateway_auth_blocked", "counter",
     "Requests answered 429 because their address failed basic auth max_failures times, by site.", ("site",)),
    ("gateway_cache_requests", "counter",
     "Requests the page cache looked up, by X-Cache status (HIT, MISS, STALE, BYPASS, EXPIRED).", ("status",)),
    ("gateway_cache_entries", "gauge", "Entries in the page cache's memory tier.", ()),
    ("gateway_cache_bytes", "gauge", "Bytes (bodies and headers) in the page cache's memory tier.", ()),
    ("gateway_cache_evictions", "counter", "Page cache entries dropped to make room (least recently used first).",
     ()),
    ("gateway_cache_lock_waits", "counter",
     "Requests that waited for another request fetching the same page (the stampede lock).", ()),
    ("gateway_cache_purged", "counter", "Page cache entries removed by purges.", ()),
    ("gateway_pool_size", "gauge", "Pool slots (live FastCGI connections allowed).", ("pool",)),
    ("gateway_pool_busy", "gauge", "Pool slots in use.", ("pool",)),
    ("gateway_pool_tunnels", "gauge", "Pool slots held by switched connections (WebSocket...), of the busy ones.",
     ("pool",)),
    ("gateway_pool_idle_connections", "gauge", "Idle kept-alive FastCGI connections.", ("pool",)),
    ("gateway_pool_queue_depth", "gauge", "Requests waiting for a slot.", ("pool",)),
    ("gateway_pool_queue_depth_max", "gauge", "Most requests ever waiting at once.", ("pool",)),
    ("gateway_pool_queue_wait_seconds", "histogram", "Time waiting for a pool slot.", ("pool",)),
    ("gateway_pool_php_seconds", "histogram", "Time from slot to PHP's END_REQUEST.", ("pool",)),
    ("gateway_pool_responses", "counter", "PHP responses received.", ("pool",)),
    ("gateway_pool_cacheable_responses", "counter",
     "PHP responses a page cache could have kept (GET/HEAD, storable): misses and bypasses of a site's cache, or the "
     "whole load a cache would take off a pool without one.", ("pool",)),
    ("gateway_pool_errors", "counter", "Requests answered with a gateway error.", ("pool", "status")),
    ("gateway_pool_retries", "counter", "Requests retried on a fresh connection.", ("pool",)),
    ("gateway_pool_client_gone", "counter", "Waiters dropped because their client left.", ("pool",)),
    ("gateway_pool_connect_errors", "counter", "Failed connects to the backend.", ("pool",)),
    ("gateway_php_worker_cpu_ratio", "gauge", "CPU per busy php-fpm worker, share of one core.", ("pool",)),
    ("gateway_php_workers_waiting", "gauge", "Busy php-fpm workers by what they wait on, sampled from /proc once a "
     "second (database, cache, http, socket, disk, lock, cpu).", ("on", "pool")),
    ("gateway_backend_up", "gauge", "1 if the backend answered its last health check, 0 if not.", ("pool",)),
    ("gateway_phpfpm_workers", "gauge", "php-fpm's workers by state (running, idle), counted in its process list: "
     "unlike its 'active processes' counter, they add up to its pool.", ("pool", "state")),
    ("gateway_phpfpm_active_processes", "gauge", "php-fpm's own 'active processes'.", ("pool",)),
    ("gateway_phpfpm_idle_processes", "gauge", "php-fpm's own 'idle processes'.", ("pool",)),
    ("gateway_phpfpm_total_processes", "gauge", "php-fpm's own 'total processes'.", ("pool",)),
    ("gateway_phpfpm_listen_queue", "gauge", "php-fpm's own 'listen queue'.", ("pool",)),
    ("gateway_phpfpm_max_children_reached", "counter", "php-fpm's 'max children reached'.", ("pool",)),
    ("gateway_phpfpm_slow_requests", "counter", "php-fpm's 'slow requests'.", ("pool",)),
    ("gateway_verdict", "gauge", "1 for the current bottleneck verdict.", ("bottleneck",)),
]

#: Every key of one process's /status, in order (``*``: any pool, any list entry;
#: the keys of ``errors`` are HTTP statuses, data rather than schema).
STATUS_KEYS = [
    "verdict", "verdict.bottleneck", "verdict.reason", "verdict.for_seconds", "verdict.waiting_on",
    *(f"verdict.waiting_on.{kind}" for kind in KINDS),
    "listener", "listener.connections", "listener.connections.idle", "listener.connections.reading",
    "listener.connections.waiting_php", "listener.connections.writing", "listener.connections.open",
    "listener.accepts_per_second", "listener.requests_per_second", "listener.requests_total",
    "listener.in_flight", "listener.loop_lag_ms", "listener.loop_lag_ms.p50", "listener.loop_lag_ms.p99",
    "listener.loop_lag_ms.max", "listener.tls", "listener.tls.handshakes_total", "listener.tls.resumed_total",
    "listener.tls.failures", "listener.tls.failures.timeout", "listener.tls.failures.protocol",
    "listener.tls.failures.no_certificate", "listener.tls.cpu_seconds_total", "listener.tls.handshakes_per_second",
    "listener.tls.resumed_per_second", "listener.tls.cpu", "listener.http2", "listener.http2.connections_total",
    "listener.http2.open", "listener.http2.streams_total", "listener.http2.refused",
    "listener.http2.refused.rapid_reset", "listener.http2.refused.header_flood",
    "listener.http2.refused.control_flood", "listener.http2.refused.protocol_error",
    "listener.tunnels", "listener.tunnels.open", "listener.tunnels.total", "listener.process_cpu",
    "host", "host.cpu", "host.cpus", "host.iowait", "host.gateway_cpu", "host.other_cpu",
    "compression", "compression.cpu_seconds", "compression.bytes_in", "compression.bytes_out",
    "compression.responses", "compression.responses.br", "compression.responses.gzip", "compression.threaded",
    "compression.precompressed", "compression.precompressed.br", "compression.precompressed.gzip",
    "guard", "guard.rate_limited", "guard.delayed", "guard.evictions", "guard.access_denied", "guard.auth_failures",
    "guard.auth_blocked",
    "cache", "cache.requests", "cache.requests.HIT", "cache.requests.MISS", "cache.requests.STALE",
    "cache.requests.BYPASS", "cache.requests.EXPIRED", "cache.hits", "cache.misses", "cache.hit_ratio",
    "cache.entries", "cache.bytes", "cache.evictions", "cache.lock_waits", "cache.purged",
    "pools", "pools.*", "pools.*.type", "pools.*.size", "pools.*.busy", "pools.*.tunnels", "pools.*.idle",
    "pools.*.queue_depth",
    "pools.*.queue_depth_max_window", "pools.*.queue_depth_max", "pools.*.queue_limit",
    "pools.*.queue_wait_avg_ms", "pools.*.queue_wait_avg_ms_10s", "pools.*.queue_wait_p50_ms_last_second",
    "pools.*.php_time_avg_ms", "pools.*.php_time_avg_ms_10s", "pools.*.responses_10s",
    "pools.*.responses_total", "pools.*.cacheable_total", "pools.*.cacheable_share",
    "pools.*.cache_bypassed_share", "pools.*.cache_on", "pools.*.errors", "pools.*.queue_full_total",
    "pools.*.queue_timeouts_total",
    "pools.*.retries_total", "pools.*.client_gone_in_queue_total", "pools.*.connect_errors_total",
    "pools.*.worker_cpu", "pools.*.waiting_on", "pools.*.waiting_on.busy", "pools.*.waiting_on.workers",
    "pools.*.waiting_on.unknown", "pools.*.waiting_on.error", "pools.*.waiting_on.reason", "pools.*.waiting_on.on",
    *(f"pools.*.waiting_on.on.{kind}" for kind in KINDS), "pools.*.waiting_on.targets",
    *(f"pools.*.waiting_on.targets.*.{key}" for key in ("kind", "workers", "target", "name", "frame")),
    "pools.*.slowlog_frames", "pools.*.slowlog_frames.*.frame", "pools.*.slowlog_frames.*.requests",
    "pools.*.php_fpm_restarts",
    "pools.*.backend", "pools.*.backend.up", "pools.*.backend.check", "pools.*.backend.error",
    "pools.*.backend.down_seconds", "pools.*.backend.last_check_seconds_ago",
    "pools.*.php_fpm", "pools.*.php_fpm.listen_queue", "pools.*.php_fpm.active_processes",
    "pools.*.php_fpm.idle_processes", "pools.*.php_fpm.total_processes", "pools.*.php_fpm.max_children_reached",
    "pools.*.php_fpm.slow_requests", "pools.*.php_fpm.accepted_conn",
    "pools.*.php_fpm.workers", "pools.*.php_fpm.workers.running", "pools.*.php_fpm.workers.idle",
    "pools.*.php_fpm.processes",
    "pools.*.php_fpm.processes.*.pid", "pools.*.php_fpm.processes.*.state",
    "pools.*.php_fpm.processes.*.request_duration_ms", "pools.*.php_fpm.processes.*.last_request_cpu",
    "pools.*.php_fpm.processes.*.script",
    "pools.*.php_fpm_status_error",
    "uptime_seconds", "pid",
]
#: What the master's merged /status adds: one entry per worker process.
MERGED_KEYS = [*STATUS_KEYS, "workers", "workers.*.index", "workers.*.up", "workers.*.pid", "workers.*.verdict",
               "workers.*.open", "workers.*.requests_total", "workers.*.process_cpu"]


def key_paths(obj: Any, prefix: str = "") -> list[str]:
    """Every key path of a JSON value, pools and list entries as ``*``, once each, in first-seen order."""
    out: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if prefix.endswith("errors.") or (prefix.startswith("guard.") and prefix != "guard."):
                continue  # (statuses, site names: data)
            name = "*" if prefix.endswith("pools.") else key
            out += [prefix + name, *key_paths(value, prefix + name + ".")]
    elif isinstance(obj, list):
        for value in obj:
            out += key_paths(value, prefix + "*.")
    return list(dict.fromkeys(out))


def families(text: str) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(family, type, help, label names) of Prometheus text, in order."""
    out: list[tuple[str, str, str, set[str]]] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            _, _, name, help_ = line.split(" ", 3)
            out.append((name, "", help_, set()))
        elif line.startswith("# TYPE "):
            name, help_, labels = out[-1][0], out[-1][2], out[-1][3]
            out[-1] = (name, line.split(" ")[3], help_, labels)
        else:
            out[-1][3].update(re.findall(r'([a-z_]+)="', line))
    return [(name, kind, help_, tuple(sorted(labels - {"le", "worker"}))) for name, kind, help_, labels in out]


def by_family(text: str, *, sort: bool = False) -> dict[str, list[str]]:
    """Prometheus text as HELP+TYPE lines -> the family's sample lines (sorted
    with ``sort``). The order of families carries no meaning in the format."""
    out: dict[str, list[str]] = {}
    head = ""
    for line in text.splitlines():
        if line.startswith("# HELP"):
            head = line
        elif line.startswith("# TYPE"):
            head += "\n" + line
            out[head] = []
        else:
            out[head].append(line)
    return {h: sorted(lines) for h, lines in out.items()} if sort else out


def _outputs() -> dict[str, Any]:
    first, second = frozen_monitor(), frozen_monitor(second=True)
    out: dict[str, Any] = {"status": first.status(), "status-second": second.status(),
                           "metrics": first.prometheus(), "metrics-second": second.prometheus()}
    out["merged-status"] = merge_status([out["status"], None, out["status-second"]], pid=100, uptime=9.0,
                                        fpm_restarts={"php": 2})
    out["merged-metrics"] = merge_prometheus([out["metrics"], None, out["metrics-second"]], out["merged-status"])
    return out


def _steady(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` with what differs between runs (pid, CPUs, uptime) checked and set to fixed values."""
    assert status["host"]["cpus"] == os.cpu_count()
    assert status["uptime_seconds"] >= 0
    status = json.loads(json.dumps(status))
    status["host"]["cpus"] = 2
    if "workers" in status:
        for w in status["workers"]:
            if w["up"]:
                assert w["pid"] == os.getpid()
                w["pid"] = 1
    else:
        assert status["pid"] == os.getpid()
        status["pid"], status["uptime_seconds"] = 1, 0.0
    return status


async def test_every_metric_family_keeps_its_name_type_help_and_labels(autojump_clock):
    out = _outputs()
    seen = dict.fromkeys(families(out["metrics"]) + families(out["metrics-second"]))
    assert sorted(seen) == sorted(FAMILIES)
    merged = {f[0]: f for f in families(out["merged-metrics"])}
    assert sorted(merged) == sorted(f[0] for f in FAMILIES)
    # the master's verdict is its own (the merged one), and says so
    assert merged["gateway_verdict"][2] == "1 for the current bottleneck verdict (all worker processes)."


async def test_every_status_key_stays(autojump_clock):
    out = _outputs()
    assert key_paths(out["status"]) == STATUS_KEYS  # the first process has every optional part
    assert set(key_paths(out["status-second"])) <= set(STATUS_KEYS)
    alone = merge_status([out["status"]], pid=100, uptime=9.0)  # ext: no process read php-fpm's status
    assert alone["pools"]["ext"]["php_fpm_status_error"] == out["status"]["pools"]["ext"]["php_fpm_status_error"]
    assert set(key_paths(out["merged-status"])) | set(key_paths(alone)) == set(MERGED_KEYS)


@pytest.mark.parametrize("name", ["status", "status-second", "merged-status"])
async def test_status_is_as_pinned(autojump_clock, name):
    assert _steady(_outputs()[name]) == json.loads((GOLDEN / f"{name}.json").read_text())


async def test_single_process_status_keeps_its_key_order(autojump_clock):
    text = json.dumps(_steady(_outputs()["status"]), indent=1) + "\n"
    assert text == (GOLDEN / "status.json").read_text()


@pytest.mark.parametrize("name", ["metrics", "metrics-second"])
async def test_metrics_text_is_as_pinned(autojump_clock, name):
    """Each family's help, type and series, in the order of its series."""
    assert by_family(_outputs()[name]) == by_family((GOLDEN / f"{name}.txt").read_text())


async def test_merged_metrics_are_as_pinned(autojump_clock):
    assert (by_family(_outputs()["merged-metrics"], sort=True)
            == by_family((GOLDEN / "merged-metrics.txt").read_text(), sort=True))


async def test_what_a_dashboard_reads(autojump_clock):
    out = _outputs()
    st = out["status"]
    assert st["verdict"] == {"bottleneck": "php-waiting", "reason": "pool php is saturated: 3/4 workers busy",
                             "for_seconds": 12.3, "waiting_on": {"database": 1, "cache": 0, "http": 0, "socket": 0,
                                                                 "disk": 0, "lock": 0, "cpu": 0}}
    assert st["pools"]["php"]["waiting_on"]["targets"][0]["frame"] == "mysqli_query from wp-includes/class-wpdb.php"
    assert st["listener"]["connections"] == {"idle": 5, "reading": 1, "waiting_php": 2, "writing": 1, "open": 9}
    assert st["listener"]["requests_per_second"] == 3.3  # 10 requests in the last 3 s
    assert st["listener"]["loop_lag_ms"] == {"p50": 3.0, "p99": 70.0, "max": 70.0}
    php = st["pools"]["php"]
    assert (php["busy"], php["size"], php["queue_depth"], php["queue_limit"]) == (3, 4, 5, 50)
    assert php["errors"] == {"502": 1, "504": 2}
    assert php["queue_wait_avg_ms"] == 160.0 and php["php_time_avg_ms"] == 116.67
    # the last 10 s beside since start: one wait of 300 ms, two PHP responses of 200 and 50 ms
    assert (php["queue_wait_avg_ms_10s"], php["php_time_avg_ms_10s"], php["responses_10s"]) == (300.0, 125.0, 2)
    assert php["backend"]["up"] is True and st["pools"]["ext"]["backend"]["up"] is False
    assert php["php_fpm"]["workers"] == {"running": 1, "idle": 1}  # its process list, not its drifting counters
    assert php["php_fpm"]["active_processes"] == 3 and php["php_fpm_restarts"] == 2
    assert "php_fpm" not in st["pools"]["ext"] and st["pools"]["ext"]["php_fpm_status_error"].startswith("Conn")
    assert "php_fpm" not in st["pools"]["bare"] and "php_fpm_status_error" not in st["pools"]["bare"]

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(out["metrics"]) for s in f.samples}
    assert samples[("gateway_pool_errors_total", (("pool", "php"), ("status", "503")))] == 0
    assert samples[("gateway_pool_errors_total", (("pool", "ext"), ("status", "502")))] == 4
    assert samples[("gateway_pool_queue_wait_seconds_count", (("pool", "php"),))] == 2
    assert samples[("gateway_verdict", (("bottleneck", "php-waiting"),))] == 1
    assert ("gateway_php_worker_cpu_ratio", (("pool", "ext"),)) not in samples  # unknown: no sample, not 0
    assert samples[("gateway_php_workers_waiting", (("on", "database"), ("pool", "php")))] == 1
    assert samples[("gateway_php_workers_waiting", (("on", "http"), ("pool", "php")))] == 0
    assert ("gateway_php_workers_waiting", (("on", "database"), ("pool", "ext"))) not in samples  # not sampled
    assert ("gateway_phpfpm_active_processes", (("pool", "ext"),)) not in samples

    merged = out["merged-status"]
    assert merged["verdict"]["bottleneck"] == "listener"  # the worst any worker holds
    assert merged["verdict"]["reason"].endswith("(1 of 3 worker processes)")
    assert merged["listener"]["requests_total"] == 320
    assert merged["listener"]["loop_lag_ms"]["p99"] == 200.0  # the worst process
    assert merged["pools"]["php"]["errors"] == {"502": 1, "503": 7, "504": 2}
    # averages weigh each process by its responses: (160 ms x 3 + 406.67 ms x 9) / 12
    assert merged["pools"]["php"]["queue_wait_avg_ms"] == pytest.approx((160.0 * 3 + 406.67 * 9) / 12, abs=0.01)
    assert merged["pools"]["ext"]["php_fpm"]["active_processes"] == 1  # one process read php-fpm's status
    assert "php_fpm_status_error" not in merged["pools"]["ext"]
    assert [w["up"] for w in merged["workers"]] == [True, False, True]
    assert merged["pools"]["php"]["queue_limit"] == 50  # per process, as configured, not 2 x 50
    assert merged["pools"]["ext"]["backend"]["up"] is False  # down for one process: down


@pytest.mark.parametrize("name", ["status", "merged-status"])
def test_status_and_top_show_what_they_showed(name):
    """``gateway status`` and one frame of ``gateway top`` for the pinned /status."""
    st = json.loads((GOLDEN / f"{name}.json").read_text())
    assert "\n".join(summary_lines(st)) + "\n" == (GOLDEN / f"{name}.summary.txt").read_text()
    console = Console(width=160, record=True, file=io.StringIO(), color_system=None)
    console.print(top_view(st, "http://127.0.0.1:9180"))
    assert console.export_text() == (GOLDEN / f"{name}.top.txt").read_text()


@pytest.mark.parametrize("name", ["status", "merged-status"])
def test_top_fits_80_by_24(name):
    """One frame of ``gateway top`` on an 80×24 terminal: nothing cut, no line
    past 80 columns, at most 24 lines (three pools, a backend down, three
    worker processes)."""
    st = json.loads((GOLDEN / f"{name}.json").read_text())
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    console.print(top_view(st, "http://127.0.0.1:9180"))
    lines = console.export_text().splitlines()
    assert len(lines) <= 24, "\n".join(lines)
    assert all(len(line) <= 80 for line in lines)
    assert not any("…" in line for line in lines), "\n".join(lines)  # no column cut short
    screen = "\n".join(lines)
    assert "busy/size" in screen and "DOWN" in screen and "10s/all" in screen


def test_an_http_backend_is_shown_by_its_type():
    st = json.loads((GOLDEN / "status.json").read_text())
    st["pools"]["bare"]["type"] = "http"
    lines = summary_lines(st)
    assert any(line.startswith("backend bare (http): 1/1 busy") for line in lines)
    assert "avg response" in lines[lines.index(next(x for x in lines if x.startswith("backend bare"))) + 1]
    console = Console(width=160, record=True, file=io.StringIO(), color_system=None)
    console.print(top_view(st, "http://127.0.0.1:9180"))
    text = console.export_text()
    assert "Backends (10s" in text and "PHP pools" not in text and "bare (http)" in text
