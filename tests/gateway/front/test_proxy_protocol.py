"""The PROXY protocol reader, sans-IO: the spec's examples, every split, garbage.

Samples follow HAProxy's proxy-protocol.txt (v1 section 2.1, v2 section 2.2)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.front.proxy_protocol import (
    MAX_V2_PAYLOAD,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyHeaderReader,
    ProxyInfo,
)

#: the spec's v2 signature, spelled as it spells it
SPEC_SIGNATURE = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"

V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
#: the spec's worst cases: 104 bytes for TCP6, 107 for UNKNOWN
V1_TCP6_LONGEST = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                   b"65535 65535\r\n")
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
V1_UNKNOWN_LONGEST = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                      b"65535 65535\r\n")


def v2(command: int = 1, family: int = 1, transport: int = 1, body: bytes = b"", length: int | None = None) -> bytes:
    return (SPEC_SIGNATURE + bytes([0x20 | command, family << 4 | transport])
            + struct.pack("!H", len(body) if length is None else length) + body)


V2_TCP4 = v2(body=bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack("!HH", 56324, 443))
V2_TCP6 = v2(family=2, body=bytes.fromhex("20010db8000000000000000000000001") + bytes(15) + b"\x01"
             + struct.pack("!HH", 4711, 8443))
#: with TLVs after the addresses (PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY "example.com"): skipped
V2_TCP4_TLVS = v2(body=bytes([198, 51, 100, 9, 10, 0, 0, 1]) + struct.pack("!HH", 1000, 80)
                  + b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com")
V2_LOCAL = v2(command=0, family=0, transport=0)
V2_UNIX = v2(family=3, body=b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0"))

CASES = [
    (V1_TCP4, ProxyInfo(1, ("192.168.0.1", 56324), ("192.168.0.11", 443))),
    (V1_TCP6_LONGEST, ProxyInfo(1, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
                                ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))),
    (V1_UNKNOWN, ProxyInfo(1)),
    (V1_UNKNOWN_LONGEST, ProxyInfo(1)),
    (V2_TCP4, ProxyInfo(2, ("203.0.113.7", 56324), ("10.0.0.1", 443))),
    (V2_TCP6, ProxyInfo(2, ("2001:db8::1", 4711), ("::1", 8443))),
    (V2_TCP4_TLVS, ProxyInfo(2, ("198.51.100.9", 1000), ("10.0.0.1", 80))),
    (V2_LOCAL, ProxyInfo(2)),
    (V2_UNIX, ProxyInfo(2, ("unix:", 0), ("unix:", 0))),
]
NEXT = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def read(*pieces: bytes) -> tuple[ProxyInfo | None, bytes]:
    """Offer each piece in turn, as a caller would (whatever was not taken is
    offered again with the next piece); return the result and what was left."""
    reader = ProxyHeaderReader()
    pending = b""
    for piece in pieces:
        pending += piece
        taken = reader.offer(pending)
        assert 0 <= taken <= len(pending)
        pending = pending[taken:]
    return reader.result, pending


def test_the_signature_is_the_specs() -> None:
    assert V2_SIGNATURE == SPEC_SIGNATURE
    assert (len(V1_TCP6_LONGEST), len(V1_UNKNOWN_LONGEST), V1_MAX) == (104, 107, 107)


@pytest.mark.parametrize(("header", "info"), CASES)
def test_spec_samples_are_read_and_the_next_layers_bytes_left(header: bytes, info: ProxyInfo) -> None:
    assert read(header + NEXT) == (info, NEXT)


@pytest.mark.parametrize(("header", "info"), CASES)
def test_byte_by_byte(header: bytes, info: ProxyInfo) -> None:
    reader = ProxyHeaderReader()
    for i, byte in enumerate(header):
        assert not reader.done
        assert reader.wanted() >= 1
        assert reader.offer(bytes([byte])) == 1, i
    assert reader.result == info and reader.wanted() == 0
    assert reader.offer(NEXT) == 0  # done: nothing more is the header's


@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
       after=st.binary(max_size=64))
def test_any_split_gives_the_same_answer_and_takes_exactly_the_header(
        case: tuple[bytes, ProxyInfo], cuts: list[int], after: bytes) -> None:
    header, info = case
    data = header + after
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert read(*pieces) == (info, after)


@given(case=st.sampled_from(CASES), keep=st.integers(min_value=0, max_value=300))
def test_a_truncated_header_waits_for_more(case: tuple[bytes, ProxyInfo], keep: int) -> None:
    header, _ = case
    part = header[: min(keep, len(header) - 1)]
    reader = ProxyHeaderReader()
    assert reader.offer(part) == len(part)
    assert not reader.done
    assert 1 <= reader.wanted() <= max(V1_MAX, 16 + MAX_V2_PAYLOAD)


@given(st.binary(max_size=300))
def test_garbage_is_a_header_error_never_another_exception(data: bytes) -> None:
    reader = ProxyHeaderReader()
    try:
        taken = reader.offer(data)
    except ProxyHeaderError:
        return
    assert 0 <= taken <= len(data)
    assert reader.done or taken == len(data)


@given(case=st.sampled_from(CASES), at=st.integers(min_value=0, max_value=106), byte=st.integers(0, 255))
def test_a_corrupted_header_is_refused_or_read_never_a_crash(case: tuple[bytes, ProxyInfo], at: int,
                                                            byte: int) -> None:
    header, _ = case
    at %= len(header)
    bad = header[:at] + bytes([byte]) + header[at + 1:]
    try:
        read(bad + NEXT)
    except ProxyHeaderError:
        pass


@pytest.mark.parametrize(("data", "why"), [
    (NEXT, "not a PROXY protocol header"),  # a client speaking HTTP straight away
    (b"\x16\x03\x01\x02\x00\x01", "not a PROXY protocol header"),  # a TLS ClientHello
    (b"PROXX TCP4", "not a PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "bad TCP4 address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad TCP4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad TCP6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "not TCP4"),
    (b"PROXY " + b"x" * 101, "longer than 107 bytes"),  # no CRLF within 107 bytes
    (b"PROXY " + b"x" * 200 + b"\r\n", "longer than 107 bytes"),
    (SPEC_SIGNATURE[:5] + b"X", "bad v2 signature"),
    (SPEC_SIGNATURE + b"\x11\x11\x00\x0c", "unsupported version 1"),
    (SPEC_SIGNATURE + b"\x22\x11\x00\x0c", "unknown command 2"),
    (v2(length=MAX_V2_PAYLOAD + 1), f"more than {MAX_V2_PAYLOAD}"),
    (v2(length=0xFFFF), f"more than {MAX_V2_PAYLOAD}"),
    (v2(body=bytes(8)), "shorter than its address block"),  # INET needs 12
    (v2(family=4, body=bytes(12)), "unknown address family"),
    (v2(transport=2, body=bytes(12)), "datagram"),
])
def test_malformed_headers_are_refused_saying_why(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        read(data + NEXT)


def test_an_oversized_v2_header_is_refused_from_its_first_16_bytes() -> None:
    # the length is checked before a byte of the payload is read
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyHeaderError):
        reader.offer(v2(length=60000)[:16])


def test_the_reader_never_asks_for_more_than_the_header_can_hold() -> None:
    reader = ProxyHeaderReader()
    assert reader.wanted() == V1_MAX
    reader.offer(V2_TCP4[:16])
    assert reader.wanted() == len(V2_TCP4) - 16
    reader = ProxyHeaderReader()
    reader.offer(b"PROXY TCP4 ")
    assert reader.wanted() == V1_MAX - len(b"PROXY TCP4 ")


def test_local_and_unspec_keep_the_peer() -> None:
    # LOCAL with an address block (a health check may send one): still no client named
    assert read(v2(command=0, body=bytes(12)) + NEXT) == (ProxyInfo(2), NEXT)
    assert read(v2(family=0, transport=0, body=b"") + NEXT) == (ProxyInfo(2), NEXT)


def test_ipv4_mapped_addresses_are_ipv4() -> None:
    info, _ = read(b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1234 80\r\n")
    assert info is not None and info.source == ("203.0.113.7", 1234)
