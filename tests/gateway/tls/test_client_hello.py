"""The ClientHello read before the handshake (sans-IO): SNI and ALPN from
real hellos made by OpenSSL, None until the last byte, a clean
``NotClientHello`` for anything else; and which context TLS-ALPN-01 picks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.acme.messages import alpn_challenge_cert
from gateway.tls.acme_alpn import challenge_context, wants_challenge
from gateway.tls.client_hello import (
    FIRST_LOOK,
    MAX_RECORDS,
    ClientHello,
    ClientHelloPeek,
    NotClientHello,
    parse_client_hello,
)
from gateway.tls.store import StateDir
from tests.helpers import client_hello as hello_bytes


def test_sni_and_alpn_of_a_real_hello():
    data = hello_bytes("WWW.Example.com", ["acme-tls/1"])
    assert parse_client_hello(data) == ClientHello("www.example.com", ("acme-tls/1",))
    data = hello_bytes("example.com", ["h2", "http/1.1"])
    assert parse_client_hello(data) == ClientHello("example.com", ("h2", "http/1.1"))


def test_no_sni_no_alpn():
    assert parse_client_hello(hello_bytes(None, None)) == ClientHello(None, ())


def test_none_until_the_last_byte():
    data = hello_bytes("example.com", ["acme-tls/1"])
    for cut in range(len(data)):
        assert parse_client_hello(data[:cut]) is None
    assert parse_client_hello(data + b"more") is not None


def test_a_hello_split_over_two_records():
    data = hello_bytes("example.com", ["acme-tls/1"])
    body = data[5:]
    first, second = body[:40], body[40:]
    records = (b"\x16\x03\x01" + len(first).to_bytes(2, "big") + first
               + b"\x16\x03\x01" + len(second).to_bytes(2, "big") + second)
    assert parse_client_hello(records) == ClientHello("example.com", ("acme-tls/1",))


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello
    b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",  # lengths past the end
    b"\x17\x03\x03\x00\x10" + b"x" * 16,  # application data
])
def test_anything_else_is_not_a_client_hello(data):
    with pytest.raises(NotClientHello):
        parse_client_hello(data)


@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_else(data):
    try:
        parse_client_hello(b"\x16\x03\x01" + data)
    except NotClientHello:
        pass


@given(st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=1))
def test_a_corrupted_real_hello_is_clean(position, byte):
    data = bytearray(hello_bytes("example.com", ["acme-tls/1", "http/1.1"]))
    data[position % len(data)] = byte[0]
    try:
        parse_client_hello(bytes(data))
    except NotClientHello:
        pass


def test_only_a_validating_client_gets_the_challenge_certificate(tmp_path):
    state = StateDir(str(tmp_path))
    state.write(state.alpn_challenge("example.com"), alpn_challenge_cert("example.com", "tok.thumb"))
    assert not wants_challenge(ClientHello("example.com", ("h2", "http/1.1")))
    assert not wants_challenge(ClientHello("example.com", ("acme-tls/1", "http/1.1")))  # not only acme-tls/1
    assert challenge_context(state, ClientHello("example.com", ("http/1.1",))) is None
    assert challenge_context(state, ClientHello(None, ("acme-tls/1",))) is None
    assert challenge_context(state, ClientHello("other.example", ("acme-tls/1",))) is None  # none under way
    assert challenge_context(state, ClientHello("../../etc", ("acme-tls/1",))) is None
    ctx = challenge_context(state, ClientHello("example.com", ("acme-tls/1",)))
    assert ctx is not None


def _records(body: bytes, sizes: list[int]) -> bytes:
    out, pos = b"", 0
    for size in [*sizes, len(body)]:
        piece = body[pos:pos + size]
        if piece:
            out += b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece
        pos += len(piece)
    return out


# -- ClientHelloPeek: the hello read in place, for a peeking reader -------------------------------


def test_peek_takes_nothing_and_is_done_exactly_at_the_last_byte():
    data = hello_bytes("example.com", ["acme-tls/1"])
    for cut in range(len(data)):
        peek = ClientHelloPeek()
        assert peek.offer(data[:cut]) == 0
        assert not peek.done and peek.wanted() > cut  # the reader waits for more than it has
    peek = ClientHelloPeek()
    assert peek.wanted() == FIRST_LOOK  # one look reads a hello that is all there
    assert peek.offer(data + b"early data") == 0
    assert peek.done and peek.hello == ClientHello("example.com", ("acme-tls/1",)) and peek.error is None
    assert peek.wanted() == 0


def test_peek_waits_for_what_it_needs_not_for_every_byte():
    """Offered one more byte at a time, it looks again only when its
    threshold is reached: three looks for a one-record hello (the record
    header, the record, done), not one per byte."""
    data = hello_bytes("example.com", ["acme-tls/1"])
    peek = ClientHelloPeek()
    thresholds = []
    for cut in range(1, len(data) + 1):
        if peek.wanted() not in thresholds:
            thresholds.append(peek.wanted())
        peek.offer(data[:cut])
    assert peek.hello is not None
    assert thresholds == [FIRST_LOOK, 5, len(data)]


@pytest.mark.parametrize("split", [[40], [1, 1, 1], [100, 5]])
def test_peek_across_records(split):
    body = hello_bytes("example.com", ["acme-tls/1"])[5:]
    data = _records(body, split)
    peek = ClientHelloPeek()
    for cut in range(len(data) + 1):
        peek.offer(data[:cut])
        assert peek.done == (cut == len(data))
    assert peek.hello == ClientHello("example.com", ("acme-tls/1",))


def test_a_hello_in_too_many_records_is_not_read():
    body = hello_bytes("example.com", ["acme-tls/1"])[5:]
    data = _records(body, [1] * MAX_RECORDS)
    with pytest.raises(NotClientHello, match="records"):
        parse_client_hello(data)
    peek = ClientHelloPeek()
    peek.offer(data)
    assert peek.done and peek.hello is None and "records" in str(peek.error)


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", b"\x00"])
def test_peek_at_garbage_is_done_with_an_error(data):
    peek = ClientHelloPeek()
    assert peek.offer(data) == 0
    assert peek.done and peek.hello is None and isinstance(peek.error, NotClientHello)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_peek_at_random_bytes_in_any_pieces_never_raises(data, step):
    peek = ClientHelloPeek()
    for cut in range(0, len(data) + step, step):
        assert peek.offer(b"\x16\x03\x01" + data[:cut]) == 0
        if peek.done:
            break


# -- the decision: which hello gets the challenge certificate -------------------------------------


@pytest.mark.parametrize(("server_name", "alpn", "challenge"), [
    ("example.com", ("acme-tls/1",), True),
    ("EXAMPLE.com", ("acme-tls/1",), True),  # (parse_client_hello lowers it; the state dir too)
    ("example.com", ("acme-tls/1", "http/1.1"), False),  # a browser-like offer never gets it
    ("example.com", ("http/1.1", "acme-tls/1"), False),
    ("example.com", ("http/1.1",), False),
    ("example.com", (), False),
    (None, ("acme-tls/1",), False),  # RFC 8737: the CA names the host
    ("other.example", ("acme-tls/1",), False),  # no validation under way for it
    ("..", ("acme-tls/1",), False),
])
def test_which_hello_gets_the_challenge_certificate(tmp_path, server_name, alpn, challenge):
    state = StateDir(str(tmp_path))
    state.write(state.alpn_challenge("example.com"), alpn_challenge_cert("example.com", "tok.thumb"))
    ctx = challenge_context(state, ClientHello(server_name, alpn))
    assert (ctx is not None) == challenge


def test_a_challenge_certificate_that_does_not_load_is_no_challenge(tmp_path):
    state = StateDir(str(tmp_path))
    state.write(state.alpn_challenge("example.com"), b"half a PEM")
    assert challenge_context(state, ClientHello("example.com", ("acme-tls/1",))) is None
