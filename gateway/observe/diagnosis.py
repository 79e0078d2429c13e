"""The verdict: where does the time go? Pure functions over one observation.

Every second the monitor builds an ``Observation`` from the instruments and
``Diagnosis.update`` turns it into one of five answers:

Pools are named by what they front: "pool php" for PHP (FastCGI), "backend
app (http)" for a proxied HTTP application, whose verdicts speak of
connections, not workers (the bottleneck names stay ``php-*``: they are
identifiers that dashboards match).

- ``backend-down``: a backend is unreachable: its spawned php-fpm is not
  running, or connect errors and no response in the last second (requests
  witnessed it), or it failed its active health check (``health.py``; this
  is what catches a dead php-fpm on a quiet site). A failed check while PHP
  responses still arrive is not ``backend-down``: the requests are the better
  witness.
- ``php-cpu``: a pool is saturated (every slot busy and requests queueing) and
  its workers burn CPU (at least ``CPU_BUSY`` of a core per busy worker), or the
  host has no CPU to spare while they run code (at least ``CPU_IDLE`` each; a
  full host with sleeping workers is busy with something else).
- ``php-waiting``: a pool is saturated and queueing but its workers mostly do
  not use CPU: they wait on a database, storage or the network.
- ``php-uncached``: a pool is saturated, a site with a page cache sends its
  requests there, and at least ``CACHEABLE_SHARE`` of its PHP responses in
  the last second were GETs the cache could have kept (they missed it or
  bypassed it): the cache is not doing its job (bypass cookies too broad, a
  ttl too short). For a pool without a cache, the php-cpu/php-waiting reason
  adds the share a page cache would take off PHP; a pool saturated by
  uncacheable responses (``no-store``, ``Set-Cookie``) stays php-cpu/php-waiting.
- ``php-waiting`` or ``php-cpu``: where the busy workers were sampled
  (``waits``, ``sampler``) and none uses half a core, the sample decides
  between the two (more than half of them on CPU: ``php-cpu``), not the host's
  CPU, which other work may fill. A ``php-waiting`` verdict's
  ``waiting_on`` then counts them by kind and the reason names the targets ("3 of
  them waiting on the database at 127.0.0.1:3306 (mysqli_query from
  wp-includes/class-wpdb.php)"); workers in disk waits while the host's
  iowait is at least ``IOWAIT_HIGH`` make it say the storage is slow.
- ``listener-tls``: as ``listener``, and TLS handshakes take at least
  ``TLS_SHARE`` of the process's CPU: new TLS connections, not requests,
  are the load (no session resumption, RSA keys, a connection per request).
- ``listener``: PHP has free slots, yet the gateway's own event loop lags or
  its process uses a whole core: the front end is the bottleneck. Its reason
  names the share of CPU spent compressing responses when there is one. Also
  when the host's CPU is full (``HOST_CPU_LIMIT``), PHP is not saturated and
  the gateway's processes together are its largest consumer (more than any
  other process, at least ``GATEWAY_MIN_CPU``): under a flood of cheap requests with the load generator on the
  same cores no single process reaches a core, the loop does not lag (the
  kernel shares the CPU fairly), and yet the gateway is what the CPU does.
  On a full host the reason says so whichever rule fired (on a crowded host
  the loops do lag, waiting for a CPU): more gateway processes would wait too.
- ``healthy``: none of the above.

Rules are checked in that order (a down backend explains everything after it).
A new answer must hold for ``HOLD`` seconds before it replaces the current one,
so the verdict does not flap; each answer comes with one sentence that names
the numbers behind it and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .waits import KINDS, Waits, describe

BOTTLENECKS = ("healthy", "listener", "listener-tls", "php-cpu", "php-waiting", "php-uncached", "backend-down")

#: Seconds a new verdict must hold before it is shown.
HOLD = 3.0
#: Loop lag (p99 over the last seconds) that means the event loop is overloaded.
LOOP_LAG_LIMIT = 0.05
#: Share of one core used by the gateway process that means it is CPU-bound.
PROCESS_CPU_LIMIT = 0.90
#: CPU share of one core per busy PHP worker above which PHP is CPU-bound.
CPU_BUSY = 0.5
#: Host CPU busy share above which there is no CPU to spare.
HOST_CPU_LIMIT = 0.90
#: CPU share of a core per busy worker below which PHP is not running code at
#: all (it sleeps or waits on I/O): a full host then is busy with something
#: else (the gateway, a load generator, another service), and PHP is waiting.
CPU_IDLE = 0.10
#: Share of the gateway's CPU in TLS handshakes from which a saturated listener
#: is ``listener-tls``: handshakes are then the main part of its work.
TLS_SHARE = 0.5
#: On a full host, the gateway's processes (all of them) are the listener
#: bottleneck when they use more CPU than any other process and at least
#: this share of one core; when the other processes are not known, when they
#: use at least ``GATEWAY_HOST_SHARE`` of the busy CPU.
GATEWAY_MIN_CPU = 0.25
GATEWAY_HOST_SHARE = 0.4
#: Share of the host's CPU time idle waiting for storage from which workers in
#: disk waits mean the storage is slow.
IOWAIT_HIGH = 0.2
#: Share of a saturated pool's PHP responses that a page cache could have kept
#: from which a pool with a cache is ``php-uncached`` (and one without gets the hint).
CACHEABLE_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class PoolObservation:
    name: str
    size: int
    busy: int
    waiting: int
    queue_wait_p50: float  # seconds, over the last interval (0 if none)
    responses: int  # PHP responses in the last interval
    connect_errors: int  # connect failures in the last interval
    backend_running: bool = True  # False: the spawned php-fpm is not running
    worker_cpu: float | None = None  # share of a core per busy worker, None: unknown
    backend_up: bool | None = None  # the active health check: None until its first probe ended
    backend_check: str = ""  # what the check probes and, when down, why it failed
    backend_down_for: float = 0.0  # seconds the check has failed
    #: a group's addresses out of rotation: (address, seconds down, why), and how many it has
    hosts_down: tuple[tuple[str, float, str], ...] = ()
    hosts: int = 1
    #: the backend's transport: "fastcgi" (PHP) or "http" (a proxied application)
    kind: str = "fastcgi"
    #: slots held by tunnels (WebSocket...), of the busy ones
    tunnels: int = 0
    #: of ``responses``: those a page cache could have kept, and of them the bypasses
    cacheable: int = 0
    cache_bypassed: int = 0
    cache_on: bool = False  # a site with a page cache uses this pool

    #: what the busy workers wait on (``sampler``), None: not sampled
    waits: Waits | None = None

    @property
    def php(self) -> bool:
        return self.kind == "fastcgi"

    @property
    def label(self) -> str:
        """How a sentence names it: "pool php", or "backend app (http)"."""
        return f"pool {self.name}" if self.php else f"backend {self.name} ({self.kind})"

    @property
    def cacheable_share(self) -> float:
        return min(1.0, self.cacheable / self.responses) if self.responses else 0.0

    @property
    def saturated(self) -> bool:
        return self.busy >= self.size and self.waiting > 0


@dataclass(frozen=True, slots=True)
class Observation:
    loop_lag_p99: float  # seconds
    process_cpu: float  # share of one core
    host_cpu: float | None  # share of all cores busy, None: unknown
    pools: tuple[PoolObservation, ...] = ()
    tls_cpu: float = 0.0  # share of one core spent in TLS handshakes (same process as process_cpu)
    tls_handshakes: float = 0.0  # full and resumed handshakes per second
    tls_resumed: float = 0.0  # of which resumed, per second
    compress_cpu: float = 0.0  # share of one core spent compressing responses
    host_iowait: float | None = None  # share of all cores idle waiting on storage, None: unknown
    gateway_cpu: float | None = None  # all the gateway's processes, share of one core; None: only this one's known
    other_cpu: float | None = None  # the busiest process that is not the gateway's, share of one core; None: unknown
    cpus: int = 1  # the host's cores


@dataclass(frozen=True, slots=True)
class Verdict:
    bottleneck: str
    reason: str
    #: php-waiting: busy workers by what they wait on (``waits.KINDS``), when sampled
    waiting_on: dict[str, int] = field(default_factory=dict)


def classify(obs: Observation) -> Verdict:
    """The verdict for one observation, without hysteresis. A group with
    addresses out of rotation is ``backend-down`` when none serves; else its
    down hosts are named after the verdict's reason."""
    verdict = _classify(obs)
    notes = [_hosts_note(p) for p in obs.pools if p.hosts_down and len(p.hosts_down) < p.hosts]
    if notes and verdict.bottleneck != "backend-down":
        return Verdict(verdict.bottleneck, f"{verdict.reason} Also: {'; '.join(notes)}.", verdict.waiting_on)
    return verdict


