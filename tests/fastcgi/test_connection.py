from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastcgi
from fastcgi import (
    CLIENT,
    DONE,
    ERROR,
    IDLE,
    MUST_CLOSE,
    NEED_DATA,
    SEND_OUTPUT,
    SEND_PARAMS,
    SEND_STDIN,
    SERVER,
    AbortRequest,
    BeginRequest,
    Connection,
    ConnectionClosed,
    EndRequest,
    GetValues,
    GetValuesResult,
    LocalProtocolError,
    Params,
    ProtocolStatus,
    RecordType,
    RemoteProtocolError,
    Stderr,
    Stdin,
    Stdout,
    UnknownRecord,
    UnknownType,
    encode_record,
)

from .helpers import ConnectionPair, get_all_events


def run_request(p: ConnectionPair, body: bytes = b"", *, keep_conn: bool = True) -> None:
    assert p.send(CLIENT, BeginRequest(keep_conn=keep_conn)) == [BeginRequest(keep_conn=keep_conn)]
    params = ((b"SCRIPT_FILENAME", b"/srv/index.php"), (b"REQUEST_METHOD", b"POST"))
    assert p.send(CLIENT, Params(params)) == [Params(params)]
    if body:
        assert p.send(CLIENT, Stdin(body)) == [Stdin(body)]
    assert p.send(CLIENT, Stdin()) == [Stdin()]
    client_done = DONE if keep_conn else MUST_CLOSE
    assert p.conn[CLIENT].states == {CLIENT: client_done, SERVER: IDLE}
    assert p.send(SERVER, Stdout(b"Status: 200 OK\r\n\r\nhi")) == [Stdout(b"Status: 200 OK\r\n\r\nhi")]
    assert p.conn[CLIENT].states == {CLIENT: client_done, SERVER: SEND_OUTPUT}
    assert p.send(SERVER, [Stdout(), EndRequest(0)]) == [Stdout(), EndRequest(0)]


def test_a_whole_request_cycle_and_keep_conn_reuse():
    p = ConnectionPair()
    run_request(p, b"a=1")
    for side in (CLIENT, SERVER):
        assert p.conn[side].states == {CLIENT: DONE, SERVER: DONE}
        p.conn[side].start_next_cycle()
        assert p.conn[side].states == {CLIENT: IDLE, SERVER: IDLE}
    run_request(p)


def test_without_keep_conn_both_sides_must_close():
    p = ConnectionPair()
    run_request(p, keep_conn=False)
    assert p.conn[CLIENT].states == {CLIENT: MUST_CLOSE, SERVER: MUST_CLOSE}
    with pytest.raises(LocalProtocolError):
        p.conn[CLIENT].start_next_cycle()


def test_golden_begin_request_bytes():
    c = Connection(CLIENT)
    assert c.send(BeginRequest(keep_conn=True)) == b"\x01\x01\x00\x01\x00\x08\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00"


def test_params_larger_than_one_record_span_records_and_arrive_whole():
    p = ConnectionPair()
    p.send(CLIENT, BeginRequest())
    big = ((b"HTTP_COOKIE", b"c" * 200_000), (b"X", b"y"))
    assert p.send(CLIENT, Params(big)) == [Params(big)]


def test_params_stream_is_bounded():
    client, server = Connection(CLIENT), Connection(SERVER, max_params_size=1000)
    server.receive_data(client.send(BeginRequest()) + client.send(Params(((b"A", b"x" * 2000),))))
    assert server.next_event() == BeginRequest()
    with pytest.raises(RemoteProtocolError, match="exceeds 1000") as exc:
        server.next_event()
    assert exc.value.http_status_hint == 431
    assert server.their_state is ERROR


def test_params_delivered_one_byte_at_a_time():
    client, server = Connection(CLIENT), Connection(SERVER)
    wire = client.send(BeginRequest()) + client.send(Params(((b"K", b"v" * 300),))) + client.send(Stdin())
    got = []
    for i in range(len(wire)):
        server.receive_data(wire[i : i + 1])
        got += get_all_events(server)
    assert got == [BeginRequest(), Params(((b"K", b"v" * 300),)), Stdin()]


def test_end_request_statuses_are_surfaced():
    p = ConnectionPair()
    p.send(CLIENT, [BeginRequest(), Params(), Stdin()])
    assert p.send(SERVER, EndRequest(255, ProtocolStatus.OVERLOADED)) == [EndRequest(255, ProtocolStatus.OVERLOADED)]


def test_stderr_interleaves_with_stdout():
    p = ConnectionPair()
    p.send(CLIENT, [BeginRequest(), Params(), Stdin()])
    events = [Stderr(b"PHP Notice"), Stdout(b"X-A: 1\n\n"), Stderr(b"more"), Stdout(b"body")]
    assert p.send(SERVER, events) == events


def test_application_may_answer_before_stdin_ends():
    p = ConnectionPair()
    p.send(CLIENT, [BeginRequest(), Params(), Stdin(b"partial")])
    assert p.send(SERVER, [Stdout(b"Status: 413\n\n"), Stdout(), EndRequest(0)])[-1] == EndRequest(0)
    assert p.conn[CLIENT].states == {CLIENT: SEND_STDIN, SERVER: DONE}


