"""The metric table (``gateway/observe/table.py``): its rows are well formed,
one added row shows everywhere, and its merge rules say what the master shows."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observe import table
from gateway.observe.aggregate import merge_prometheus, merge_status
from gateway.observe.table import (
    ABSENT,
    TABLE,
    Merging,
    PoolMetric,
    ProcessMetric,
    add,
    add_by_key,
    add_each,
    first,
    first_unless,
    most_severe,
    weighted_by,
    worst,
    worst_known,
)

from .observe_fixture import frozen_monitor


def test_every_row_is_shown_somewhere_and_named_by_the_conventions():
    for row in TABLE:
        assert row.name is not None or row.json is not None, row.help
        assert row.help.endswith("."), row.help
        if row.name is not None:
            assert row.name.startswith("gateway_")
            assert row.name.endswith("_total") == (row.kind == "counter"), row.name
            assert row.kind != "info", "an info row has no Prometheus type: /status only"
        if row.master is not None:
            assert isinstance(row, ProcessMetric), "the master computes process-wide rows only"
        if row.series:
            assert row.label is not None


def test_no_two_rows_share_a_json_key():
    process = [row.json for row in TABLE if row.json is not None and isinstance(row, ProcessMetric)]
    pool = [row.json for row in TABLE if row.json is not None and isinstance(row, PoolMetric)]
    assert len(set(process)) == len(process)
    assert len(set(pool)) == len(pool)


async def test_one_row_adds_a_metric_to_status_metrics_and_the_merge(autojump_clock):
    sheds = PoolMetric("gateway_pool_sheds_total", "counter", "Requests shed.", lambda pm, now: len(pm.pool.name),
                       ("sheds_total",))
    rows = (*TABLE, sheds)
    first_process, second_process = frozen_monitor(), frozen_monitor(second=True)
    st = table.status(first_process, 0.0, rows)
    assert st["pools"]["php"]["sheds_total"] == 3 and st["pools"]["bare"]["sheds_total"] == 4
    text = table.prometheus(first_process, 0.0, rows)
    samples = {(s.name, s.labels["pool"]): s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name.startswith("gateway_pool_sheds")}
    assert samples == {("gateway_pool_sheds_total", "php"): 3, ("gateway_pool_sheds_total", "ext"): 3,
                       ("gateway_pool_sheds_total", "bare"): 4}
    merged = table.merge([st, table.status(second_process, 0.0, rows)], asked=2, rows=rows)
    assert merged["pools"]["php"]["sheds_total"] == 6  # a counter: the processes' sum


def test_rules():
    def m(*values, holders=None, asked=2, merged=None, own=ABSENT):
        return Merging(list(values), holders or [{} for _ in values], asked, merged or {}, own)

    assert add(m(1, 2, 3)) == 6 and add(m()) == 0
    assert add_by_key(m({"504": 1}, {"502": 2, "504": 1})) == {"502": 2, "504": 2}
    assert list(add_by_key(m({"504": 1}, {"502": 2}))) == ["502", "504"]
    assert add_each(("a", "b"))(m({"b": 1, "open": 9}, {"a": 2})) == {"a": 2, "b": 1}
    assert add_each(("a", "b"))(m()) == {"a": 0, "b": 0}
    assert worst(m(1.5, 80.0, 3.0)) == 80.0 and worst(m()) == 0.0
    assert worst_known(m(None, 0.2, 0.1)) == 0.2 and worst_known(m(None, None)) is None
    assert first(m("a", "b")) == "a" and first(m()) is None
    assert first_unless("php_fpm")(m("refused", merged={"php_fpm": {}})) is ABSENT
    assert first_unless("php_fpm")(m("refused", merged={})) == "refused"
    avg = weighted_by("responses_total")
    assert avg(m(100.0, 20.0, holders=[{"responses_total": 10}, {"responses_total": 30}])) == 40.0
    assert avg(m(100.0, holders=[{"responses_total": 0}])) == 0.0
    assert table.own(m(5, own=7)) == 7


@pytest.mark.parametrize(("verdicts", "bottleneck", "held"), [
    (["healthy", "php-waiting"], "php-waiting", 1),
    (["php-cpu", "listener", "listener"], "listener", 2),  # one process that cannot keep up is the bottleneck
    (["php-cpu", "backend-down"], "backend-down", 1),
])
def test_most_severe_verdict(verdicts, bottleneck, held):
    values = [{"bottleneck": v, "reason": f"{v} here", "for_seconds": float(i)} for i, v in enumerate(verdicts)]
    merged = most_severe(Merging(values, values, len(verdicts) + 1, {}))
    assert merged["bottleneck"] == bottleneck
    assert merged["reason"] == f"{bottleneck} here ({held} of {len(verdicts) + 1} worker processes)"
    assert merged["for_seconds"] == min(v["for_seconds"] for v in values if v["bottleneck"] == bottleneck)


def test_one_process_verdict_is_its_own():
    value = {"bottleneck": "healthy", "reason": "fine", "for_seconds": 3.0}
    assert most_severe(Merging([value], [value], 1, {})) == value


async def test_the_master_computes_the_verdict_series_from_its_merged_status(autojump_clock):
    texts = [frozen_monitor().prometheus(), frozen_monitor(second=True).prometheus()]
    merged = merge_status([frozen_monitor().status(), frozen_monitor(second=True).status()], pid=1, uptime=1.0)
    text = merge_prometheus(texts, merged)
    verdict = next(f for f in text_string_to_metric_families(text) if f.name == "gateway_verdict")
    assert {s.labels["bottleneck"]: s.value for s in verdict.samples} == {
        "healthy": 0, "listener": 1, "listener-tls": 0, "php-cpu": 0, "php-waiting": 0, "php-uncached": 0,
        "backend-down": 0}
    assert all("worker" not in s.labels for s in verdict.samples)
