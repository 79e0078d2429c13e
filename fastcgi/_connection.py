"""``Connection``: one FastCGI transport connection, either role, no IO.

The verbs are h11's:

- ``receive_data(data)``: feed bytes read from the socket; ``b""`` means EOF.
- ``next_event()``: the next ``Event``, or ``NEED_DATA``.
- ``send(event)``: the bytes to write for ``event`` (``None`` for ConnectionClosed).
- ``send_request(request_id, params, stdin)``: the web server's BEGIN_REQUEST,
  PARAMS (pairs already encoded) and STDIN in one piece: ``send`` of those
  events one by one, same checks, same bytes, one join.
- ``send_failed()``: writing those bytes failed; our side goes to ERROR.
- ``start_next_cycle()``: both sides DONE with keep-conn: reuse the connection.

Strategy: bytes accumulate in one ``bytearray``; ``next_event`` peels whole
records off its front and maps them to events for *their* role. Every buffer
is bounded: a record is at most 8 + 65535 + 255 bytes by construction, and the
PARAMS stream, which we must hold whole before decoding, is capped by
``max_params_size``. One request is active at a time (php-fpm does not
multiplex; a FastCGI record for another request id is a protocol error here).
"""

from __future__ import annotations

import enum
import struct

from ._constants import FCGI_KEEP_CONN, MAX_CONTENT, NULL_REQUEST_ID, VERSION, ProtocolStatus, RecordType, Role
from ._errors import LocalProtocolError, RemoteProtocolError
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
from ._pairs import decode_pairs, encode_pairs
from ._records import (
    HEADER,
    PADS,
    encode_record,
    encode_stream_chunk,
    encode_stream_end,
    stream_pieces,
    take_record,
    whole_record_header,
)
from ._state import CLIENT, SERVER, ConnectionState, Side, State

_BEGIN_BODY = struct.Struct(">HB5x")
_END_BODY = struct.Struct(">IB3x")
_UNKNOWN_BODY = struct.Struct(">B7x")
#: a BEGIN_REQUEST record, then the header of a PARAMS record (``send_request``)
_BEGIN_AND_PARAMS = struct.Struct(">BBHHBxHB5xBBHHBx")
#: the empty PARAMS and STDIN records that end both streams
_TWO_ENDS = struct.Struct(">BBHHBxBBHHBx")
_BEGIN_REQUEST, _PARAMS, _STDIN = int(RecordType.BEGIN_REQUEST), int(RecordType.PARAMS), int(RecordType.STDIN)
_STDOUT, _STDERR, _END_REQUEST = int(RecordType.STDOUT), int(RecordType.STDERR), int(RecordType.END_REQUEST)

#: Default cap on the PARAMS stream we accept (nginx's large headers fit easily).
DEFAULT_MAX_PARAMS_SIZE = 1024 * 1024


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData.NEED_DATA

_STREAMS: dict[type, RecordType] = {
    Stdin: RecordType.STDIN,
    Data: RecordType.DATA,
    Stdout: RecordType.STDOUT,
    Stderr: RecordType.STDERR,
}


