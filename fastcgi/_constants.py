"""Numbers from the FastCGI 1.0 specification (Open Market, 1996), section 8."""

from __future__ import annotations

import enum

#: Protocol version carried in every record header (spec 3.3).
VERSION = 1

#: The largest content a single record can carry: the length field is 16 bits.
MAX_CONTENT = 0xFFFF

#: Request id 0 is reserved for management records (spec 3.3).
NULL_REQUEST_ID = 0

#: Flag in FCGI_BEGIN_REQUEST: the application keeps the connection open
#: after FCGI_END_REQUEST (spec 5.1).
FCGI_KEEP_CONN = 1


class RecordType(enum.IntEnum):
    BEGIN_REQUEST = 1
    ABORT_REQUEST = 2
    END_REQUEST = 3
    PARAMS = 4
    STDIN = 5
    STDOUT = 6
    STDERR = 7
    DATA = 8
    GET_VALUES = 9
    GET_VALUES_RESULT = 10
    UNKNOWN_TYPE = 11


class Role(enum.IntEnum):
    RESPONDER = 1
    AUTHORIZER = 2
    FILTER = 3


class ProtocolStatus(enum.IntEnum):
    REQUEST_COMPLETE = 0
    CANT_MPX_CONN = 1
    OVERLOADED = 2
    UNKNOWN_ROLE = 3


#: Variable names an application may be asked for with FCGI_GET_VALUES (spec 4.1).
FCGI_MAX_CONNS = b"FCGI_MAX_CONNS"
FCGI_MAX_REQS = b"FCGI_MAX_REQS"
FCGI_MPXS_CONNS = b"FCGI_MPXS_CONNS"