def test_abort_request_moves_client_to_done():
    p = ConnectionPair()
    p.send(CLIENT, [BeginRequest(), Params()])
    assert p.send(CLIENT, AbortRequest()) == [AbortRequest()]
    assert p.conn[SERVER].states[CLIENT] is DONE


def test_get_values_round_trip_outside_any_request():
    p = ConnectionPair()
    names = (fastcgi.FCGI_MAX_CONNS, fastcgi.FCGI_MPXS_CONNS)
    assert p.send(CLIENT, GetValues(names)) == [GetValues(names)]
    values = ((fastcgi.FCGI_MPXS_CONNS, b"0"),)
    assert p.send(SERVER, GetValuesResult(values)) == [GetValuesResult(values)]
    assert p.conn[CLIENT].states == {CLIENT: IDLE, SERVER: IDLE}


def test_unknown_management_record_and_unknown_type_reply():
    client, server = Connection(CLIENT), Connection(SERVER)
    server.receive_data(encode_record(42, 0, b"whatever"))
    assert server.next_event() == UnknownRecord(42, b"whatever")
    reply = server.send(UnknownType(42))
    assert reply == b"\x01\x0b\x00\x00\x00\x08\x00\x00\x2a\x00\x00\x00\x00\x00\x00\x00"
    client.receive_data(reply)
    assert client.next_event() == UnknownType(42)


def test_server_cannot_answer_before_a_request_begins():
    server = Connection(SERVER)
    with pytest.raises(LocalProtocolError, match="before any request"):
        server.send(Stdout(b"x"))
    assert server.our_state is ERROR


def test_record_for_another_request_id_is_a_remote_error():
    client = Connection(CLIENT)
    client.send(BeginRequest(request_id=1))
    client.receive_data(encode_record(RecordType.STDOUT, 2, b"x"))
    with pytest.raises(RemoteProtocolError, match="does not multiplex"):
        client.next_event()
    assert client.their_state is ERROR
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_unexpected_record_type_from_application():
    client = Connection(CLIENT)
    client.send(BeginRequest())
    client.receive_data(encode_record(RecordType.STDIN, 1, b"x"))
    with pytest.raises(RemoteProtocolError, match="unexpected record type 5"):
        client.next_event()


def test_eof_before_any_response_is_connection_closed():
    # php-fpm after pm.max_requests: it closes a kept-alive connection; a
    # request written on it sees EOF with no response bytes.
    client = Connection(CLIENT)
    client.send(BeginRequest())
    client.send(Params())
    client.send(Stdin())
    client.receive_data(b"")
    assert client.next_event() == ConnectionClosed()


def test_eof_mid_response_is_a_remote_error():
    client = Connection(CLIENT)
    client.send(BeginRequest())
    client.receive_data(encode_record(RecordType.STDOUT, 1, b"partial"))
    assert client.next_event() == Stdout(b"partial")
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="ConnectionClosed"):
        client.next_event()


def test_eof_mid_record_is_a_remote_error():
    client = Connection(CLIENT)
    client.send(BeginRequest())
    client.receive_data(encode_record(RecordType.STDOUT, 1, b"partial")[:10])
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a record"):
        client.next_event()


def test_send_failed_puts_our_side_in_error():
    client = Connection(CLIENT)
    client.send(BeginRequest())
    client.send_failed()
    assert client.our_state is ERROR
    with pytest.raises(LocalProtocolError):
        client.send(Params())


def test_second_begin_request_on_a_busy_connection_is_refused():
    client = Connection(CLIENT)
    client.send(BeginRequest())
    with pytest.raises(LocalProtocolError):
        client.send(BeginRequest(request_id=2))


def test_state_names_in_repr():
    c = Connection(CLIENT)
    c.send(BeginRequest())
    assert c.our_state is SEND_PARAMS
    c.send(Params())
    assert c.our_state is SEND_STDIN
    assert "SEND_STDIN" in repr(c)


@given(
    body=st.binary(max_size=150_000),
    out=st.lists(st.binary(min_size=1, max_size=70_000), max_size=4),
    cuts=st.lists(st.integers(1, 5000), max_size=30),
)
def test_round_trip_with_arbitrary_chunking(body, out, cuts):
    """Whatever the body and output, and however the bytes are chunked on the way,
    both sides see the same payloads."""
    client, server = Connection(CLIENT), Connection(SERVER)
    wire = b"".join(
        client.send(e) or b""
        for e in [BeginRequest(), Params(((b"A", b"1"),)), *([Stdin(body)] if body else []), Stdin()]
    )
    got_body = b""
    events = []
    pos = 0
    for cut in [*cuts, len(wire)]:
        chunk = wire[pos : pos + cut]
        pos += cut
        if not chunk:
            break  # b"" would mean EOF
        server.receive_data(chunk)
        events += get_all_events(server)
    for e in events:
        if isinstance(e, Stdin):
            got_body += e.data
    assert got_body == body
    assert server.their_state is DONE

    reply = b"".join(server.send(e) or b"" for e in [*(Stdout(o) for o in out), Stdout(), EndRequest(0)])
    client.receive_data(reply)
    got = b"".join(e.data for e in get_all_events(client) if isinstance(e, Stdout))
    assert got == b"".join(out)
    assert client.states == {CLIENT: DONE, SERVER: DONE}


