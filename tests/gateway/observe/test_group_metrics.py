"""A group's addresses in /status and /metrics, and merged over processes."""

from __future__ import annotations

import trio

from gateway.metrics import ListenerStats
from gateway.observe import table
from gateway.observe.aggregate import merge_status
from gateway.observe.monitor import Monitor, PoolMonitor
from gateway.upstream.pool import Pool


async def _never() -> object:
    raise AssertionError("never connects")


def group() -> Pool:
    pool = Pool("app", [("10.0.0.2:80", _never), ("10.0.0.3:80", _never)], size=4, queue_depth=10,
                queue_timeout=5)
    a, b = pool.members
    a.busy, a.stats.requests, a.stats.errors = 3, 10, {502: 1, 504: 2}
    b.stats.connect_errors = 4
    b.down_until, b.down_reason = trio.current_time() + 10, "cannot connect to 10.0.0.3:80: Connection refused"
    pool.refresh()
    return pool


async def test_addresses_in_status_and_metrics(autojump_clock):
    monitor = Monitor(ListenerStats(), [PoolMonitor(group())])
    await trio.sleep(2)
    now = trio.current_time()
    status = table.status(monitor, now)["pools"]["app"]
    assert status["size"] == 4  # only the address in rotation
    assert status["addresses"] == {
        "10.0.0.2:80": {"busy": 3, "size": 4, "idle": 0, "up": True, "down_seconds": 0.0, "down_reason": "",
                        "requests": 10, "connect_errors": 0, "errors": {"502": 1, "504": 2}},
        "10.0.0.3:80": {"busy": 0, "size": 4, "idle": 0, "up": False, "down_seconds": 2.0,
                        "down_reason": "cannot connect to 10.0.0.3:80: Connection refused", "requests": 0,
                        "connect_errors": 4, "errors": {}},
    }
    text = table.prometheus(monitor, now)
    assert 'gateway_pool_address_busy{pool="app",address="10.0.0.2:80"} 3' in text
    assert 'gateway_pool_address_up{pool="app",address="10.0.0.3:80"} 0' in text
    assert 'gateway_pool_address_connect_errors_total{pool="app",address="10.0.0.3:80"} 4' in text
    assert 'gateway_pool_address_errors_total{pool="app",address="10.0.0.2:80"} 3' in text

    merged = merge_status([monitor.status(), monitor.status()], pid=1, uptime=1.0)
    addresses = merged["pools"]["app"]["addresses"]
    assert addresses["10.0.0.2:80"]["busy"] == 6 and addresses["10.0.0.2:80"]["errors"] == {"502": 2, "504": 4}
    assert addresses["10.0.0.3:80"]["up"] is False


async def test_a_single_address_pool_shows_no_addresses(autojump_clock):
    monitor = Monitor(ListenerStats(), [PoolMonitor(Pool("php", _never, size=2, queue_depth=1, queue_timeout=1))])
    assert "addresses" not in table.status(monitor, trio.current_time())["pools"]["php"]
    assert "gateway_pool_address" not in table.prometheus(monitor, trio.current_time())


async def test_status_and_top_show_each_address(autojump_clock):
    import io

    from rich.console import Console

    from gateway.observe.views import summary_lines, top_view

    monitor = Monitor(ListenerStats(), [PoolMonitor(group())])
    await trio.sleep(2)
    st = monitor.status()
    lines = summary_lines(st)
    assert "  address 10.0.0.2:80: 3/4 busy, 0 idle, in rotation, 10 requests, connect errors 0, errors 502: 1, " \
           "504: 2" in lines
    assert ("  address 10.0.0.3:80: 0/4 busy, 0 idle, OUT of rotation for 2 s (cannot connect to 10.0.0.3:80: "
            "Connection refused), 0 requests, connect errors 4, errors none") in lines
    out = io.StringIO()
    Console(file=out, width=80, height=24, color_system=None).print(top_view(st, "http://127.0.0.1:9180"))
    text = out.getvalue()
    assert " 10.0.0.3…" in text and "OUT" in text  # (the pool column is narrow: the name is cut)
    assert max(len(line) for line in text.splitlines()) <= 80
