"""The metric table: one row per metric, and everything the admin listener
shows is read from it, so adding a metric is adding a row.

A row names the metric (its Prometheus family; counters end in ``_total``),
its kind, its help text, a getter (on the ``Monitor`` for a row about the
process, on a pool's ``PoolMonitor`` for a row per pool), its key path in
``/status`` and the rule that merges it across worker processes. Read by:

- ``status`` and ``prometheus`` here: one process's ``/status`` JSON and
  ``/metrics`` text (``Monitor.status``/``Monitor.prometheus``);
- ``merge`` here: the master's ``/status``, one object for all its workers
  (``aggregate.merge_status``);
- ``aggregate.merge_prometheus``: the master's ``/metrics``.

The CLI views (``views.py``) are not driven by it: they lay out the ``/status``
JSON they fetch over HTTP, possibly from another version of the gateway, by
its keys (pinned by tests/gateway/test_observe_output.py).

Policy:

- Rows are listed in the order ``/status`` lists its keys; ``/metrics`` lists
  a family where its first series comes, pool rows pool by pool (a pool's
  rows, then the next pool's).
- A getter that returns None means "unknown": ``null`` in ``/status``, no
  sample in ``/metrics`` (never a made-up 0). A row with ``when`` is left out of
  both where ``when`` is false (php-fpm's numbers when its status was not read).
- ``/metrics`` shows raw values in base units (seconds, shares of a core);
  ``/status`` scales and rounds them for people (``scale``, ``digits``:
  milliseconds, three decimals of a ratio).
- A labelled row (``label``) has a mapping as its value, label value to
  number: ``/status`` shows the mapping, ``/metrics`` one series per entry of
  ``series`` (0 where the mapping has none) or, without ``series``, per entry.
- Merging ``/status`` over processes (``merge``): counts and rates add up; lags
  and the last second's wait take the worst process; averages are weighted by
  the responses behind them; what every process sees alike (the host, php-fpm's
  own status) comes from the first process that has it; the master's own facts
  (pid, uptime, php-fpm restarts) replace the workers'; the verdict is the most
  severe one. A merged value is rounded as one process rounds it. An optional
  row that no process reports stays out.
- ``/metrics`` is not merged: the master shows every worker's series with a
  ``worker="N"`` label (PromQL's ``sum by``/``max by`` give the whole), except
  rows with ``master``, which the master computes once from its merged
  ``/status`` (the verdict).

Pure bookkeeping: no IO and no clock here; the monitor passes the time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from ..metrics import CACHE_STATUSES, CONN_STATES, H2_REFUSALS, TLS_FAILURES, PromWriter
from .diagnosis import BOTTLENECKS
from .waits import KINDS, describe

if TYPE_CHECKING:
    from .monitor import Monitor, PoolMonitor

Kind = Literal["counter", "gauge", "histogram", "info"]
Path = tuple[str, ...]
S = TypeVar("S")

#: Verdicts, most severe first: the master shows the most severe any worker holds.
SEVERITY = ("backend-down", "listener-tls", "listener", "php-cpu", "php-uncached", "php-waiting", "healthy")


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: A merge rule's answer for "leave the key out".
ABSENT: Any = _Absent()


# -- merge rules -----------------------------------------------------------------


@dataclass(frozen=True)
class Merging:
    """What a merge rule sees of one key."""

    #: the key's value in each answering process that has it, in process order
    values: list[Any]
    #: the object holding the key in those processes (a rule may read siblings)
    holders: list[Mapping[str, Any]]
    #: processes asked, answering or not
    asked: int
    #: the merged object the result goes into, with the rows before this one
    merged: Mapping[str, Any]
    #: the master's own value for the key, or ABSENT
    own: Any = ABSENT


Merge = Callable[[Merging], Any]


def add(m: Merging) -> Any:
    """Counts, gauges and rates of the whole: the sum."""
    return sum(m.values)


def add_by_key(m: Merging) -> dict[str, Any]:
    """Mappings (errors by status): summed key by key, keys sorted."""
    out: dict[str, Any] = {}
    for value in m.values:
        for key, n in value.items():
            out[key] = out.get(key, 0) + n
    return dict(sorted(out.items()))


def add_each(keys: tuple[str, ...]) -> Merge:
    """Mappings with fixed keys (connections by state): summed key by key, every
    key present, in that order (other keys are other rows' business)."""

    def rule(m: Merging) -> dict[str, Any]:
        return {key: sum(value.get(key, 0) for value in m.values) for key in keys}

    return rule


def worst(m: Merging) -> Any:
    """Lags and waits: the worst process (0.0 when none answered)."""
    return max(m.values, default=0.0)


def worst_known(m: Merging) -> Any:
    """The worst process that knows the value; None if none does."""
    return max((v for v in m.values if v is not None), default=None)


def first(m: Merging) -> Any:
    """What every process sees alike (the host): the first process's value."""
    return m.values[0] if m.values else None


def first_unless(sibling: str) -> Merge:
    """The first process's value, unless the merged object has ``sibling``
    (php-fpm's status error only when no process read its status)."""

    def rule(m: Merging) -> Any:
        return ABSENT if sibling in m.merged else first(m)

    return rule


def weighted_by(weight: str) -> Merge:
    """An average: each process's value weighted by its sibling ``weight``
    (the responses behind it); 0.0 when the weights add up to nothing."""

    def rule(m: Merging) -> Any:
        weights = [h.get(weight, 0) for h in m.holders]
        total = sum(weights)
        return sum(v * w for v, w in zip(m.values, weights, strict=True)) / total if total else 0.0

    return rule


def health(m: Merging) -> dict[str, Any]:
    """A backend's health check: down if any process finds it down (that
    process's answer is shown), up if one finds it up, else unknown."""
    down = [v for v in m.values if v.get("up") is False]
    if down:
        return dict(down[0])
    up = [v for v in m.values if v.get("up")]
    return dict(up[0] if up else m.values[0]) if m.values else ABSENT


def own(m: Merging) -> Any:
    """The master's own value (its pid, its uptime); the workers' are not used."""
    return m.own


def most_severe(m: Merging) -> dict[str, Any]:
    """The verdict: the most severe one any process holds (a listener
    bottleneck in one process is a listener bottleneck), naming how many hold it."""
    if not m.values:
        return {"bottleneck": "backend-down", "reason": f"none of the {m.asked} worker processes answered",
                "for_seconds": 0.0}
    rank = {name: i for i, name in enumerate(SEVERITY)}
    worst_one = min(m.values, key=lambda v: rank.get(v["bottleneck"], len(SEVERITY)))
    name = worst_one["bottleneck"]
    holders = [v for v in m.values if v["bottleneck"] == name]
    reason = worst_one["reason"]
    if m.asked > 1:
        reason = f"{reason} ({len(holders)} of {m.asked} worker processes)"
    out = {"bottleneck": name, "reason": reason, "for_seconds": min(v["for_seconds"] for v in holders)}
    if "waiting_on" in worst_one:  # every process samples the same php-fpm workers
        out["waiting_on"] = dict(worst_one["waiting_on"])
    return out


# -- rows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric(Generic[S]):
    """One row of the table."""

    #: Prometheus family (counters end in ``_total``); None: in /status only
    name: str | None
    kind: Kind
    help: str
    #: the raw value, from the source and the time now (trio's clock)
    get: Callable[[S, float], Any]
    #: key path in /status (under ``pools.NAME`` for a pool row); None: in /metrics only
    json: Path | None = None
    merge: Merge = add
    #: /status shows ``round(value * scale, digits)``
    scale: float = 1
    digits: int | None = None
    #: present only where this holds
    when: Callable[[S], bool] | None = None
    #: a labelled row: the label's name, and the label values /metrics always shows
    label: str | None = None
    series: tuple[str, ...] = ()
    #: the master's /metrics computes this row from its merged /status
    master: Callable[[Mapping[str, Any]], Any] | None = None

    @property
    def family(self) -> str | None:
        """The family name in Prometheus text (a counter's without ``_total``)."""
        if self.name is not None and self.kind == "counter":
            return self.name.removesuffix("_total")
        return self.name

    def present(self, source: S) -> bool:
        return self.when is None or self.when(source)

    def for_json(self, value: Any) -> Any:
        """A raw value as /status shows it: scaled and rounded (a mapping copied)."""
        if isinstance(value, Mapping):
            return dict(value)
        if self.scale != 1 and _is_number(value):
            value = value * self.scale
        return self.rounded(value)

    def rounded(self, value: Any) -> Any:
        """Rounded as /status rounds this row (merged values too)."""
        return round(value, self.digits) if self.digits is not None and _is_number(value) else value

    def write(self, w: PromWriter, value: Any, **labels: str) -> None:
        """Add this row's series to ``w`` (nothing for an unknown value)."""
        if value is None or self.name is None:
            return
        if self.label is None:
            _write(w, self.kind, self.name, self.help, value, labels)
            return
        for key in self.series or tuple(value):
            _write(w, self.kind, self.name, self.help, value.get(key, 0), {**labels, self.label: key})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _write(w: PromWriter, kind: Kind, name: str, help_: str, value: Any, labels: dict[str, str]) -> None:
    if kind == "counter":
        w.counter(name, help_, value, **labels)
    elif kind == "histogram":
        w.histogram(name, help_, value, **labels)
    else:
        w.gauge(name, help_, value, **labels)


@dataclass(frozen=True)
class ProcessMetric(Metric["Monitor"]):
    """A row about the whole process: its /status path starts at the top."""


@dataclass(frozen=True)
class PoolMetric(Metric["PoolMonitor"]):
    """A row per pool: label ``pool="NAME"`` first, /status under ``pools.NAME``."""


Row = ProcessMetric | PoolMetric


def _fpm(key: str) -> Callable[[PoolMonitor, float], Any]:
    """A field of php-fpm's own status page (None if php-fpm did not send it)."""
    return lambda pm, now: (pm.fpm_status or {}).get(key)


def _fpm_read(pm: PoolMonitor) -> bool:
    return pm.fpm_status is not None


def _avg(hist_sum: float, count: int) -> float:
    return hist_sum / count if count else 0.0


def _fpm_processes(pm: PoolMonitor, now: float) -> list[dict[str, Any]]:
    return [{"pid": pr.get("pid"), "state": pr.get("state"),
             "request_duration_ms": round(pr.get("request duration", 0) / 1000, 1),
             "last_request_cpu": pr.get("last request cpu"), "script": pr.get("script")}
            for pr in (pm.fpm_status or {}).get("processes", [])]


def _backend_up(pm: PoolMonitor, now: float) -> int | None:
    return None if pm.health is None or pm.health.up is None else int(pm.health.up)


def _backend(pm: PoolMonitor, now: float) -> dict[str, Any]:
    h = pm.health
    assert h is not None
    return {"up": h.up, "check": h.what, "error": h.error, "down_seconds": round(h.down_for(now), 1),
            "last_check_seconds_ago": None if h.checked_at is None else round(now - h.checked_at, 1)}


def _fpm_workers(pm: PoolMonitor, now: float) -> dict[str, int]:
    """php-fpm's workers by state from its process list (``full``): Running is
    running a request, any other state (Idle, Reading headers between two
    requests of a kept-alive connection, Finishing) counts as idle."""
    states = [pr.get("state") for pr in (pm.fpm_status or {}).get("processes", [])]
    running = sum(1 for st in states if st == "Running")
    return {"running": running, "idle": len(states) - running}


def _group(pm: PoolMonitor) -> bool:
    return len(pm.pool.members) > 1


def _addresses(pm: PoolMonitor, now: float) -> dict[str, Any]:
    return {m.name: {"busy": m.busy, "size": m.size, "idle": m.idle, "up": m.down_since is None,
                     "down_seconds": 0.0 if m.down_since is None else round(now - m.down_since, 1),
                     "down_reason": "" if m.down_since is None else m.down_reason,
                     "requests": m.stats.requests, "connect_errors": m.stats.connect_errors,
                     "errors": {str(k): v for k, v in sorted(m.stats.errors.items())}}
            for m in pm.pool.members}


def add_addresses(m: Merging) -> dict[str, Any]:
    """A group's addresses over processes: counts add up; an address is up
    only if every process has it in rotation (the longest down time shown)."""
    out: dict[str, Any] = {}
    for value in m.values:
        for name, a in value.items():
            seen = out.get(name)
            if seen is None:
                out[name] = {**a, "errors": dict(a["errors"])}
                continue
            for key in ("busy", "size", "idle", "requests", "connect_errors"):
                seen[key] += a[key]
            for status, n in a["errors"].items():
                seen["errors"][status] = seen["errors"].get(status, 0) + n
            if not a["up"] and (seen["up"] or a["down_seconds"] > seen["down_seconds"]):
                seen.update(up=False, down_seconds=a["down_seconds"], down_reason=a["down_reason"])
    return out


def _cache_on(m: Monitor) -> bool:
    return m.cache.enabled


def _disk_on(m: Monitor) -> bool:
    return m.cache.enabled and m.cache.disk_entries is not None


def _hit_ratio(m: Merging) -> Any:
    """The merged hits over the merged requests (not an average of ratios)."""
    total = sum(m.merged.get("requests", {}).values())
    return m.merged.get("hits", 0) / total if total else 0.0


def _lag(q: float) -> Callable[[Monitor, float], Any]:
    """The q-quantile of the loop lag samples in the monitor's window (1.0: the most)."""
    return lambda m, now: m.lag_quantile(q)


def _verdict(m: Monitor, now: float) -> dict[str, Any]:
    v = m.diagnosis.current
    out = {"bottleneck": v.bottleneck, "reason": v.reason, "for_seconds": round(now - m.diagnosis.since, 1)}
    if v.waiting_on:
        out["waiting_on"] = dict(v.waiting_on)
    return out


def _waits(pm: PoolMonitor, now: float) -> dict[str, Any] | None:
    """The last sample of what the pool's busy workers wait on (None: none)."""
    w = pm.waits
    if w is None:
        return None
    return {"busy": w.busy, "workers": w.workers, "unknown": w.unknown, "error": w.error,
            "reason": describe(w), "on": w.counts,
            "targets": [{"kind": t.kind, "workers": t.count, "target": t.target, "name": t.name, "frame": t.frame}
                        for t in w.targets]}


def _slow_frames(pm: PoolMonitor, now: float) -> list[dict[str, Any]] | None:
    """The slowlog's most common frames over the last minute (None: no slowlog read)."""
    tail = pm.sampler.slowlog if pm.sampler is not None else None
    if tail is None:
        return None
    tail.frames.prune(now)
    return [{"frame": frame, "requests": n} for frame, n in tail.frames.top()]


TABLE: tuple[Row, ...] = (
    # -- the verdict (diagnosis.py) and the listener ------------------------------
    ProcessMetric(None, "info", "Where the time goes: the bottleneck, one sentence why, seconds it has held.",
                  _verdict, ("verdict",), most_severe),
    ProcessMetric("gateway_connections", "gauge", "Open client connections by state.",
                  lambda m, now: m.stats.states, ("listener", "connections"), add_each(CONN_STATES),
                  label="state", series=CONN_STATES),
    ProcessMetric(None, "gauge", "Open client connections.",
                  lambda m, now: m.stats.open_connections, ("listener", "connections", "open")),
    ProcessMetric("gateway_connections_accepted_total", "counter", "Client connections accepted.",
                  lambda m, now: m.stats.accepted),
    ProcessMetric(None, "gauge", "Client connections accepted per second over the last 10 s.",
                  lambda m, now: m.accepted.rate(now), ("listener", "accepts_per_second"), digits=1),
    ProcessMetric("gateway_requests_per_second", "gauge", "Requests per second over the last 10 s.",
                  lambda m, now: m.requests.rate(now), ("listener", "requests_per_second"), digits=1),
    ProcessMetric("gateway_requests_total", "counter", "HTTP requests received.",
                  lambda m, now: m.stats.requests, ("listener", "requests_total")),
    ProcessMetric("gateway_requests_in_flight", "gauge", "Requests being handled now.",
                  lambda m, now: m.stats.in_flight, ("listener", "in_flight")),
    ProcessMetric("gateway_loop_lag_seconds", "histogram", "Event-loop lag: how late a fixed-tick sleep wakes.",
                  lambda m, now: m.stats.loop_lag),
    *(ProcessMetric(None, "gauge", f"Event-loop lag over the last 10 s, {name}, in ms.", _lag(q),
                    ("listener", "loop_lag_ms", name), worst, scale=1000, digits=2)
      for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))),
    # -- TLS handshakes (front/listen.py, tls/contexts.py) ------------------------
    ProcessMetric("gateway_tls_handshakes_total", "counter", "TLS handshakes completed on tls listeners.",
                  lambda m, now: m.stats.tls.handshakes, ("listener", "tls", "handshakes_total")),
    ProcessMetric("gateway_tls_handshakes_resumed_total", "counter",
                  "TLS handshakes that resumed a session (ticket), of the completed ones.",
                  lambda m, now: m.stats.tls.resumed, ("listener", "tls", "resumed_total")),
    ProcessMetric("gateway_tls_handshake_failures_total", "counter",
                  "TLS handshakes failed, by reason: timeout, protocol (error or alert), no_certificate.",
                  lambda m, now: m.stats.tls.failures, ("listener", "tls", "failures"), add_each(TLS_FAILURES),
                  label="reason", series=TLS_FAILURES),
    ProcessMetric("gateway_tls_handshake_cpu_seconds_total", "counter",
                  "Thread CPU seconds spent in TLS handshakes (done or failed).",
                  lambda m, now: m.stats.tls.cpu_seconds, ("listener", "tls", "cpu_seconds_total"), digits=3),
    ProcessMetric(None, "gauge", "TLS handshakes completed per second over the last 10 s.",
                  lambda m, now: m.tls_handshakes.rate(now), ("listener", "tls", "handshakes_per_second"), digits=1),
    ProcessMetric(None, "gauge", "Resumed TLS handshakes per second over the last 10 s.",
                  lambda m, now: m.tls_resumed.rate(now), ("listener", "tls", "resumed_per_second"), digits=1),
    ProcessMetric("gateway_tls_handshake_cpu_ratio", "gauge",
                  "CPU in TLS handshakes over the last 10 s, share of one core.",
                  lambda m, now: m.tls_cpu.rate(now), ("listener", "tls", "cpu"), digits=3),
    # -- HTTP/2 (front/h2.py) -----------------------------------------------------
    ProcessMetric("gateway_http2_connections_total", "counter",
                  "Client connections served over HTTP/2 (ALPN h2, or h2c with prior knowledge).",
                  lambda m, now: m.stats.http2.connections, ("listener", "http2", "connections_total")),
    ProcessMetric("gateway_http2_connections_open", "gauge", "HTTP/2 client connections open now.",
                  lambda m, now: m.stats.http2.open, ("listener", "http2", "open")),
    ProcessMetric("gateway_http2_streams_total", "counter", "HTTP/2 streams (requests) started.",
                  lambda m, now: m.stats.http2.streams, ("listener", "http2", "streams_total")),
    ProcessMetric("gateway_http2_refused_total", "counter",
                  "HTTP/2 connections closed for abuse or a protocol error, by reason: rapid_reset, "
                  "header_flood (CONTINUATION), control_flood (PING/SETTINGS), protocol_error.",
                  lambda m, now: m.stats.http2.refused, ("listener", "http2", "refused"), add_each(H2_REFUSALS),
                  label="reason", series=H2_REFUSALS),
    # -- tunnels: switched connections, WebSocket... (front/tunnel.py) --------------
    ProcessMetric("gateway_tunnels_open", "gauge",
                  "Switched connections (WebSocket, any Upgrade) the gateway pumps now.",
                  lambda m, now: m.stats.tunnels.open, ("listener", "tunnels", "open")),
    ProcessMetric("gateway_tunnels_total", "counter", "Switched connections (WebSocket, any Upgrade) opened.",
                  lambda m, now: m.stats.tunnels.total, ("listener", "tunnels", "total")),
    ProcessMetric("gateway_process_cpu_ratio", "gauge", "Gateway process CPU, share of one core.",
                  lambda m, now: m.process_cpu, ("listener", "process_cpu"), digits=3),
    ProcessMetric("gateway_host_cpu_ratio", "gauge", "Host CPU busy, share of all cores.",
                  lambda m, now: m.host_cpu, ("host", "cpu"), first, digits=3),
    ProcessMetric(None, "gauge", "CPUs of the host.", lambda m, now: m.cpus, ("host", "cpus"), first),
    ProcessMetric("gateway_host_iowait_ratio", "gauge", "Host CPU idle waiting for storage, share of all cores.",
                  lambda m, now: m.host_iowait, ("host", "iowait"), first, digits=3),
    ProcessMetric("gateway_processes_cpu_ratio", "gauge", "CPU of all the gateway's processes (master and "
                  "workers), share of one core.",
                  lambda m, now: m.gateway_cpu, ("host", "gateway_cpu"), worst_known, digits=3),
    ProcessMetric(None, "gauge", "While the host's CPU is full: the busiest process that is not the gateway's, "
                  "share of one core (null otherwise).",
                  lambda m, now: m.other_cpu, ("host", "other_cpu"), worst_known, digits=3),
    # -- response compression (app/compress.py) ------------------------------------
    ProcessMetric("gateway_compression_seconds_total", "counter",
                  "CPU seconds spent compressing responses (br, gzip), on the event loop and in threads.",
                  lambda m, now: m.compression.cpu_seconds, ("compression", "cpu_seconds"), digits=3),
    ProcessMetric("gateway_compression_in_bytes_total", "counter", "Response bytes given to the compressor.",
                  lambda m, now: m.compression.bytes_in, ("compression", "bytes_in")),
    ProcessMetric("gateway_compression_out_bytes_total", "counter", "Compressed bytes the compressor produced.",
                  lambda m, now: m.compression.bytes_out, ("compression", "bytes_out")),
    ProcessMetric("gateway_compression_responses_total", "counter", "Responses compressed, by coding.",
                  lambda m, now: m.compression.responses, ("compression", "responses"), add_each(("br", "gzip")),
                  label="encoding", series=("br", "gzip")),
    ProcessMetric("gateway_compression_threaded_total", "counter",
                  "Compression calls run in a worker thread (bodies too large to compress on the event loop).",
                  lambda m, now: m.compression.threaded, ("compression", "threaded")),
    ProcessMetric("gateway_precompressed_responses_total", "counter",
                  "Precompressed files (x.br, x.gz beside x) served, by coding.",
                  lambda m, now: m.compression.precompressed, ("compression", "precompressed"),
                  add_each(("br", "gzip")), label="encoding", series=("br", "gzip")),
    # -- site rules that guard (app/guard.py) ----------------------------------------
    ProcessMetric("gateway_rate_limited_total", "counter",
                  "Requests answered 429 by a [[sites.X.rate_limit]] rule, by site.",
                  lambda m, now: m.guard.rate_limited, ("guard", "rate_limited"), add_by_key, label="site"),
    ProcessMetric("gateway_rate_limit_delayed_total", "counter",
                  "Requests a rate_limit rule delayed to its rate (within burst, without nodelay), by site.",
                  lambda m, now: m.guard.delayed, ("guard", "delayed"), add_by_key, label="site"),
    ProcessMetric("gateway_rate_limit_evictions_total", "counter",
                  "Client states pushed out of the full rate-limit table before they expired (an address "
                  "flood larger than the table).",
                  lambda m, now: m.guard.evictions, ("guard", "evictions")),
    ProcessMetric("gateway_access_denied_total", "counter",
                  "Requests answered 403 by a [[sites.X.access]] rule, by site.",
                  lambda m, now: m.guard.access_denied, ("guard", "access_denied"), add_by_key, label="site"),
    ProcessMetric("gateway_auth_failures_total", "counter",
                  "Requests with wrong credentials for a [[sites.X.basic_auth]] rule, by site.",
                  lambda m, now: m.guard.auth_failures, ("guard", "auth_failures"), add_by_key, label="site"),
    ProcessMetric("gateway_auth_blocked_total", "counter",
                  "Requests answered 429 because their address failed basic auth max_failures times, by site.",
                  lambda m, now: m.guard.auth_blocked, ("guard", "auth_blocked"), add_by_key, label="site"),
    # -- page cache (app/cache.py), when a site has one -----------------------------
    ProcessMetric("gateway_cache_requests_total", "counter",
                  "Requests the page cache looked up, by X-Cache status (HIT, MISS, STALE, BYPASS, EXPIRED).",
                  lambda m, now: m.cache.requests, ("cache", "requests"), add_each(CACHE_STATUSES),
                  when=_cache_on, label="status", series=CACHE_STATUSES),
    ProcessMetric(None, "counter", "Requests answered from the page cache (HIT and STALE).",
                  lambda m, now: m.cache.hits, ("cache", "hits"), when=_cache_on),
    ProcessMetric(None, "counter", "Requests the page cache sent to PHP for a missing or expired entry.",
                  lambda m, now: m.cache.misses, ("cache", "misses"), when=_cache_on),
    ProcessMetric(None, "gauge", "Hits over every request the page cache looked up (bypasses included).",
                  lambda m, now: m.cache.hit_ratio, ("cache", "hit_ratio"), _hit_ratio, digits=3, when=_cache_on),
    ProcessMetric("gateway_cache_entries", "gauge", "Entries in the page cache's memory tier.",
                  lambda m, now: m.cache.entries, ("cache", "entries"), when=_cache_on),
    ProcessMetric("gateway_cache_bytes", "gauge", "Bytes (bodies and headers) in the page cache's memory tier.",
                  lambda m, now: m.cache.bytes, ("cache", "bytes"), when=_cache_on),
    ProcessMetric("gateway_cache_evictions_total", "counter",
                  "Page cache entries dropped to make room (least recently used first).",
                  lambda m, now: m.cache.evictions, ("cache", "evictions"), when=_cache_on),
    ProcessMetric("gateway_cache_lock_waits_total", "counter",
                  "Requests that waited for another request fetching the same page (the stampede lock).",
                  lambda m, now: m.cache.lock_waits, ("cache", "lock_waits"), when=_cache_on),
    ProcessMetric("gateway_cache_purged_total", "counter", "Page cache entries removed by purges.",
                  lambda m, now: m.cache.purged, ("cache", "purged"), when=_cache_on),
    ProcessMetric("gateway_cache_disk_entries", "gauge",
                  "Entries in the page cache's disk tier (shared by the processes), at its last sweep.",
                  lambda m, now: m.cache.disk_entries, ("cache", "disk_entries"), worst_known, when=_disk_on),
    ProcessMetric("gateway_cache_disk_bytes", "gauge",
                  "Bytes in the page cache's disk tier (shared by the processes), at its last sweep.",
                  lambda m, now: m.cache.disk_bytes, ("cache", "disk_bytes"), worst_known, when=_disk_on),
    # -- per pool (upstream/pool.py and the pool's monitor) -----------------------
    PoolMetric(None, "info", "What the pool fronts: fastcgi (PHP) or http (a proxied application).",
               lambda pm, now: pm.kind, ("type",), first),
    PoolMetric("gateway_pool_size", "gauge", "Pool slots (live FastCGI connections allowed).",
               lambda pm, now: pm.pool.size, ("size",)),
    PoolMetric("gateway_pool_busy", "gauge", "Pool slots in use.", lambda pm, now: pm.pool.busy, ("busy",)),
    PoolMetric("gateway_pool_tunnels", "gauge",
               "Pool slots held by switched connections (WebSocket...), of the busy ones.",
               lambda pm, now: pm.pool.stats.tunnels, ("tunnels",)),
    PoolMetric("gateway_pool_idle_connections", "gauge", "Idle kept-alive FastCGI connections.",
               lambda pm, now: pm.pool.idle, ("idle",)),
    PoolMetric("gateway_pool_queue_depth", "gauge", "Requests waiting for a slot.",
               lambda pm, now: pm.pool.waiting, ("queue_depth",)),
    PoolMetric(None, "gauge", "Most requests waiting at once in the last 10 s.",
               lambda pm, now: int(max(pm.queue_window.values(), default=0)), ("queue_depth_max_window",)),
    PoolMetric("gateway_pool_queue_depth_max", "gauge", "Most requests ever waiting at once.",
               lambda pm, now: pm.pool.stats.max_waiting, ("queue_depth_max",)),
    PoolMetric(None, "gauge", "Requests allowed to wait in each process (queue_depth); one more is answered 503. "
               "Not summed over processes: each has its own queue, and it is the configured number.",
               lambda pm, now: pm.pool.queue_depth, ("queue_limit",), worst),
    PoolMetric("gateway_pool_queue_wait_seconds", "histogram", "Time waiting for a pool slot.",
               lambda pm, now: pm.pool.instruments.queue_wait),
    PoolMetric(None, "gauge", "Average time waiting for a pool slot, in ms.",
               lambda pm, now: _avg(pm.pool.instruments.queue_wait.sum, pm.pool.instruments.queue_wait.count),
               ("queue_wait_avg_ms",), weighted_by("responses_total"), scale=1000, digits=2),
    PoolMetric(None, "gauge", "Average time waiting for a pool slot over the last 10 s, in ms (0: no request).",
               lambda pm, now: pm.wait_window.average(now, pm.pool.instruments.queue_wait.count,
                                                      pm.pool.instruments.queue_wait.sum),
               ("queue_wait_avg_ms_10s",), weighted_by("responses_10s"), scale=1000, digits=2),
    PoolMetric(None, "gauge", "Median time waiting for a pool slot in the last second, in ms.",
               lambda pm, now: pm.last.queue_wait_p50 if pm.last else 0.0, ("queue_wait_p50_ms_last_second",),
               worst, scale=1000, digits=1),
    PoolMetric("gateway_pool_php_seconds", "histogram", "Time from slot to PHP's END_REQUEST.",
               lambda pm, now: pm.pool.instruments.php_time),
    PoolMetric(None, "gauge", "Average time from slot to PHP's END_REQUEST, in ms.",
               lambda pm, now: _avg(pm.pool.instruments.php_time.sum, pm.pool.instruments.php_time.count),
               ("php_time_avg_ms",), weighted_by("responses_total"), scale=1000, digits=2),
    PoolMetric(None, "gauge", "Average time from slot to PHP's END_REQUEST over the last 10 s, in ms.",
               lambda pm, now: pm.php_window.average(now, pm.pool.instruments.php_time.count,
                                                     pm.pool.instruments.php_time.sum),
               ("php_time_avg_ms_10s",), weighted_by("responses_10s"), scale=1000, digits=2),
    PoolMetric(None, "gauge", "PHP responses timed over the last 10 s (the weight of the 10 s averages).",
               lambda pm, now: pm.php_window.since_oldest(now, pm.pool.instruments.php_time.count,
                                                          pm.pool.instruments.php_time.sum)[0],
               ("responses_10s",)),
    PoolMetric("gateway_pool_responses_total", "counter", "PHP responses received.",
               lambda pm, now: pm.pool.instruments.responses, ("responses_total",)),
    PoolMetric("gateway_pool_cacheable_responses_total", "counter",
               "PHP responses a page cache could have kept (GET/HEAD, storable): misses and bypasses of a "
               "site's cache, or the whole load a cache would take off a pool without one.",
               lambda pm, now: pm.pool.instruments.cacheable, ("cacheable_total",)),
    PoolMetric(None, "gauge", "Share of the last second's PHP responses a page cache could have kept.",
               lambda pm, now: pm.last.cacheable_share if pm.last else 0.0, ("cacheable_share",),
               weighted_by("responses_10s"), digits=3),
    PoolMetric(None, "gauge", "Share of those cacheable responses whose request bypassed the cache (last second).",
               lambda pm, now: pm.last.cache_bypassed / pm.last.cacheable if pm.last and pm.last.cacheable else 0.0,
               ("cache_bypassed_share",), weighted_by("responses_10s"), digits=3),
    PoolMetric(None, "gauge", "True when a site with a page cache sends its PHP requests to this pool.",
               lambda pm, now: pm.pool.instruments.cache_on, ("cache_on",), first),
    PoolMetric("gateway_pool_errors_total", "counter", "Requests answered with a gateway error.",
               lambda pm, now: {str(k): v for k, v in sorted(pm.pool.stats.errors.items())}, ("errors",),
               add_by_key, label="status", series=("502", "503", "504")),
    PoolMetric(None, "counter", "Requests answered 503 because the queue was full.",
               lambda pm, now: pm.pool.stats.queue_full, ("queue_full_total",)),
    PoolMetric(None, "counter", "Requests answered 504 after waiting queue_timeout for a slot.",
               lambda pm, now: pm.pool.stats.queue_timeouts, ("queue_timeouts_total",)),
    PoolMetric("gateway_pool_retries_total", "counter", "Requests retried on a fresh connection.",
               lambda pm, now: pm.pool.stats.retries, ("retries_total",)),
    PoolMetric("gateway_pool_client_gone_total", "counter", "Waiters dropped because their client left.",
               lambda pm, now: pm.pool.stats.client_gone_in_queue, ("client_gone_in_queue_total",)),
    PoolMetric("gateway_pool_connect_errors_total", "counter", "Failed connects to the backend.",
               lambda pm, now: pm.pool.stats.connect_errors, ("connect_errors_total",)),
    # -- per address of a group (several addresses: upstream/pool.py Member) -----
    PoolMetric("gateway_pool_address_busy", "gauge", "Connections in use per address of a group.",
               lambda pm, now: {m.name: m.busy for m in pm.pool.members}, when=_group, label="address"),
    PoolMetric("gateway_pool_address_up", "gauge", "1 if the address is in rotation, 0 if taken out "
               "(passive max_fails/fail_timeout or active health checks).",
               lambda pm, now: {m.name: int(m.down_since is None) for m in pm.pool.members}, when=_group,
               label="address"),
    PoolMetric("gateway_pool_address_requests_total", "counter", "Requests sent to each address of a group.",
               lambda pm, now: {m.name: m.stats.requests for m in pm.pool.members}, when=_group, label="address"),
    PoolMetric("gateway_pool_address_connect_errors_total", "counter", "Failed connects per address of a group.",
               lambda pm, now: {m.name: m.stats.connect_errors for m in pm.pool.members}, when=_group,
               label="address"),
    PoolMetric("gateway_pool_address_errors_total", "counter", "Requests failed on each address of a group "
               "(502, 504...).",
               lambda pm, now: {m.name: sum(m.stats.errors.values()) for m in pm.pool.members}, when=_group,
               label="address"),
    PoolMetric(None, "info", "Each address of a group: connections busy/size/idle, in rotation or not (and "
               "why, for how long), requests, connect errors and errors by status.",
               _addresses, ("addresses",), add_addresses, when=_group),
    PoolMetric("gateway_php_worker_cpu_ratio", "gauge", "CPU per busy php-fpm worker, share of one core.",
               lambda pm, now: pm.worker_cpu, ("worker_cpu",), worst_known, digits=3),
    PoolMetric("gateway_php_workers_waiting", "gauge", "Busy php-fpm workers by what they wait on, sampled from "
               "/proc once a second (database, cache, http, socket, disk, lock, cpu).",
               lambda pm, now: pm.waits.counts if pm.waits is not None else None, when=lambda pm: pm.waits is not None,
               label="on", series=KINDS),
    PoolMetric(None, "info", "What the busy php-fpm workers wait on (the last sample): busy/workers, by kind, "
               "each kind's most common target and slowlog frame, and the sentence the verdict uses.",
               _waits, ("waiting_on",), first, when=lambda pm: pm.waits is not None),
    PoolMetric(None, "info", "php-fpm's slowlog over the last minute: the most common frames (the call PHP "
               "waits in, and the file that called it), with their requests.",
               _slow_frames, ("slowlog_frames",), first,
               when=lambda pm: pm.sampler is not None and pm.sampler.slowlog is not None),
    PoolMetric(None, "counter", "Times the supervisor restarted the php-fpm it spawned.",
               lambda pm, now: pm.supervisor.restarts if pm.supervisor is not None else None,
               ("php_fpm_restarts",), own, when=lambda pm: pm.supervisor is not None),
    PoolMetric("gateway_backend_up", "gauge", "1 if the backend answered its last health check, 0 if not.",
               _backend_up, when=lambda pm: pm.health is not None),
    PoolMetric(None, "info", "The backend's active health check (every few seconds, traffic or not): up (null "
               "until its first probe), what it probes, why it failed, for how long.",
               _backend, ("backend",), health, when=lambda pm: pm.health is not None),
    # -- php-fpm's own status page (json&full), when it could be read -------------
    PoolMetric("gateway_phpfpm_listen_queue", "gauge", "php-fpm's own 'listen queue'.",
               _fpm("listen queue"), ("php_fpm", "listen_queue"), first, when=_fpm_read),
    PoolMetric("gateway_phpfpm_active_processes", "gauge", "php-fpm's own 'active processes'.",
               _fpm("active processes"), ("php_fpm", "active_processes"), first, when=_fpm_read),
    PoolMetric("gateway_phpfpm_idle_processes", "gauge", "php-fpm's own 'idle processes'.",
               _fpm("idle processes"), ("php_fpm", "idle_processes"), first, when=_fpm_read),
    PoolMetric("gateway_phpfpm_total_processes", "gauge", "php-fpm's own 'total processes'.",
               _fpm("total processes"), ("php_fpm", "total_processes"), first, when=_fpm_read),
    PoolMetric("gateway_phpfpm_max_children_reached_total", "counter", "php-fpm's 'max children reached'.",
               _fpm("max children reached"), ("php_fpm", "max_children_reached"), first, when=_fpm_read),
    PoolMetric("gateway_phpfpm_slow_requests_total", "counter", "php-fpm's 'slow requests'.",
               _fpm("slow requests"), ("php_fpm", "slow_requests"), first, when=_fpm_read),
    PoolMetric(None, "counter", "php-fpm's 'accepted conn'.",
               _fpm("accepted conn"), ("php_fpm", "accepted_conn"), first, when=_fpm_read),
    PoolMetric("gateway_phpfpm_workers", "gauge", "php-fpm's workers by state (running, idle), counted in its "
               "process list: unlike its 'active processes' counter, they add up to its pool.",
               _fpm_workers, ("php_fpm", "workers"), first, when=_fpm_read, label="state", series=("running", "idle")),
    PoolMetric(None, "info", "php-fpm's workers: pid, state, current or last request's duration (ms), its CPU, "
               "its script.", _fpm_processes, ("php_fpm", "processes"), first, when=_fpm_read),
    PoolMetric(None, "info", "Why php-fpm's status page could not be read.",
               lambda pm, now: pm.fpm_status_error, ("php_fpm_status_error",), first_unless("php_fpm"),
               when=lambda pm: pm.fpm_status is None and bool(pm.status_address)),
    # -- the process ---------------------------------------------------------------
    ProcessMetric(None, "gauge", "Seconds since the process started.", lambda m, now: m.uptime(),
                  ("uptime_seconds",), own, digits=1),
    ProcessMetric(None, "info", "The process id.", lambda m, now: m.pid, ("pid",), own),
    ProcessMetric("gateway_verdict", "gauge", "1 for the current bottleneck verdict.",
                  lambda m, now: {m.diagnosis.current.bottleneck: 1}, label="bottleneck", series=BOTTLENECKS,
                  master=lambda st: {st["verdict"]["bottleneck"]: 1}),
)