def _hosts_note(p: PoolObservation) -> str:
    names = ", ".join(f"{name} down for {down_for:.0f} s ({why})" for name, down_for, why in p.hosts_down)
    return f"{p.label}: host {names}; {p.hosts - len(p.hosts_down)} of {p.hosts} hosts serving"


def _classify(obs: Observation) -> Verdict:
    for p in obs.pools:
        if p.hosts_down and len(p.hosts_down) == p.hosts:
            return Verdict("backend-down", f"{p.label}: every host is out of rotation: "
                                           f"{'; '.join(f'{n} for {d:.0f} s ({w})' for n, d, w in p.hosts_down)}: "
                                           "start the backends or fix the addresses.")
        if not p.backend_running:
            return Verdict("backend-down", f"php-fpm for pool {p.name} is not running; the supervisor is restarting "
                                           "it: look at its error log for why it exited.")
        server = "php-fpm" if p.php else "the backend"
        if p.connect_errors and not p.responses:
            return Verdict("backend-down", f"{p.label}: {p.connect_errors} connect error(s) and no "
                                           f"{'PHP ' if p.php else ''}response in the last second: start "
                                           f"{server} or fix the backend address.")
        if p.backend_up is False and not p.responses:
            return Verdict("backend-down", f"{p.label}: {server} has not answered its health check for "
                                           f"{p.backend_down_for:.0f} s ({p.backend_check}): start {server} or fix "
                                           "the backend address.")
    for p in obs.pools:
        if p.saturated:
            bottleneck = _php_bottleneck(p, obs)
            if p.cache_on and p.cacheable_share >= CACHEABLE_SHARE:
                bottleneck = "php-uncached"
            waiting_on = p.waits.counts if bottleneck == "php-waiting" and p.waits is not None else {}
            return Verdict(bottleneck, _php_reason(bottleneck, p, obs), waiting_on)
    if obs.loop_lag_p99 >= LOOP_LAG_LIMIT or obs.process_cpu >= PROCESS_CPU_LIMIT:
        if _tls_bound(obs):
            return Verdict("listener-tls", _tls_reason(obs))
        return Verdict("listener", _listener_reason(obs))
    if _gateway_fills_host(obs):
        if _tls_bound(obs):
            return Verdict("listener-tls", _tls_reason(obs))
        return Verdict("listener", _listener_reason(obs))
    return Verdict("healthy", _healthy_reason(obs))


