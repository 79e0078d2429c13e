"""``h1_cycle._pairs``: the request's headers as ``list(h11 headers)`` gives them."""

from __future__ import annotations

from gateway.front.h1_cycle import _pairs
from gateway.http._h11 import h11


def _request(head: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


def test_pairs_are_list_of_h11s_headers() -> None:
    req = _request(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Two: 1\r\nx-two: 2\r\nCookie: a=1\r\n"
                   b"Accept-Encoding:  gzip \r\nUSER-AGENT: t\r\n\r\n")
    got = _pairs(req.headers)
    assert got == list(req.headers)
    assert got == [(b"host", b"a.test"), (b"x-two", b"1"), (b"x-two", b"2"), (b"cookie", b"a=1"),
                   (b"accept-encoding", b"gzip"), (b"user-agent", b"t")]
    got.append((b"x", b"y"))  # a list of its own: the request's headers are not changed
    assert len(req.headers) == 6


def test_pairs_of_any_sequence() -> None:
    assert _pairs(((b"a", b"1"), (b"b", b"2"))) == [(b"a", b"1"), (b"b", b"2")]
