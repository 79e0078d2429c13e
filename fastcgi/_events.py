"""Events: what a FastCGI conversation says, as frozen dataclasses.

One event per thing that matters, not per record: a PARAMS stream may span many
records but arrives as one ``Params`` event once its empty terminator is seen.
Byte streams (STDIN, STDOUT, STDERR, DATA) arrive one event per record, and an
event with empty ``data`` is the end of that stream, exactly as on the wire
(spec 3.3), so nothing is hidden from the caller.

Don't subclass these: the state machine dispatches on ``type(event)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._constants import ProtocolStatus, Role

__all__ = [
    "AbortRequest",
    "BeginRequest",
    "ConnectionClosed",
    "Data",
    "EndRequest",
    "Event",
    "GetValues",
    "GetValuesResult",
    "Params",
    "Stderr",
    "Stdin",
    "Stdout",
    "UnknownRecord",
    "UnknownType",
]


@dataclass(frozen=True, slots=True)
class BeginRequest:
    """Web server -> application: a request starts (spec 5.1)."""

    role: Role = Role.RESPONDER
    keep_conn: bool = True
    request_id: int = 1


@dataclass(frozen=True, slots=True)
class Params:
    """Web server -> application: the whole PARAMS stream (CGI variables) as bytes pairs."""

    params: tuple[tuple[bytes, bytes], ...] = ()
    request_id: int = 1


@dataclass(frozen=True, slots=True)
class Stdin:
    """Web server -> application: request body bytes; empty ``data`` ends the stream."""

    data: bytes = b""
    request_id: int = 1


@dataclass(frozen=True, slots=True)
class Data:
    """Web server -> application: FILTER role file data; empty ``data`` ends the stream."""

    data: bytes = b""
    request_id: int = 1


@dataclass(frozen=True, slots=True)
class AbortRequest:
    """Web server -> application: please stop (spec 5.4). php-fpm ignores it."""

    request_id: int = 1


@dataclass(frozen=True, slots=True)
class Stdout:
    """Application -> web server: response bytes; empty ``data`` ends the stream."""

    data: bytes = b""
    request_id: int = 1


@dataclass(frozen=True, slots=True)
class Stderr:
    """Application -> web server: error-log bytes; empty ``data`` ends the stream."""

    data: bytes = b""
    request_id: int = 1


@dataclass(frozen=True, slots=True)
class EndRequest:
    """Application -> web server: the request is over (spec 5.5).

    ``app_status`` is the script's exit status; ``protocol_status`` says whether
    the application completed the request or refused it (overloaded, cannot
    multiplex, unknown role).
    """

    app_status: int = 0
    protocol_status: ProtocolStatus = ProtocolStatus.REQUEST_COMPLETE
    request_id: int = 1


@dataclass(frozen=True, slots=True)
class GetValues:
    """Web server -> application, management record: ask for variables (spec 4.1)."""

    names: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class GetValuesResult:
    """Application -> web server, management record: the variables it knows."""

    values: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class UnknownType:
    """Application -> web server, management record: "I don't know record type N" (spec 4.2)."""

    record_type: int


@dataclass(frozen=True, slots=True)
class UnknownRecord:
    """Received by the application side: a management record of a type it does not know.

    The application should answer with ``UnknownType(record_type)``.
    """

    record_type: int
    content: bytes = b""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side of the connection (``receive_data(b"")``), or,
    sent, that we are closing ours."""


Event = (
    BeginRequest
    | Params
    | Stdin
    | Data
    | AbortRequest
    | Stdout
    | Stderr
    | EndRequest
    | GetValues
    | GetValuesResult
    | UnknownType
    | UnknownRecord
    | ConnectionClosed
)
