"""A TLS ClientHello's server name (SNI) and ALPN offer, read before the
handshake. Sans-IO.

Why: the stdlib ``ssl`` module picks a certificate in its SNI callback, which
does not see the client's ALPN list, but ACME's TLS-ALPN-01 (RFC 8737) must
answer a client offering ``acme-tls/1`` with the challenge certificate, and
every other client with the site's. So the listener reads the ClientHello
first (``parse_client_hello`` on the bytes so far: None until it is
complete), chooses the context (``acme_alpn.challenge_context``), then runs
the handshake over those bytes and the rest.

Input is untrusted: lengths are checked against what is there, the hello is
bounded (``MAX_HELLO``), anything that is not a TLS handshake record holding
a ClientHello is ``NotClientHello``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The most bytes of records read for one ClientHello (a post-quantum key
#: share makes it ~1.8 KiB; 16 KiB is one full record).
MAX_HELLO = 64 * 1024
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class NotClientHello(ValueError):
    """The bytes are not a TLS ClientHello (plain HTTP on a TLS port, garbage)."""


@dataclass(frozen=True)
class ClientHello:
    #: the SNI host name, lower case; None when the client sent none
    server_name: str | None
    #: the ALPN protocols offered, in the client's order
    alpn: tuple[str, ...]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise NotClientHello("a length runs past the end of the ClientHello")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        return _Reader(self.take(self.number(length_size)))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _handshake_bytes(data: bytes) -> bytes | None:
    """The handshake message from the records in ``data``, None until it is whole."""
    body = bytearray()
    pos = 0
    while True:
        if len(body) >= 4:
            need = 4 + int.from_bytes(body[1:4], "big")
            if need > MAX_HELLO:
                raise NotClientHello("ClientHello larger than 64 KiB")
            if len(body) >= need:
                return bytes(body[:need])
        if len(data) < pos + 5:
            if pos + 5 > MAX_HELLO:
                raise NotClientHello("ClientHello larger than 64 KiB")
            if len(data) > pos and data[pos] != _HANDSHAKE:
                raise NotClientHello("not a TLS handshake record")
            return None
        kind, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5], "big")
        if kind != _HANDSHAKE or major != 3 or not 0 < length <= 16384 + 2048:
            raise NotClientHello("not a TLS handshake record")
        if len(data) < pos + 5 + length:
            return None
        body += data[pos + 5:pos + 5 + length]
        pos += 5 + length


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of ``data`` (the first bytes a client
    sent); None when more bytes are needed; ``NotClientHello`` otherwise."""
    message = _handshake_bytes(data)
    if message is None:
        return None
    r = _Reader(message)
    if r.number(1) != _CLIENT_HELLO:
        raise NotClientHello("the first handshake message is not a ClientHello")
    hello = r.vector(3)
    hello.take(2 + 32)  # legacy_version, random
    hello.vector(1)  # legacy_session_id
    hello.vector(2)  # cipher_suites
    hello.vector(1)  # legacy_compression_methods
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if hello.left == 0:
        return ClientHello(None, ())  # no extensions at all (SSL 3-era clients)
    extensions = hello.vector(2)
    while extensions.left:
        kind = extensions.number(2)
        ext = extensions.vector(2)
        if kind == _EXT_SERVER_NAME:
            names = ext.vector(2)
            while names.left:
                name_type = names.number(1)
                raw = names.vector(2)
                if name_type == 0 and server_name is None:
                    try:
                        server_name = raw.take(raw.left).decode("ascii").lower().rstrip(".")
                    except UnicodeDecodeError:
                        raise NotClientHello("the server name is not ASCII") from None
        elif kind == _EXT_ALPN:
            protocols = ext.vector(2)
            offered = []
            while protocols.left:
                one = protocols.vector(1)
                offered.append(one.take(one.left).decode("latin-1"))
            alpn = tuple(offered)
    return ClientHello(server_name, alpn)
