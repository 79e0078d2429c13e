"""One view of several worker processes: their ``/status`` JSON and ``/metrics``
text merged into what a single process would report. Pure functions, no IO.

``merge_status``: counts add up (connections, requests, pool slots, queue,
errors); rates add up; loop lag and the last-second queue wait take the worst
process; averages are weighted by the responses behind them. The verdict is
the most severe one any process holds (a listener bottleneck in one process is
a listener bottleneck), and names how many processes share it.

``merge_prometheus``: every worker's samples under one HELP/TYPE header per
family, with a ``worker="N"`` label added (``sum by`` / ``max by`` in PromQL
gives the whole); the verdict gauge comes from the merged verdict.
"""

from __future__ import annotations

import re
from typing import Any

#: Most severe first.
SEVERITY = ("backend-down", "listener", "php-cpu", "php-waiting", "healthy")

_SUM_POOL = ("size", "busy", "idle", "queue_depth", "queue_depth_max_window", "queue_depth_max", "queue_limit",
             "responses_total", "queue_full_total", "queue_timeouts_total", "retries_total",
             "client_gone_in_queue_total", "connect_errors_total")


def split(total: int, parts: int) -> list[int]:
    """``total`` shared as evenly as possible: split(5, 2) == [3, 2]."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def merge_status(workers: list[dict[str, Any] | None], *, pid: int, uptime: float,
                 fpm_restarts: dict[str, int] | None = None) -> dict[str, Any]:
    """Merge the ``/status`` of each worker (None: it did not answer)."""
    up = [w for w in workers if w is not None]
    n = len(workers)
    out: dict[str, Any] = {
        "verdict": _merge_verdict(up, n),
        "listener": _merge_listener(up),
        "host": up[0]["host"] if up else {"cpu": None, "cpus": None},
        "pools": _merge_pools(up),
        "uptime_seconds": round(uptime, 1),
        "pid": pid,
        "workers": [
            {"index": i, "up": w is not None}
            | ({} if w is None else {
                "pid": w["pid"], "verdict": w["verdict"]["bottleneck"],
                "open": w["listener"]["connections"]["open"],
                "requests_total": w["listener"]["requests_total"],
                "process_cpu": w["listener"]["process_cpu"],
            })
            for i, w in enumerate(workers)
        ],
    }
    for name, restarts in (fpm_restarts or {}).items():
        if name in out["pools"]:
            out["pools"][name]["php_fpm_restarts"] = restarts
    return out


def _merge_verdict(up: list[dict[str, Any]], n: int) -> dict[str, Any]:
    if not up:
        return {"bottleneck": "backend-down", "reason": f"none of the {n} worker processes answered",
                "for_seconds": 0.0}
    rank = {name: i for i, name in enumerate(SEVERITY)}
    worst = min(up, key=lambda w: rank.get(w["verdict"]["bottleneck"], len(SEVERITY)))
    name = worst["verdict"]["bottleneck"]
    holders = [w for w in up if w["verdict"]["bottleneck"] == name]
    reason = worst["verdict"]["reason"]
    if n > 1:
        reason = f"{reason} ({len(holders)} of {n} worker processes)"
    return {"bottleneck": name, "reason": reason,
            "for_seconds": min(w["verdict"]["for_seconds"] for w in holders)}


def _merge_listener(up: list[dict[str, Any]]) -> dict[str, Any]:
    conns: dict[str, int] = {}
    for w in up:
        for k, v in w["listener"]["connections"].items():
            conns[k] = conns.get(k, 0) + v
    lags = [w["listener"]["loop_lag_ms"] for w in up]
    return {
        "connections": conns or {"idle": 0, "reading": 0, "waiting_php": 0, "writing": 0, "open": 0},
        "accepts_per_second": round(sum(w["listener"]["accepts_per_second"] for w in up), 1),
        "requests_per_second": round(sum(w["listener"]["requests_per_second"] for w in up), 1),
        "requests_total": sum(w["listener"]["requests_total"] for w in up),
        "in_flight": sum(w["listener"]["in_flight"] for w in up),
        "loop_lag_ms": {k: max((lag[k] for lag in lags), default=0.0) for k in ("p50", "p99", "max")},
        # cores used by all processes together (1.0 = one core)
        "process_cpu": round(sum(w["listener"]["process_cpu"] for w in up), 3),
    }


def _merge_pools(up: list[dict[str, Any]]) -> dict[str, Any]:
    pools: dict[str, Any] = {}
    for name in dict.fromkeys(name for w in up for name in w["pools"]):
        parts = [w["pools"][name] for w in up if name in w["pools"]]
        merged: dict[str, Any] = {k: sum(p.get(k, 0) for p in parts) for k in _SUM_POOL}
        responses = merged["responses_total"]
        for key in ("queue_wait_avg_ms", "php_time_avg_ms"):
            merged[key] = (round(sum(p[key] * p["responses_total"] for p in parts) / responses, 2)
                           if responses else 0.0)
        merged["queue_wait_p50_ms_last_second"] = max(p["queue_wait_p50_ms_last_second"] for p in parts)
        errors: dict[str, int] = {}
        for p in parts:
            for k, v in p["errors"].items():
                errors[k] = errors.get(k, 0) + v
        merged["errors"] = dict(sorted(errors.items()))
        cpus = [p["worker_cpu"] for p in parts if p.get("worker_cpu") is not None]
        merged["worker_cpu"] = max(cpus) if cpus else None
        # the same php-fpm seen from each process: the freshest copy is as good as any
        fpm = next((p["php_fpm"] for p in parts if p.get("php_fpm")), None)
        if fpm is not None:
            merged["php_fpm"] = fpm
        elif any("php_fpm_status_error" in p for p in parts):
            merged["php_fpm_status_error"] = next(p["php_fpm_status_error"] for p in parts
                                                  if "php_fpm_status_error" in p)
        pools[name] = merged
    return pools


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(.*)$")
_FAMILY_SUFFIXES = ("_bucket", "_sum", "_count")


def merge_prometheus(texts: list[str | None], verdict: str, verdict_names: tuple[str, ...] = SEVERITY) -> str:
    """Merge Prometheus text from each worker (None: did not answer)."""
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
            if fam == "gateway_verdict":
                continue
            inner = labels[1:-1] if labels else ""
            label = f'worker="{index}"' + ("," + inner if inner else "")
            samples.setdefault(fam, []).append(f"{name}{{{label}}} {value}")
            if fam not in meta:
                order.append(fam)
                meta[fam] = []
    out: list[str] = []
    for fam in order:
        if fam == "gateway_verdict":
            continue
        out += meta[fam]
        out += samples.get(fam, [])
    out.append("# HELP gateway_verdict 1 for the current bottleneck verdict (all worker processes).")
    out.append("# TYPE gateway_verdict gauge")
    for name in verdict_names:
        out.append(f'gateway_verdict{{bottleneck="{name}"}} {1 if name == verdict else 0}')
    return "\n".join(out) + "\n"


def _family(name: str, meta: dict[str, list[str]]) -> str:
    if name in meta:
        return name
    for suffix in _FAMILY_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in meta:
            return name[: -len(suffix)]
    return name


def parse_http_response(raw: bytes) -> tuple[int, bytes]:
    """Status and body of a ``Connection: close`` HTTP/1.1 response read to EOF."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("incomplete response")
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"bad status line {head[:80]!r}")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            body = body[: int(value)]
    return int(status_line[1]), body
