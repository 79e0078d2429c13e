"""allow/deny lists: CIDRs, single addresses, "all", IPv6, IPv4-mapped IPv6."""

from __future__ import annotations

import pytest

from gateway.config.guard import parse_network
from gateway.http.access import AccessRule, AddressList


def rule(allow: list[str], deny: list[str]) -> AccessRule:
    return AccessRule(AddressList.of([parse_network(e) for e in allow]),
                      AddressList.of([parse_network(e) for e in deny]))


def test_office_only():
    office = rule(["192.0.2.0/24", "2001:db8:1::/48", "198.51.100.7"], ["all"])
    assert office.permits("192.0.2.200")
    assert office.permits("198.51.100.7")
    assert office.permits("2001:db8:1::5")
    assert office.permits("::ffff:192.0.2.9")  # an IPv4 client on a dual-stack listener
    assert not office.permits("198.51.100.8")
    assert not office.permits("2001:db8:2::5")
    assert not office.permits("unix:")  # no address: only "all" matches it, and it is in deny


def test_in_neither_list_passes():
    blocklist = rule([], ["203.0.113.0/24"])
    assert not blocklist.permits("203.0.113.5")
    assert blocklist.permits("192.0.2.1")
    assert blocklist.permits("unix:")


def test_allow_wins_over_deny():
    assert rule(["all"], ["192.0.2.0/24"]).permits("192.0.2.1")


def test_mapped_entries_are_ipv4():
    assert parse_network("::ffff:192.0.2.0/120") == parse_network("192.0.2.0/24")
    assert rule(["::ffff:192.0.2.0/120"], ["all"]).permits("192.0.2.3")


@pytest.mark.parametrize(("entry", "words"), [
    ("10.0.0.1/8", "host bits are set"),
    ("192.0.2.0/33", "not \"all\""),
    ("office", "not \"all\""),
    ("fe80::1%eth0", "not \"all\""),
    ("ALL", "not \"all\""),
])
def test_bad_entries_say_what_is_wrong(entry, words):
    with pytest.raises(ValueError, match=words):
        parse_network(entry)
