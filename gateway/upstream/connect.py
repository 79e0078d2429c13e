"""Open a stream to an upstream address, and probe an idle one.

Addresses are parsed by ``config.addresses`` (one parser for listen and
upstream addresses): ``unix:/path`` or ``host:port``; an HTTP backend's
``https://host:port`` is TLS (``open_upstream``), the certificate verified
against the system's CAs (or ``ssl_context``'s) for ``host``, which is also
the SNI name. A failed handshake is a connect error (502), one log line.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable

import trio

from .._util import socket_events
from ..config.addresses import UpstreamAddress, parse_address
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


def make_upstream_connector(address: UpstreamAddress, ssl_context: ssl.SSLContext | None = None) -> Connector:
    """A connector for a parsed backend address: plain, or TLS for ``https://``
    (``ssl_context``: default, the system's CAs with hostname checks)."""
    plain = make_connector(str(address.where))
    if not address.tls:
        return plain
    context = ssl_context or ssl.create_default_context()

    async def connect() -> trio.abc.Stream:
        stream = await plain()
        tls = trio.SSLStream(stream, context, server_hostname=address.host, https_compatible=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            await trio.aclose_forcefully(stream)
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
            raise UpstreamConnectError(f"TLS with {address} failed: {cause}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    return connect


def stream_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under ``stream`` (through a TLS layer), if any."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def has_pending_eof(stream: trio.abc.Stream) -> bool:
    """True if an idle connection's socket is readable: the peer closed or reset it
    (an idle FastCGI or HTTP/1.1 connection has nothing else to say; garbage
    makes it unusable too). False where there is no socket (memory streams)."""
    sock = stream_socket(stream)
    if sock is None:
        return False
    try:
        return bool(socket_events(sock))
    except (OSError, ValueError):
        return True