def _gateway_fills_host(obs: Observation) -> bool:
    """The host's CPU is full and the gateway's processes are its largest
    consumer; PHP is not saturated (checked before)."""
    if obs.host_cpu is None or obs.gateway_cpu is None or not _host_full(obs):
        return False
    if obs.other_cpu is not None:
        return obs.gateway_cpu >= max(GATEWAY_MIN_CPU, obs.other_cpu)
    return obs.gateway_cpu >= GATEWAY_HOST_SHARE * obs.host_cpu * obs.cpus


def _tls_bound(obs: Observation) -> bool:
    return obs.process_cpu > 0 and obs.tls_cpu >= TLS_SHARE * obs.process_cpu


def explain(bottleneck: str, obs: Observation, *, processes: int = 1) -> str | None:
    """The reason for ``bottleneck`` in the numbers of ``obs``, whichever rule
    chose it: how the master words the verdict a worker process reached in the
    numbers summed over all of them (``processes`` > 1: ``obs`` is that sum,
    its ``process_cpu`` the busiest process's). None for ``backend-down``,
    whose reason names no shared number."""
    if bottleneck in ("php-cpu", "php-waiting", "php-uncached"):
        loaded = [p for p in obs.pools if p.waiting or p.busy >= p.size]
        if not loaded:
            return None
        p = max(loaded, key=lambda q: (q.saturated, q.waiting, q.busy / max(1, q.size)))
        return _php_reason(bottleneck, p, obs, processes=processes)
    if bottleneck == "listener":
        return _listener_reason(obs, processes=processes)
    if bottleneck == "listener-tls":
        return _tls_reason(obs, processes=processes)
    if bottleneck == "healthy":
        return _healthy_reason(obs)
    return None


def _host(obs: Observation) -> str:
    return f"host CPU {obs.host_cpu:.0%} busy" if obs.host_cpu is not None else "host CPU unknown"


def _host_full(obs: Observation) -> bool:
    return obs.host_cpu is not None and obs.host_cpu >= HOST_CPU_LIMIT


def _php_bottleneck(p: PoolObservation, obs: Observation) -> str:
    if p.waits is not None and p.waits.busy and (p.worker_cpu is None or p.worker_cpu < CPU_BUSY):
        # the sampled workers say it directly: more than half of them on CPU, or not
        return "php-cpu" if p.waits.counts["cpu"] * 2 > p.waits.busy else "php-waiting"
    if p.worker_cpu is None:
        return "php-cpu" if _host_full(obs) else "php-waiting"
    starved = _host_full(obs) and p.worker_cpu >= CPU_IDLE  # CPU-bound workers sharing too few cores
    return "php-cpu" if p.worker_cpu >= CPU_BUSY or starved else "php-waiting"


