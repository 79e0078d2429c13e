"""Gateway errors. Each maps to exactly one HTTP status and says what happened in
words an operator can act on (the client only ever sees the status page)."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status = 502
    headers: list[tuple[bytes, bytes]] = []
    #: set by an upstream exchange that failed: where it went (``upstream.exchange.Timing``),
    #: for the access log's upstream address
    timing: Any = None


class UpstreamConnectError(GatewayError):
    """Could not connect to the backend (down, socket missing, refused)."""

    status = 502


class UpstreamConnectTimeout(GatewayError):
    status = 504


class UpstreamClosedEarly(GatewayError):
    """The backend closed (or reset) the connection before any response record.

    On a reused connection this is php-fpm's pm.max_requests recycling: the
    request never ran, and one retry on a fresh connection is safe.
    ``sent`` False: not even the request head could be written, so the
    backend cannot have run it, whatever the method.
    """

    status = 502

    def __init__(self, message: str = "", *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class UpstreamProtocolError(GatewayError):
    """The backend sent something that is not FastCGI or not a CGI response."""

    status = 502


class UpstreamTimeout(GatewayError):
    """The backend sent nothing for longer than read_timeout."""

    status = 504


class UpstreamOverloaded(GatewayError):
    """The backend answered END_REQUEST with FCGI_OVERLOADED."""

    status = 503
    headers = [(b"retry-after", b"1")]


class QueueFull(GatewayError):
    """The queue in front of the pool is at its depth limit."""

    status = 503
    headers = [(b"retry-after", b"1")]


class QueueTimeout(GatewayError):
    """A request waited queue_timeout for a PHP slot without getting one."""

    status = 504


class SpoolWriteError(GatewayError):
    """A request or response body could not be buffered in temp_dir (disk full,
    quota, permissions): that request fails, the server goes on."""

    status = 507


class ClientGone(Exception):
    """The client closed its connection; nothing is to be sent."""
