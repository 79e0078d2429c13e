"""A TLS ClientHello's server name (SNI) and ALPN offer, read before the
handshake. Sans-IO.

Why: the stdlib ``ssl`` module picks a certificate in its SNI callback, which
does not see the client's ALPN list, but ACME's TLS-ALPN-01 (RFC 8737) must
answer a client offering ``acme-tls/1`` with the challenge certificate, and
every other client with the site's. So a TLS listener that may have to
answer TLS-ALPN-01 looks at the ClientHello first without taking it
(``ClientHelloPeek``, for a peeking reader; ``parse_client_hello`` on bytes
at hand), chooses the context (``acme_alpn.challenge_context``), then runs
the handshake, which reads the same bytes.

Input is untrusted: lengths are checked against what is there, the hello is
bounded (``MAX_HELLO``), anything that is not a TLS handshake record holding
a ClientHello is ``NotClientHello``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The most bytes of records read for one ClientHello (a post-quantum key
#: share makes it ~1.8 KiB; 16 KiB is one full record).
MAX_HELLO = 64 * 1024
#: The most records one ClientHello may span (real clients use one; a big
#: post-quantum hello two): more is refused, so a client sending it in tiny
#: records cannot make the reader's work grow with their number.
MAX_RECORDS = 4
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


class _Records:
    """The handshake message carried by the records at the start of a
    growing buffer, walked incrementally: each ``feed`` (the same bytes and
    more) looks only at records not seen before, so a hello that arrives in
    many pieces costs linear work."""

    def __init__(self) -> None:
        self.pos = 0  # offset of the next record header
        self.records = 0
        self.body = bytearray()  # handshake bytes from the records so far

    def feed(self, data: bytes) -> tuple[bytes | None, int]:
        """(the whole message, 0), or (None, how many bytes of ``data`` must
        be there before it can be whole: always more than ``len(data)``)."""
        body = self.body
        while True:
            if len(body) >= 4:
                need = 4 + int.from_bytes(body[1:4], "big")
                if need > MAX_HELLO:
                    raise NotClientHello("ClientHello larger than 64 KiB")
                if len(body) >= need:
                    return bytes(body[:need]), 0
            pos = self.pos
            if len(data) < pos + 5:
                if pos + 5 > MAX_HELLO:
                    raise NotClientHello("ClientHello larger than 64 KiB")
                if len(data) > pos and data[pos] != _HANDSHAKE:
                    raise NotClientHello("not a TLS handshake record")
                return None, pos + 5
            kind, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5], "big")
            if kind != _HANDSHAKE or major != 3 or not 0 < length <= 16384 + 2048:
                raise NotClientHello("not a TLS handshake record")
            if len(data) < pos + 5 + length:
                return None, pos + 5 + length
            if self.records == MAX_RECORDS:
                raise NotClientHello(f"ClientHello in more than {MAX_RECORDS} records")
            self.records += 1
            body += data[pos + 5:pos + 5 + length]
            self.pos = pos + 5 + length


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of ``data`` (the first bytes a client
    sent); None when more bytes are needed; ``NotClientHello`` otherwise."""
    message, _ = _Records().feed(data)
    return None if message is None else _parse_message(message)


def _parse_message(message: bytes) -> ClientHello:
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


#: How much a ``ClientHelloPeek`` looks at first: one record of the most a
#: ClientHello record holds, so a hello that is all there is read in one peek.
FIRST_LOOK = 5 + 16384 + 2048


class ClientHelloPeek:
    """Reads a ClientHello without taking a byte of it, for a reader that
    peeks (``front.downstream.Downstream.receive_prefix``): the handshake
    that follows reads the same bytes.

    ``offer`` gets the bytes so far (from the first), takes none, and is
    done once they hold a whole ClientHello (``hello``) or cannot be one
    (``error``: the handshake then goes on as usual and fails or succeeds on
    its own). Until then ``wanted`` is how many bytes must be there before
    looking again (more than were offered): the reader waits for those
    instead of looking at every byte that trickles in.
    """

    def __init__(self) -> None:
        self.hello: ClientHello | None = None
        self.error: NotClientHello | None = None
        self._records = _Records()
        self._need = 0

    @property
    def done(self) -> bool:
        return self.hello is not None or self.error is not None

    def wanted(self) -> int:
        if self.done:
            return 0
        return self._need or FIRST_LOOK

    def offer(self, data: bytes) -> int:
        if self.done or len(data) < self._need:
            return 0
        try:
            message, self._need = self._records.feed(bytes(data))
            if message is not None:
                self.hello = _parse_message(message)
        except NotClientHello as exc:
            self.error = exc
        return 0
