"""One view of several worker processes: their ``/status`` JSON and ``/metrics``
text merged into what the master reports. Pure functions, no IO.

``merge_status``: row by row of the metric table (``table.py``), each by its
merge rule (counts and rates add up, lags take the worst process, averages are
weighted by the responses behind them, the verdict is the most severe one and
names how many processes hold it); then a ``workers`` list, one entry per
process asked, answering or not. Only worker 0 samples what php-fpm's
workers wait on: a ``php-waiting`` verdict held by another gets its
``waiting_on`` from the pools' (``pools.X.waiting_on``). The verdict's reason is then worded anew
(``diagnosis.explain``) in the merged numbers, the ones the tables beside it
show: a worker's own reason quotes its share of the pool ("2/2 busy") where
the pool table shows the whole ("4/4"). The bottleneck itself stays the one
a worker reached (a listener bottleneck in one process is one); only a
``backend-down`` reason, which names no shared number, is the worker's own.

``merge_prometheus``: every worker's samples under one HELP/TYPE header per
family, with a ``worker="N"`` label added (``sum by`` / ``max by`` in PromQL
gives the whole); the table's rows marked ``master`` (the verdict) are dropped
from the workers' text and computed once from the merged ``/status``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ..metrics import PromWriter
from .diagnosis import Observation, PoolObservation, explain
from .table import TABLE, Path, merge
from .waits import Target, Waits

#: In the merged /status, one entry per worker process: key -> its /status path.
WORKER_KEYS: dict[str, Path] = {
    "pid": ("pid",), "verdict": ("verdict", "bottleneck"), "open": ("listener", "connections", "open"),
    "requests_total": ("listener", "requests_total"), "process_cpu": ("listener", "process_cpu"),
}


def split(total: int, parts: int) -> list[int]:
    """``total`` shared as evenly as possible: split(5, 2) == [3, 2]."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def merge_status(workers: list[dict[str, Any] | None], *, pid: int, uptime: float,
                 fpm_restarts: dict[str, int] | None = None) -> dict[str, Any]:
    """Merge the ``/status`` of each worker (None: it did not answer). ``pid``,
    ``uptime`` and the php-fpm restarts (by pool) are the master's own."""
    own: dict[Path, Any] = {("pid",): pid, ("uptime_seconds",): uptime}
    for name, restarts in (fpm_restarts or {}).items():
        own["pools", name, "php_fpm_restarts"] = restarts
    out = merge([w for w in workers if w is not None], asked=len(workers), own=own)
    out["workers"] = [{"index": i, "up": w is not None} | ({} if w is None else {
        key: _at(w, path) for key, path in WORKER_KEYS.items()}) for i, w in enumerate(workers)]
    verdict = out.get("verdict")
    if verdict is not None and verdict["bottleneck"] == "php-waiting" and "waiting_on" not in verdict:
        # the process that holds it does not sample the workers (only one does): the pools say
        sampled = [p["waiting_on"] for p in out.get("pools", {}).values() if p.get("waiting_on")]
        if sampled:
            verdict["waiting_on"] = dict(max(sampled, key=lambda w: w.get("busy", 0))["on"])
    if verdict is not None and len(workers) > 1 and any(w is not None for w in workers):
        bottleneck = verdict["bottleneck"]
        reason = explain(bottleneck, observation_of(out), processes=len(workers))
        if reason is not None:
            holders = sum(1 for w in out["workers"] if w.get("verdict") == bottleneck)
            verdict["reason"] = f"{reason} ({holders} of {len(workers)} worker processes)"
    return out


