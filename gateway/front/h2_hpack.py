"""HPACK for the HTTP/2 responses we send: every field a literal, never indexed in the dynamic table.

h2 encodes headers with hpack's ``Encoder``, which adds every field it sends
to the dynamic table and searches that table for each field of each
response (a linear scan, ~14 % of the CPU of a small static answer). This
encoder, set as the connection's ``encoder``, never refers to the dynamic
table (nor does nginx's, which codes a response's fields itself): a
field in the static table as its index (``:status: 200``), any other as a
literal *without indexing*, its name as a static-table index where there is
one, its strings Huffman-coded when that is shorter (RFC 7541 6.1, 6.2.2,
5.2). ``authorization``, ``proxy-authorization`` and a cookie shorter than
20 bytes are sent *never indexed* (6.2.3), as h2 marks them.

With no dynamic table in use, a field's bytes depend on the field alone:
they are kept in one per-process table (bounded in fields and bytes,
cleared when full), so a response's header block is a join of kept bytes.
No field is ever compressed against another request's (no cross-request
compression context to attack).

The decoder's table size (``SETTINGS_HEADER_TABLE_SIZE``, which h2 sets
here as ``header_table_size``) is still acknowledged: a change is signalled
at the start of the next header block (RFC 7541 4.2), so a client that
lowers it to 0 reads our blocks as it expects; of several changes between
two blocks, the smallest and then the final are signalled.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

#: Encoded fields kept per process: at most this many, of at most
#: ``MAX_BYTES`` together (names, values and their codes), each field (name +
#: value) at most ``MAX_FIELD`` bytes: a long header a site sends with every
#: response (a Content-Security-Policy) is coded once, as hpack's indexing
#: sent it once per connection.
MAX_FIELDS = 4096
MAX_BYTES = 1 << 20
MAX_FIELD = 8192

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
#: RFC 7541 Appendix A: (name, value) -> index, and name -> its first index
_STATIC: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _i, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC.setdefault((_name, _value), _i)
    _STATIC_NAMES.setdefault(_name, _i)
_SECURE = frozenset({b"authorization", b"proxy-authorization"})

_fields: dict[tuple[bytes, bytes], bytes] = {}
_kept = [0]  # bytes in ``_fields``


def _string(data: bytes) -> bytes:
    """RFC 7541 5.2: Huffman-coded when that is shorter."""
    coded = _huffman.encode(data)
    if len(coded) < len(data):
        head = encode_integer(len(coded), 7)
        head[0] |= 0x80
        return bytes(head) + coded
    return bytes(encode_integer(len(data), 7)) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One header field's representation (no dynamic table involved)."""
    index = _STATIC.get((name, value))
    if index is not None:  # 6.1: indexed
        return bytes([0x80 | index])
    # 6.2.2 literal without indexing (0000), 6.2.3 never indexed (0001), 4-bit name index
    flag = 0x10 if name in _SECURE or (name == b"cookie" and len(value) < 20) else 0x00
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        head = encode_integer(name_index, 4)
        head[0] |= flag
        return bytes(head) + _string(value)
    return bytes([flag]) + _string(name) + _string(value)


class ResponseEncoder:
    """Stands in for hpack's ``Encoder`` on a server's h2 connection (``encode``, ``header_table_size``)."""

    __slots__ = ("_size", "_changes")

    def __init__(self) -> None:
        self._size = 4096  # RFC 9113 6.5.2: SETTINGS_HEADER_TABLE_SIZE's initial value
        self._changes: list[int] = []

    @property
    def header_table_size(self) -> int:
        return self._size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        if value != self._size:
            self._size = value
            self._changes.append(value)

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        """The header block of ``headers`` (lower-case names, as h2 sends them)."""
        parts: list[bytes] = []
        changes = self._changes
        if changes:  # 6.3: dynamic table size updates first
            # 4.2: of several changes since the last block, the smallest and then
            # the final one (at most two): each within the limit in force
            smallest, final = min(changes), changes[-1]
            for size in (smallest, final) if final != smallest else (final,):
                head = encode_integer(size, 5)
                head[0] |= 0x20
                parts.append(bytes(head))
            self._changes = []
        fields = _fields
        for field in headers:
            encoded = fields.get(field)  # (a HeaderTuple is a tuple: same hash, same key)
            if encoded is None:
                name, value = field
                encoded = encode_field(name, value)
                size = len(name) + len(value)
                if size <= MAX_FIELD:
                    size += len(encoded)
                    if len(fields) >= MAX_FIELDS or _kept[0] + size > MAX_BYTES:
                        fields.clear()
                        _kept[0] = 0
                    fields[(name, value)] = encoded
                    _kept[0] += size
            parts.append(encoded)
        return b"".join(parts)
