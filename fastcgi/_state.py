"""The FastCGI request cycle as a state machine.

Rule 1 (after h11): everything that decides a state transition lives in this file,
as much as possible in the tables below.

Rule 2: this file does not know which role *we* play; it tracks both parties of
one request cycle in the abstract. CLIENT is the web server, SERVER is the
application (php-fpm).

One cycle, as the spec's section 6 describes it for the Responder role:

    CLIENT  IDLE --BeginRequest--> SEND_PARAMS --Params--> SEND_STDIN
            SEND_STDIN --Stdin(data)--> SEND_STDIN --Stdin(b"")--> DONE
    SERVER  IDLE --Stdout/Stderr--> SEND_OUTPUT --EndRequest--> DONE

The SERVER may answer (even end the request) before the CLIENT is done sending.
AbortRequest moves the CLIENT to DONE from any active state. When the request
was begun without FCGI_KEEP_CONN, a party that reaches DONE moves on to
MUST_CLOSE. Both DONE with keep-conn: ``start_next_cycle`` returns both to IDLE.
An error on either side moves that side to ERROR, which is sticky.

Management records (GetValues, GetValuesResult, UnknownType, UnknownRecord)
belong to no request and change no state.
"""

from __future__ import annotations

import enum

from ._errors import LocalProtocolError
from ._events import (
    AbortRequest,
    BeginRequest,
    ConnectionClosed,
    Data,
    EndRequest,
    GetValues,
    GetValuesResult,
    Params,
    Stderr,
    Stdin,
    Stdout,
    UnknownRecord,
    UnknownType,
)


class Side(enum.Enum):
    CLIENT = "CLIENT"  # the web server
    SERVER = "SERVER"  # the application

    # Members are singletons: identity hashing is correct, and much cheaper than
    # Enum's own __hash__ (Python code, hit on every table lookup below).
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return self.value


CLIENT = Side.CLIENT
SERVER = Side.SERVER


class State(enum.Enum):
    IDLE = "IDLE"
    SEND_PARAMS = "SEND_PARAMS"
    SEND_STDIN = "SEND_STDIN"
    SEND_OUTPUT = "SEND_OUTPUT"
    DONE = "DONE"
    MUST_CLOSE = "MUST_CLOSE"
    CLOSED = "CLOSED"
    ERROR = "ERROR"

    __hash__ = object.__hash__  # see Side

    def __repr__(self) -> str:
        return self.value


IDLE = State.IDLE
SEND_PARAMS = State.SEND_PARAMS
SEND_STDIN = State.SEND_STDIN
SEND_OUTPUT = State.SEND_OUTPUT
DONE = State.DONE
MUST_CLOSE = State.MUST_CLOSE
CLOSED = State.CLOSED
ERROR = State.ERROR


class _EndOfStdin:
    """Table key for ``Stdin(b"")``, which ends the CLIENT's sending."""


MANAGEMENT_EVENTS = (GetValues, GetValuesResult, UnknownType, UnknownRecord)

EVENT_TRIGGERED_TRANSITIONS: dict[Side, dict[State, dict[type, State]]] = {
    CLIENT: {
        IDLE: {BeginRequest: SEND_PARAMS, ConnectionClosed: CLOSED},
        SEND_PARAMS: {Params: SEND_STDIN, AbortRequest: DONE},
        SEND_STDIN: {Stdin: SEND_STDIN, _EndOfStdin: DONE, Data: SEND_STDIN, AbortRequest: DONE},
        DONE: {AbortRequest: DONE, ConnectionClosed: CLOSED},
        MUST_CLOSE: {ConnectionClosed: CLOSED},
        CLOSED: {ConnectionClosed: CLOSED},
    },
    SERVER: {
        IDLE: {Stdout: SEND_OUTPUT, Stderr: SEND_OUTPUT, EndRequest: DONE, ConnectionClosed: CLOSED},
        SEND_OUTPUT: {Stdout: SEND_OUTPUT, Stderr: SEND_OUTPUT, EndRequest: DONE},
        DONE: {ConnectionClosed: CLOSED},
        MUST_CLOSE: {ConnectionClosed: CLOSED},
        CLOSED: {ConnectionClosed: CLOSED},
    },
}

