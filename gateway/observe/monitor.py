"""The monitor: samples the instruments every second, computes the verdict,
and renders ``/status`` (JSON) and ``/metrics`` (Prometheus text).

Tasks (all in the server's system nursery):
- loop lag: sleep a fixed ``LAG_TICK`` and record how late the wake-up is; a
  busy or blocked event loop wakes late.
- sampler: once a second, read process CPU, host CPU (/proc/stat), each pool's
  numbers and php-fpm's own status page (``json&full`` over FastCGI on its
  status socket, which php-fpm serves outside the worker pool), the workers'
  CPU from /proc, then feed ``diagnosis.Diagnosis``.

Reading /proc works when php-fpm runs on this host (spawned, or external with
a status address); otherwise the worker CPU is "unknown" and the verdict falls
back to host CPU.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..metrics import ListenerStats, PromWriter, Window, percentile
from ..upstream.php_fpm_status import fastcgi_get
from ..upstream.pool import Pool
from .diagnosis import BOTTLENECKS, Diagnosis, Observation, PoolObservation, Verdict

log = logging.getLogger(__name__)

LAG_TICK = 0.1  # 10 wake-ups a second: enough samples for a 2 s p99, cheap when idle
SAMPLE_EVERY = 1.0
WINDOW = 10.0
#: Loop-lag samples considered for the verdict (the most recent seconds).
LAG_RECENT = 2.0
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class SupervisedProcess(Protocol):
    """What the monitor reads of a php-fpm supervisor (``serve.php_fpm``)."""

    @property
    def process(self) -> trio.Process | None: ...

    @property
    def running(self) -> bool: ...

    @property
    def restarts(self) -> int: ...


def read_host_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def read_proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used by ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (php-fpm's workers, for a master we spawned)."""
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


@dataclass
class PoolMonitor:
    pool: Pool[Any]
    supervisor: SupervisedProcess | None = None
    status_address: str = ""
    status_path: str = "/fpm-status"
    fpm_status: dict[str, Any] | None = None
    fpm_status_error: str = ""
    worker_cpu: float | None = None
    queue_window: Window = field(default_factory=lambda: Window(WINDOW))
    _prev_connect_errors: int = 0
    _prev_responses: int = 0
    _prev_wait_counts: list[int] = field(default_factory=list)
    _prev_cpu: dict[int, float] = field(default_factory=dict)
    _prev_cpu_at: float = 0.0
    last: PoolObservation | None = None

    async def poll_fpm_status(self) -> None:
        if not self.status_address:
            return
        try:
            with trio.fail_after(1.0):
                _, body = await fastcgi_get(self.status_address, self.status_path, b"json&full")
            self.fpm_status = json.loads(body)
            self.fpm_status_error = ""
        except Exception as exc:  # noqa: BLE001 - any failure means "status unavailable"
            self.fpm_status = None
            self.fpm_status_error = f"{type(exc).__name__}: {exc}"

    def worker_pids(self) -> list[int]:
        if self.fpm_status is not None:
            return [int(p["pid"]) for p in self.fpm_status.get("processes", []) if "pid" in p]
        if self.supervisor is not None and self.supervisor.process is not None:
            return children_of(self.supervisor.process.pid)
        return []

    def sample_worker_cpu(self, wall: float) -> None:
        pids = self.worker_pids()
        cpu = {pid: c for pid in pids if (c := read_proc_cpu(pid)) is not None}
        if not cpu:
            self.worker_cpu = None
        elif self._prev_cpu and wall > self._prev_cpu_at:
            used = sum(c - self._prev_cpu.get(pid, c) for pid, c in cpu.items())
            # php-fpm's own count of running workers when we have it: with several
            # gateway processes this one's pool holds only its share of them
            running = sum(1 for p in (self.fpm_status or {}).get("processes", []) if p.get("state") == "Running")
            busy = max(1, min(max(self.pool.busy, running), len(cpu)))
            self.worker_cpu = max(0.0, used / (wall - self._prev_cpu_at) / busy)
        self._prev_cpu, self._prev_cpu_at = cpu, wall

    def observe(self, now: float) -> PoolObservation:
        pool = self.pool
        connect_errors = pool.stats.connect_errors - self._prev_connect_errors
        responses = pool.instruments.responses - self._prev_responses
        self._prev_connect_errors = pool.stats.connect_errors
        self._prev_responses = pool.instruments.responses
        counts = list(pool.instruments.queue_wait.counts)
        delta = [c - p for c, p in zip(counts, self._prev_wait_counts or [0] * len(counts), strict=True)]
        self._prev_wait_counts = counts
        self.queue_window.add(now, pool.waiting)
        running = self.supervisor is None or self.supervisor.running
        self.last = PoolObservation(
            name=pool.name, size=pool.size, busy=pool.busy, waiting=pool.waiting,
            queue_wait_p50=_bucket_quantile(pool.instruments.queue_wait.buckets, delta, 0.5),
            responses=responses, connect_errors=connect_errors, backend_running=running,
            worker_cpu=self.worker_cpu,
        )
        return self.last


