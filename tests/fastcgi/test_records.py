from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastcgi import (
    MAX_CONTENT,
    LocalProtocolError,
    Record,
    RecordType,
    encode_record,
    encode_stream_chunk,
    encode_stream_end,
    parse_record,
)


def test_golden_stdout_record_is_padded_to_eight():
    # version 1, type 6 (STDOUT), request 1, length 4, padding 4, reserved 0
    assert encode_record(RecordType.STDOUT, 1, b"data") == b"\x01\x06\x00\x01\x00\x04\x04\x00data\x00\x00\x00\x00"


def test_golden_empty_record_ends_a_stream():
    assert encode_stream_end(RecordType.STDIN, 1) == b"\x01\x05\x00\x01\x00\x00\x00\x00"


def test_content_of_65535_is_one_record_and_65536_is_two():
    one = encode_stream_chunk(RecordType.STDOUT, 1, b"x" * 65535)
    buf = bytearray(one)
    rec = parse_record(buf)
    assert rec is not None and len(rec.content) == 65535
    assert buf == b""

    two = bytearray(encode_stream_chunk(RecordType.STDOUT, 1, b"y" * 65536))
    first, second = parse_record(two), parse_record(two)
    assert first is not None and second is not None
    assert (len(first.content), len(second.content)) == (65535, 1)
    assert two == b""


def test_encode_record_refuses_oversized_content():
    with pytest.raises(LocalProtocolError):
        encode_record(RecordType.STDOUT, 1, b"x" * (MAX_CONTENT + 1))


def test_empty_chunk_is_not_an_accidental_end_of_stream():
    assert encode_stream_chunk(RecordType.STDIN, 1, b"") == b""


def test_parse_waits_for_a_whole_record_and_consumes_nothing_meanwhile():
    whole = encode_record(RecordType.STDOUT, 3, b"hello")
    for cut in range(len(whole)):
        buf = bytearray(whole[:cut])
        assert parse_record(buf) is None
        assert bytes(buf) == whole[:cut]
    assert parse_record(bytearray(whole)) == Record(RecordType.STDOUT, 3, b"hello")


def test_parse_accepts_any_padding_from_the_peer():
    # header says 2 bytes content, 255 bytes of padding
    raw = b"\x01\x06\x00\x01\x00\x02\xff\x00ok" + b"\xaa" * 255 + b"NEXT"
    buf = bytearray(raw)
    assert parse_record(buf) == Record(6, 1, b"ok")
    assert buf == b"NEXT"


def test_wrong_version_is_an_error():
    with pytest.raises(LocalProtocolError, match="version"):
        parse_record(bytearray(b"\x02\x06\x00\x01\x00\x00\x00\x00"))


@given(st.binary(max_size=200_000), st.integers(1, 65535))
def test_stream_round_trip(data, rid):
    buf = bytearray(encode_stream_chunk(RecordType.STDIN, rid, data) + encode_stream_end(RecordType.STDIN, rid))
    got = b""
    while True:
        rec = parse_record(buf)
        assert rec is not None
        assert rec.request_id == rid
        assert len(rec.content) <= MAX_CONTENT
        if not rec.content:
            break
        got += rec.content
    assert got == data
    assert buf == b""
