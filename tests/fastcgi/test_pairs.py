from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastcgi import LocalProtocolError, decode_pairs, encode_pairs


def test_golden_short_pair():
    assert encode_pairs([(b"A", b"bc")]) == b"\x01\x02Abc"


def test_length_127_uses_one_byte_and_128_uses_four():
    assert encode_pairs([(b"n", b"v" * 127)])[:2] == b"\x01\x7f"
    assert encode_pairs([(b"n", b"v" * 128)])[:5] == b"\x01\x80\x00\x00\x80"
    assert encode_pairs([(b"n" * 128, b"")])[:5] == b"\x80\x00\x00\x80\x00"


def test_bytes_are_kept_as_bytes():
    pairs = [(b"REQUEST_URI", b"/caf\xe9?\xff"), (b"EMPTY", b"")]
    assert decode_pairs(encode_pairs(pairs)) == pairs


@pytest.mark.parametrize(
    "raw",
    [b"\x05", b"\x80\x00\x00", b"\x01\x05A", b"\x02\x00A"],
    ids=["one-length", "short-4-byte-length", "value-cut", "name-cut"],
)
def test_truncated_streams_are_errors(raw):
    with pytest.raises(LocalProtocolError, match="truncated"):
        decode_pairs(raw)


@given(st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=300)), max_size=20))
def test_round_trip(pairs):
    assert decode_pairs(encode_pairs(pairs)) == pairs
