"""Review of the plain HTTP/1.1 write (``ResponseWriter.plain_head``): hostile
PHP heads and pipelined requests, byte for byte against h11's send.

The same corpus of PHP outputs (what a broken or malicious script can make
php-fpm send) is requested twice over one connection each: once with the
plain write declined (h11 sends every head) and once as shipped. Every
request of the corpus goes in ONE write (pipelined), in several orders,
so h11's state after each plain write is what the next request is parsed
with; the connection's bytes must be the same both ways."""

from __future__ import annotations

import random

import pytest

from gateway.front.h1_write import ResponseWriter
from tests.gateway.front import test_h1_plain_write as base

HOSTILE: dict[bytes, bytes] = {
    b"splitstatus": b"Status: 200 OK\rX-Injected: y\r\nContent-Type: text/plain\r\n\r\nbody",
    b"crvalue": b"X-A: a\rb\r\nContent-Type: text/plain\r\n\r\nbody",
    b"nulvalue": b"X-A: a\x00b\r\n\r\nbody",
    b"twolengths": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"samelengths": b"Content-Length: 5\r\nContent-Length: 005\r\n\r\nhello",
    b"zeros": b"Content-Length: 00005\r\n\r\nhello",
    b"longlength": b"Content-Length: 99999999999999999999999\r\n\r\nhello",
    b"te": b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"te_cl": b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    b"304body": b"Status: 304\r\n\r\nbody that must not go",
    b"204length": b"Status: 204\r\nContent-Length: 4\r\n\r\nbody",
    b"205": b"Status: 205 Reset Content\r\n\r\n",
    b"twodates": b"Date: x\r\nDate: y\r\nServer: a\r\nServer: b\r\n\r\ntwo each",
    b"emptyserver": b"Server:\r\n\r\nempty",
    b"tabs": b"X-Tab:\t v \t\r\n\r\ntabs",
    b"twostatus": b"Status: 404 Gone\r\nStatus: 201\r\n\r\nlast wins",
    b"badname": b"X-\xff: v\r\n\r\nbad name",
    b"status999": b"Status: 999\r\n\r\n",
    b"status101": b"Status: 101\r\nUpgrade: websocket\r\n\r\n",
    b"conn": b"Connection: keep-alive, close\r\nKeep-Alive: timeout=1\r\n\r\nhop",
    b"host": b"Host: evil\r\n\r\nhost",
    b"longvalue": b"X-Long: " + b"v" * 6000 + b"\r\n\r\nlong",
    b"obsfold": b"X-A: a\r\n  folded\r\n\r\nfold",
    b"spacename": b"X A: v\r\n\r\nspace",
    b"emptyname": b": v\r\n\r\nempty name",
    b"reasonctl": b"Status: 200 O\x7fK\r\n\r\nreason",
    b"reasonobs": b"Status: 200 \xe9t\xe9\t ok\r\n\r\nreason",
    b"lfonly": b"Content-Type: text/plain\n\nlf",
    b"empty": b"\r\n",
}

#: (method, http version, extra headers, body) for each request of the pipeline
KINDS = [
    (b"GET", b"1.1", b"", b""),
    (b"HEAD", b"1.1", b"", b""),
    (b"POST", b"1.1", b"Content-Length: 3\r\n", b"abc"),
    (b"POST", b"1.1", b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
    (b"GET", b"1.1", b"Expect: 100-continue\r\n", b""),
]


def _pipeline(queries: list[bytes], rng: random.Random) -> bytes:
    out = b""
    for q in queries:
        method, version, extra, body = rng.choice(KINDS)
        out += b"%s /index.php?%s HTTP/%s\r\nHost: a.test\r\n%s\r\n%s" % (method, q, version, extra, body)
    return out


@pytest.mark.parametrize("seed", range(4))
async def test_pipelined_hostile_heads_go_out_as_h11_sends_them(tmp_path, nursery, autojump_clock, monkeypatch,
                                                                 seed):
    for k, v in HOSTILE.items():
        monkeypatch.setitem(base.OUTPUTS, k, v)
    app = base.make_app(tmp_path, nursery)
    rng = random.Random(seed)
    queries = [*HOSTILE, *base.OUTPUTS]
    rng.shuffle(queries)
    request = _pipeline(queries, rng)
    real = ResponseWriter._plain_answer

    def declined(self, resp, headers, head_only):
        return None

    monkeypatch.setattr(ResponseWriter, "_plain_answer", declined)
    by_h11 = await base.wire(app, nursery, request)
    answered = 0

    def counted(self, resp, headers, head_only):
        nonlocal answered
        done = real(self, resp, headers, head_only)
        answered += done is not None
        return done

    monkeypatch.setattr(ResponseWriter, "_plain_answer", counted)
    plain = await base.wire(app, nursery, request)
    assert answered >= 20, answered  # (the plain write answered many of them: this can fail)
    assert plain.count(b"HTTP/1.1 ") == by_h11.count(b"HTTP/1.1 ") >= len(queries)
    assert plain == by_h11


async def test_each_hostile_head_alone(tmp_path, nursery, autojump_clock, monkeypatch):
    """Each output alone, GET and HEAD, then the next request: the same bytes;
    and no head on the wire has a line that is not ``name: value``."""
    for k, v in HOSTILE.items():
        monkeypatch.setitem(base.OUTPUTS, k, v)
    app = base.make_app(tmp_path, nursery)
    real = ResponseWriter._plain_answer

    def declined(self, resp, headers, head_only):
        return None

    for q in HOSTILE:
        for method in (b"GET", b"HEAD"):
            request = b"%s /index.php?%s HTTP/1.1\r\nHost: a.test\r\n\r\n" % (method, q)
            monkeypatch.setattr(ResponseWriter, "_plain_answer", declined)
            by_h11 = await base.wire(app, nursery, request)
            monkeypatch.setattr(ResponseWriter, "_plain_answer", real)
            plain = await base.wire(app, nursery, request)
            assert plain == by_h11, (q, method)
            head = plain.split(b"\r\n\r\n", 1)[0]
            for line in head.split(b"\r\n")[1:]:
                name, colon, _ = line.partition(b": ")
                assert colon and base.h1_write._TOKEN.fullmatch(name), (q, line)
                assert b"\r" not in line and b"\n" not in line and b"\x00" not in line, (q, line)