def _php_reason(bottleneck: str, p: PoolObservation, obs: Observation, *, processes: int = 1) -> str:
    state = "is saturated" if p.saturated or processes == 1 else "is saturated in some worker processes"
    load = (f"{p.label} {state}: {p.busy}/{p.size} {'workers' if p.php else 'connections'} busy, {p.waiting} "
            f"queued (median wait {p.queue_wait_p50 * 1000:.0f} ms)")
    if bottleneck == "php-uncached":
        bypassed = p.cache_bypassed / p.cacheable if p.cacheable else 0.0
        how = (f"{bypassed:.0%} of them bypassed it (a bypass cookie or path): check bypass_cookies and "
               "bypass_paths" if bypassed >= 0.5 else
               "they missed it: check the ttl, max_size (evictions) and what varies the key (query strings)")
        return (f"{load}; {p.cacheable_share:.0%} of its PHP responses are GETs the page cache could keep, yet "
                f"went to PHP; {how}.")
    return _php_cpu_or_waiting(bottleneck, load, p, obs) + _cache_hint(p)


def _cache_hint(p: PoolObservation) -> str:
    if p.cache_on or p.cacheable_share < CACHEABLE_SHARE:
        return ""
    return (f" A page cache would take {p.cacheable_share:.0%} of this load off PHP ([sites.X.cache] "
            "enabled = true).")


def _php_cpu_or_waiting(bottleneck: str, load: str, p: PoolObservation, obs: Observation) -> str:
    host, host_full = _host(obs), _host_full(obs)
    if not p.php:  # the gateway sees no CPU figure of an HTTP application
        if p.tunnels * 2 >= p.size:
            return (f"{load}; {p.tunnels} of its connections are WebSocket tunnels, held as long as they are "
                    "open: raise pool_size, or route WebSockets to a backend of their own.")
        if bottleneck == "php-cpu":
            return (f"{load}; {host}: the backend competes for CPU on this host. Optimise it or add CPU; a larger "
                    "pool_size will not help.")
        return (f"{load}; {host}: the backend is slow to answer (its own work, a database, the network); look "
                "there first. A larger pool_size helps only if the backend has capacity to spare.")
    if p.worker_cpu is None:
        if bottleneck == "php-cpu":
            return (f"{load}; {host}: PHP competes for CPU. Optimise the slow code or add CPU; more workers will "
                    "not help.")
        return (f"{load}; worker CPU unknown, {host}: PHP is probably waiting on a database, storage or the "
                "network; look there first.")
    cpu = f"workers use {p.worker_cpu:.0%} of a core each"
    if bottleneck == "php-cpu":
        advice = ("raise pm.max_children (and workers) only if the host has CPU to spare" if not host_full
                  else "the host has no CPU to spare: optimise the code or add CPU, not workers")
        return f"{load}; {cpu}, {host}: PHP is CPU-bound; {advice}."
    if p.waits is not None and p.waits.busy:
        return f"{load}; {cpu}, {host}: PHP is waiting: {describe(p.waits)}. {_advice(p.waits, obs)}"
    return (f"{load}; {cpu}, {host}: PHP is waiting on something downstream (database, storage, network); look "
            "at slow queries and external calls. More workers help only if that downstream has capacity.")


_ADVICE = {
    "database": "look at the database's slow queries and its load",
    "cache": "look at the cache server's load and latency",
    "http": "add timeouts or cache the answers of external calls",
    "socket": "look at the service behind that socket",
    "disk": "look at storage latency (iostat -x) and what writes or syncs",
    "lock": "look for lock contention and sleep() calls in the code",
    "cpu": "optimise the code or add CPU",
}


def _advice(waits: Waits, obs: Observation) -> str:
    """What to do about the kind most busy workers wait on."""
    counts = waits.counts
    top = max(KINDS, key=lambda k: counts[k])
    if not counts[top]:
        return "Look at slow queries and external calls."
    text = _ADVICE[top]
    if counts["disk"] and obs.host_iowait is not None and obs.host_iowait >= IOWAIT_HIGH:
        text = (f"storage is slow: host iowait {obs.host_iowait:.0%} with {counts['disk']} worker(s) waiting on "
                f"disk I/O; {text}")
    return text[0].upper() + text[1:] + "; more workers help only if that has capacity."


