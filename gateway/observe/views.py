"""Human views of the admin ``/status`` JSON, for ``gateway status`` and ``gateway top``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

DEFAULT_ADMIN = "http://127.0.0.1:9180"

_COLOURS = {"healthy": "green", "listener": "magenta", "php-cpu": "red", "php-waiting": "yellow",
            "backend-down": "bold red"}


class AdminUnreachable(Exception):
    pass


def fetch_status(admin: str, timeout: float = 3.0) -> dict[str, Any]:
    url = admin.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    try:
        with urllib.request.urlopen(url + "/status", timeout=timeout) as resp:  # noqa: S310 - operator-given URL
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise AdminUnreachable(
            f"cannot read {url}/status: {getattr(exc, 'reason', exc)}. Is 'gateway serve' running, and is its "
            "[admin] listen on that address?"
        ) from None


def summary_lines(st: dict[str, Any]) -> list[str]:
    v = st["verdict"]
    li = st["listener"]
    c = li["connections"]
    lines = [
        f"verdict: {v['bottleneck']} (for {v['for_seconds']:.0f}s)",
        f"  {v['reason']}",
        f"listener: {c['open']} open (idle {c['idle']}, reading {c['reading']}, waiting on PHP {c['waiting_php']}, "
        f"writing {c['writing']}), {li['requests_per_second']:.1f} req/s, {li['in_flight']} in flight, "
        f"loop lag p99 {li['loop_lag_ms']['p99']:.1f} ms, CPU {li['process_cpu']:.0%}"
        + (f", host CPU {st['host']['cpu']:.0%}" if st["host"].get("cpu") is not None else ""),
    ]
    if st.get("workers"):
        lines.append("processes: " + ", ".join(_worker_text(w) for w in st["workers"]))
    for name, p in st["pools"].items():
        cpu = "unknown" if p["worker_cpu"] is None else f"{p['worker_cpu']:.0%}"
        lines.append(
            f"pool {name}: {p['busy']}/{p['size']} busy, {p['idle']} idle, queue {p['queue_depth']} "
            f"(max {p['queue_depth_max']}, limit {p['queue_limit']}), avg wait {p['queue_wait_avg_ms']:.0f} ms, "
            f"avg PHP {p['php_time_avg_ms']:.0f} ms, worker CPU {cpu}"
        )
        errors = ", ".join(f"{k}: {n}" for k, n in p["errors"].items()) or "none"
        lines.append(f"  errors {errors}; retries {p['retries_total']}; left the queue "
                     f"{p['client_gone_in_queue_total']}; connect errors {p['connect_errors_total']}")
        fpm = p.get("php_fpm")
        if fpm:
            lines.append(f"  php-fpm: active {fpm['active_processes']}, idle {fpm['idle_processes']}, "
                         f"listen queue {fpm['listen_queue']}, max children reached {fpm['max_children_reached']}, "
                         f"slow requests {fpm['slow_requests']}")
    return lines


def _worker_text(w: dict[str, Any]) -> str:
    if not w["up"]:
        return f"#{w['index']} not answering"
    return (f"#{w['index']} pid {w['pid']} {w['verdict']} ({w['open']} open, {w['requests_total']} requests, "
            f"CPU {w['process_cpu']:.0%})")


def top_view(st: dict[str, Any], admin: str) -> Group:
    v = st["verdict"]
    colour = _COLOURS.get(v["bottleneck"], "white")
    head = Text.assemble(("verdict: ", "bold"), (v["bottleneck"], colour), f"  (for {v['for_seconds']:.0f}s)\n",
                         v["reason"])
    li = st["listener"]
    c = li["connections"]
    lt = Table(title="listener", expand=True)
    for col in ("open", "idle", "reading", "waiting PHP", "writing", "req/s", "in flight", "lag p50 ms",
                "lag p99 ms", "CPU"):
        lt.add_column(col, justify="right")
    lt.add_row(str(c["open"]), str(c["idle"]), str(c["reading"]), str(c["waiting_php"]), str(c["writing"]),
               f"{li['requests_per_second']:.1f}", str(li["in_flight"]), f"{li['loop_lag_ms']['p50']:.1f}",
               f"{li['loop_lag_ms']['p99']:.1f}", f"{li['process_cpu']:.0%}")
    pt = Table(title="PHP pools", expand=True)
    for col in ("pool", "busy/size", "idle", "queue", "queue max", "avg wait ms", "avg PHP ms", "worker CPU",
                "502", "503", "504", "fpm active/idle"):
        pt.add_column(col, justify="right")
    for name, p in st["pools"].items():
        fpm = p.get("php_fpm") or {}
        pt.add_row(name, f"{p['busy']}/{p['size']}", str(p["idle"]), str(p["queue_depth"]),
                   str(p["queue_depth_max_window"]), f"{p['queue_wait_avg_ms']:.0f}", f"{p['php_time_avg_ms']:.0f}",
                   "?" if p["worker_cpu"] is None else f"{p['worker_cpu']:.0%}",
                   str(p["errors"].get("502", 0)), str(p["errors"].get("503", 0)), str(p["errors"].get("504", 0)),
                   f"{fpm.get('active_processes', '?')}/{fpm.get('idle_processes', '?')}")
    parts: list[Any] = [Panel(head, title=f"gateway top — {admin}"), lt, pt]
    if st.get("workers"):
        parts.append(Text("processes: " + ", ".join(_worker_text(w) for w in st["workers"])))
    return Group(*parts)
