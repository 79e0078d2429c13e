"""Open a stream to an upstream address, and probe an idle one.

Addresses are parsed by ``config.addresses`` (one parser for listen and
upstream addresses): ``unix:/path`` or ``host:port``.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from .._util import socket_events
from ..config.addresses import parse_address
from ..http.errors import UpstreamConnectError

Connector = Callable[[], Awaitable[trio.abc.Stream]]


def make_connector(address: str) -> Connector:
    """A connector for ``address``; ``ValueError`` if it does not parse."""
    where = parse_address(address, default_host="127.0.0.1", role="backend address")

    async def connect() -> trio.abc.Stream:
        try:
            if where.kind == "unix":
                return await trio.open_unix_socket(where.path)
            stream = await trio.open_tcp_stream(where.host, where.port)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return stream
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {address}: {exc.strerror or exc}") from exc

    return connect


def has_pending_eof(stream: trio.abc.Stream) -> bool:
    """True if an idle connection's socket is readable: the peer closed or reset it
    (an idle FastCGI connection has nothing else to say)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return False
    try:
        return bool(socket_events(sock))
    except (OSError, ValueError):
        return True
