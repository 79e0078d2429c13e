"""One parser for every address the gateway listens on or connects to.

Forms: ``unix:/path`` (a unix socket), ``HOST:PORT``, ``[V6]:PORT``,
``:PORT`` and a bare ``PORT``. A port must be 0-65535 (0: any free port, for
tests). What an empty host means depends on the role: all interfaces for a
listener, 127.0.0.1 for an upstream (``default_host``). A bare ``/path`` is a
unix socket too, for upstreams (php-fpm's own ``listen`` spelling).

A listen entry may carry flags after the address, separated by spaces, as
nginx's ``listen``: ``"0.0.0.0:443 tls"``, ``":8080 proxy_protocol"``,
``"[::]:443 tls proxy_protocol"``, ``"0.0.0.0:80 reuseport"`` (one socket per
worker process, SO_REUSEPORT; TCP only: a unix socket cannot be shared that
way) (``parse_listen``).

A backend's address (``parse_upstream``) is one of the forms above for a
FastCGI backend; an HTTP backend's may also be a URL without a path,
``http://HOST[:PORT]`` (port 80 by default) or ``https://HOST[:PORT]`` (443:
TLS, the certificate verified against HOST, which is also the SNI name), as
Caddy's and nginx's upstreams are written. A URL is refused for a FastCGI
backend: php-fpm does not speak HTTP.

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
LISTEN_FLAGS = ("tls", "proxy_protocol", "reuseport")


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One ``[server] listen`` entry: ``address`` as written (the key a socket
    is bound, kept and carried by), parsed as ``where``, and its flags."""

    address: str
    where: Address
    tls: bool = False
    proxy_protocol: bool = False
    reuseport: bool = False

    def __str__(self) -> str:
        flags = [name for name in LISTEN_FLAGS if getattr(self, name)]
        return " ".join([self.address, *flags])


def parse_listen(text: str, *, role: str = "listen address") -> ListenSpec:
    """Parse ``"ADDRESS [tls] [proxy_protocol] [reuseport]"``; ``ValueError``
    names a flag it does not know, a repeated one, or ``reuseport`` on a unix
    socket."""
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
    where = parse_address(address, role=role)
    if "reuseport" in seen and where.kind == "unix":
        raise ValueError(f"{role} {text!r}: reuseport is for TCP addresses (a unix socket is one socket, "
                         "shared by the worker processes)")
    return ListenSpec(address, where, tls="tls" in seen, proxy_protocol="proxy_protocol" in seen,
                      reuseport="reuseport" in seen)


#: URL schemes an HTTP backend's address may start with, and their default port.
UPSTREAM_SCHEMES = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """One backend address: ``where`` to connect, whether to speak TLS there
    (``https://``), and the text as written (its name in logs and metrics)."""

    text: str
    where: Address
    tls: bool = False

    def __str__(self) -> str:
        return self.text

    @property
    def host(self) -> str:
        """The host name TLS verifies and sends as SNI ("" for a unix socket)."""
        return self.where.host


def parse_upstream(text: str, *, http: bool, role: str = "backend address") -> UpstreamAddress:
    """Parse a backend address; ``http``: an HTTP backend's (URLs allowed).

    Raises:
        ValueError: naming ``role`` and the forms accepted.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        return UpstreamAddress(text, parse_address(text, default_host="127.0.0.1", role=role))
    if not http:
        raise ValueError(f"{role} {text!r} is a URL: a FastCGI backend is HOST:PORT or unix:/path "
                         '(URLs are for type = "http" backends)')
    scheme = scheme.lower()
    if scheme not in UPSTREAM_SCHEMES:
        raise ValueError(f"{role} {text!r}: the scheme is http:// or https://, not {scheme}://")
    rest = rest.removesuffix("/")
    if not rest or any(c in rest for c in "/?#@ \t"):
        raise ValueError(f"{role} {text!r}: write the URL as {scheme}://HOST[:PORT], without a path or user")
    port = UPSTREAM_SCHEMES[scheme]
    bracketed = rest.startswith("[") and rest.endswith("]")
    if bracketed or (":" not in rest):
        rest = f"{rest}:{port}"
    where = parse_address(rest, role=role)
    if where.kind != "tcp" or not where.host:
        raise ValueError(f"{role} {text!r}: a URL needs a host")
    if where.port == 0:
        raise ValueError(f"{role} {text!r}: port 0 cannot be connected to")
    return UpstreamAddress(text, where, tls=scheme == "https")
