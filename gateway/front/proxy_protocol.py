"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans-IO.

A proxy in front (HAProxy ``send-proxy``/``send-proxy-v2``, an AWS NLB,
…) sends it first on each connection to say who its client is. Policy (the
IO is ``listen``'s and ``Downstream.receive_prefix``'s):

- Only on listeners flagged ``proxy_protocol``, and only from peers in
  ``trusted_proxies``: any other peer is closed at once (one log line).
- The header must be complete within ``timeouts.tls_handshake``; a header
  that is malformed, too long or cut short closes the connection (one log
  line, never a traceback).
- ``ProxyHeaderReader.offer`` takes exactly the header's bytes and not one
  more, so what follows (an HTTP request, a TLS ClientHello) stays in the
  socket for the next layer: the caller peeks, offers, then consumes what
  was taken.
- v1: ``PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`` or ``PROXY UNKNOWN …\\r\\n``,
  107 bytes at most. v2: the 12-byte signature, version 2, command LOCAL or
  PROXY, family UNSPEC/INET/INET6/UNIX over STREAM (or UNSPEC), and at most
  ``MAX_V2_PAYLOAD`` bytes of addresses and TLVs (TLVs are skipped).
- LOCAL (a health check of the proxy's own), UNKNOWN and UNSPEC: the TCP peer
  stays the client (``ProxyInfo.source`` None). UNIX: the client is "unix:".
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The longest v1 header, CRLF included (the spec's 107).
V1_MAX = 107
#: The longest address block and TLVs of a v2 header we accept (the spec
#: allows 65535; real senders use a few hundred bytes at most).
MAX_V2_PAYLOAD = 4096
_V2_HEAD = 16
_ADDRESS_BLOCK = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol header; ``str()`` says why, in a few words."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a header said. ``source``/``destination``: (address, port) of the
    proxy's client and of the address it was reached at; None when the
    header names none (LOCAL, UNKNOWN, UNSPEC): the TCP peer stays the client."""

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


class ProxyHeaderReader:
    """Incremental: ``offer`` the bytes that are waiting, take back how many
    belong to the header; until ``result`` is set. Raises ``ProxyHeaderError``
    as soon as the bytes cannot be a header."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._version = 0  # 0: not known yet
        self._total = 0  # v2: the header's length, once its first 16 bytes are in
        self.result: ProxyInfo | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def wanted(self) -> int:
        """The most bytes that may still belong to the header (how much to peek)."""
        if self.done:
            return 0
        if self._version == 2:
            return (self._total or _V2_HEAD) - len(self._buf)
        return V1_MAX - len(self._buf)

    def offer(self, data: bytes | bytearray | memoryview) -> int:
        """Take the bytes of ``data`` that belong to the header (from its
        start, up to its end); return how many were taken."""
        data = bytes(data)
        taken = 0
        while taken < len(data) and not self.done:
            if not self._version:
                first = data[taken]
                if first == V1_PREFIX[0]:
                    self._version = 1
                elif first == V2_SIGNATURE[0]:
                    self._version = 2
                else:
                    raise ProxyHeaderError("not a PROXY protocol header")
            rest = data[taken:]
            taken += self._offer_v1(rest) if self._version == 1 else self._offer_v2(rest)
        return taken

    # -- version 1 -------------------------------------------------------------------------

    def _offer_v1(self, data: bytes) -> int:
        room = V1_MAX - len(self._buf)
        end = data.find(b"\n", 0, room)
        take = end + 1 if end >= 0 else min(len(data), room)
        self._buf += data[:take]
        head = bytes(self._buf[: len(V1_PREFIX)])
        if not V1_PREFIX.startswith(head):
            raise ProxyHeaderError("not a PROXY protocol header")
        if end >= 0:
            self.result = _parse_v1(bytes(self._buf))
        elif len(self._buf) >= V1_MAX:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
        return take

    # -- version 2 -------------------------------------------------------------------------

    def _offer_v2(self, data: bytes) -> int:
        if len(self._buf) < _V2_HEAD:
            take = min(len(data), _V2_HEAD - len(self._buf))
            self._buf += data[:take]
            sig = bytes(self._buf[:12])
            if not V2_SIGNATURE.startswith(sig):
                raise ProxyHeaderError("not a PROXY protocol header (bad v2 signature)")
            if len(self._buf) == _V2_HEAD:
                self._total = _V2_HEAD + _check_v2_head(bytes(self._buf))
                if self._total == _V2_HEAD:
                    self.result = _parse_v2(bytes(self._buf))
            return take
        take = min(len(data), self._total - len(self._buf))
        self._buf += data[:take]
        if len(self._buf) == self._total:
            self.result = _parse_v2(bytes(self._buf))
        return take


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text.startswith(b"0")):
        raise ProxyHeaderError("v1 header: bad port")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("v1 header: bad port")
    return port


def _parse_v1(line: bytes) -> ProxyInfo:
    if not line.endswith(b"\r\n"):
        raise ProxyHeaderError("v1 header does not end with CRLF")
    parts = line[:-2].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyInfo(1)  # the rest of the line is to be ignored (spec 2.1)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("v1 header: not TCP4, TCP6 or UNKNOWN with two addresses and two ports")
    cls = ipaddress.IPv4Address if parts[1] == b"TCP4" else ipaddress.IPv6Address
    try:
        src, dst = cls(parts[2].decode("ascii")), cls(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError(f"v1 header: bad {parts[1].decode()} address") from None
    return ProxyInfo(1, (_text(src), _port(parts[4])), (_text(dst), _port(parts[5])))


def _text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _check_v2_head(head: bytes) -> int:
    """The payload length the first 16 bytes announce, or ``ProxyHeaderError``."""
    version, command = head[12] >> 4, head[12] & 0xF
    if version != 2:
        raise ProxyHeaderError(f"v2 header: unsupported version {version}")
    if command not in (0x0, 0x1):
        raise ProxyHeaderError(f"v2 header: unknown command {command}")
    length = int.from_bytes(head[14:16], "big")
    if length > MAX_V2_PAYLOAD:
        raise ProxyHeaderError(f"v2 header: {length} bytes of addresses and TLVs (more than {MAX_V2_PAYLOAD})")
    family, transport = head[13] >> 4, head[13] & 0xF
    if command == 0x1 and family in _ADDRESS_BLOCK and length < _ADDRESS_BLOCK[family]:
        raise ProxyHeaderError("v2 header: shorter than its address block")
    if family > 0x3 or transport > 0x2:
        raise ProxyHeaderError("v2 header: unknown address family or transport")
    return length


def _parse_v2(header: bytes) -> ProxyInfo:
    command, family, transport = header[12] & 0xF, header[13] >> 4, header[13] & 0xF
    if command == 0x0 or family == 0x0 or transport == 0x0:
        return ProxyInfo(2)  # LOCAL, or UNSPEC: the connection's own addresses stand
    if transport != 0x1:
        raise ProxyHeaderError("v2 header: a datagram transport on a stream connection")
    body = header[_V2_HEAD:]
    if family == 0x1:
        src4, dst4 = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
        return ProxyInfo(2, (str(src4), sport), (str(dst4), dport))
    if family == 0x2:
        src6, dst6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
        return ProxyInfo(2, (_text(src6), sport), (_text(dst6), dport))
    return ProxyInfo(2, ("unix:", 0), ("unix:", 0))  # UNIX: paths, not addresses
