"""The leaky bucket as nginx's limit_req, the failure window, and the
fixed-size table: pure, times given by the test."""

from __future__ import annotations

import pytest

from gateway.http.prefix import by_length, longest
from gateway.http.ratelimit import (
    WAYS,
    Limit,
    SlotTable,
    add_failure,
    address_key,
    admit,
    blocked_for,
    init_table,
    rule_id,
    table_size,
)

RULE = rule_id("site", "rate_limit", "0")


def table(sets: int = 64) -> SlotTable:
    buf = bytearray(table_size(sets))
    init_table(buf, sets, b"salt")
    return SlotTable(buf)


def run(limit: Limit, times: list[float], t: SlotTable | None = None, key: bytes | None = None) -> list[tuple]:
    """(allowed, delay, retry_after) per request at each of ``times``."""
    t = t or table()
    key = key or address_key(bytes([192, 0, 2, 7]), RULE)
    out = []
    for now in times:
        a = t.update(key, now, lambda state, now: admit(limit, state, now))
        out.append((a.allowed, round(a.delay, 6), a.retry_after))
    return out


def test_burst_zero_spaces_requests_by_the_rate():
    # 1r/s: the second request 0.5 s after the first is refused, the one 1 s after passes
    assert run(Limit(1.0), [0.0, 0.5, 1.0, 1.9, 2.9]) == [
        (True, 0.0, 0), (False, 0.0, 1), (True, 0.0, 0), (False, 0.0, 1), (True, 0.0, 0)]


def test_burst_is_delayed_to_the_rate_without_nodelay():
    # 2r/s, burst 3, five requests at once: 0, then 0.5, 1.0, 1.5 s of delay, the fifth refused
    got = run(Limit(2.0, burst=3), [10.0] * 5)
    assert got == [(True, 0.0, 0), (True, 0.5, 0), (True, 1.0, 0), (True, 1.5, 0), (False, 0.0, 1)]


def test_nodelay_serves_the_burst_at_once_and_it_still_counts():
    got = run(Limit(1.0, burst=2, nodelay=True), [0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    assert got == [(True, 0.0, 0)] * 3 + [(False, 0.0, 1), (True, 0.0, 0), (False, 0.0, 1)]


def test_a_refused_request_does_not_lengthen_the_penalty():
    # hammering at 100 r/s against 1r/s: one request per second passes, as nginx
    t = table()
    times = [i / 100 for i in range(1000)]
    passed = [now for now, (ok, _, _) in zip(times, run(Limit(1.0), times, t), strict=True) if ok]
    assert len(passed) == 10
    assert all(b - a == pytest.approx(1.0) for a, b in zip(passed, passed[1:], strict=False))


def test_retry_after_is_when_the_next_request_would_pass():
    limit = Limit(1 / 60, burst=0)  # 1r/m
    assert run(limit, [0.0, 1.0]) == [(True, 0.0, 0), (False, 0.0, 59)]  # the next passes at 60 s
    got = run(Limit(0.5, burst=2, nodelay=True), [0.0, 0.0, 0.0, 0.0])
    assert got[-1] == (False, 0.0, 2)  # excess 3 over burst 2 at 0.5 r/s: 2 s


def test_per_minute_rate_counts_across_a_long_idle():
    limit = Limit(30 / 60, burst=0)
    assert run(limit, [0.0, 2.0, 3.0, 1000.0]) == [(True, 0.0, 0), (True, 0.0, 0), (False, 0.0, 1),
                                                   (True, 0.0, 0)]


def test_failure_window():
    state = None
    now = 100.0
    for _ in range(5):
        assert blocked_for(state, now, 5, 60.0) == 0
        state = add_failure(state, now, 60.0)[:2]
        now += 1.0
    assert blocked_for(state, now, 5, 60.0) == 55  # the window opened at 100, closes at 160
    assert blocked_for(state, 160.0, 5, 60.0) == 0
    assert add_failure(state, 160.0, 60.0) == (1.0, 160.0, 220.0)  # a new window


def test_clients_and_rules_are_counted_apart():
    t = table()
    limit = Limit(1.0)
    a = address_key(bytes([192, 0, 2, 7]), RULE)
    b = address_key(bytes(range(16)), RULE)
    other_rule = address_key(bytes([192, 0, 2, 7]), rule_id("site", "rate_limit", "1"))
    assert run(limit, [0.0], t, a) == [(True, 0.0, 0)]
    assert run(limit, [0.1], t, b) == [(True, 0.0, 0)]
    assert run(limit, [0.1], t, other_rule) == [(True, 0.0, 0)]
    assert run(limit, [0.2], t, a) == [(False, 0.0, 1)]


def test_an_address_flood_stays_in_the_table_and_evicts_the_oldest():
    t = table(sets=4)  # 32 slots
    limit = Limit(1.0)
    victim = address_key(bytes([10, 0, 0, 1]), RULE)
    assert run(limit, [0.0], t, victim) == [(True, 0.0, 0)]
    # 10000 other addresses within the same second: memory stays 32 slots
    for i in range(10_000):
        key = address_key(i.to_bytes(4, "big"), RULE)
        t.update(key, 0.5, lambda state, now: admit(limit, state, now))
    assert len(t.buf) == table_size(4)
    assert t.evictions >= 10_000 - 4 * WAYS
    # the victim's state was pushed out: it starts afresh (served, not refused)
    assert run(limit, [0.6], t, victim) == [(True, 0.0, 0)]


def test_expired_states_are_reused_without_counting_an_eviction():
    t = table(sets=1)
    limit = Limit(10.0)
    for i in range(WAYS):
        t.update(address_key(bytes([10, 0, 0, i]), RULE), 0.0, lambda s, now: admit(limit, s, now))
    # 0.1 s later each state has expired (excess 0 at 10 r/s): the set's slots are free again
    for i in range(WAYS):
        t.update(address_key(bytes([10, 0, 1, i]), RULE), 0.2, lambda s, now: admit(limit, s, now))
    assert t.evictions == 0


def test_a_buffer_that_is_no_table_is_refused():
    with pytest.raises(ValueError, match="not a rate-limit table"):
        SlotTable(bytearray(table_size(4)))


def test_longest_prefix_decides_whatever_the_order():
    rules = by_length([("/", "site"), ("/wp-admin/admin-ajax.php", "ajax"), ("/wp-admin/", "admin")])
    assert longest("/wp-admin/admin-ajax.php", rules) == "ajax"
    assert longest("/wp-admin/edit.php", rules) == "admin"
    assert longest("/blog/", rules) == "site"
    assert longest("/x", by_length([("/wp-admin/", "admin")])) is None
    # a filter (a rate limit's methods) skips a longer rule for the shorter one
    assert longest("/wp-admin/x", rules, accept=lambda v: v != "admin") == "site"
    # equal prefixes: the first given
    assert longest("/a", by_length([("/a", 1), ("/a", 2)])) == 1
