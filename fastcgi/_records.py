"""Records: the 8-byte header, content, padding (FastCGI spec section 3.3).

    typedef struct {
        unsigned char version;
        unsigned char type;
        unsigned char requestIdB1, requestIdB0;
        unsigned char contentLengthB1, contentLengthB0;
        unsigned char paddingLength;
        unsigned char reserved;
        unsigned char contentData[contentLength];
        unsigned char paddingData[paddingLength];
    } FCGI_Record;

Rules:
- No IO here. ``parse_record`` reads from a ``bytearray`` the caller owns and
  says how much it consumed; the encoders return ``bytes`` (``stream_pieces``:
  the pieces for a caller's one ``b"".join``, content as views, not copies).
- A *stream* (PARAMS, STDIN, STDOUT, STDERR, DATA) is a sequence of records
  ended by one with empty content. ``encode_stream_chunk`` splits any amount of
  data into records of at most 65535 bytes and never emits an empty record by
  accident: ending a stream is always explicit (``encode_stream_end``).
- We pad every record to a multiple of 8 bytes, as the spec recommends and as
  php-fpm and nginx do; we accept any padding from the peer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._constants import MAX_CONTENT, VERSION
from ._errors import LocalProtocolError

HEADER = struct.Struct(">BBHHBx")
HEADER_SIZE = HEADER.size  # 8
#: padding of 0..7 bytes, made once
PADS = [bytes(n) for n in range(8)]


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded record. ``type`` is an int: unknown types must survive parsing
    so the application side can answer FCGI_UNKNOWN_TYPE."""

    type: int
    request_id: int
    content: bytes


def encode_record(record_type: int, request_id: int, content: bytes = b"") -> bytes:
    """Frame ``content`` (at most 65535 bytes) as one record, padded to 8 bytes."""
    n = len(content)
    if n > MAX_CONTENT:
        raise LocalProtocolError(f"record content of {n} bytes exceeds {MAX_CONTENT}")
    pad = -n & 7
    return HEADER.pack(VERSION, record_type, request_id, n, pad) + content + PADS[pad]


def stream_pieces(record_type: int, request_id: int, data: bytes) -> list[bytes | memoryview]:
    """``encode_stream_chunk``'s bytes as pieces for one ``b"".join``: each
    record's header, its content (a view of ``data``, not a copy) and padding.
    Nothing for empty data."""
    n = len(data)
    if n <= MAX_CONTENT:
        if not n:
            return []
        pad = -n & 7
        return [HEADER.pack(VERSION, record_type, request_id, n, pad), data, PADS[pad]]
    view = memoryview(data)
    pieces: list[bytes | memoryview] = []
    for i in range(0, n, MAX_CONTENT):
        part = view[i : i + MAX_CONTENT]
        pad = -len(part) & 7
        pieces += (HEADER.pack(VERSION, record_type, request_id, len(part), pad), part, PADS[pad])
    return pieces


def encode_stream_chunk(record_type: int, request_id: int, data: bytes) -> bytes:
    """Frame ``data`` of any length as as many records as needed.

    Returns ``b""`` for empty data: an empty record would end the stream, and
    that must be asked for explicitly with :func:`encode_stream_end`.
    """
    return b"".join(stream_pieces(record_type, request_id, data))


def encode_stream_end(record_type: int, request_id: int) -> bytes:
    """The empty record that closes a stream."""
    return encode_record(record_type, request_id, b"")


def parse_record(buf: bytearray) -> Record | None:
    """Remove one whole record from the front of ``buf`` and return it.

    Returns ``None`` (consuming nothing) when ``buf`` does not yet hold a whole
    record. Raises ``LocalProtocolError`` on a wrong version byte: after that the
    byte stream cannot be trusted to be framed at all.
    """
    record = take_record(buf)
    return None if record is None else Record(*record)


def take_record(buf: bytearray) -> tuple[int, int, bytes] | None:
    """``parse_record`` as a (type, request id, content) tuple: what
    ``Connection`` reads every record with (no object per record). The
    content is copied once, out of ``buf``."""
    if len(buf) < HEADER_SIZE:
        return None
    version, rtype, rid, clen, plen = HEADER.unpack_from(buf)
    if version != VERSION:
        raise LocalProtocolError(f"record with FastCGI version {version}, expected {VERSION}")
    end = HEADER_SIZE + clen
    total = end + plen
    if len(buf) < total:
        return None
    if clen:  # through a view: buf[a:b] would copy into a bytearray, then bytes() again
        with memoryview(buf) as view, view[HEADER_SIZE:end] as part:  # (released before buf shrinks)
            content = bytes(part)
    else:
        content = b""
    del buf[:total]
    return rtype, rid, content


def whole_record_header(buf: bytearray) -> tuple[int, int, int] | None:
    """(type, request id, content length) of the record at the front of ``buf``
    if ``buf`` holds all of it, else None. Consumes nothing."""
    if len(buf) < HEADER_SIZE:
        return None
    version, rtype, rid, clen, plen = HEADER.unpack_from(buf)
    if version != VERSION or len(buf) < HEADER_SIZE + clen + plen:
        return None
    return rtype, rid, clen