# -- reading the table -------------------------------------------------------------


def _runs(rows: Sequence[Row]) -> Iterator[tuple[bool, list[Row]]]:
    """Consecutive rows of one kind: (per pool?, rows)."""
    run: list[Row] = []
    for row in rows:
        if run and isinstance(row, PoolMetric) != isinstance(run[0], PoolMetric):
            yield isinstance(run[0], PoolMetric), run
            run = []
        run.append(row)
    if run:
        yield isinstance(run[0], PoolMetric), run


def _put(obj: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    obj[path[-1]] = value


def _object_at(obj: Mapping[str, Any], path: Path) -> Mapping[str, Any] | None:
    """The object at ``path`` in ``obj``, if there is one."""
    for key in path:
        inner = obj.get(key)
        if not isinstance(inner, Mapping):
            return None
        obj = inner
    return obj


def status(monitor: Monitor, now: float, rows: Sequence[Row] = TABLE) -> dict[str, Any]:
    """One process's ``/status``."""
    out: dict[str, Any] = {}
    for per_pool, run in _runs(rows):
        if per_pool:
            pools = out.setdefault("pools", {})
            for pm in monitor.pools:
                entry = pools.setdefault(pm.pool.name, {})
                for prow in run:
                    if isinstance(prow, PoolMetric) and prow.json is not None and prow.present(pm):
                        _put(entry, prow.json, prow.for_json(prow.get(pm, now)))
        else:
            for row in run:
                if isinstance(row, ProcessMetric) and row.json is not None and row.present(monitor):
                    _put(out, row.json, row.for_json(row.get(monitor, now)))
    return out


def prometheus(monitor: Monitor, now: float, rows: Sequence[Row] = TABLE) -> str:
    """One process's ``/metrics``."""
    w = PromWriter()
    for per_pool, run in _runs(rows):
        if per_pool:
            for pm in monitor.pools:
                for prow in run:
                    if isinstance(prow, PoolMetric) and prow.present(pm):
                        prow.write(w, prow.get(pm, now), pool=pm.pool.name)
        else:
            for row in run:
                if isinstance(row, ProcessMetric) and row.present(monitor):
                    row.write(w, row.get(monitor, now))
    return w.render()


def merge(parts: Sequence[Mapping[str, Any]], *, asked: int, own: Mapping[Path, Any] | None = None,
          rows: Sequence[Row] = TABLE) -> dict[str, Any]:
    """Several processes' ``/status`` (``parts``: those that answered, of
    ``asked``) as one, row by row. ``own``: the master's own values by key
    path (``("pools", NAME, KEY)`` for a pool's)."""
    own = own or {}
    out: dict[str, Any] = {}
    for per_pool, run in _runs(rows):
        if not per_pool:
            _merge_into(out, run, parts, asked, own, ())
            continue
        pools = out.setdefault("pools", {})
        for name in dict.fromkeys(name for p in parts for name in p.get("pools", {})):
            entries = [p["pools"][name] for p in parts if name in p.get("pools", {})]
            _merge_into(pools.setdefault(name, {}), run, entries, asked, own, ("pools", name))
    return out


def _merge_into(out: dict[str, Any], rows: Sequence[Row], parts: Sequence[Mapping[str, Any]], asked: int,
                own: Mapping[Path, Any], prefix: Path) -> None:
    for row in rows:
        if row.json is None:
            continue
        *parent, key = row.json
        holders = [h for p in parts if (h := _object_at(p, tuple(parent))) is not None and key in h]
        mine = own.get(prefix + row.json, ABSENT)
        if not holders and row.when is not None and mine is ABSENT:
            continue  # an optional row no process reports
        value = row.merge(Merging([h[key] for h in holders], holders, asked,
                                  _object_at(out, tuple(parent)) or {}, mine))
        if value is not ABSENT:
            _put(out, row.json, row.rounded(value))
