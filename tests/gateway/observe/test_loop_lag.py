"""The loop-lag ticker (``Monitor.run_loop_lag``) on the autojump clock: a
calm loop is sampled every ``LAG_TICK_CALM`` (each wake-up costs CPU), one
that woke late every ``LAG_TICK`` until it is calm again; the lag recorded
is how late each wake-up was, whatever the tick."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.metrics import ListenerStats
from gateway.observe.monitor import LAG_BUSY_CPU, LAG_CALM, LAG_TICK, LAG_TICK_CALM, Monitor


def _ticks(monitor: Monitor) -> list[float]:
    return [at for at, _ in monitor.lag.samples]


async def test_a_calm_loop_is_sampled_every_calm_tick(nursery, autojump_clock):
    monitor = Monitor(ListenerStats(), [])
    nursery.start_soon(monitor.run_loop_lag)
    await trio.sleep(5.01)
    ticks = _ticks(monitor)
    assert len(ticks) == pytest.approx(5 / LAG_TICK_CALM, abs=1)
    assert monitor.stats.loop_lag.count == len(ticks)
    assert max(monitor.lag.values()) < 1e-9


async def test_a_late_wake_up_is_recorded_and_the_next_ones_come_every_tick(nursery, autojump_clock):
    clock: trio.testing.MockClock = autojump_clock
    monitor = Monitor(ListenerStats(), [])
    nursery.start_soon(monitor.run_loop_lag)
    await trio.sleep(LAG_TICK_CALM * 2.5)  # a few calm ticks
    calm = len(_ticks(monitor))
    due = _ticks(monitor)[-1] + LAG_TICK_CALM
    clock.jump(due + 0.2 - trio.current_time())  # the loop "blocked": the pending tick wakes 0.2 s late
    await trio.sleep(1.0)
    lags = monitor.lag.values()
    assert max(lags) == pytest.approx(0.2, abs=0.01)
    assert max(lags) >= LAG_CALM
    # after the late one: the next tick comes after LAG_TICK; it is on time, so calm ticks follow
    ticks = _ticks(monitor)
    late = max(range(len(lags)), key=lags.__getitem__)
    assert ticks[late + 1] - ticks[late] == pytest.approx(LAG_TICK)
    assert ticks[late + 2] - ticks[late + 1] == pytest.approx(LAG_TICK_CALM)
    assert calm >= 2


async def test_a_busy_process_is_sampled_every_tick_even_on_time(nursery, autojump_clock):
    """A process using a good part of a core lags by a few to tens of ms at
    times: fewer samples would miss the worst (the verdict's p99 is their max)."""
    monitor = Monitor(ListenerStats(), [])
    monitor.process_cpu = LAG_BUSY_CPU  # as the sampler found it
    nursery.start_soon(monitor.run_loop_lag)
    await trio.sleep(2.01)
    assert len(_ticks(monitor)) == pytest.approx(2 / LAG_TICK, abs=1)
