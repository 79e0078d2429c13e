"""The plain write (``ResponseWriter.plain_head``: a kept-alive HTTP/1.1
response's head made in one go, without h11's send) against h11's send: the
same responses go out both ways and the bytes on the wire must be the same
(but Date and Server-Timing's durations), and so must h11's state after them (the next request on the
connection). Both ends of the gateway are real: PHP's output (a php-fpm
stand-in) through the App and the HTTP/1.1 connection code, in memory. The
plain write must also have answered most of them, so this cannot pass by
declining everything."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing

from gateway.app.site import App
from gateway.config import validate
from gateway.front import h1_write
from gateway.front.downstream import Downstream
from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.front.h1_write import ResponseWriter
from gateway.http._h11 import h11
from gateway.http.response import Response
from gateway.serve.process import pool_from_config
from tests.helpers import FakeFpm

BIG = b"<p>a big page</p>" * 1500  # over JOIN_BELOW: head and body in one sendmsg

#: what PHP prints, by the script's query string
OUTPUTS: dict[bytes, bytes] = {
    b"plain": b"Content-Type: text/html; charset=UTF-8\r\n\r\nhello",
    b"empty": b"Content-Type: text/html\r\n\r\n",
    b"status": b"Status: 404 Not Found\r\nContent-Type: text/html\r\n\r\nnot here",
    b"reason": b"Status: 299 Quite Odd\r\nContent-Type: text/plain\r\n\r\nodd",
    b"noreason": b"Status: 418\r\nContent-Type: text/plain\r\n\r\nteapot",
    b"cookies": (b"Set-Cookie: a=1; path=/\r\nSet-Cookie: b=2; HttpOnly\r\nset-cookie: c=3\r\n"
                 b"Content-Type: text/html\r\n\r\ncookies"),
    b"location": b"Location: /elsewhere?x=1\r\n\r\n",
    b"created": b"Status: 201 Created\r\nLocation: https://example.test/new\r\n\r\n{}",
    b"nocontent": b"Status: 204 No Content\r\nX-Thing: 1\r\n\r\n",
    b"notmodified": b'Status: 304 Not Modified\r\nETag: "abc"\r\nContent-Length: 123\r\n\r\n',
    b"phplength": b"Content-Length: 5\r\nContent-Type: text/plain\r\n\r\nfive!",
    b"wronglength": b"Content-Length: 99\r\nContent-Type: text/plain\r\n\r\nshort",
    b"owndate": b"Date: Mon, 01 Jan 2001 00:00:00 GMT\r\nServer: php-itself\r\n\r\nmine",
    b"ownserver": b"server: php-itself\r\n\r\nmine",
    b"odd": (b"X-Spaces: a  b\tc\r\nX-Obs: caf\xc3\xa9 \xff\r\nX-Empty:\r\nX-Colon: a: b\r\n"
             b"X-Lf-Only: yes\n\r\nodd values"),
    b"host": b"Host: php.example\r\nContent-Type: text/plain\r\n\r\nhost header",
    b"connection": b"Connection: close\r\nKeep-Alive: timeout=5\r\n\r\nhop-by-hop dropped",
    b"big": b"Content-Type: text/html\r\n\r\n" + BIG,
    b"compressible": b"Content-Type: text/html\r\n\r\n" + b"<p>compress me</p>" * 200,
    b"stream": b"X-Accel-Buffering: no\r\nContent-Type: text/plain\r\n\r\nstreamed",
    b"events": b"Content-Type: text/event-stream\r\n\r\ndata: 1\n\n",
    b"controlbyte": b"X-Bad: a\x01b\r\nContent-Type: text/plain\r\n\r\ndropped header",
}

#: (method, http version, extra request headers)
REQUESTS = [
    (b"GET", b"1.1", b""),
    (b"HEAD", b"1.1", b""),
    (b"GET", b"1.1", b"Connection: close\r\n"),
    (b"GET", b"1.1", b"Connection: keep-alive, Close\r\n"),
    (b"GET", b"1.0", b""),
    (b"GET", b"1.0", b"Connection: keep-alive\r\n"),
    (b"HEAD", b"1.0", b""),
    (b"GET", b"1.1", b"Accept-Encoding: gzip\r\n"),
    (b"HEAD", b"1.1", b"Accept-Encoding: gzip\r\n"),
    (b"POST", b"1.1", b"Content-Length: 3\r\n"),
]


def make_app(tmp_path, nursery) -> App:
    root = tmp_path / "root"
    root.mkdir()
    (root / "index.php").write_text("<?php")
    (root / "small.txt").write_bytes(b"a small file\n")

    async def script(req):
        return [OUTPUTS[req.params[b"QUERY_STRING"]]]

    fpm = FakeFpm(script)
    cfg = validate({
        "server": {"server_timing": True},
        "backends": {"php": {"pool_size": 2}},
        "sites": {"main": {"root": str(root), "php": "php", "default": True,
                           "headers": [{"add": {"X-Frame-Options": "DENY"}}]}}})
    pools = {"php": pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)}
    return App(cfg, pools)


async def wire(app: App, nursery, request: bytes) -> bytes:
    """Everything the connection sends for ``request`` followed by a
    ``Connection: close`` one (answered only if the first left it open)."""
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, app.handle, ConnectionSettings.from_config(), client=("192.0.2.7", 40000),
                          server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    await client.send_all(request + b"GET /small.txt HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    out = b""
    while data := await client.receive_some(65536):
        out += data
    out = re.sub(rb"(?im)^date: [^\r]*\r$", b"date: (now)\r", out)
    return re.sub(rb"dur=[0-9.]+", b"dur=(measured)", out)  # (Server-Timing: compression's CPU time)


async def test_the_plain_write_sends_what_h11_sends(tmp_path, nursery, autojump_clock, monkeypatch):
    app = make_app(tmp_path, nursery)
    plain_answers = 0
    real_plain_answer = ResponseWriter._plain_answer

    def counted(self, resp, headers, head_only):
        nonlocal plain_answers
        done = real_plain_answer(self, resp, headers, head_only)
        plain_answers += done is not None
        return done

    def declined(self, resp, headers, head_only):
        return None

    cases = 0
    for query in OUTPUTS:
        for method, version, extra in REQUESTS:
            body = b"abc" if method == b"POST" else b""
            request = (b"%s /index.php?%s HTTP/%s\r\nHost: a.test\r\n%s\r\n%s"
                       % (method, query, version, extra, body))
            monkeypatch.setattr(ResponseWriter, "_plain_answer", declined)
            by_h11 = await wire(app, nursery, request)
            monkeypatch.setattr(ResponseWriter, "_plain_answer", counted)
            plain = await wire(app, nursery, request)
            assert plain == by_h11, request
            assert by_h11.startswith(b"HTTP/1.1 ")
            cases += 1
    # most kept-alive exchanges (GET/HEAD/POST over HTTP/1.1 without close: 5 of
    # the 10 requests, 110 in all) went the plain way: all but the streamed ones,
    # PHP's Host, and a HEAD answer without a Content-Length (89 today)
    assert plain_answers >= 80, (plain_answers, cases)


@pytest.mark.parametrize(("status", "headers", "size", "why"), [
    (200, [(b"content-type", b"text/plain")], 5, "no Content-Length"),
    (200, [(b"content-length", b"5"), (b"content-length", b"5")], 5, "two Content-Lengths"),
    (200, [(b"content-length", b"6")], 5, "a Content-Length that is not the body's"),
    (200, [(b"content-length", b"+5")], 5, "a Content-Length that is not digits"),
    (200, [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], 5, "Transfer-Encoding"),
    (200, [(b"content-length", b"5"), (b"Connection", b"close")], 5, "Connection"),
    (200, [(b"content-length", b"5"), (b"Host", b"x")], 5, "Host (h11 puts it first)"),
    (200, [(b"content-length", b"5"), (b"bad name", b"x")], 5, "a name that is not a token"),
    (200, [(b"content-length", b"5"), (b"x: y", b"x")], 5, "a name with a colon"),
    (200, [(b"content-length", b"5"), (b"x", b" leading space")], 5, "a value with leading space"),
    (200, [(b"content-length", b"5"), (b"x", b"trailing\t")], 5, "a value with trailing whitespace"),
    (200, [(b"content-length", b"5"), (b"x", b"a\r\ny: b")], 5, "a value with CRLF"),
    (200, [(b"content-length", b"5"), (b"x", b"a\nb")], 5, "a value with LF"),
    (200, [(b"content-length", b"5"), (b"x", b"a\x00b")], 5, "a value with NUL"),
    (101, [(b"content-length", b"5")], 5, "an interim status"),
])
async def test_plain_head_declines_what_h11_would_change_or_refuse(status, headers, size, why):
    client, server = trio.testing.memory_stream_pair()
    writer = ResponseWriter(h11.Connection(h11.SERVER), Downstream(server), b"gw")
    assert writer.plain_head(status, b"", headers, size) is None, why


async def test_plain_head_is_h11s_head():
    headers = [(b"Content-Type", b"text/html"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
               (b"content-length", b"5"), (b"x-obs", b"caf\xe9  \xff"), (b"x-empty", b"")]
    for status, reason, extra in [(200, b"", []), (404, b"Gone Fishing", []), (299, b"", []),
                                  (200, b"", [(b"Date", b"then")]), (200, b"", [(b"server", b"php")]),
                                  (304, b"", [(b"etag", b'"x"')])]:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        conn.next_event()
        conn.next_event()
        writer = ResponseWriter(conn, Downstream(trio.testing.memory_stream_pair()[1]), b"gw")
        all_headers = [*headers, *extra]
        made = writer.plain_head(status, reason, all_headers, None if status == 304 else 5)
        assert made is not None
        assert made == writer.head_bytes(status, all_headers, reason, True)


async def test_a_plain_write_leaves_h11_ready_for_the_next_request():
    client, server = trio.testing.memory_stream_pair()
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    writer = ResponseWriter(conn, Downstream(server), b"gw")
    resp = Response(200, [(b"content-type", b"text/plain")], b"hello")
    await writer.write(resp, head_only=False, keep_alive=True, plain=True)
    assert conn.our_state is h11.DONE and conn.their_state is h11.DONE
    assert resp.bytes_sent == 5
    conn.start_next_cycle()
    got = await client.receive_some(65536)
    assert got.startswith(b"HTTP/1.1 200 OK\r\nserver: gw\r\ndate: ") and got.endswith(
        b"\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello")
    assert h1_write.JOIN_BELOW > 5


def test_the_header_grammar_is_h11s():
    """``_LINES`` and ``_TOKEN`` accept exactly the names and values h11 sends."""
    import random

    from h11._headers import _field_name_re, _field_value_re  # the grammar h11 validates with

    rng = random.Random(19)
    alphabet = b"a Z0:\t\r\n\x00\x01\x1f\x7f\x80\xff-!~,;\"()/"
    for _ in range(20000):
        value = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 7)))
        name = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 4)))
        assert bool(h1_write._LINES.fullmatch(b"x: %s\r\n" % value)) == bool(_field_value_re.fullmatch(value)), value
        assert bool(h1_write._TOKEN.fullmatch(name)) == bool(_field_name_re.fullmatch(name)), name


async def test_plain_head_answers_the_same_from_its_table_of_names():
    """The names ``plain_head`` remembers (``_PLAIN_NAMES``) give the same verdicts
    the second time, and after the bounded table was cleared for room."""
    writer = ResponseWriter(h11.Connection(h11.SERVER), Downstream(trio.testing.memory_stream_pair()[1]), b"gw")

    def verdicts() -> list[bool]:
        return [writer.plain_head(200, b"", [(b"content-length", b"5"), (name, b"v")], 5) is not None
                for name in (b"X-Ok", b"x: y", b"bad name", b"Connection", b"HOST", b"Date")]

    expected = [True, False, False, False, False, True]
    assert verdicts() == expected
    assert verdicts() == expected  # from the table now
    for i in range(h1_write.MAX_PLAIN_NAMES + 5):  # fills the table: it is cleared, not grown
        writer.plain_head(200, b"", [(b"content-length", b"5"), (b"x-%d" % i, b"v")], 5)
    assert len(h1_write._PLAIN_NAMES) <= h1_write.MAX_PLAIN_NAMES
    assert verdicts() == expected


async def test_plain_head_declines_our_own_server_line_when_h11_would_refuse_it():
    """The Server line is checked once per writer, not in every head: one h11
    would refuse still sends the response the h11 way (None here)."""
    bad = ResponseWriter(h11.Connection(h11.SERVER), Downstream(trio.testing.memory_stream_pair()[1]), b"gw\r\nx: y")
    assert bad.plain_head(200, b"", [(b"content-length", b"5")], 5) is None
    # a response with its own Server does not carry ours
    assert bad.plain_head(200, b"", [(b"content-length", b"5"), (b"server", b"php")], 5) is not None
    good = ResponseWriter(h11.Connection(h11.SERVER), Downstream(trio.testing.memory_stream_pair()[1]), b"gw/1.0")
    head = good.plain_head(200, b"", [(b"content-length", b"5")], 5)
    assert head is not None and head.startswith(b"HTTP/1.1 200 OK\r\nserver: gw/1.0\r\ndate: ")
