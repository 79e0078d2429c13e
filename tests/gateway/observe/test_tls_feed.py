"""The TLS counters reach the diagnosis: the monitor's observation carries
handshake CPU, handshakes and resumed ones per second over the last sample,
and the master's merged /status gives them per process."""

from __future__ import annotations

import pytest

from gateway.metrics import ListenerStats
from gateway.observe.aggregate import observation_of
from gateway.observe.monitor import Monitor


async def test_the_monitor_feeds_tls_rates_to_the_observation(autojump_clock):
    stats = ListenerStats()
    monitor = Monitor(stats, [])
    await monitor.sample()
    stats.tls.handshakes, stats.tls.resumed, stats.tls.cpu_seconds = 100, 75, 0.05
    await monitor.sample()
    cpu, handshakes, resumed = monitor.tls_now
    assert handshakes > 0
    assert resumed / handshakes == pytest.approx(0.75)
    assert cpu / handshakes == pytest.approx(0.0005)  # 0.5 ms of CPU per handshake


def test_the_merged_status_gives_tls_per_process():
    st = {"listener": {"process_cpu": 1.6, "tls": {"cpu": 1.2, "handshakes_per_second": 2000.0,
                                                    "resumed_per_second": 500.0}},
          "workers": [{"up": True, "process_cpu": 0.8}, {"up": True, "process_cpu": 0.8}]}
    obs = observation_of(st)
    assert obs.process_cpu == 0.8
    assert obs.tls_cpu == pytest.approx(0.6) and obs.tls_handshakes == 1000 and obs.tls_resumed == 250
