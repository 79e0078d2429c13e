"""Instruments: counters, histograms and sliding windows, and their Prometheus text.

Pure bookkeeping, no IO: the connection tasks and the pool bump numbers here;
``monitor`` samples them once a second into ``Window``s; ``admin`` renders them.
All times come from the caller (``trio.current_time()`` in the IO layer), so the
windows work the same under the autojump clock.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Latency buckets in seconds, for queue wait, PHP time and loop lag.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """A Prometheus-style histogram: cumulative buckets, sum and count."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        total = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
        return out


def percentile(values: Iterable[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; 0.0 for no values."""
    data = sorted(values)
    if not data:
        return 0.0
    rank = min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))
    return data[rank]


class Window:
    """Timestamped samples kept for ``span`` seconds."""

    def __init__(self, span: float) -> None:
        self.span = span
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> None:
        self.samples.append((now, value))
        self.prune(now)

    def prune(self, now: float) -> None:
        while self.samples and self.samples[0][0] < now - self.span:
            self.samples.popleft()

    def values(self, now: float | None = None, last: float | None = None) -> list[float]:
        """Values in the window, or only those of the ``last`` seconds before ``now``."""
        if last is None or now is None:
            return [v for _, v in self.samples]
        return [v for t, v in self.samples if t >= now - last]

    def rate(self, now: float) -> float:
        """For a window of cumulative counter readings: increase per second."""
        self.prune(now)
        if len(self.samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


#: Client connection states, as counted by ``ListenerStats.states``.
CONN_STATES = ("idle", "reading", "waiting_php", "writing")


#: Why a TLS handshake failed, as counted by ``TlsStats.failures``: no answer
#: within ``timeouts.tls_handshake``; a protocol error or an alert (garbage,
#: no common version or cipher, the client gave up); no certificate for the
#: name asked (and no default site's).
TLS_FAILURES = ("timeout", "protocol", "no_certificate")


@dataclass
class TlsStats:
    """TLS handshakes on this process's ``tls`` listeners."""

    handshakes: int = 0
    resumed: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TLS_FAILURES, 0))
    #: thread CPU seconds spent in handshakes (done or failed), measured
    #: around each ``SSLObject.do_handshake`` step
    cpu_seconds: float = 0.0

    def add_cpu(self, seconds: float) -> None:
        self.cpu_seconds += seconds


#: Why an HTTP/2 connection was closed with GOAWAY(ENHANCE_YOUR_CALM) or for
#: breaking the protocol, as counted by ``Http2Stats.refused``.
H2_REFUSALS = ("rapid_reset", "header_flood", "control_flood", "protocol_error")


@dataclass
class Http2Stats:
    """HTTP/2 connections (ALPN ``h2``, or h2c) and their streams in this process."""

    connections: int = 0
    open: int = 0
    streams: int = 0
    #: connections closed for an attack or a protocol error, by reason
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(H2_REFUSALS, 0))


@dataclass
class TunnelStats:
    """Switched connections (WebSocket...) the front end pumps (``front.tunnel``)."""

    open: int = 0
    total: int = 0


@dataclass
class ListenerStats:
    accepted: int = 0
    requests: int = 0
    in_flight: int = 0
    states: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CONN_STATES, 0))
    loop_lag: Histogram = field(default_factory=Histogram)
    tls: TlsStats = field(default_factory=TlsStats)
    http2: Http2Stats = field(default_factory=Http2Stats)
    tunnels: TunnelStats = field(default_factory=TunnelStats)

    @property
    def open_connections(self) -> int:
        return sum(self.states.values())


@dataclass
class PoolInstruments:
    """What the pool and the PHP handler record per backend (besides PoolStats)."""

    queue_wait: Histogram = field(default_factory=Histogram)
    php_time: Histogram = field(default_factory=Histogram)
    responses: int = 0  # PHP responses received (any status)
    #: PHP responses a page cache could have kept (GET/HEAD, storable by the
    #: cache's rules): on a site with a cache, misses and bypasses; the verdict
    #: ``php-uncached`` and the page-cache hint read them
    cacheable: int = 0
    #: of those, requests that bypassed a site's cache (a bypass cookie or path)
    cache_bypassed: int = 0
    #: does a site with a page cache send its PHP requests here?
    cache_on: bool = False


