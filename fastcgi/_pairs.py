"""Name-value pairs (FastCGI spec section 3.4).

Each length is one byte when below 128, otherwise four bytes, big-endian, with
the top bit set (so at most 2**31 - 1). Names and values are ``bytes`` end to
end: CGI variables carry whatever bytes the client sent (a URI may be Latin-1 or
broken UTF-8), and decoding is the application's business, not the framing's.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._errors import LocalProtocolError

MAX_PAIR_LENGTH = 0x7FFFFFFF


def encode_length(n: int) -> bytes:
    """A name's or value's length field: one byte below 128, else four (top bit set)."""
    if n < 128:
        return bytes((n,))
    if n > MAX_PAIR_LENGTH:
        raise LocalProtocolError(f"name or value of {n} bytes is too long for FastCGI")
    return (n | 0x80000000).to_bytes(4, "big")


#: One-byte lengths, precomputed: nearly every name and most values are short.
_SHORT = [bytes((n,)) for n in range(128)]


def encode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Encode pairs back to back. Names and values must be ``bytes``."""
    short = _SHORT
    parts: list[bytes] = []
    append = parts.append
    for name, value in pairs:
        n, v = len(name), len(value)
        append(short[n] if n < 128 else encode_length(n))
        append(short[v] if v < 128 else encode_length(v))
        append(name)
        append(value)
    return b"".join(parts)


def decode_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Decode a complete, concatenated name-value pair stream.

    Raises ``LocalProtocolError`` if ``data`` ends in the middle of a pair.
    """
    pairs: list[tuple[bytes, bytes]] = []
    pos = 0
    end = len(data)

    def length() -> int:
        nonlocal pos
        if pos >= end:
            raise LocalProtocolError("name-value pair stream truncated in a length")
        first = data[pos]
        if first < 128:
            pos += 1
            return first
        if pos + 4 > end:
            raise LocalProtocolError("name-value pair stream truncated in a 4-byte length")
        n = int.from_bytes(data[pos : pos + 4], "big") & MAX_PAIR_LENGTH
        pos += 4
        return n

    while pos < end:
        nlen = length()
        vlen = length()
        if pos + nlen + vlen > end:
            raise LocalProtocolError("name-value pair stream truncated in a name or value")
        name = data[pos : pos + nlen]
        pos += nlen
        value = data[pos : pos + vlen]
        pos += vlen
        pairs.append((bytes(name), bytes(value)))
    return pairs