class Connection:
    """A FastCGI connection seen from one side.

    Args:
        our_role: ``CLIENT`` for the web server (the gateway), ``SERVER`` for the
            application (tests' stand-in for php-fpm, fuzzing).
        max_params_size: the largest PARAMS stream accepted from a peer, in bytes.
    """

    def __init__(self, our_role: Side, *, max_params_size: int = DEFAULT_MAX_PARAMS_SIZE) -> None:
        self.our_role = our_role
        self.their_role = SERVER if our_role is CLIENT else CLIENT
        self.max_params_size = max_params_size
        self._cstate = ConnectionState()
        self._buf = bytearray()
        self._eof = False
        self._params = bytearray()
        self._request_id: int | None = None

    # -- state -------------------------------------------------------------

    @property
    def states(self) -> dict[Side, State]:
        return dict(self._cstate.states)

    @property
    def our_state(self) -> State:
        return self._cstate.states[self.our_role]

    @property
    def their_state(self) -> State:
        return self._cstate.states[self.their_role]

    @property
    def request_id(self) -> int | None:
        """The id of the request in progress, if any."""
        return self._request_id

    @property
    def keep_conn(self) -> bool:
        return self._cstate.keep_conn

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received but not parsed yet, and whether EOF was received (as h11).

        After the peer's END_REQUEST there should be nothing: bytes here belong to
        no request, and a connection holding them must not be reused.
        """
        return bytes(self._buf), self._eof

    def start_next_cycle(self) -> None:
        """Return both sides to IDLE after a kept-alive request.

        Raises:
            LocalProtocolError: unless both sides are DONE and keep-conn was set.
        """
        self._cstate.start_next_cycle()
        self._request_id = None
        self._params.clear()

    def __repr__(self) -> str:
        return f"<fastcgi.Connection {self.our_role!r} {self._cstate.states!r} buffered={len(self._buf)}>"

    # -- receiving -----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer; ``b""`` means the peer closed (EOF)."""
        if data:
            if self._eof:
                raise RuntimeError("received data after EOF")
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """Parse and return the next event, or ``NEED_DATA``.

        Raises:
            RemoteProtocolError: the peer broke the protocol or closed the
                connection mid-request; their side is now ERROR.
        """
        if self._cstate.states[self.their_role] is State.ERROR:
            raise RemoteProtocolError("can't receive data when peer state is ERROR")
        try:
            event = self._extract_next_event()
            if event is not NEED_DATA:
                self._cstate.process_event(self.their_role, event)
            return event
        except LocalProtocolError as exc:
            self._cstate.process_error(self.their_role)
            exc._reraise_as(RemoteProtocolError)
            raise  # unreachable, for type checkers

    def _extract_next_event(self) -> Event | _NeedData:
        buf = self._buf
        while True:
            record = take_record(buf)
            if record is None:
                if not self._eof:
                    return NEED_DATA
                if buf:
                    raise LocalProtocolError("connection closed in the middle of a record")
                return ConnectionClosed()
            rtype, rid, content = record
            if rtype == _STDOUT and content and self.their_role is SERVER:
                content = self._coalesce_stdout(rid, content)
            event = self._record_to_event(rtype, rid, content)
            if event is not None:
                return event

    def _coalesce_stdout(self, rid: int, content: bytes) -> bytes:
        """Join the non-empty STDOUT records of the same request that follow in
        the buffer: one event for what one read brought (as h11 does with Data),
        not one per record (php-fpm writes a record per 4-8 KiB of output)."""
        parts = None
        while True:
            head = whole_record_header(self._buf)
            if head is None or head[0] != _STDOUT or head[1] != rid or not head[2]:
                break
            more = take_record(self._buf)
            assert more is not None
            if parts is None:
                parts = [content]
            parts.append(more[2])
        return content if parts is None else b"".join(parts)

    def _check_request_id(self, rtype: int, request_id: int) -> None:
        if request_id == NULL_REQUEST_ID:
            raise LocalProtocolError(f"record type {rtype} must not use request id 0")
        if self._request_id is None:
            raise LocalProtocolError(f"record type {rtype} for request {request_id} outside any request")
        if request_id != self._request_id:
            raise LocalProtocolError(
                f"record for request {request_id} while request {self._request_id} is active "
                "(this connection does not multiplex)"
            )

    def _record_to_event(self, rtype: int, rid: int, content: bytes) -> Event | None:
        if rid != NULL_REQUEST_ID:
            self._cstate.check_request_record(self.their_role, rtype, rid)
        if self.their_role is SERVER:
            if rtype == _STDOUT:
                self._check_request_id(rtype, rid)
                return Stdout(content, rid)
            if rtype == _STDERR:
                self._check_request_id(rtype, rid)
                return Stderr(content, rid)
            if rtype == _END_REQUEST:
                self._check_request_id(rtype, rid)
                if len(content) < _END_BODY.size:
                    raise LocalProtocolError("END_REQUEST body too short")
                app_status, proto = _END_BODY.unpack_from(content)
                try:
                    status = ProtocolStatus(proto)
                except ValueError:
                    raise LocalProtocolError(f"END_REQUEST with unknown protocolStatus {proto}") from None
                return EndRequest(app_status, status, rid)
            if rtype == RecordType.GET_VALUES_RESULT and rid == NULL_REQUEST_ID:
                return GetValuesResult(tuple(decode_pairs(content)))
            if rtype == RecordType.UNKNOWN_TYPE and rid == NULL_REQUEST_ID:
                if len(content) < _UNKNOWN_BODY.size:
                    raise LocalProtocolError("UNKNOWN_TYPE body too short")
                return UnknownType(_UNKNOWN_BODY.unpack_from(content)[0])
            raise LocalProtocolError(f"unexpected record type {rtype} (request id {rid}) from the application")

        # The peer is the web server; we are the application.
        if rid == NULL_REQUEST_ID:
            if rtype == RecordType.GET_VALUES:
                return GetValues(tuple(name for name, _ in decode_pairs(content)))
            return UnknownRecord(rtype, content)
        if rtype == RecordType.BEGIN_REQUEST:
            if len(content) < _BEGIN_BODY.size:
                raise LocalProtocolError("BEGIN_REQUEST body too short")
            if self._request_id is not None:
                raise LocalProtocolError(
                    f"BEGIN_REQUEST for request {rid} while request {self._request_id} is active"
                )
            role, flags = _BEGIN_BODY.unpack_from(content)
            try:
                role = Role(role)
            except ValueError:
                raise LocalProtocolError(f"BEGIN_REQUEST with unknown role {role}") from None
            self._request_id = rid
            return BeginRequest(role, bool(flags & FCGI_KEEP_CONN), rid)
        self._check_request_id(rtype, rid)
        if rtype == RecordType.PARAMS:
            self._cstate.check_params_record(self.their_role)
            if content:
                if len(self._params) + len(content) > self.max_params_size:
                    raise LocalProtocolError(
                        f"PARAMS stream exceeds {self.max_params_size} bytes", http_status_hint=431
                    )
                self._params += content
                return None
            params = tuple(decode_pairs(bytes(self._params)))
            self._params.clear()
            return Params(params, rid)
        if rtype == RecordType.STDIN:
            return Stdin(content, rid)
        if rtype == RecordType.DATA:
            return Data(content, rid)
        if rtype == RecordType.ABORT_REQUEST:
            return AbortRequest(rid)
        raise LocalProtocolError(f"unexpected record type {rtype} (request id {rid}) from the web server")

    # -- sending -------------------------------------------------------------

    def send(self, event: Event) -> bytes | None:
        """Return the bytes that say ``event``; ``None`` for ``ConnectionClosed``.

        Streams of any length are split into records of at most 65535 bytes.

        Raises:
            LocalProtocolError: the event is not allowed now; our side is ERROR.
        """
        if self.our_state is State.ERROR:
            raise LocalProtocolError("can't send data when our state is ERROR")
        try:
            if isinstance(event, BeginRequest):
                if self._request_id is not None:
                    raise LocalProtocolError("a request is already active on this connection")
                if event.request_id == NULL_REQUEST_ID:
                    raise LocalProtocolError("request id 0 is reserved for management records")
            self._cstate.process_event(self.our_role, event)
            if isinstance(event, BeginRequest):
                self._request_id = event.request_id
            return self._encode(event)
        except BaseException:
            self._cstate.process_error(self.our_role)
            raise

    def send_request(self, request_id: int, params: bytes, stdin: bytes | None = b"", *, keep_conn: bool = True,
                     role: Role = Role.RESPONDER) -> bytes:
        """The bytes that begin a request, in one piece: BEGIN_REQUEST, the
        whole PARAMS stream and, unless ``stdin`` is None, the whole STDIN
        stream (``stdin``, if any, then its end).

        ``params`` is the pairs already encoded (``encode_pairs``). Checks,
        state changes and bytes are those of ``send`` with ``BeginRequest``,
        ``Params``, ``Stdin(stdin)`` and ``Stdin(b"")`` (and stay so: a test
        compares them), with one join in place of one per record.

        Raises:
            LocalProtocolError: a request can't begin now; our side is ERROR.
        """
        if self.our_state is State.ERROR:
            raise LocalProtocolError("can't send data when our state is ERROR")
        try:
            if self._request_id is not None:
                raise LocalProtocolError("a request is already active on this connection")
            if request_id == NULL_REQUEST_ID:
                raise LocalProtocolError("request id 0 is reserved for management records")
            self._cstate.process_request_head(self.our_role, keep_conn, bool(stdin), stdin is not None)
        except BaseException:
            self._cstate.process_error(self.our_role)
            raise
        self._request_id = rid = request_id
        flags = FCGI_KEEP_CONN if keep_conn else 0
        n = len(params)
        pieces: list[bytes | memoryview]
        if 0 < n <= MAX_CONTENT:
            pad = -n & 7
            pieces = [_BEGIN_AND_PARAMS.pack(VERSION, _BEGIN_REQUEST, rid, _BEGIN_BODY.size, 0, role, flags,
                                             VERSION, _PARAMS, rid, n, pad), params, PADS[pad]]
        else:
            pieces = [encode_record(_BEGIN_REQUEST, rid, _BEGIN_BODY.pack(role, flags)),
                      *stream_pieces(_PARAMS, rid, params)]
        if stdin is None:
            pieces.append(HEADER.pack(VERSION, _PARAMS, rid, 0, 0))
        elif not stdin:
            pieces.append(_TWO_ENDS.pack(VERSION, _PARAMS, rid, 0, 0, VERSION, _STDIN, rid, 0, 0))
        else:
            pieces.append(HEADER.pack(VERSION, _PARAMS, rid, 0, 0))
            pieces += stream_pieces(_STDIN, rid, stdin)
            pieces.append(HEADER.pack(VERSION, _STDIN, rid, 0, 0))
        return b"".join(pieces)

    def send_failed(self) -> None:
        """Tell the connection that writing what ``send`` returned failed."""
        self._cstate.process_error(self.our_role)

    def _encode(self, event: Event) -> bytes | None:
        if isinstance(event, ConnectionClosed):
            return None
        if isinstance(event, GetValues):
            return encode_record(
                RecordType.GET_VALUES, NULL_REQUEST_ID, encode_pairs((n, b"") for n in event.names)
            )
        if isinstance(event, GetValuesResult):
            return encode_record(RecordType.GET_VALUES_RESULT, NULL_REQUEST_ID, encode_pairs(event.values))
        if isinstance(event, UnknownType):
            return encode_record(RecordType.UNKNOWN_TYPE, NULL_REQUEST_ID, _UNKNOWN_BODY.pack(event.record_type))
        if isinstance(event, UnknownRecord):
            raise LocalProtocolError("UnknownRecord is received, never sent; send UnknownType")
        rid = event.request_id
        if rid != self._request_id:
            raise LocalProtocolError(f"event for request {rid} while request {self._request_id} is active")
        if isinstance(event, BeginRequest):
            flags = FCGI_KEEP_CONN if event.keep_conn else 0
            return encode_record(RecordType.BEGIN_REQUEST, rid, _BEGIN_BODY.pack(event.role, flags))
        if isinstance(event, Params):
            return encode_stream_chunk(RecordType.PARAMS, rid, encode_pairs(event.params)) + encode_stream_end(
                RecordType.PARAMS, rid
            )
        if isinstance(event, (Stdin, Data, Stdout, Stderr)):
            rtype = _STREAMS[type(event)]
            if event.data:
                return encode_stream_chunk(rtype, rid, event.data)
            return encode_stream_end(rtype, rid)
        if isinstance(event, AbortRequest):
            return encode_record(RecordType.ABORT_REQUEST, rid)
        if isinstance(event, EndRequest):
            return encode_record(RecordType.END_REQUEST, rid, _END_BODY.pack(event.app_status, event.protocol_status))
        raise TypeError(f"not a FastCGI event: {event!r}")
