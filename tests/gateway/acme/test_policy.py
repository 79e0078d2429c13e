"""Renewal timing (pure): a third of the lifetime left, backoff doubling to
an hour, and a stored certificate reused rather than re-ordered."""

from __future__ import annotations

from gateway.acme.policy import Stored, backoff, next_attempt, renew_at

DAY = 86400.0
NAMES = ["example.com", "www.example.com"]


def test_a_90_day_certificate_is_renewed_at_day_60():
    assert renew_at(0.0, 90 * DAY) == 60 * DAY


def test_backoff_doubles_from_a_minute_to_an_hour():
    assert [backoff(n) for n in (1, 2, 3, 6, 7, 50)] == [60, 120, 240, 1920, 3600, 3600]


def test_a_stored_certificate_for_the_same_names_is_reused_until_due():
    stored = Stored(frozenset(NAMES), 0.0, 90 * DAY)
    assert next_attempt(stored, NAMES, now=DAY) == 60 * DAY
    assert next_attempt(stored, ["WWW.example.com", "example.com"], now=DAY) == 60 * DAY  # order and case


def test_missing_expired_or_other_names_is_due_now():
    stored = Stored(frozenset(NAMES), 0.0, 90 * DAY)
    assert next_attempt(None, NAMES, now=5.0) == 5.0
    assert next_attempt(stored, NAMES, now=91 * DAY) == 91 * DAY
    assert next_attempt(stored, [*NAMES, "shop.example.com"], now=DAY) == DAY


def test_a_backoff_is_honoured_even_when_due():
    assert next_attempt(None, NAMES, now=5.0, retry_at=65.0) == 65.0
    stored = Stored(frozenset(NAMES), 0.0, 90 * DAY)
    assert next_attempt(stored, NAMES, now=61 * DAY, retry_at=61 * DAY + 3600) == 61 * DAY + 3600
