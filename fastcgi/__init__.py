"""A sans-IO FastCGI protocol library, in the image of h11.

No sockets and no trio: feed bytes in with ``Connection.receive_data``, take
events out with ``Connection.next_event``, turn events into bytes with
``Connection.send``. Both roles are implemented: ``CLIENT`` is the web server
(what the gateway uses against php-fpm), ``SERVER`` is the application (a
php-fpm stand-in for tests, and a fuzz target).
"""

from ._connection import DEFAULT_MAX_PARAMS_SIZE, NEED_DATA, Connection
from ._constants import (
    FCGI_KEEP_CONN,
    FCGI_MAX_CONNS,
    FCGI_MAX_REQS,
    FCGI_MPXS_CONNS,
    MAX_CONTENT,
    ProtocolStatus,
    RecordType,
    Role,
)
from ._errors import FastCGIError, LocalProtocolError, RemoteProtocolError
from ._events import (
    AbortRequest,
    BeginRequest,
    ConnectionClosed,
    Data,
    EndRequest,
    Event,
    GetValues,
    GetValuesResult,
    Params,
    Stderr,
    Stdin,
    Stdout,
    UnknownRecord,
    UnknownType,
)
from ._pairs import decode_pairs, encode_length, encode_pairs
from ._records import Record, encode_record, encode_stream_chunk, encode_stream_end, parse_record
from ._state import (
    CLIENT,
    CLOSED,
    DONE,
    ERROR,
    IDLE,
    MUST_CLOSE,
    SEND_OUTPUT,
    SEND_PARAMS,
    SEND_STDIN,
    SERVER,
    Side,
    State,
)

__all__ = [
    "CLIENT",
    "CLOSED",
    "DEFAULT_MAX_PARAMS_SIZE",
    "DONE",
    "ERROR",
    "FCGI_KEEP_CONN",
    "FCGI_MAX_CONNS",
    "FCGI_MAX_REQS",
    "FCGI_MPXS_CONNS",
    "IDLE",
    "MAX_CONTENT",
    "MUST_CLOSE",
    "NEED_DATA",
    "SEND_OUTPUT",
    "SEND_PARAMS",
    "SEND_STDIN",
    "SERVER",
    "AbortRequest",
    "BeginRequest",
    "Connection",
    "ConnectionClosed",
    "Data",
    "EndRequest",
    "Event",
    "FastCGIError",
    "GetValues",
    "GetValuesResult",
    "LocalProtocolError",
    "Params",
    "ProtocolStatus",
    "Record",
    "RecordType",
    "RemoteProtocolError",
    "Role",
    "Side",
    "State",
    "Stderr",
    "Stdin",
    "Stdout",
    "UnknownRecord",
    "UnknownType",
    "decode_pairs",
    "encode_length",
    "encode_pairs",
    "encode_record",
    "encode_stream_chunk",
    "encode_stream_end",
    "parse_record",
]
