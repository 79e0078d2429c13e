"""The monitor: samples the instruments every second, computes the verdict,
and renders ``/status`` (JSON) and ``/metrics`` (Prometheus text) through the
metric table (``table.py``), which says what each shows.

Tasks (all in the server's system nursery):
- loop lag: sleep a fixed tick and record how late the wake-up is; a busy or
  blocked event loop wakes late. The tick is ``LAG_TICK`` while the last
  wake-up was ``LAG_CALM`` or more late or the process is busy (its CPU
  over the last sample ``LAG_BUSY_CPU`` of a core or more: lags of a few
  to tens of ms, which fewer samples would miss), else ``LAG_TICK_CALM``: a
  wake-up costs ~0.2 ms of CPU on a crowded host, most of a quiet process's
  CPU and ~0.1 ms per page of a PHP site at tens of requests a second,
  spent to record zeros. A loop that starts to lag is seen at the next
  calm tick (that tick is late itself) and then sampled at the full rate;
  the verdict's hold (3 s) is longer than a calm tick.
- sampler: once a second, read process CPU, host CPU (/proc/stat), the CPU
  of the gateway's processes (a worker's master and its children, listed
  again every ``GATEWAY_LIST_EVERY`` or when one is gone), each pool's
  numbers and php-fpm's own status page (``json&full`` over FastCGI on its
  status socket, which php-fpm serves outside the worker pool), the workers'
  CPU from /proc, then feed ``diagnosis.Diagnosis``.
- health: one per pool with a ``BackendHealth`` (``health.py``), probing its
  backend every few seconds whether or not requests arrive; the sampler reads
  its last answer.

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

from ..metrics import CacheStats, CompressionStats, GuardStats, ListenerStats, Window, percentile
from ..upstream.php_fpm_status import fastcgi_get
from ..upstream.pool import Pool
from . import table
from .diagnosis import GATEWAY_MIN_CPU, HOST_CPU_LIMIT, Diagnosis, Observation, PoolObservation, Verdict
from .health import BackendHealth
from .sampler import WorkerSampler, master_workers, task_children
from .waits import Waits

log = logging.getLogger(__name__)

LAG_TICK = 0.1  # 10 wake-ups a second while the loop lags: enough samples for a 2 s p99
#: The tick while the loop answers on time (a lag under ``LAG_CALM``) and the
#: process is not busy (under ``LAG_BUSY_CPU`` of a core in the last sample).
LAG_TICK_CALM = 0.5
LAG_CALM = 0.005
LAG_BUSY_CPU = 0.25
#: Seconds between two listings of the gateway's processes (the master's
#: children), for their CPU: they change only when one dies, which the
#: next reading of its CPU sees (its /proc entry is gone).
GATEWAY_LIST_EVERY = 10.0
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
    host = read_host_jiffies()
    return None if host is None else (host[0], host[1])


def read_host_jiffies() -> tuple[float, float, float] | None:
    """(busy, total, iowait) jiffies from /proc/stat, or None off Linux."""
    try:
        fields = [float(x) for x in _read_proc("/proc/stat", 512).split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    iowait = fields[4] if len(fields) > 4 else 0.0
    idle = fields[3] + iowait
    total = sum(fields[:8])
    return total - idle, total, iowait


def read_proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used by ``pid``, or None if it is gone."""
    try:
        fields = _read_proc(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def _read_proc(path: str, size: int = 4096) -> str:
    """The start of a /proc file in one read: os.read, not open()'s buffered
    text layer (an fstat, an ioctl and an lseek more per file, and most of
    the CPU of a sample made once a second by every process)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size).decode("ascii", "replace")
    finally:
        os.close(fd)


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
            ppid = int(_read_proc(f"/proc/{entry}/stat").rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def _smooth(last: float, new: float) -> float:
    """The CPU shares the full-host ``listener`` rule compares, smoothed over
    a few seconds (each second's reading weighs half): on a crowded host a
    one-second reading swings, and each swing would restart the verdict's hold."""
    return (last + new) / 2


class OtherProcesses:
    """The busiest process on the host other than some (the gateway's), from
    two readings of every /proc/PID/stat: read only while the host is full,
    at most ``MOST`` processes."""

    MOST = 5000

    def __init__(self) -> None:
        self._prev: dict[int, float] = {}
        self._prev_at = 0.0

    def busiest(self, exclude: set[int], wall: float) -> float | None:
        """Share of one core used by the busiest process not in ``exclude``
        since the last call; None at the first."""
        now: dict[int, float] = {}
        try:
            entries = os.listdir("/proc")
        except OSError:
            return None
        for entry in entries:
            if len(now) >= self.MOST:
                break
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in exclude:
                continue
            cpu = read_proc_cpu(pid)
            if cpu is not None:
                now[pid] = cpu
        prev, prev_at = self._prev, self._prev_at
        self._prev, self._prev_at = now, wall
        if not prev or wall <= prev_at:
            return None
        return max((cpu - prev[pid] for pid, cpu in now.items() if pid in prev), default=0.0) / (wall - prev_at)


def gateway_children(master: int) -> list[int]:
    """The master's children that are gateway processes (not php-fpm)."""
    out = []
    for pid in task_children(master):
        try:
            if _read_proc(f"/proc/{pid}/comm", 64).startswith("php-fpm"):
                continue
        except OSError:
            continue
        out.append(pid)
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
    #: the active check of the backend (None: not checked)
    health: BackendHealth | None = None
    #: the backend's transport: "fastcgi" (PHP) or "http"
    kind: str = "fastcgi"
    queue_window: Window = field(default_factory=lambda: Window(WINDOW))
    #: cumulative (count, sum) readings of the queue wait and PHP time
    #: histograms, sampled each second: their averages over the last WINDOW
    wait_window: Window2 = field(default_factory=lambda: Window2(WINDOW))
    php_window: Window2 = field(default_factory=lambda: Window2(WINDOW))
    _prev_connect_errors: int = 0
    _prev_responses: int = 0
    _prev_cacheable: tuple[int, int] = (0, 0)
    _prev_wait_counts: list[int] = field(default_factory=list)
    _prev_cpu: dict[int, float] = field(default_factory=dict)
    _prev_cpu_at: float = 0.0
    last: PoolObservation | None = None
    #: reads what the busy workers wait on (None: not sampled)
    sampler: WorkerSampler | None = None
    #: the pid file of an external php-fpm master whose workers are sampled
    pid_file: str = ""
    #: the last sample of what the busy workers wait on
    waits: Waits | None = None

    async def poll_fpm_status(self) -> None:
        if not self.status_address:
            return
        if self.health is not None and self.health.up is False:
            # a down (perhaps hung) php-fpm would hold the sampler for the whole
            # timeout each second, and slow the verdict that says it is down
            self.fpm_status = None
            self.fpm_status_error = f"not asked: the backend is down ({self.health.error})"
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

    def busy_workers(self) -> tuple[list[int], int]:
        """(pids to sample, workers in the pool): php-fpm's own list of
        running workers when its status page was read; else every worker of
        the spawned or configured master (``waits`` leaves out the idle ones)."""
        if self.fpm_status is not None:
            processes = self.fpm_status.get("processes", [])
            running = [int(p["pid"]) for p in processes if p.get("state") == "Running" and "pid" in p]
            return running, len(processes)
        master = self.supervisor.process if self.supervisor is not None else None
        if master is not None:
            pids = task_children(master.pid)
            return pids, len(pids)
        if self.pid_file:
            pids = master_workers(self.pid_file)
            return pids, len(pids)
        return [], 0

    async def sample_waits(self, now: float) -> None:
        """What the busy workers wait on (``sampler``), read in a thread."""
        if self.sampler is None:
            return
        pids, workers = self.busy_workers()
        if not workers:
            self.waits = None
            return
        self.waits = await trio.to_thread.run_sync(self.sampler.sample, pids, workers, now)

    def observe(self, now: float) -> PoolObservation:
        pool = self.pool
        connect_errors = pool.stats.connect_errors - self._prev_connect_errors
        responses = pool.instruments.responses - self._prev_responses
        self._prev_connect_errors = pool.stats.connect_errors
        self._prev_responses = pool.instruments.responses
        cacheable = (pool.instruments.cacheable - self._prev_cacheable[0],
                     pool.instruments.cache_bypassed - self._prev_cacheable[1])
        self._prev_cacheable = (pool.instruments.cacheable, pool.instruments.cache_bypassed)
        counts = list(pool.instruments.queue_wait.counts)
        delta = [c - p for c, p in zip(counts, self._prev_wait_counts or [0] * len(counts), strict=True)]
        self._prev_wait_counts = counts
        self.queue_window.add(now, pool.waiting)
        self.wait_window.add(now, pool.instruments.queue_wait.count, pool.instruments.queue_wait.sum)
        self.php_window.add(now, pool.instruments.php_time.count, pool.instruments.php_time.sum)
        running = self.supervisor is None or self.supervisor.running
        health = self.health
        check = "" if health is None else health.what + (f": {health.error}" if health.error else "")
        self.last = PoolObservation(
            name=pool.name, size=pool.size, busy=pool.busy, waiting=pool.waiting,
            queue_wait_p50=_bucket_quantile(pool.instruments.queue_wait.buckets, delta, 0.5),
            responses=responses, connect_errors=connect_errors, backend_running=running,
            worker_cpu=self.worker_cpu, backend_up=None if health is None else health.up, backend_check=check,
            backend_down_for=0.0 if health is None else health.down_for(now),
            hosts_down=tuple((m.name, now - m.down_since, m.down_reason) for m in pool.members
                             if m.down_since is not None),
            hosts=len(pool.members), kind=self.kind, tunnels=pool.stats.tunnels,
            cacheable=cacheable[0], cache_bypassed=cacheable[1], cache_on=pool.instruments.cache_on,
            waits=self.waits,
        )
        return self.last


class Window2:
    """Cumulative (count, sum) readings of a histogram over ``span`` seconds:
    what was observed since the oldest of them (the last ``span`` seconds)."""

    def __init__(self, span: float) -> None:
        self.counts = Window(span)
        self.sums = Window(span)

    def add(self, now: float, count: int, total: float) -> None:
        self.counts.add(now, count)
        self.sums.add(now, total)

    def since_oldest(self, now: float, count: int, total: float) -> tuple[int, float]:
        """(observations, their sum) between the oldest reading in the window
        and the histogram's ``count`` and ``total`` now."""
        self.counts.prune(now)
        self.sums.prune(now)
        counts, sums = self.counts.values(), self.sums.values()
        if not counts:
            return 0, 0.0
        return count - int(counts[0]), total - sums[0]

    def average(self, now: float, count: int, total: float) -> float:
        n, t = self.since_oldest(now, count, total)
        return t / n if n > 0 else 0.0


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
    """One process's instruments, sampled; the verdict; its admin views."""

    stats: ListenerStats
    pools: list[PoolMonitor]
    compression: CompressionStats
    guard: GuardStats
    cache: CacheStats
    diagnosis: Diagnosis
    #: loop lag samples, and cumulative accept and request counts, over WINDOW
    lag: Window
    accepted: Window
    requests: Window
    tls_handshakes: Window
    tls_resumed: Window
    tls_cpu: Window
    #: share of one core over the last sample interval
    process_cpu: float
    #: share of all cores busy, None: unknown (not Linux)
    host_cpu: float | None
    started: float
    pid: int
    cpus: int | None

    def __init__(self, stats: ListenerStats, pools: list[PoolMonitor],
                 compression: CompressionStats | None = None, guard: GuardStats | None = None,
                 cache: CacheStats | None = None, *, master_pid: int | None = None) -> None:
        self.stats = stats
        self.pools = pools
        #: what response compression did (the app layer bumps it)
        self.compression = compression if compression is not None else CompressionStats()
        #: what rate limits, access rules and basic auth did (the app layer bumps it)
        self.guard = guard if guard is not None else GuardStats()
        #: what the page cache did (the app layer bumps it)
        self.cache = cache if cache is not None else CacheStats()
        self.diagnosis = Diagnosis(since=trio.current_time())
        self.lag = Window(WINDOW)
        self.accepted = Window(WINDOW)
        self.requests = Window(WINDOW)
        #: cumulative TLS handshakes, and their CPU seconds
        self.tls_handshakes = Window(WINDOW)
        self.tls_resumed = Window(WINDOW)
        self.tls_cpu = Window(WINDOW)
        #: over the last sample interval, as ``process_cpu``: TLS handshake CPU
        #: (share of one core), handshakes and resumed ones per second
        self.tls_now = (0.0, 0.0, 0.0)
        self._prev_tls: tuple[float, float, int, int] | None = None
        self.process_cpu = 0.0
        #: share of one core spent compressing responses (in the process's CPU, threads included)
        self.compress_cpu = 0.0
        self._prev_compress = 0.0
        self.host_cpu = None
        #: share of all cores idle waiting for storage, None: unknown
        self.host_iowait: float | None = None
        self._prev_proc: tuple[float, float] | None = None
        self._prev_host: tuple[float, float, float] | None = None
        #: a worker process's master: the gateway's processes are it and its
        #: children other than php-fpm (None: this process alone)
        self.master_pid = master_pid
        #: CPU of all the gateway's processes, share of one core
        self.gateway_cpu: float | None = None
        self._prev_gateway_cpu: dict[int, float] = {}
        self._prev_gateway_at = 0.0
        self._gateway_pids: list[int] = [os.getpid()] if master_pid is None else [master_pid]
        #: when they were listed (``_list_gateway``), and the most ever listed
        self._gateway_listed_at = float("-inf")
        self._gateway_most = 0
        #: while the host is full: the busiest process that is not the gateway's (share of one core)
        self.other_cpu: float | None = None
        self._others = OtherProcesses()
        self.started = time.time()
        self.pid = os.getpid()
        self.cpus = os.cpu_count()

    @property
    def verdict(self) -> Verdict:
        return self.diagnosis.current

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run_loop_lag)
            nursery.start_soon(self.run_sampler)
            for pm in self.pools:
                if pm.health is not None:
                    nursery.start_soon(pm.health.run)

    async def run_loop_lag(self) -> None:
        tick = LAG_TICK
        while True:
            before = trio.current_time()
            await trio.sleep(tick)
            now = trio.current_time()
            lag = max(0.0, now - before - tick)
            self.lag.add(now, lag)
            self.stats.loop_lag.observe(lag)
            tick = LAG_TICK if lag >= LAG_CALM or self.process_cpu >= LAG_BUSY_CPU else LAG_TICK_CALM

    async def run_sampler(self) -> None:
        while True:
            await self.sample()
            await trio.sleep(SAMPLE_EVERY)

    async def sample(self) -> Verdict:
        now = trio.current_time()
        wall = time.monotonic()
        cpu = time.process_time()
        compressing = self.compression.cpu_seconds
        if self._prev_proc is not None and wall > self._prev_proc[0]:
            self.process_cpu = (cpu - self._prev_proc[1]) / (wall - self._prev_proc[0])
            self.compress_cpu = (compressing - self._prev_compress) / (wall - self._prev_proc[0])
        self._prev_proc = (wall, cpu)
        self._prev_compress = compressing
        host = read_host_jiffies()
        if host is not None and self._prev_host is not None and host[1] > self._prev_host[1]:
            self.host_cpu = (host[0] - self._prev_host[0]) / (host[1] - self._prev_host[1])
            self.host_iowait = (host[2] - self._prev_host[2]) / (host[1] - self._prev_host[1])
        self._prev_host = host
        self.sample_gateway_cpu(wall)
        if (self.host_cpu is not None and self.host_cpu >= HOST_CPU_LIMIT and self.gateway_cpu is not None
                and self.gateway_cpu >= GATEWAY_MIN_CPU):
            # who fills the host: read every process's CPU (in a thread; only while
            # it is full and the gateway busy enough to be the listener bottleneck)
            other = await trio.to_thread.run_sync(self._others.busiest, set(self._gateway_pids), wall)
            self.other_cpu = other if other is None or self.other_cpu is None else _smooth(self.other_cpu, other)
        else:
            self.other_cpu = None  # its last reading stays: the next one averages since then
        self.accepted.add(now, self.stats.accepted)
        self.requests.add(now, self.stats.requests)
        tls = self.stats.tls
        self.tls_handshakes.add(now, tls.handshakes)
        self.tls_resumed.add(now, tls.resumed)
        self.tls_cpu.add(now, tls.cpu_seconds)
        if self._prev_tls is not None and wall > self._prev_tls[0]:
            span = wall - self._prev_tls[0]
            self.tls_now = ((tls.cpu_seconds - self._prev_tls[1]) / span, (tls.handshakes - self._prev_tls[2]) / span,
                            (tls.resumed - self._prev_tls[3]) / span)
        self._prev_tls = (wall, tls.cpu_seconds, tls.handshakes, tls.resumed)
        for pm in self.pools:
            await pm.poll_fpm_status()
            pm.sample_worker_cpu(time.monotonic())
            await pm.sample_waits(now)
        obs = Observation(
            gateway_cpu=self.gateway_cpu, other_cpu=self.other_cpu, cpus=self.cpus or 1,
            loop_lag_p99=percentile(self.lag.values(now, LAG_RECENT), 0.99),
            process_cpu=self.process_cpu,
            host_cpu=self.host_cpu,
            host_iowait=self.host_iowait,
            compress_cpu=self.compress_cpu,
            pools=tuple(pm.observe(now) for pm in self.pools),
            tls_cpu=self.tls_now[0], tls_handshakes=self.tls_now[1], tls_resumed=self.tls_now[2],
        )
        return self.diagnosis.update(obs, now)

    def sample_gateway_cpu(self, wall: float) -> None:
        """The CPU of all the gateway's processes: this one's, or its master's
        and every worker's (the master's children that are not php-fpm)."""
        if self.master_pid is None:
            self.gateway_cpu = self.process_cpu
            return
        if wall >= self._gateway_listed_at + GATEWAY_LIST_EVERY:
            self._list_gateway(wall)
        cpu = {pid: c for pid in self._gateway_pids if (c := read_proc_cpu(pid)) is not None}
        if len(cpu) < len(self._gateway_pids):  # one is gone (a restart): list them again now
            self._list_gateway(wall)
            cpu = {pid: c for pid in self._gateway_pids if (c := read_proc_cpu(pid)) is not None}
        prev, prev_at = self._prev_gateway_cpu, self._prev_gateway_at
        self._prev_gateway_cpu, self._prev_gateway_at = cpu, wall
        if prev and wall > prev_at:
            # per process: one that came or went since (a restarted worker) adds nothing
            used = max(0.0, sum(c - prev[pid] for pid, c in cpu.items() if pid in prev) / (wall - prev_at))
            self.gateway_cpu = used if self.gateway_cpu is None else _smooth(self.gateway_cpu, used)

    def _list_gateway(self, wall: float) -> None:
        """The master and its gateway children, listed again (/proc reads for
        every thread of the master and every child); the next listing is
        due in ``GATEWAY_LIST_EVERY``, sooner while fewer are found than
        before (a restarted worker not forked yet)."""
        assert self.master_pid is not None
        self._gateway_pids = [self.master_pid, *gateway_children(self.master_pid)]
        self._gateway_most = max(self._gateway_most, len(self._gateway_pids))
        self._gateway_listed_at = wall if len(self._gateway_pids) >= self._gateway_most else float("-inf")

    # -- what the table reads (table.py) ----------------------------------------

    def uptime(self) -> float:
        return time.time() - self.started

    def lag_quantile(self, q: float) -> float:
        """The q-quantile of the loop lag samples in the window (1.0: the most)."""
        return percentile(self.lag.values(), q)

    # -- views -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``/status``: the table's rows as JSON."""
        return table.status(self, trio.current_time())

    def prometheus(self) -> str:
        """``/metrics``: the table's rows as Prometheus text."""
        return table.prometheus(self, trio.current_time())
