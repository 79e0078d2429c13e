"""The active backend check (``observe/health.py``) and what the verdict makes of
it, on the autojump clock: a fake probe stands in for php-fpm, dead, hung or
answering; the monitor runs its real tasks."""

from __future__ import annotations

import logging

import pytest
import trio

from gateway.metrics import ListenerStats
from gateway.observe.diagnosis import HOLD
from gateway.observe.health import CHECK_EVERY, CHECK_TIMEOUT, BackendHealth
from gateway.observe.monitor import SAMPLE_EVERY, Monitor, PoolMonitor
from gateway.upstream.pool import Pool

WITHIN = 10.0


class FakeFpm:
    """php-fpm as the probe sees it: ``answering``, dead (refuses) or hung."""

    def __init__(self) -> None:
        self.state = "answering"
        self.probes_in_flight = 0

    async def probe(self) -> None:
        self.probes_in_flight += 1
        try:
            if self.state == "dead":
                raise ConnectionRefusedError(111, "Connection refused")
            if self.state == "hung":
                await trio.sleep_forever()
        finally:
            self.probes_in_flight -= 1


async def _never_connects() -> trio.abc.Stream:
    raise AssertionError("the health check must not use the pool")


@pytest.fixture(autouse=True)
def idle_process(monkeypatch):
    """This process uses no CPU: on the autojump clock, real CPU seconds over
    virtual wall seconds would read as a busy listener."""
    monkeypatch.setattr("gateway.observe.monitor.time.process_time", lambda: 0.0)


def quiet_gateway(fpm: FakeFpm) -> tuple[Monitor, PoolMonitor]:
    """One process, one idle pool, no traffic at all."""
    pool: Pool = Pool("php", _never_connects, size=2, queue_depth=10, queue_timeout=5.0)
    pm = PoolMonitor(pool, health=BackendHealth("php", fpm.probe, "ping unix:/run/status.sock /fpm-ping"))
    return Monitor(ListenerStats(), [pm]), pm


async def until_verdict(monitor: Monitor, bottleneck: str) -> float:
    """Seconds (of the autojump clock) until the monitor, sampling at its own
    pace, gives the verdict ``bottleneck``."""
    start = trio.current_time()
    with trio.fail_after(60):
        while True:
            if (await monitor.sample()).bottleneck == bottleneck:
                return trio.current_time() - start
            await trio.sleep(SAMPLE_EVERY)


def start_checks(nursery: trio.Nursery, monitor: Monitor) -> None:
    """The monitor's health tasks (its sampler is driven by ``until_verdict``)."""
    for pm in monitor.pools:
        assert pm.health is not None
        nursery.start_soon(pm.health.run)


async def test_php_fpm_dying_on_a_quiet_site_is_backend_down_within_10s_and_clears(nursery, autojump_clock):
    fpm = FakeFpm()
    monitor, pm = quiet_gateway(fpm)
    start_checks(nursery, monitor)
    await until_verdict(monitor, "healthy")
    assert pm.health is not None
    for _ in range(3):  # quiet for a while: healthy, the check up
        await pm.health.wait_probed()
    assert pm.health.up is True
    fpm.state = "dead"
    took = await until_verdict(monitor, "backend-down")
    assert took <= CHECK_EVERY + SAMPLE_EVERY + HOLD + 0.5 and took <= WITHIN
    assert "has not answered its health check" in monitor.verdict.reason
    assert "Connection refused" in monitor.verdict.reason and "ping unix:/run/status.sock" in monitor.verdict.reason
    st = monitor.status()
    assert st["pools"]["php"]["backend"]["up"] is False
    assert "gateway_backend_up{pool=\"php\"} 0" in monitor.prometheus()
    # it stays down while php-fpm stays dead (no flapping back to healthy)
    for _ in range(30):
        await trio.sleep(SAMPLE_EVERY)
        assert (await monitor.sample()).bottleneck == "backend-down"
    fpm.state = "answering"
    took = await until_verdict(monitor, "healthy")
    assert took <= CHECK_EVERY + SAMPLE_EVERY + HOLD + 0.5
    assert monitor.status()["pools"]["php"]["backend"] == {
        "up": True, "check": "ping unix:/run/status.sock /fpm-ping", "error": "", "down_seconds": 0.0,
        "last_check_seconds_ago": monitor.status()["pools"]["php"]["backend"]["last_check_seconds_ago"]}