@dataclass
class CompressionStats:
    """What response compression (``app.compress``) did in this process."""

    #: CPU seconds spent compressing (the compressing thread's own CPU time)
    cpu_seconds: float = 0.0
    #: bytes given to the coders, and bytes they produced
    bytes_in: int = 0
    bytes_out: int = 0
    #: responses compressed, by coding
    responses: dict[str, int] = field(default_factory=lambda: {"br": 0, "gzip": 0})
    #: compression calls run in a worker thread (large bodies)
    threaded: int = 0
    #: precompressed files (x.css.br, x.css.gz) served, by coding
    precompressed: dict[str, int] = field(default_factory=lambda: {"br": 0, "gzip": 0})


@dataclass
class GuardStats:
    """What the site rules that guard (``app.guard``) did in this process, by site."""

    #: requests answered 429 by a ``rate_limit`` rule
    rate_limited: dict[str, int] = field(default_factory=dict)
    #: requests a ``rate_limit`` rule delayed (within the burst, without nodelay)
    delayed: dict[str, int] = field(default_factory=dict)
    #: requests answered 403 by an ``access`` rule
    access_denied: dict[str, int] = field(default_factory=dict)
    #: wrong credentials for a ``basic_auth`` rule (401 to a login attempt)
    auth_failures: dict[str, int] = field(default_factory=dict)
    #: requests answered 429 because their address failed ``max_failures`` times
    auth_blocked: dict[str, int] = field(default_factory=dict)
    #: client states pushed out of the full rate-limit table by this process
    evictions: int = 0

    @staticmethod
    def bump(counts: dict[str, int], site: str) -> None:
        counts[site] = counts.get(site, 0) + 1


#: ``X-Cache`` values, as ``CacheStats.requests`` counts them.
CACHE_STATUSES = ("HIT", "MISS", "STALE", "BYPASS", "EXPIRED")


@dataclass
class CacheStats:
    """What the page cache (``app.cache``) did in this process, all sites together."""

    #: requests looked up, by X-Cache value
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CACHE_STATUSES, 0))
    entries: int = 0
    bytes: int = 0
    #: entries dropped to make room (least recently used first)
    evictions: int = 0
    #: requests that waited for another request fetching the same key
    lock_waits: int = 0
    #: entries removed by purges
    purged: int = 0
    #: is a cache enabled on any site of this process?
    enabled: bool = False
    #: the disk tiers (shared by the processes), as their last sweep found
    #: them; None: no disk tier, or not swept yet
    disk_entries: int | None = None
    disk_bytes: int | None = None

    @property
    def hits(self) -> int:
        return self.requests["HIT"] + self.requests["STALE"]

    @property
    def misses(self) -> int:
        return self.requests["MISS"] + self.requests["EXPIRED"]

    @property
    def hit_ratio(self) -> float:
        """Hits over every request the cache saw (bypasses included: what the cache took off PHP)."""
        total = sum(self.requests.values())
        return self.hits / total if total else 0.0


# -- Prometheus text format -----------------------------------------------------


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class PromWriter:
    """Collects metric families and renders the text exposition format (0.0.4)."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def _family(self, name: str, kind: str, help_: str) -> list[str]:
        if name not in self._families:
            self._families[name] = (kind, help_, [])
        return self._families[name][2]

    def gauge(self, name: str, help_: str, value: float, **labels: str) -> None:
        self._family(name, "gauge", help_).append(f"{name}{_labels(labels)} {_num(value)}")

    def counter(self, name: str, help_: str, value: float, **labels: str) -> None:
        family = name.removesuffix("_total")
        self._family(family, "counter", help_).append(f"{family}_total{_labels(labels)} {_num(value)}")

    def histogram(self, name: str, help_: str, hist: Histogram, **labels: str) -> None:
        lines = self._family(name, "histogram", help_)
        for bound, count in hist.cumulative():
            lines.append(f"{name}_bucket{_labels({**labels, 'le': bound})} {count}")
        lines.append(f"{name}_sum{_labels(labels)} {_num(hist.sum)}")
        lines.append(f"{name}_count{_labels(labels)} {hist.count}")

    def render(self) -> str:
        out = []
        for name, (kind, help_, lines) in self._families.items():
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"
