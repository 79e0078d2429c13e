"""Human views of the admin ``/status`` JSON, for ``gateway status`` and ``gateway top``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

DEFAULT_ADMIN = "http://127.0.0.1:9180"

_COLOURS = {"healthy": "green", "listener": "magenta", "listener-tls": "magenta", "php-cpu": "red",
            "php-waiting": "yellow", "php-uncached": "yellow", "backend-down": "bold red"}


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


def post_purge(admin: str, purge: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """``POST /cache/purge`` on the admin listener at ``admin``; its JSON answer.

    Raises:
        AdminUnreachable: no answer, or an error (its message, from the admin's JSON).
    """
    url = admin.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    request = urllib.request.Request(url + "/cache/purge", data=json.dumps(purge).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - operator-given URL
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            detail = exc.reason
        raise AdminUnreachable(f"{url}/cache/purge answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise AdminUnreachable(
            f"cannot reach {url}/cache/purge: {getattr(exc, 'reason', exc)}. Is 'gateway serve' running, and is "
            "its [admin] listen on that address?"
        ) from None


def summary_lines(st: dict[str, Any]) -> list[str]:
    """``gateway status``: the whole /status in a few labelled lines. With
    several worker processes every number is the sum over them (the verdict's
    reason too), except the queue limit, which is each process's."""
    v = st["verdict"]
    li = st["listener"]
    c = li["connections"]
    lines = [
        f"verdict: {v['bottleneck']} (for {v['for_seconds']:.0f}s)",
        f"  {v['reason']}",
        f"listener: {c['open']} open (idle {c['idle']}, reading {c['reading']}, waiting on PHP {c['waiting_php']}, "
        f"writing {c['writing']}), {li['requests_per_second']:.1f} req/s, {li['in_flight']} in flight, "
        f"loop lag p99 {li['loop_lag_ms']['p99']:.1f} ms, CPU {li['process_cpu']:.0%}"
        + (f", host CPU {st['host']['cpu']:.0%}" if st["host"].get("cpu") is not None else "")
        + _tunnels_text(li),
    ]
    if st.get("workers"):
        lines.append("processes: " + ", ".join(_worker_text(w) for w in st["workers"]))
    per = " per process" if st.get("workers") else ""
    for name, p in st["pools"].items():
        cpu = "unknown" if p["worker_cpu"] is None else f"{p['worker_cpu']:.0%}"
        lines.append(
            f"{_pool_label(name, p)}: {p['busy']}/{p['size']} busy, {p['idle']} idle, queue {p['queue_depth']} "
            f"(max {p.get('queue_depth_max_window', p['queue_depth_max'])} in 10 s, {p['queue_depth_max']} ever; "
            f"limit {p['queue_limit']}{per}), worker CPU {cpu}"
        )
        lines.append(f"  avg wait {_ms(p.get('queue_wait_avg_ms_10s'))} last 10 s, {_ms(p['queue_wait_avg_ms'])} "
                     f"since start; avg {'PHP' if _php(p) else 'response'} {_ms(p.get('php_time_avg_ms_10s'))} "
                     "last 10 s, "
                     f"{_ms(p['php_time_avg_ms'])} since start")
        errors = ", ".join(f"{k}: {n}" for k, n in p["errors"].items()) or "none"
        lines.append(f"  errors {errors}; retries {p['retries_total']}; left the queue "
                     f"{p['client_gone_in_queue_total']}; connect errors {p['connect_errors_total']} (since start)")
        if p.get("backend"):
            lines.append("  backend: " + _backend_text(p["backend"]))
        if p.get("waiting_on"):
            lines.append("  PHP workers: " + p["waiting_on"]["reason"])
        if p.get("slowlog_frames"):
            lines.append("  slowlog, last minute: " + ", ".join(f"{f['frame']} ×{f['requests']}"
                                                               for f in p["slowlog_frames"]))
        for address, a in (p.get("addresses") or {}).items():
            lines.append(f"  address {address}: {a['busy']}/{a['size']} busy, {a['idle']} idle, "
                         + _address_state(a) + f", {a['requests']} requests, connect errors {a['connect_errors']}, "
                         f"errors {', '.join(f'{k}: {n}' for k, n in a['errors'].items()) or 'none'}")
        fpm = p.get("php_fpm")
        if fpm:
            workers = fpm.get("workers")
            listed = (f"workers running {workers['running']}, idle {workers['idle']} (its process list); "
                      if workers else "")
            lines.append(f"  php-fpm's own view: {listed}its counters: active {fpm['active_processes']}, "
                         f"idle {fpm['idle_processes']} (they drift with kept-alive connections), listen queue "
                         f"{fpm['listen_queue']}, max children reached {fpm['max_children_reached']}, "
                         f"slow requests {fpm['slow_requests']}")
    if st.get("cache"):
        lines.append(_cache_text(st["cache"]))
    lines += [_certificate_text(c) for c in st.get("certificates", [])]
    return lines


def _php(p: dict[str, Any]) -> bool:
    return bool(p.get("type", "fastcgi") == "fastcgi")


def _pool_label(name: str, p: dict[str, Any]) -> str:
    """"pool php" for PHP, "backend app (http)" for a proxied application (``diagnosis`` words it so)."""
    return f"pool {name}" if _php(p) else f"backend {name} ({p['type']})"


def _tunnels_text(li: dict[str, Any], *, short: bool = False) -> str:
    """", 2 tunnels (7 since start)": WebSockets and other switched connections, once there were any."""
    t = li.get("tunnels") or {}
    if not t.get("total"):
        return ""
    return f", {t['open']} tunnels" + ("" if short else f" ({t['total']} since start)")


def _cache_text(c: dict[str, Any]) -> str:
    """The page cache in one line (``app.cache``)."""
    r = c["requests"]
    return (f"page cache: hit ratio {c['hit_ratio']:.0%} ({r['HIT']} hit, {r['STALE']} stale, {r['MISS']} miss, "
            f"{r['EXPIRED']} expired, {r['BYPASS']} bypass), {c['entries']} entries, {c['bytes'] / 1048576:.1f} MiB, "
            f"{c['evictions']} evicted, {c['lock_waits']} lock waits, {c['purged']} purged")


def _certificate_text(c: dict[str, Any]) -> str:
    """One ACME certificate (``acme.manager``): until when, when next, what went wrong."""
    names = ", ".join(c["names"])
    text = (f"certificate {names}: valid until {c['not_after']}, renewal from {c['renew_at']}" if c.get("not_after")
            else f"certificate {names}: none yet")
    if c.get("last_error"):
        text += f"; {c['failures']} failed attempt(s), last: {c['last_error']}; next attempt {c['next_attempt']}"
    return text


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} ms"


