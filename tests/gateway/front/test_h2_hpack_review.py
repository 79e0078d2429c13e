"""Review of ``h2_hpack.ResponseEncoder``: any header list, with the client's
table size changing between blocks, reads back with hpack's decoder as sent,
from a fresh process table and from the kept one (held); and RFC 7541 4.2's
rule for several changes between two blocks (failed: every change was
signalled, as hpack's ``Encoder`` does; fixed in ``ResponseEncoder.encode``)."""

from __future__ import annotations

from hpack import Decoder
from hpack.table import HeaderTable
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.front import h2_hpack
from gateway.front.h2_hpack import ResponseEncoder

_STATIC_NAMES = sorted({n for n, _ in HeaderTable.STATIC_TABLE})
_STATIC_PAIRS = [(n, v) for n, v in HeaderTable.STATIC_TABLE if v]
names = st.one_of(st.sampled_from(_STATIC_NAMES), st.binary(min_size=1, max_size=40),
                  st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=300).map(str.encode))
values = st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"200", b"gzip, deflate", b"v" * 257]))
fields = st.one_of(st.tuples(names, values), st.sampled_from(_STATIC_PAIRS))
blocks = st.lists(st.tuples(st.lists(fields, max_size=20),
                            st.lists(st.sampled_from([0, 1, 100, 4096, 65536, 2**32 - 1]), max_size=1)),
                  min_size=1, max_size=8)


@settings(max_examples=400)
@given(blocks=blocks, fresh=st.booleans())
def test_any_blocks_read_back_as_sent(blocks, fresh):
    if fresh:
        h2_hpack._fields.clear()
    encoder = ResponseEncoder()
    decoder = Decoder(max_header_list_size=2**24)
    for headers, sizes in blocks:
        for size in sizes:  # SETTINGS_HEADER_TABLE_SIZE changes, acknowledged by the client
            encoder.header_table_size = size
            decoder.max_allowed_table_size = size
        block = encoder.encode(headers)
        assert decoder.decode(block, raw=True) == headers
        assert not decoder.header_table.dynamic_entries
        if sizes:
            assert decoder.header_table.maxsize == encoder.header_table_size


def test_two_table_size_changes_between_blocks_signal_the_smallest_then_the_final():
    """RFC 7541 4.2: the client lowers SETTINGS_HEADER_TABLE_SIZE to 1, then
    to 0, before our next response. Only the smallest (0) and the final (0)
    may be signalled (at most two updates), each within the limit in force
    (6.3: one over it is a decoding error: the client's COMPRESSION_ERROR
    ends the connection)."""
    encoder = ResponseEncoder()
    encoder.header_table_size = 1
    encoder.header_table_size = 0
    decoder = Decoder()
    decoder.max_allowed_table_size = 0  # the client's setting in force when our block arrives
    assert decoder.decode(encoder.encode([(b":status", b"200")]), raw=True) == [(b":status", b"200")]
    encoder.header_table_size = 100
    encoder.header_table_size = 50
    encoder.header_table_size = 200
    block = encoder.encode([(b":status", b"200")])
    assert block == b"\x3f\x13\x3f\xa9\x01\x88", block.hex()  # 50 (the smallest), 200 (the final), :status 200