# Events that belong to a request: the SERVER may only send them once the
# CLIENT has begun one.
_REQUEST_EVENTS = (Stdout, Stderr, EndRequest)


class ConnectionState:
    """Both parties' states for the current cycle, plus the keep-conn flag."""

    def __init__(self) -> None:
        self.keep_conn = True
        self.states: dict[Side, State] = {CLIENT: IDLE, SERVER: IDLE}

    def process_error(self, side: Side) -> None:
        self.states[side] = ERROR

    # -- rules for records that arrive before they are events ---------------------

    def check_request_record(self, side: Side, rtype: int, request_id: int) -> None:
        """A request's record from the application after its END_REQUEST (e.g.
        STDOUT): taken for the next request's output, it would leak one
        response into another."""
        if side is SERVER and self.states[SERVER] in (DONE, MUST_CLOSE):
            raise LocalProtocolError(f"record type {rtype} for request {request_id} after the request ended")

    def check_params_record(self, side: Side) -> None:
        """PARAMS records only between BEGIN_REQUEST and the end of PARAMS."""
        if self.states[side] is not SEND_PARAMS:
            raise LocalProtocolError(f"PARAMS record in state {self.states[side]!r}")

    def process_event(self, side: Side, event: object) -> None:
        if isinstance(event, MANAGEMENT_EVENTS):
            if self.states[side] in (ERROR, CLOSED):
                raise LocalProtocolError(f"{side!r} cannot send management records in state {self.states[side]!r}")
            return
        event_type: type = type(event)
        if event_type is Stdin and not event.data:  # type: ignore[attr-defined]
            event_type = _EndOfStdin
        if side is SERVER and event_type in _REQUEST_EVENTS and self.states[CLIENT] is IDLE:
            raise LocalProtocolError(f"application sent {event_type.__name__} before any request began")
        state = self.states[side]
        try:
            new_state = EVENT_TRIGGERED_TRANSITIONS[side][state][event_type]
        except KeyError:
            name = "Stdin(end)" if event_type is _EndOfStdin else event_type.__name__
            raise LocalProtocolError(f"can't handle event type {name} when role={side!r} and state={state!r}") from None
        if event_type is BeginRequest:
            self.keep_conn = event.keep_conn  # type: ignore[attr-defined]
        self.states[side] = new_state
        self._fire_state_triggered_transitions()

    def process_request_head(self, side: Side, keep_conn: bool, stdin: bool, stdin_end: bool) -> None:
        """``process_event`` for BeginRequest, Params and, if ``stdin``, Stdin
        with data, and if ``stdin_end``, Stdin(b""), in that order, as one step
        (``Connection.send_request``): the same table, no event objects."""
        state = self.states[side]
        table = EVENT_TRIGGERED_TRANSITIONS[side]
        event_types: tuple[type, ...] = (BeginRequest, Params)
        if stdin:
            event_types += (Stdin,)
        if stdin_end:
            event_types += (_EndOfStdin,)
        for event_type in event_types:
            new_state = table.get(state, {}).get(event_type)
            if new_state is None:
                name = "Stdin(end)" if event_type is _EndOfStdin else event_type.__name__
                raise LocalProtocolError(f"can't handle event type {name} when role={side!r} and state={state!r}")
            state = new_state
        self.keep_conn = keep_conn
        self.states[side] = state
        self._fire_state_triggered_transitions()

    def _fire_state_triggered_transitions(self) -> None:
        if not self.keep_conn:
            for side in (CLIENT, SERVER):
                if self.states[side] is DONE:
                    self.states[side] = MUST_CLOSE

    def start_next_cycle(self) -> None:
        if self.states != {CLIENT: DONE, SERVER: DONE}:
            raise LocalProtocolError(f"not in a reusable state: {self.states!r}")
        assert self.keep_conn
        self.states = {CLIENT: IDLE, SERVER: IDLE}
