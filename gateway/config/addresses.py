"""One parser for every address the gateway listens on or connects to.

Forms: ``unix:/path`` (a unix socket), ``HOST:PORT``, ``[V6]:PORT``,
``:PORT`` and a bare ``PORT``. A port must be 0-65535 (0: any free port, for
tests). What an empty host means depends on the role: all interfaces for a
listener, 127.0.0.1 for an upstream (``default_host``). A bare ``/path`` is a
unix socket too, for upstreams (php-fpm's own ``listen`` spelling).

A listen entry may carry flags after the address, separated by spaces, as
nginx's ``listen``: ``"0.0.0.0:443 tls"``, ``":8080 proxy_protocol"``,
``"[::]:443 tls proxy_protocol"`` (``parse_listen``).

Pure: the front end, the upstream connector and ``gateway check`` all call it,
so an address that passes ``check`` is one ``serve`` can use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Address:
    """``kind`` "unix" (``path``) or "tcp" (``host``, ``port``)."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, *, default_host: str = "", role: str = "address") -> Address:
    """Parse ``text``; ``ValueError`` names ``role`` ("listen address",
    "backend address") and the forms accepted."""
    if text.startswith("unix:"):
        if not text[5:]:
            raise ValueError(f"{role} {text!r} has no socket path after unix:")
        return Address("unix", path=text[5:])
    if text.startswith("/"):
        return Address("unix", path=text)
    if text.isdigit():
        host, port_text = "", text
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"{role} {text!r} is not HOST:PORT, [V6]:PORT, :PORT or unix:/path")
        if host.startswith("["):
            if not host.endswith("]"):
                raise ValueError(f"{role} {text!r}: an IPv6 address goes in brackets, [::1]:8080")
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"{role} {text!r}: an IPv6 address goes in brackets, [::1]:8080")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{role} {text!r}: port {port} is out of range (1-65535)")
    return Address("tcp", host=host or default_host, port=port)


#: What a listen entry may say after its address (nginx's ``listen`` parameters).
LISTEN_FLAGS = ("tls", "proxy_protocol")


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One ``[server] listen`` entry: ``address`` as written (the key a socket
    is bound, kept and carried by), parsed as ``where``, and its flags."""

    address: str
    where: Address
    tls: bool = False
    proxy_protocol: bool = False

    def __str__(self) -> str:
        flags = [name for name in LISTEN_FLAGS if getattr(self, name)]
        return " ".join([self.address, *flags])


def parse_listen(text: str, *, role: str = "listen address") -> ListenSpec:
    """Parse ``"ADDRESS [tls] [proxy_protocol]"``; ``ValueError`` names a
    flag it does not know, or a repeated one."""
    parts = text.split()
    if not parts:
        raise ValueError(f"{role} is empty")
    address, *flags = parts
    seen: set[str] = set()
    for flag in flags:
        if flag not in LISTEN_FLAGS:
            raise ValueError(f"{role} {text!r}: unknown flag {flag!r} (known: {', '.join(LISTEN_FLAGS)})")
        if flag in seen:
            raise ValueError(f"{role} {text!r}: flag {flag!r} given twice")
        seen.add(flag)
    return ListenSpec(address, parse_address(address, role=role), tls="tls" in seen,
                      proxy_protocol="proxy_protocol" in seen)