def _backend_text(b: dict[str, Any]) -> str:
    if b.get("up") is None:
        return f"not checked yet ({b.get('check', '?')})"
    if b["up"]:
        return f"up ({b.get('check', '?')})"
    return f"DOWN for {b.get('down_seconds', 0):.0f} s ({b.get('check', '?')}: {b.get('error', '')})"


def _address_state(a: dict[str, Any]) -> str:
    if a["up"]:
        return "in rotation"
    return f"OUT of rotation for {a['down_seconds']:.0f} s ({a['down_reason']})"


def _worker_text(w: dict[str, Any]) -> str:
    if not w["up"]:
        return f"#{w['index']} not answering"
    return (f"#{w['index']} pid {w['pid']} {w['verdict']} ({w['open']} open, {w['requests_total']} requests, "
            f"CPU {w['process_cpu']:.0%})")


def _workers_brief(workers: list[dict[str, Any]]) -> str:
    """Worker processes in one line, however many there are."""
    up = [w for w in workers if w["up"]]
    verdicts: dict[str, int] = {}
    for w in up:
        verdicts[w["verdict"]] = verdicts.get(w["verdict"], 0) + 1
    text = f"processes: {len(workers)}"
    if len(up) < len(workers):
        text += f", {len(workers) - len(up)} not answering"
    if verdicts:
        text += "; " + ", ".join(f"{name} ×{n}" for name, n in verdicts.items())
        cpus = [w["process_cpu"] for w in up]
        text += f"; CPU {min(cpus):.0%}–{max(cpus):.0%} each"
    return text


