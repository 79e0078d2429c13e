"""The real client behind trusted proxies: the trust walk as tables, as nginx's
realip module with ``real_ip_recursive on`` answers (and RFC 7239 for ``Forwarded``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.realip import RealIpSettings, TrustedProxies, parse_forwarded, real_client

PEER = ("10.0.0.2", 40000)  # a trusted proxy
TRUSTED = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "unix:"]


def xff(*lines: str, peer: tuple[str, int] = PEER, header: str = "X-Forwarded-For", proto: list[str] | None = None,
        trusted: list[str] | None = None) -> tuple[tuple[str, int], bool]:
    name = header.lower().encode()
    headers = [(b"host", b"x"), *((name, line.encode()) for line in lines)]
    headers += [(b"x-forwarded-proto", p.encode()) for p in proto or []]
    return real_client(peer, headers, RealIpSettings.from_config(TRUSTED if trusted is None else trusted, header))


@pytest.mark.parametrize(("lines", "client"), [
    (["203.0.113.7"], ("203.0.113.7", 0)),
    (["203.0.113.7, 10.1.2.3"], ("203.0.113.7", 0)),  # a trusted hop is skipped
    (["198.51.100.1, 203.0.113.7, 10.1.2.3, 192.0.2.1"], ("203.0.113.7", 0)),  # the rightmost untrusted one
    (["198.51.100.1", "203.0.113.7, 10.1.2.3"], ("203.0.113.7", 0)),  # several lines are one list
    (["1.1.1.1, 203.0.113.7", "10.1.2.3"], ("203.0.113.7", 0)),
    (["10.9.9.9, 10.1.2.3"], ("10.9.9.9", 0)),  # all trusted: the leftmost
    (["203.0.113.7:5555"], ("203.0.113.7", 5555)),  # a port becomes REMOTE_PORT
    (["[2001:db9::7]:5555"], ("2001:db9::7", 5555)),
    (["2001:db9::7"], ("2001:db9::7", 0)),
    (["2001:db9:0:0::7, 2001:db8::1"], ("2001:db9::7", 0)),  # trusted v6 skipped; compressed form
    (["::ffff:203.0.113.7"], ("203.0.113.7", 0)),  # IPv4-mapped: IPv4
    (["203.0.113.7,,  10.1.2.3 ,"], ("203.0.113.7", 0)),  # empty list elements are allowed
    ([], PEER),  # no header: the peer
    ([""], PEER),
    (["unknown"], PEER),  # garbage: the peer stays
    (["203.0.113.7, garbage, 10.1.2.3"], PEER),  # garbage anywhere: the peer stays (as nginx)
    (["203.0.113.7, 10.1.2.3 junk"], PEER),
    (["1.2.3.4:99999"], PEER),
    (["[1.2.3.4]"], PEER),
    (["fe80::1%eth0"], PEER),
    (["999.1.1.1"], PEER),
    ([", ".join(["10.0.0.1"] * 100)], PEER),  # more hops than any real chain
    (["203.0.113.7\u00e9"], PEER),  # not ASCII
])
def test_x_forwarded_for_walk(lines: list[str], client: tuple[str, int]) -> None:
    assert xff(*lines)[0] == client


def test_an_untrusted_peer_changes_nothing() -> None:
    assert xff("203.0.113.7", peer=("198.51.100.5", 1234), proto=["https"]) == (("198.51.100.5", 1234), False)
    assert xff("203.0.113.7", trusted=[], proto=["https"]) == (PEER, False)  # nobody is trusted
    # a unix-socket peer only when "unix:" is trusted
    assert xff("203.0.113.7", peer=("unix:", 0))[0] == ("203.0.113.7", 0)
    assert xff("203.0.113.7", peer=("unix:", 0), trusted=["10.0.0.0/8"])[0] == ("unix:", 0)


def test_ipv4_mapped_peer_is_matched_as_ipv4() -> None:
    assert xff("203.0.113.7", peer=("::ffff:10.0.0.2", 1))[0] == ("203.0.113.7", 0)


@pytest.mark.parametrize(("lines", "proto", "https"), [
    (["203.0.113.7"], ["https"], True),
    (["203.0.113.7"], ["HTTPS"], True),
    (["203.0.113.7"], ["http"], False),
    (["203.0.113.7"], [], False),
    (["203.0.113.7, 10.1.2.3"], ["https, http"], True),  # aligned with the chosen hop
    (["10.9.9.9, 203.0.113.7, 10.1.2.3"], ["http, https, http"], True),
    (["203.0.113.7, 10.1.2.3"], ["http, http, https"], True),  # lengths differ: the rightmost
    (["garbage"], ["https"], True),  # the client stays the peer, but the trusted peer said HTTPS
])
def test_x_forwarded_proto(lines: list[str], proto: list[str], https: bool) -> None:
    assert xff(*lines, proto=proto)[1] is https


@pytest.mark.parametrize(("lines", "client", "https"), [
    (["for=203.0.113.7"], ("203.0.113.7", 0), False),
    (['for="[2001:db9:cafe::17]:4711"'], ("2001:db9:cafe::17", 4711), False),  # RFC 7239 4's example
    (["for=192.0.2.60;proto=http;by=203.0.113.43"], ("192.0.2.60", 0), False),  # RFC 7239 4's example
    (["for=203.0.113.7;proto=https, for=10.1.2.3;proto=http"], ("203.0.113.7", 0), True),
    (["for=203.0.113.7;proto=https", "for=10.1.2.3"], ("203.0.113.7", 0), True),  # two lines: one list
    (['For="203.0.113.7:80" ; Proto=HTTPS'], ("203.0.113.7", 80), True),  # case-insensitive names, OWS
    (['for="203.0.113.7:_hidden"'], ("203.0.113.7", 0), False),  # an obfuscated port
    (["for=198.51.100.1, for=203.0.113.7, for=10.1.2.3"], ("203.0.113.7", 0), False),
    (["for=10.9.9.9, for=10.1.2.3"], ("10.9.9.9", 0), False),  # all trusted: the leftmost
    (["for=unknown"], PEER, False),  # no client named: the peer stays
    (["for=203.0.113.7, for=unknown, for=10.1.2.3"], PEER, False),  # the walk stops at unknown
    (["for=203.0.113.7, for=_hidden;proto=https, for=10.1.2.3"], PEER, True),  # ...at an obfuscated one
    (["for=unknown, for=203.0.113.7"], ("203.0.113.7", 0), False),  # beyond the client: irrelevant
    (["proto=https"], PEER, True),  # no for=: no client named
    (['for="_gazonk"'], PEER, False),
    (["for=[2001:db9::1]"], PEER, False),  # unquoted brackets are a syntax error: garbage
    (["for=2001:db9::1"], PEER, False),  # IPv6 without brackets
    (['for="203.0.113.7'], PEER, False),  # unterminated quote
    (["for=203.0.113.7;for=1.2.3.4"], PEER, False),  # a parameter twice in one element
    (["for 203.0.113.7"], PEER, False),
    (["for=not-an-address"], PEER, False),
    ([], PEER, False),
])
def test_forwarded_walk(lines: list[str], client: tuple[str, int], https: bool) -> None:
    assert xff(*lines, header="Forwarded") == (client, https)


def test_forwarded_quoted_strings_may_hold_separators() -> None:
    assert parse_forwarded([b'for="[2001:db8::1]:80";ext="a,b;c\\"d", for=1.2.3.4']) == [
        {"for": "[2001:db8::1]:80", "ext": 'a,b;c"d'}, {"for": "1.2.3.4"}]


def test_forwarded_falls_back_to_x_forwarded_proto() -> None:
    assert xff("for=203.0.113.7", header="Forwarded", proto=["https"]) == (("203.0.113.7", 0), True)
    assert xff("for=203.0.113.7;proto=http", header="Forwarded", proto=["https"]) == (("203.0.113.7", 0), False)


@pytest.mark.parametrize(("lines", "client"), [
    (["203.0.113.7"], ("203.0.113.7", 0)),
    (["  203.0.113.7 "], ("203.0.113.7", 0)),
    (["[2001:db9::1]:8080"], ("2001:db9::1", 8080)),
    (["1.1.1.1", "203.0.113.7"], ("203.0.113.7", 0)),  # the last line
    (["10.1.2.3"], ("10.1.2.3", 0)),  # one address: taken even if trusted
    (["203.0.113.7, 10.1.2.3"], PEER),  # not a list
    (["garbage"], PEER),
    ([], PEER),
])
def test_x_real_ip(lines: list[str], client: tuple[str, int]) -> None:
    assert xff(*lines, header="X-Real-IP")[0] == client


def test_trusted_proxies_parse() -> None:
    t = TrustedProxies.parse(["127.0.0.1", "10.0.0.0/8", "::1"])
    assert t.trusts("127.0.0.1") and t.trusts("10.255.0.1") and t.trusts("::1") and t.trusts("::ffff:10.0.0.1")
    assert not t.trusts("127.0.0.2") and not t.trusts("unix:") and not t.trusts("garbage")
    assert not TrustedProxies.parse([]) and TrustedProxies.parse(["unix:"]).trusts("unix:")


@given(st.lists(st.binary(max_size=80), max_size=4), st.sampled_from(["X-Forwarded-For", "Forwarded", "X-Real-IP"]),
       st.lists(st.binary(max_size=20), max_size=2))
def test_any_header_bytes_give_an_answer_never_an_exception(lines: list[bytes], header: str,
                                                            protos: list[bytes]) -> None:
    headers = [(header.lower().encode(), line) for line in lines] + [(b"x-forwarded-proto", p) for p in protos]
    (address, port), https = real_client(PEER, headers, RealIpSettings.from_config(TRUSTED, header))
    assert isinstance(https, bool) and 0 <= port <= 65535
    assert (address, port) == PEER or TrustedProxies.parse(["0.0.0.0/0", "::/0"]).trusts(address)