@given(st.binary(max_size=2000))
def test_fuzz_garbage_never_raises_anything_but_remote_protocol_error(garbage):
    for role in (CLIENT, SERVER):
        conn = Connection(role)
        if role is CLIENT:
            conn.send(BeginRequest())
        conn.receive_data(garbage)
        conn.receive_data(b"")
        try:
            while conn.next_event() is not NEED_DATA:
                if conn.their_state is fastcgi.CLOSED:
                    break
        except RemoteProtocolError:
            pass


def test_stdout_records_that_arrived_together_are_one_event():
    # php-fpm writes a record per 4-8 KiB of output; what one read brings is one event
    client, server = Connection(CLIENT), Connection(SERVER)
    server.receive_data(client.send(BeginRequest()) + client.send(Params(())) + client.send(Stdin()))
    while server.next_event() is not NEED_DATA:
        pass
    wire = b"".join(server.send(e) or b"" for e in [Stdout(b"a" * 10), Stdout(b"b" * 70000), Stderr(b"oops"),
                                                   Stdout(b"c"), Stdout(), EndRequest(0)])
    client.receive_data(wire[:-20])  # the last records are still on their way
    events = []
    while (e := client.next_event()) is not NEED_DATA:
        events.append(e)
    client.receive_data(wire[-20:])
    while (e := client.next_event()) is not NEED_DATA:
        events.append(e)
    assert events == [Stdout(b"a" * 10 + b"b" * 70000), Stderr(b"oops"), Stdout(b"c"), Stdout(), EndRequest(0)]
    assert client.states == {CLIENT: DONE, SERVER: DONE}


def _one_by_one(params: bytes, stdin: bytes | None, keep_conn: bool, rid: int) -> tuple[bytes, dict]:
    c = Connection(CLIENT)
    out = c.send(BeginRequest(keep_conn=keep_conn, request_id=rid)) or b""
    out += c.send(Params(tuple(fastcgi.decode_pairs(params)), rid)) or b""
    if stdin is not None:
        if stdin:
            out += c.send(Stdin(stdin, rid)) or b""
        out += c.send(Stdin(b"", rid)) or b""
    return out, c.states


@pytest.mark.parametrize("params_size", [0, 3, 8, 130, 65535 - 9, 65535, 65536, 140_000])
@pytest.mark.parametrize("stdin", [None, b"", b"x", b"a=1&b=2", bytes(65535), bytes(65536), bytes(200_001)])
@pytest.mark.parametrize("keep_conn", [True, False])
def test_send_request_is_the_events_sent_one_by_one(params_size, stdin, keep_conn):
    """``send_request`` (one join) sends the bytes and reaches the states of
    BeginRequest, Params, Stdin(data) and Stdin(b"") sent one by one, for
    PARAMS in one record or several and every STDIN shape."""
    pairs = [] if not params_size else [(b"N", b"v" * (params_size - (3 if params_size < 131 else 6)))]
    params = fastcgi.encode_pairs(pairs)
    assert len(params) == params_size
    for rid in (1, 258, 0xFFFF):
        c = Connection(CLIENT)
        got = c.send_request(rid, params, stdin, keep_conn=keep_conn)
        want, states = _one_by_one(params, stdin, keep_conn, rid)
        assert got == want
        assert c.states == states and c.request_id == rid and c.keep_conn is keep_conn
    # and the application side reads it back
    p = ConnectionPair()
    p.conn[SERVER].receive_data(Connection(CLIENT).send_request(1, params, stdin, keep_conn=keep_conn))
    events = get_all_events(p.conn[SERVER])
    assert events[:2] == [BeginRequest(keep_conn=keep_conn), Params(tuple(pairs))]
    assert b"".join(e.data for e in events[2:]) == (stdin or b"")


def test_send_request_checks_what_send_checks():
    c = Connection(CLIENT)
    with pytest.raises(LocalProtocolError):
        c.send_request(0, b"")
    assert c.our_state is ERROR
    with pytest.raises(LocalProtocolError):
        c.send_request(1, b"")
    busy = Connection(CLIENT)
    busy.send_request(1, b"", None)
    assert busy.our_state is SEND_STDIN
    with pytest.raises(LocalProtocolError):
        busy.send_request(2, b"")
    assert busy.our_state is ERROR
    server = Connection(SERVER)
    with pytest.raises(LocalProtocolError):
        server.send_request(1, b"")
    kept = Connection(CLIENT)
    kept.send_request(1, b"")
    kept.receive_data(encode_record(RecordType.END_REQUEST, 1, bytes(8)))
    assert isinstance(kept.next_event(), EndRequest)
    kept.start_next_cycle()
    assert kept.send_request(2, b"") == _one_by_one(b"", b"", True, 2)[0]