def top_view(st: dict[str, Any], admin: str) -> Group:
    """``gateway top``: one screen that fits 80×24 (three pools, any number of
    worker processes). Numbers are summed over worker processes (the queue
    limit is each process's); "10s" is the last 10 s, "all" since start."""
    v = st["verdict"]
    colour = _COLOURS.get(v["bottleneck"], "white")
    head = Text.assemble(("verdict: ", "bold"), (v["bottleneck"], colour), f"  (for {v['for_seconds']:.0f}s)\n",
                         v["reason"])
    li = st["listener"]
    c = li["connections"]
    host = f", host CPU {st['host']['cpu']:.0%}" if st["host"].get("cpu") is not None else ""
    every = " (all processes)" if st.get("workers") else ""
    listener = Text.assemble(
        ("listener ", "bold"),
        f"{c['open']} open (idle {c['idle']}, reading {c['reading']}, waiting PHP {c['waiting_php']}, "
        f"writing {c['writing']}), {li['in_flight']} in flight\n",
        f"  {li['requests_per_second']:.1f} req/s, lag p50 {li['loop_lag_ms']['p50']:.1f} ms "
        f"p99 {li['loop_lag_ms']['p99']:.1f} ms, CPU {li['process_cpu']:.0%}{every}{host}"
        + _tunnels_text(li, short=True))
    per = "; lim: per process" if st.get("workers") else ""
    what = "PHP pools" if all(_php(p) for p in st["pools"].values()) else "Backends"
    pt = Table(title=f"{what} (10s: last 10 s; all: since start{per})",
               box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1), title_justify="left",
               title_style="bold")
    for col in ("pool", "busy/size", "queue\nnow/10s/lim", "wait ms\n10s/all", "PHP ms\n10s/all", "wkr\nCPU",
                "502/503\n/504", "php-fpm\nrun/idle", "up"):
        pt.add_column(col, justify="right")
    for name, p in st["pools"].items():
        fpm = p.get("php_fpm") or {}
        workers = fpm.get("workers") or {"running": fpm.get("active_processes", "?"),
                                         "idle": fpm.get("idle_processes", "?")}
        backend = p.get("backend") or {}
        up = {True: "yes", False: "DOWN", None: "?"}[backend.get("up")]
        pt.add_row(name if _php(p) else f"{name} ({p['type']})", f"{p['busy']}/{p['size']}",
                   f"{p['queue_depth']}/{p['queue_depth_max_window']}/{p['queue_limit']}",
                   f"{_num(p.get('queue_wait_avg_ms_10s'))}/{_num(p['queue_wait_avg_ms'])}",
                   f"{_num(p.get('php_time_avg_ms_10s'))}/{_num(p['php_time_avg_ms'])}",
                   "?" if p["worker_cpu"] is None else f"{p['worker_cpu']:.0%}",
                   "/".join(str(p["errors"].get(k, 0)) for k in ("502", "503", "504")),
                   f"{workers['running']}/{workers['idle']}", up)
        for address, a in (p.get("addresses") or {}).items():
            pt.add_row(f" {address}", f"{a['busy']}/{a['size']}", "", "", "", "",
                       "/".join(str(a["errors"].get(k, 0)) for k in ("502", "503", "504")), "",
                       "yes" if a["up"] else "OUT")
    parts: list[Any] = [Panel(head, title=f"gateway top — {admin}"), listener, pt]
    for name, p in st["pools"].items():
        backend = p.get("backend") or {}
        if backend.get("up") is False:
            parts.append(Text(f"backend {name}: " + _backend_text(backend), style="red"))
        if (p.get("waiting_on") or {}).get("busy"):
            parts.append(Text(f"{name} waits on: " + _waits_brief(p["waiting_on"])))
    if st.get("cache"):
        c = st["cache"]
        r = c["requests"]
        parts.append(Text.assemble(
            ("page cache ", "bold"),
            f"{c['hit_ratio']:.0%} hits: {r['HIT']} hit, {r['STALE']} stale, {r['MISS']} miss, "
            f"{r['EXPIRED']} expired, {r['BYPASS']} bypass\n",
            f"  {c['entries']} entries, {c['bytes'] / 1048576:.1f} MiB, {c['evictions']} evicted, "
            f"{c['lock_waits']} lock waits"))
    if st.get("workers"):
        parts.append(Text(_workers_brief(st["workers"])))
    return Group(*parts)


def _waits_brief(w: dict[str, Any]) -> str:
    """What a pool's busy workers wait on, in one short line: kind, count, target."""
    out = [f"{t['kind']} {t['workers']}" + (f" ({t['target']})" if t["target"] else "") for t in w["targets"]]
    if w.get("unknown"):
        out.append(f"unknown {w['unknown']}")
    return ", ".join(out) + f" (of {w['busy']}/{w['workers']} busy)"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"
