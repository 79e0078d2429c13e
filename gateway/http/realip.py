"""The real client address behind trusted proxies (nginx's realip module, ``real_ip_recursive on``).

Pure: addresses and header bytes in, an address out; no IO.

Policy:

- Headers are believed only from a peer in ``[server] trusted_proxies``
  (addresses, CIDR networks, ``unix:`` for peers on unix sockets). From any
  other peer they change nothing: the peer is the client, and the headers
  reach PHP as ``HTTP_X_FORWARDED_FOR`` etc., as under nginx.
- ``X-Forwarded-For`` (every header line, in order, is one comma list): walk
  from the right, skipping trusted addresses; the first untrusted one is the
  client. All trusted: the leftmost.
- ``Forwarded`` (RFC 7239): the same walk over the ``for=`` of each element;
  ``unknown``, an obfuscated identifier (``_hidden``) or an element without
  ``for=`` stops the walk, and the peer stays (we cannot name the client).
- Any other header (``X-Real-IP``): one address.
- Garbage anywhere in the list (not an address, a syntax error, more than
  ``MAX_HOPS`` hops): the peer stays. Never an exception.
- HTTPS: ``proto=https`` of the ``Forwarded`` element the walk ended at, else
  ``X-Forwarded-Proto: https``: its entry at the same hop as the chosen
  ``X-Forwarded-For`` address when both lists are as long, else its rightmost
  entry (what the nearest trusted proxy said). From a trusted peer only.

An address may carry a port (``1.2.3.4:5678``, ``[2001:db8::1]:5678``); it
becomes REMOTE_PORT, else the port is 0 (nginx's empty ``$remote_port``).
IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``) are taken as IPv4.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: More hops than this in one header is garbage (a real chain has a handful).
MAX_HOPS = 64


def parse_ip(text: str) -> IPAddress | None:
    """An IP address (IPv4-mapped IPv6 as IPv4; no zone ids), or None."""
    if "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """``[server] trusted_proxies``, parsed (the config has validated each entry)."""

    networks: tuple[IPNetwork, ...] = ()
    unix: bool = False

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        networks: list[IPNetwork] = []
        unix = False
        for entry in entries:
            if entry == "unix:":
                unix = True
            else:
                networks.append(ipaddress.ip_network(entry, strict=True))
        return cls(tuple(networks), unix)

    def __bool__(self) -> bool:
        return bool(self.networks) or self.unix

    def trusts(self, address: str) -> bool:
        """Is ``address`` (a peer's: an IP, or "unix:" for a unix socket) trusted?"""
        if address.startswith("unix:"):
            return self.unix
        ip = parse_ip(address)
        return ip is not None and self._trusts_ip(ip)

    def _trusts_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


@dataclass(frozen=True, slots=True)
class RealIpSettings:
    """Whom to believe and which header to read: ``real_ip_header`` lower-cased."""

    trusted: TrustedProxies = field(default_factory=TrustedProxies)
    header: bytes = b"x-forwarded-for"

    @classmethod
    def from_config(cls, trusted_proxies: Iterable[str], real_ip_header: str) -> RealIpSettings:
        return cls(TrustedProxies.parse(trusted_proxies), real_ip_header.lower().encode("ascii"))


# -- one address ------------------------------------------------------------------------------

_PORT = re.compile(r"[0-9]{1,5}")


def parse_node(text: str) -> tuple[IPAddress, int] | None:
    """``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]`` or
    ``[2001:db8::1]:80``: the address and the port (0: none). None: not one."""
    port = 0
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            return None
        if rest:
            if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
                return None
            port = int(rest[1:])
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return None
        if literal.version != 6:
            return None  # "[1.2.3.4]" is no IPv6 literal
        ip = parse_ip(host)
    elif text.count(":") == 1:  # IPv4 with a port
        host, _, port_text = text.partition(":")
        if not _PORT.fullmatch(port_text):
            return None
        port = int(port_text)
        ip = parse_ip(host)
        if ip is None or ip.version != 4:
            return None
    else:
        ip = parse_ip(text)
    if ip is None or port > 65535:
        return None
    return ip, port


# -- X-Forwarded-For --------------------------------------------------------------------------


def forwarded_for_list(values: Sequence[bytes]) -> list[tuple[IPAddress, int]] | None:
    """Every ``X-Forwarded-For`` line's addresses, left to right, as one list;
    None if any entry is not an address. Empty entries are skipped (RFC 9110 5.6.1)."""
    hops: list[tuple[IPAddress, int]] = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t")
            if not item:
                continue
            if len(hops) >= MAX_HOPS:
                return None
            try:
                node = parse_node(item.decode("ascii"))
            except UnicodeDecodeError:
                return None
            if node is None:
                return None
            hops.append(node)
    return hops


def walk(hops: Sequence[tuple[IPAddress, int] | None], trusted: TrustedProxies) -> int | None:
    """The index of the client in ``hops`` (left to right; None: a hop that
    cannot be named, which stops the walk): from the right, the first
    untrusted one; all trusted: the leftmost. None: no client can be named."""
    for i in range(len(hops) - 1, -1, -1):
        hop = hops[i]
        if hop is None:
            return None
        if not trusted._trusts_ip(hop[0]):
            return i
    return 0 if hops else None


# -- Forwarded (RFC 7239) ------------------------------------------------------------------------

_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_PAIR = re.compile(rb'[ \t]*(' + _TCHAR.encode() + rb'+)=(' + _TCHAR.encode() + rb'+|"(?:[^"\\]|\\.)*")[ \t]*')


def _skip_ows(text: bytes, pos: int) -> int:
    while pos < len(text) and text[pos] in b" \t":
        pos += 1
    return pos


def parse_forwarded(values: Sequence[bytes]) -> list[dict[str, str]] | None:
    """The elements of every ``Forwarded`` line, left to right: each a dict of
    lower-cased parameter names to (unquoted) values. None on a syntax error."""
    text = b", ".join(values)
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    pos = 0
    while True:
        pos = _skip_ows(text, pos)
        if pos < len(text) and text[pos] not in b",;":
            m = _PAIR.match(text, pos)
            if m is None:
                return None
            name = m.group(1).decode("ascii").lower()
            raw = m.group(2)
            if raw.startswith(b'"'):
                raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
            if name in element:
                return None  # RFC 7239 4: a parameter at most once per element
            element[name] = raw.decode("latin-1")
            pos = m.end()
        if pos >= len(text):
            break
        sep = text[pos : pos + 1]
        pos += 1
        if sep == b",":
            if element:
                elements.append(element)
            element = {}
            if len(elements) >= MAX_HOPS:
                return None
        elif sep != b";":
            return None
    if element:
        elements.append(element)
    return elements


def _forwarded_node(element: dict[str, str]) -> tuple[IPAddress, int] | None:
    """An element's ``for=`` as an address and port; None for "unknown", an
    obfuscated or missing one, or garbage. An obfuscated port (``:_x``) is
    dropped: the address still counts."""
    node = element.get("for")
    if node is None:
        return None
    if node.startswith("["):
        host, sep, rest = node[1:].partition("]")
        if sep and rest.startswith(":_"):
            node = f"[{host}]"
    elif ":" in node:
        if node.count(":") != 1:
            return None  # RFC 7239 6: an IPv6 address is in brackets (and quoted)
        host, _, port = node.partition(":")
        if port.startswith("_"):
            node = host
    return parse_node(node)  # "unknown" and "_hidden" are no address


# -- the decision -----------------------------------------------------------------------------


def _values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def _proto_list(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    return [p.strip(b" \t").lower() for v in _values(headers, b"x-forwarded-proto") for p in v.split(b",")
            if p.strip(b" \t")]


def real_client(peer: tuple[str, int], headers: Sequence[tuple[bytes, bytes]],
                settings: RealIpSettings) -> tuple[tuple[str, int], bool]:
    """The request's client (address, port) and whether it came over HTTPS as
    far as trusted proxies say; ``peer`` and False unless ``peer`` is trusted.
    ``headers``: lower-cased names."""
    trusted = settings.trusted
    if not trusted or not trusted.trusts(peer[0]):
        return peer, False
    protos = _proto_list(headers)
    header = settings.header
    if header == b"forwarded":
        elements = parse_forwarded(_values(headers, header))
        if not elements:
            return peer, bool(protos) and protos[-1] == b"https"
        i = walk([_forwarded_node(e) for e in elements], trusted)
        # the element the walk ended at (where it stopped, if it could not name the client)
        at = i if i is not None else max(j for j in range(len(elements))
                                         if _forwarded_node(elements[j]) is None)
        proto = elements[at].get("proto")
        https = proto.lower() == "https" if proto is not None else bool(protos) and protos[-1] == b"https"
        if i is None:
            return peer, https
        ip, port = _forwarded_node(elements[i])  # type: ignore[misc]
        return (str(ip), port), https
    values = _values(headers, header)
    if header == b"x-forwarded-for":
        hops = forwarded_for_list(values)
        i = walk(hops, trusted) if hops else None
        if hops and i is not None and len(protos) == len(hops):
            https = protos[i] == b"https"
        else:
            https = bool(protos) and protos[-1] == b"https"
        if hops is None or i is None:
            return peer, https
        ip, port = hops[i]
        return (str(ip), port), https
    https = bool(protos) and protos[-1] == b"https"
    if not values:
        return peer, https
    try:
        node = parse_node(values[-1].strip(b" \t").decode("ascii"))
    except UnicodeDecodeError:
        node = None
    if node is None:
        return peer, https
    return (str(node[0]), node[1]), https