async def test_a_hung_php_fpm_fails_the_check_after_its_timeout(nursery, autojump_clock):
    fpm = FakeFpm()
    monitor, pm = quiet_gateway(fpm)
    assert pm.health is not None
    await pm.health.check()
    fpm.state = "hung"
    start = trio.current_time()
    assert await pm.health.check() is False
    assert trio.current_time() - start == CHECK_TIMEOUT
    assert pm.health.error == f"no answer within {CHECK_TIMEOUT:g}s"
    assert fpm.probes_in_flight == 0  # the probe was cancelled, not left behind
    start_checks(nursery, monitor)
    took = await until_verdict(monitor, "backend-down")
    assert took <= CHECK_EVERY + CHECK_TIMEOUT + SAMPLE_EVERY + HOLD + 0.5 and took <= WITHIN


async def test_probes_run_every_few_seconds_one_at_a_time(nursery, autojump_clock):
    fpm = FakeFpm()
    health = BackendHealth("php", fpm.probe, "x")
    nursery.start_soon(health.run)
    await health.wait_probed()
    first = trio.current_time()
    for _ in range(5):
        await health.wait_probed()
    assert trio.current_time() - first == 5 * CHECK_EVERY
    assert health.probes == 6


async def test_a_failing_check_is_logged_once_and_its_recovery_once(caplog, autojump_clock):
    caplog.set_level(logging.INFO, logger="gateway.observe.health")
    fpm = FakeFpm()
    health = BackendHealth("php", fpm.probe, "connect unix:/run/php.sock")
    assert health.up is None
    await health.check()
    fpm.state = "dead"
    for _ in range(5):
        await health.check()
    fpm.state = "answering"
    await health.check()
    await health.check()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["backend php is down: connect unix:/run/php.sock failed: [Errno 111] Connection refused",
                     "backend php is up again (connect unix:/run/php.sock answers)"]


async def test_a_failed_check_while_php_still_answers_is_not_backend_down(autojump_clock):
    from gateway.observe.diagnosis import Observation, PoolObservation, classify

    answering = PoolObservation(name="php", size=2, busy=1, waiting=0, queue_wait_p50=0.0, responses=5,
                                connect_errors=0, backend_up=False, backend_check="status page: refused")
    assert classify(Observation(0.0, 0.0, 0.1, (answering,))).bottleneck == "healthy"
    quiet = PoolObservation(name="php", size=2, busy=0, waiting=0, queue_wait_p50=0.0, responses=0,
                            connect_errors=0, backend_up=False, backend_check="status page: refused",
                            backend_down_for=4.2)
    v = classify(Observation(0.0, 0.0, 0.1, (quiet,)))
    assert v.bottleneck == "backend-down" and "for 4 s (status page: refused)" in v.reason
    unknown = PoolObservation(name="php", size=2, busy=0, waiting=0, queue_wait_p50=0.0, responses=0,
                              connect_errors=0, backend_up=None)
    assert classify(Observation(0.0, 0.0, 0.1, (unknown,))).bottleneck == "healthy"


def test_the_check_is_chosen_by_what_the_backend_offers():
    spawned = BackendHealth.for_backend("php", address="unix:/r/php.sock", status_address="unix:/r/status.sock",
                                        status_path="/fpm-status", ping_path="/fpm-ping")
    assert spawned.what == "ping unix:/r/status.sock /fpm-ping"
    external = BackendHealth.for_backend("ext", address="127.0.0.1:9000", status_address="unix:/r/st.sock",
                                         status_path="/status")
    assert external.what == "status page unix:/r/st.sock /status"
    bare = BackendHealth.for_backend("bare", address="127.0.0.1:9000", status_address="", status_path="/status")
    assert bare.what == "connect 127.0.0.1:9000"
