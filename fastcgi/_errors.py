"""Errors, in the shape of h11's.

``FastCGIError`` is abstract. ``LocalProtocolError`` means "you, the caller, tried
to do something the protocol forbids"; ``RemoteProtocolError`` means "the peer
did". Internally everything raises ``LocalProtocolError``; ``Connection.next_event``
converts to ``RemoteProtocolError`` at the one public receive boundary, as h11 does.
Each error carries ``http_status_hint``: the HTTP status a gateway should answer
with when this error ends a request (502 for a broken backend by default).
"""

from __future__ import annotations


class FastCGIError(Exception):
    """Base class; never raised directly."""

    def __init__(self, msg: str, *, http_status_hint: int = 502) -> None:
        if type(self) is FastCGIError:
            raise TypeError("FastCGIError is abstract; raise a subclass")
        super().__init__(msg)
        self.http_status_hint = http_status_hint

    def _reraise_as(self, cls: type[FastCGIError]) -> None:
        raise cls(str(self), http_status_hint=self.http_status_hint) from self


class LocalProtocolError(FastCGIError):
    """Our side tried to do something illegal."""


class RemoteProtocolError(FastCGIError):
    """The peer sent something illegal, or closed the connection mid-request."""