def _bucket_quantile(buckets: tuple[float, ...], counts: list[int], q: float) -> float:
    """Approximate quantile from per-bucket counts, interpolating inside the bucket."""
    total = sum(counts)
    if not total:
        return 0.0
    target = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= target:
            lower = buckets[i - 1] if i > 0 else 0.0
            upper = buckets[i] if i < len(buckets) else buckets[-1]
            return lower + (upper - lower) * (target - seen) / n
        seen += n
    return buckets[-1]


class Monitor:
    def __init__(self, stats: ListenerStats, pools: list[PoolMonitor]) -> None:
        self.stats = stats
        self.pools = pools
        self.diagnosis = Diagnosis(since=trio.current_time())
        self.lag = Window(WINDOW)
        self.accepted = Window(WINDOW)
        self.requests = Window(WINDOW)
        self.process_cpu = 0.0
        self.host_cpu: float | None = None
        self._prev_proc: tuple[float, float] | None = None
        self._prev_host: tuple[float, float] | None = None
        self.started = time.time()

    @property
    def verdict(self) -> Verdict:
        return self.diagnosis.current

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run_loop_lag)
            nursery.start_soon(self.run_sampler)

    async def run_loop_lag(self) -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(LAG_TICK)
            lag = max(0.0, trio.current_time() - before - LAG_TICK)
            self.lag.add(trio.current_time(), lag)
            self.stats.loop_lag.observe(lag)

    async def run_sampler(self) -> None:
        while True:
            await self.sample()
            await trio.sleep(SAMPLE_EVERY)

    async def sample(self) -> Verdict:
        now = trio.current_time()
        wall = time.monotonic()
        cpu = time.process_time()
        if self._prev_proc is not None and wall > self._prev_proc[0]:
            self.process_cpu = (cpu - self._prev_proc[1]) / (wall - self._prev_proc[0])
        self._prev_proc = (wall, cpu)
        host = read_host_cpu()
        if host is not None and self._prev_host is not None and host[1] > self._prev_host[1]:
            self.host_cpu = (host[0] - self._prev_host[0]) / (host[1] - self._prev_host[1])
        self._prev_host = host
        self.accepted.add(now, self.stats.accepted)
        self.requests.add(now, self.stats.requests)
        for pm in self.pools:
            await pm.poll_fpm_status()
            pm.sample_worker_cpu(time.monotonic())
        obs = Observation(
            loop_lag_p99=percentile(self.lag.values(now, LAG_RECENT), 0.99),
            process_cpu=self.process_cpu,
            host_cpu=self.host_cpu,
            pools=tuple(pm.observe(now) for pm in self.pools),
        )
        return self.diagnosis.update(obs, now)

    # -- views -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        lag = self.lag.values()
        v = self.diagnosis.current
        s = self.stats
        out: dict[str, Any] = {
            "verdict": {"bottleneck": v.bottleneck, "reason": v.reason,
                        "for_seconds": round(now - self.diagnosis.since, 1)},
            "listener": {
                "connections": {**s.states, "open": s.open_connections},
                "accepts_per_second": round(self.accepted.rate(now), 1),
                "requests_per_second": round(self.requests.rate(now), 1),
                "requests_total": s.requests,
                "in_flight": s.in_flight,
                "loop_lag_ms": {"p50": round(percentile(lag, 0.5) * 1000, 2),
                                "p99": round(percentile(lag, 0.99) * 1000, 2),
                                "max": round(max(lag, default=0.0) * 1000, 2)},
                "process_cpu": round(self.process_cpu, 3),
            },
            "host": {"cpu": None if self.host_cpu is None else round(self.host_cpu, 3), "cpus": os.cpu_count()},
            "pools": {},
            "uptime_seconds": round(time.time() - self.started, 1),
            "pid": os.getpid(),
        }
        for pm in self.pools:
            p = pm.pool
            inst = p.instruments
            entry: dict[str, Any] = {
                "size": p.size, "busy": p.busy, "idle": p.idle, "queue_depth": p.waiting,
                "queue_depth_max_window": int(max(pm.queue_window.values(), default=0)),
                "queue_depth_max": p.stats.max_waiting, "queue_limit": p.queue_depth,
                "queue_wait_avg_ms": round(inst.queue_wait.sum / inst.queue_wait.count * 1000, 2)
                if inst.queue_wait.count else 0.0,
                "queue_wait_p50_ms_last_second": round((pm.last.queue_wait_p50 if pm.last else 0.0) * 1000, 1),
                "php_time_avg_ms": round(inst.php_time.sum / inst.php_time.count * 1000, 2)
                if inst.php_time.count else 0.0,
                "responses_total": inst.responses,
                "errors": {str(k): v for k, v in sorted(p.stats.errors.items())},
                "queue_full_total": p.stats.queue_full, "queue_timeouts_total": p.stats.queue_timeouts,
                "retries_total": p.stats.retries, "client_gone_in_queue_total": p.stats.client_gone_in_queue,
                "connect_errors_total": p.stats.connect_errors,
                "worker_cpu": None if pm.worker_cpu is None else round(pm.worker_cpu, 3),
            }
            if pm.supervisor is not None:
                entry["php_fpm_restarts"] = pm.supervisor.restarts
            if pm.fpm_status is not None:
                st = pm.fpm_status
                entry["php_fpm"] = {
                    k.replace(" ", "_"): st.get(k) for k in (
                        "listen queue", "active processes", "idle processes", "total processes",
                        "max children reached", "slow requests", "accepted conn")
                }
                entry["php_fpm"]["processes"] = [
                    {"pid": pr.get("pid"), "state": pr.get("state"),
                     "request_duration_ms": round(pr.get("request duration", 0) / 1000, 1),
                     "last_request_cpu": pr.get("last request cpu"), "script": pr.get("script")}
                    for pr in st.get("processes", [])
                ]
            elif pm.status_address:
                entry["php_fpm_status_error"] = pm.fpm_status_error
            out["pools"][p.name] = entry
        return out

    def prometheus(self) -> str:
        w = PromWriter()
        s = self.stats
        now = trio.current_time()
        for state, n in s.states.items():
            w.gauge("gateway_connections", "Open client connections by state.", n, state=state)
        w.counter("gateway_connections_accepted_total", "Client connections accepted.", s.accepted)
        w.counter("gateway_requests_total", "HTTP requests received.", s.requests)
        w.gauge("gateway_requests_in_flight", "Requests being handled now.", s.in_flight)
        w.gauge("gateway_requests_per_second", "Requests per second over the last 10 s.", self.requests.rate(now))
        w.histogram("gateway_loop_lag_seconds", "Event-loop lag: how late a fixed-tick sleep wakes.", s.loop_lag)
        w.gauge("gateway_process_cpu_ratio", "Gateway process CPU, share of one core.", self.process_cpu)
        if self.host_cpu is not None:
            w.gauge("gateway_host_cpu_ratio", "Host CPU busy, share of all cores.", self.host_cpu)
        for pm in self.pools:
            p, inst, lbl = pm.pool, pm.pool.instruments, pm.pool.name
            w.gauge("gateway_pool_size", "Pool slots (live FastCGI connections allowed).", p.size, pool=lbl)
            w.gauge("gateway_pool_busy", "Pool slots in use.", p.busy, pool=lbl)
            w.gauge("gateway_pool_idle_connections", "Idle kept-alive FastCGI connections.", p.idle, pool=lbl)
            w.gauge("gateway_pool_queue_depth", "Requests waiting for a slot.", p.waiting, pool=lbl)
            w.gauge("gateway_pool_queue_depth_max", "Most requests ever waiting at once.", p.stats.max_waiting,
                    pool=lbl)
            w.histogram("gateway_pool_queue_wait_seconds", "Time waiting for a pool slot.", inst.queue_wait,
                        pool=lbl)
            w.histogram("gateway_pool_php_seconds", "Time from slot to PHP's END_REQUEST.", inst.php_time,
                        pool=lbl)
            w.counter("gateway_pool_responses_total", "PHP responses received.", inst.responses, pool=lbl)
            for status in (502, 503, 504):
                w.counter("gateway_pool_errors_total", "Requests answered with a gateway error.",
                          p.stats.errors.get(status, 0), pool=lbl, status=str(status))
            w.counter("gateway_pool_retries_total", "Requests retried on a fresh connection.", p.stats.retries,
                      pool=lbl)
            w.counter("gateway_pool_client_gone_total", "Waiters dropped because their client left.",
                      p.stats.client_gone_in_queue, pool=lbl)
            w.counter("gateway_pool_connect_errors_total", "Failed connects to the backend.", p.stats.connect_errors,
                      pool=lbl)
            if pm.worker_cpu is not None:
                w.gauge("gateway_php_worker_cpu_ratio", "CPU per busy php-fpm worker, share of one core.",
                        pm.worker_cpu, pool=lbl)
            if pm.fpm_status is not None:
                st = pm.fpm_status
                for key, name in (("active processes", "active_processes"), ("idle processes", "idle_processes"),
                                  ("total processes", "total_processes"), ("listen queue", "listen_queue")):
                    w.gauge(f"gateway_phpfpm_{name}", f"php-fpm's own '{key}'.", st.get(key, 0), pool=lbl)
                w.counter("gateway_phpfpm_max_children_reached_total", "php-fpm's 'max children reached'.",
                          st.get("max children reached", 0), pool=lbl)
                w.counter("gateway_phpfpm_slow_requests_total", "php-fpm's 'slow requests'.",
                          st.get("slow requests", 0), pool=lbl)
        current = self.diagnosis.current.bottleneck
        for name in BOTTLENECKS:
            w.gauge("gateway_verdict", "1 for the current bottleneck verdict.", 1 if name == current else 0,
                    bottleneck=name)
        return w.render()
