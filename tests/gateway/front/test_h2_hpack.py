"""``h2_hpack``: our responses' header blocks, read back by hpack's own
decoder (and by a real h2 client over a connection, in test_h2*)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hpack import Decoder, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError

from gateway.front import h2_hpack
from gateway.front.h2_hpack import ResponseEncoder, encode_field

FIELDS = [
    (b":status", b"200"),
    (b":status", b"418"),
    (b"server", b"gateway"),
    (b"date", b"Fri, 27 Nov 2026 10:00:00 GMT"),
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"1024"),
    (b"accept-ranges", b"bytes"),
    (b"accept-encoding", b"gzip, deflate"),  # (a static pair: one byte)
    (b"etag", b'"5f3a-400"'),
    (b"x-frame-options", b"DENY"),
    (b"x-\xff-name", b"\x00\xff latin-1 \x7f"),
    (b"set-cookie", b"a=b; Path=/; HttpOnly"),
    (b"x-long", b"v" * 5000),
    (b"x-empty", b""),
]


def test_a_block_reads_back_as_what_was_sent_and_leaves_the_decoders_table_empty():
    decoder = Decoder()
    block = ResponseEncoder().encode(FIELDS)
    assert decoder.decode(block, raw=True) == FIELDS
    assert len(decoder.header_table.dynamic_entries) == 0
    assert decoder.decode(ResponseEncoder().encode(FIELDS), raw=True) == FIELDS  # (and again: nothing kept)


def test_static_pairs_are_one_byte_and_strings_huffman_coded_when_shorter():
    assert encode_field(b":status", b"200") == b"\x88"
    assert encode_field(b"accept-encoding", b"gzip, deflate") == bytes([0x80 | 16])
    # content-length is static index 28: literal without indexing, 4-bit prefix (15 + 13)
    assert encode_field(b"content-length", b"1024")[:2] == b"\x0f\x0d"
    date = encode_field(b"date", b"Fri, 27 Nov 2026 10:00:00 GMT")
    assert date[:2] == b"\x0f\x12" and date[2] & 0x80 and len(date) < 3 + 29  # index 33; Huffman: shorter
    raw = encode_field(b"x-bin", b"\xff\xfe\xfd")
    assert raw[:2] == b"\x00\x84" and raw[6:] == b"\x03\xff\xfe\xfd"  # Huffman name, raw value (Huffman: longer)


def test_credentials_are_never_indexed():
    decoder = Decoder()
    block = ResponseEncoder().encode([(b":status", b"200"), (b"authorization", b"secret"),
                                      (b"cookie", b"a=1"), (b"cookie", b"long enough to be indexed=1")])
    fields = decoder.decode(block, raw=True)
    assert [isinstance(f, NeverIndexedHeaderTuple) for f in fields] == [False, True, True, False]


def test_a_table_size_change_is_signalled_at_the_start_of_the_next_block():
    encoder = ResponseEncoder()
    decoder = Decoder()
    encoder.header_table_size = 4096  # no change: nothing said
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    encoder.header_table_size = 0
    decoder.header_table_size = 0  # (the decoder's SETTINGS, acknowledged)
    block = encoder.encode([(b":status", b"200")])
    assert block == b"\x20\x88"
    assert decoder.decode(block, raw=True) == [(b":status", b"200")]
    assert encoder.encode([(b":status", b"200")]) == b"\x88"  # said once


def test_a_client_that_shrinks_its_table_reads_our_responses():
    """A whole exchange with h2 as the client (h2 reads a block either way;
    nghttp2, which fails a connection without the size update, is in
    tests/integration/test_http2.py)."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
    server.encoder = ResponseEncoder()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # the client's ACK of our SETTINGS, and its own
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"),
                              (b":path", b"/")], end_stream=True)
    server.receive_data(client.data_to_send())
    fields = [f for f in FIELDS if f[1] != b"418" and b"\x00" not in f[1]]  # (what h2 lets a response have)
    server.send_headers(sid, fields, end_stream=True)
    events = client.receive_data(server.data_to_send())
    got = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert got.headers == fields


def test_the_kept_fields_are_bounded(monkeypatch):
    monkeypatch.setattr(h2_hpack, "MAX_FIELDS", 8)
    monkeypatch.setattr(h2_hpack, "MAX_BYTES", 4000)
    monkeypatch.setattr(h2_hpack, "_fields", {})
    monkeypatch.setattr(h2_hpack, "_kept", [0])
    encoder = ResponseEncoder()
    decoder = Decoder()
    for i in range(50):
        fields = [(b":status", b"200"), (b"x-n", b"%d" % i), (b"x-long", b"v" * 9000), (b"x-csp", b"c" * 1500)]
        assert decoder.decode(encoder.encode(fields), raw=True) == fields
        kept = h2_hpack._fields
        assert len(kept) <= 8 and sum(len(k[0]) + len(k[1]) + len(v) for k, v in kept.items()) <= 4000
        assert h2_hpack._kept[0] == sum(len(k[0]) + len(k[1]) + len(v) for k, v in kept.items())
        assert (b"x-csp", b"c" * 1500) in kept  # (a long field sent each time: kept)
    assert (b"x-long", b"v" * 9000) not in h2_hpack._fields  # (over MAX_FIELD: made each time)


def test_what_the_decoder_refuses_we_do_not_make():
    with pytest.raises(HPACKDecodingError):
        Decoder().decode(b"\xff\xff\xff\xff\xff\xff\xff", raw=True)  # (the decoder is strict)
    big = ResponseEncoder().encode([(b":status", b"200"), (b"x", b"\x00" * 70000)])
    assert Decoder(max_header_list_size=2**20).decode(big, raw=True)[1] == (b"x", b"\x00" * 70000)