def observation_of(st: dict[str, Any]) -> Observation:
    """The merged ``/status`` as one observation (``diagnosis``): pools summed,
    lag and wait the worst process's, process CPU the busiest process's."""
    listener = st.get("listener", {})
    busiest = max((w.get("process_cpu") or 0.0 for w in st.get("workers", []) if w.get("up")),
                  default=listener.get("process_cpu", 0.0))
    pools = tuple(PoolObservation(
        name=name, size=p.get("size", 0), busy=p.get("busy", 0), waiting=p.get("queue_depth", 0),
        queue_wait_p50=(p.get("queue_wait_p50_ms_last_second") or 0.0) / 1000, responses=1000, connect_errors=0,
        worker_cpu=p.get("worker_cpu"), kind=p.get("type") or "fastcgi", tunnels=p.get("tunnels") or 0,
        cacheable=round((p.get("cacheable_share") or 0.0) * 1000),
        cache_bypassed=round((p.get("cacheable_share") or 0.0) * (p.get("cache_bypassed_share") or 0.0) * 1000),
        cache_on=bool(p.get("cache_on")), waits=waits_of(p.get("waiting_on")))
        for name, p in st.get("pools", {}).items())
    # TLS: summed over the processes, given per process (the average), as
    # process_cpu is one process's: the share and the CPU per handshake hold
    tls = listener.get("tls", {})
    up = max(1, sum(1 for w in st.get("workers", []) if w.get("up")))
    host = st.get("host", {})
    return Observation(loop_lag_p99=(listener.get("loop_lag_ms", {}).get("p99") or 0.0) / 1000,
                       process_cpu=busiest, host_cpu=host.get("cpu"), pools=pools,
                       host_iowait=host.get("iowait"), gateway_cpu=host.get("gateway_cpu"),
                       other_cpu=host.get("other_cpu"), cpus=host.get("cpus") or 1,
                       tls_cpu=(tls.get("cpu") or 0.0) / up,
                       tls_handshakes=(tls.get("handshakes_per_second") or 0.0) / up,
                       tls_resumed=(tls.get("resumed_per_second") or 0.0) / up)


def waits_of(w: dict[str, Any] | None) -> Waits | None:
    """A pool's ``waiting_on`` in /status back as ``Waits`` (None if absent)."""
    if not w:
        return None
    targets = tuple(Target(t["kind"], t["workers"], t.get("target", ""), t.get("name", ""), t.get("frame", ""))
                    for t in w.get("targets", []))
    return Waits(w.get("busy", 0), w.get("workers", 0), targets, w.get("unknown", 0), w.get("error", ""))


def _at(obj: Any, path: Path) -> Any:
    for key in path:
        obj = obj[key]
    return obj


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(.*)$")
_FAMILY_SUFFIXES = ("_bucket", "_sum", "_count")


def merge_prometheus(texts: list[str | None], status: dict[str, Any]) -> str:
    """Merge Prometheus text from each worker (None: did not answer); ``status``
    is the merged ``/status`` the master's own rows are computed from."""
    mastered = [row for row in TABLE if row.master is not None]
    skip = {row.family for row in mastered}
    order: list[str] = []
    meta: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for index, text in enumerate(texts):
        if text is None:
            continue
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    fam = parts[2]
                    if fam not in meta:
                        order.append(fam)
                        meta[fam] = []
                        samples[fam] = []
                    if len(meta[fam]) < 2 and line not in meta[fam]:
                        meta[fam].append(line)
                continue
            m = _SAMPLE.match(line)
            if not m:
                continue
            name, labels, value = m.groups()
            fam = _family(name, meta)
            inner = labels[1:-1] if labels else ""
            label = f'worker="{index}"' + ("," + inner if inner else "")
            samples.setdefault(fam, []).append(f"{name}{{{label}}} {value}")
            if fam not in meta:
                order.append(fam)
                meta[fam] = []
    out: list[str] = []
    for fam in order:
        if fam not in skip:
            out += meta[fam]
            out += samples.get(fam, [])
    w = PromWriter()
    for row in mastered:
        assert row.master is not None
        replace(row, help=row.help.removesuffix(".") + " (all worker processes).").write(w, row.master(status))
    return "".join(line + "\n" for line in out) + w.render()


def _family(name: str, meta: dict[str, list[str]]) -> str:
    if name in meta:
        return name
    for suffix in _FAMILY_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in meta:
            return name[: -len(suffix)]
    return name