def _listener_reason(obs: Observation, *, processes: int = 1) -> str:
    free = ", ".join(f"{p.name} {p.size - p.busy}/{p.size} free" for p in obs.pools) or "no backends"
    who = "PHP has" if all(p.php for p in obs.pools) else "the backends have"
    cores = f"{obs.cpus} core{'s' if obs.cpus != 1 else ''}"
    if obs.process_cpu < PROCESS_CPU_LIMIT and obs.gateway_cpu is not None and (
            _gateway_fills_host(obs) or (obs.loop_lag_p99 < LOOP_LAG_LIMIT and obs.host_cpu is not None)):
        # on a full host the loops lag waiting for a CPU too: more processes would not get one
        other = (f", more than any other process (the busiest: {obs.other_cpu:.0%} of a core)"
                 if obs.other_cpu is not None else "")
        idle = "PHP idle" if all(p.php for p in obs.pools) else "the backends idle"
        return (f"the gateway is the bottleneck: {_host(obs)}, gateway processes use {obs.gateway_cpu:.0%} of "
                f"{cores}{other}; {idle} ({free}); loop lag p99 "
                f"{obs.loop_lag_p99 * 1000:.0f} ms: run fewer other things on this host (a load generator?), "
                "add CPU, or move static files to a CDN.")
    cpu = "process CPU" if processes == 1 else "busiest process CPU"
    compress = ""
    if obs.compress_cpu > 0 and obs.process_cpu > 0:
        compress = f" ({min(1.0, obs.compress_cpu / obs.process_cpu):.0%} of it compressing responses)"
    advice = "run more gateway workers or move static files to a CDN."
    if _host_full(obs) and obs.process_cpu < PROCESS_CPU_LIMIT:
        # the host is full of other work: the loop waits for a CPU it holds
        share = f"gateway processes use {obs.gateway_cpu:.0%} of {cores}, " if obs.gateway_cpu is not None else ""
        busiest = f"the busiest other process {obs.other_cpu:.0%} of a core, " if obs.other_cpu is not None else ""
        advice = (f"{_host(obs)} ({share}{busiest}the rest other work): the loop waits for a CPU; run fewer "
                  "other things on this host or add CPU (more gateway workers would wait too).")
    return (f"the gateway itself is the bottleneck: event-loop lag p99 {obs.loop_lag_p99 * 1000:.0f} ms, "
            f"{cpu} {obs.process_cpu:.0%} of a core{compress}, while {who} free slots ({free}); {advice}")


def _tls_reason(obs: Observation, *, processes: int = 1) -> str:
    share = min(1.0, obs.tls_cpu / obs.process_cpu) if obs.process_cpu > 0 else 0.0
    resumed = obs.tls_resumed / obs.tls_handshakes if obs.tls_handshakes > 0 else 0.0
    per = obs.tls_cpu / obs.tls_handshakes * 1000 if obs.tls_handshakes > 0 else 0.0
    cpu = "the gateway's CPU" if processes == 1 else "the busiest gateway process's CPU"
    return (f"TLS handshakes use {share:.0%} of {cpu} ({obs.process_cpu:.0%} of a core; "
            f"{obs.tls_handshakes:.0f} handshakes/s, {resumed:.0%} resumed, {per:.1f} ms CPU each): clients "
            "connect anew instead of reusing connections; enable session resumption, use ECDSA certificates, "
            "keep connections alive, or add gateway processes.")


def _healthy_reason(obs: Observation) -> str:
    busy = ", ".join(f"{p.name} {p.busy}/{p.size} busy, {p.waiting} queued" for p in obs.pools) or "no backends"
    return (f"no bottleneck: loop lag p99 {obs.loop_lag_p99 * 1000:.0f} ms, process CPU {obs.process_cpu:.0%}, "
            f"{busy}.")


@dataclass
class Diagnosis:
    """The verdict with hysteresis: a change must hold for ``hold`` seconds."""

    hold: float = HOLD
    current: Verdict = field(default_factory=lambda: Verdict("healthy", "starting up: no observation yet."))
    since: float = 0.0
    _pending: str | None = None
    _pending_since: float = 0.0

    def update(self, obs: Observation, now: float) -> Verdict:
        candidate = classify(obs)
        if candidate.bottleneck == self.current.bottleneck:
            self.current = candidate  # same answer, fresh numbers
            self._pending = None
        elif candidate.bottleneck == self._pending:
            if now - self._pending_since >= self.hold:
                self.current = candidate
                self.since = now
                self._pending = None
        else:
            self._pending = candidate.bottleneck
            self._pending_since = now
        return self.current
