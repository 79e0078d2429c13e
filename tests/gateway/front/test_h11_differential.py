"""Upstream h11 and h11-mypyc (the opt-in ``[fast]`` extra, README "The HTTP/1.1
parser") must behave alike: the same bytes, cut the same way, give the same
events, the same errors (type, message, status hint) and the same connection
states, and the same events to send give the same bytes or the same refusal.

The corpus: hand-written requests (valid, malformed, smuggling-style: CL.TE,
TE.CL, obfuscated Transfer-Encoding, bad chunk framing, CVE-2025-43859's
chunk endings), responses for the client role (the master's admin client and
ACME use it), responses to serialise, each fed whole, byte by byte and in
seeded random cuts, at the gateway's head limit and at a small one; then
seeded random mutations of the requests (``H11_DIFF_CASES``, default 3000).
A driver answers each complete request as the gateway does (a response, then
the next cycle), so pipelining and keep-alive are compared too.

Skipped, with the reason, only where the extra is not installed
(``scripts/setup --test`` installs it)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import h11 as upstream
import pytest

compiled = pytest.importorskip(
    "h11_mypyc", reason="the [fast] extra (h11-mypyc) is not installed: pip install -e '.[fast]' "
    "(scripts/setup --test installs it)")

#: the gateway's default [limits] max_header_size, and a small one that makes heads overflow
HEAD_LIMITS = (32 * 1024, 64)
SEED = 19
CASES = int(os.environ.get("H11_DIFF_CASES", "3000"))

Trace = list[tuple[Any, ...]]


def _name(sentinel: Any) -> str:
    """A state's or NEED_DATA's name (the compiled sentinels' repr differs from upstream's)."""
    return str(sentinel.__name__)


def _headers(headers: Any) -> tuple[Any, ...]:
    return tuple(headers.raw_items()), tuple(headers)


def _event(ev: Any, lib: ModuleType) -> tuple[Any, ...]:
    if ev is lib.NEED_DATA or ev is lib.PAUSED:
        return (_name(ev),)
    name = type(ev).__name__
    if isinstance(ev, lib.Request):
        return name, ev.method, ev.target, ev.http_version, _headers(ev.headers)
    if isinstance(ev, (lib.Response, lib.InformationalResponse)):
        return name, ev.status_code, ev.reason, ev.http_version, _headers(ev.headers)
    if isinstance(ev, lib.Data):
        return name, bytes(ev.data), ev.chunk_start, ev.chunk_end
    if isinstance(ev, lib.EndOfMessage):
        return name, _headers(ev.headers)
    return (name,)


def _states(conn: Any) -> tuple[str, str, bool]:
    return _name(conn.our_state), _name(conn.their_state), conn.they_are_waiting_for_100_continue


def _error(exc: BaseException) -> tuple[Any, ...]:
    return ("raised", type(exc).__name__, str(exc), getattr(exc, "error_status_hint", None))


def _send(conn: Any, event: Any, out: Trace) -> bool:
    """Send ``event``; record the bytes or the refusal. False if refused."""
    try:
        data = conn.send(event)
    except Exception as exc:  # any difference counts, a crash in one of them too
        out.append(_error(exc))
        return False
    out.append(("sent", data, _states(conn)))
    return True


def serve(lib: ModuleType, chunks: list[bytes], max_head: int) -> Trace:
    """Feed ``chunks`` to a server-role connection, answering as the gateway
    does: 200 to each complete request, then the next cycle; a 4xx/5xx (the
    error's hint) to a request h11 refuses, then stop; EOF after the last chunk."""
    conn = lib.Connection(lib.SERVER, max_incomplete_event_size=max_head)
    out: Trace = []
    head = False

    def respond(status: int, close: bool) -> bool:
        headers = [("Content-Length", "2")] + ([("Connection", "close")] if close else [])
        if not _send(conn, lib.Response(status_code=status, headers=headers), out):
            return False
        if conn.our_state is not lib.SEND_BODY:
            return True  # a 2xx to CONNECT switched protocols
        # (h11 refuses a body for HEAD; it sends Content-Length as given)
        return (head or _send(conn, lib.Data(data=b"ok"), out)) and _send(conn, lib.EndOfMessage(), out)

    def drain() -> bool:
        nonlocal head
        for _ in range(1000):
            try:
                ev = conn.next_event()
            except Exception as exc:
                out.append(_error(exc))
                out.append(_states(conn))
                if isinstance(exc, lib.RemoteProtocolError) and conn.our_state in (lib.IDLE, lib.SEND_RESPONSE):
                    respond(exc.error_status_hint, close=True)
                return False
            out.append(_event(ev, lib))
            if ev is lib.NEED_DATA:
                return True
            if isinstance(ev, lib.Request):
                head = ev.method == b"HEAD"
            if isinstance(ev, lib.ConnectionClosed):
                return False
            if isinstance(ev, lib.InformationalResponse | lib.Response):
                return False  # (a server never receives these)
            if isinstance(ev, lib.EndOfMessage) or ev is lib.PAUSED:
                out.append(_states(conn))
                if conn.our_state is lib.SEND_RESPONSE and not respond(200, close=False):
                    return False
                if conn.our_state is lib.DONE and conn.their_state is lib.DONE:
                    conn.start_next_cycle()
                elif ev is lib.PAUSED:
                    return False  # switched protocols, or must close
        pytest.fail("the driver looped 1000 times on one chunk")

    for chunk in chunks:
        try:
            conn.receive_data(chunk)
        except Exception as exc:
            out.append(_error(exc))
            return out
        if not drain():
            break
    else:
        try:
            conn.receive_data(b"")
            drain()
        except Exception as exc:
            out.append(_error(exc))
    out.append(("end", _states(conn), conn.trailing_data))
    return out


def fetch(lib: ModuleType, chunks: list[bytes], max_head: int, method: bytes = b"GET") -> Trace:
    """A client-role connection sends one request and reads the answer in ``chunks``, then EOF."""
    conn = lib.Connection(lib.CLIENT, max_incomplete_event_size=max_head)
    out: Trace = []
    _send(conn, lib.Request(method=method, target="/", headers=[("Host", "a")]), out)
    _send(conn, lib.EndOfMessage(), out)
    for chunk in [*chunks, b""]:
        try:
            conn.receive_data(chunk)
            while (ev := conn.next_event()) is not lib.NEED_DATA:
                out.append(_event(ev, lib))
                if ev is lib.PAUSED or isinstance(ev, lib.ConnectionClosed):
                    break
        except Exception as exc:
            out.append(_error(exc))
            break
    out.append(("end", _states(conn), conn.trailing_data))
    return out


def cuts(data: bytes, rng: random.Random) -> Iterator[list[bytes]]:
    """``data`` whole, byte by byte, and in three random cuts."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for _ in range(3):
        points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6)))) if len(data) > 1 else []
        yield [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def assert_alike(run: Callable[[ModuleType, list[bytes]], Trace], data: bytes, seed: int = SEED) -> None:
    rng = random.Random(seed)
    for chunks in cuts(data, rng):
        expected, got = run(upstream, chunks), run(compiled, chunks)
        assert got == expected, f"h11-mypyc differs from h11 on {chunks!r}"


# -- requests ----------------------------------------------------------------------

H = b"Host: example.com\r\n"
POST = b"POST /form HTTP/1.1\r\n" + H

REQUESTS: dict[str, bytes] = {
    # valid
    "get": b"GET / HTTP/1.1\r\n" + H + b"\r\n",
    "get-query-many-headers": b"GET /a/b.php?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl/8\r\n"
                              b"Accept: */*\r\nCookie: a=1\r\nCookie: b=2\r\nX-Empty:\r\nX-Tabs: a\tb \t\r\n\r\n",
    "post-content-length": POST + b"Content-Length: 5\r\n\r\nhello",
    "post-chunked-ext-trailers": POST + b"Transfer-Encoding: chunked\r\n\r\n5;name=val\r\nhello\r\n"
                                 b"A\r\n0123456789\r\n000\r\nX-Trailer: t\r\n\r\n",
    "chunked-upper-hex-leading-zeros": POST + b"Transfer-Encoding: Chunked\r\n\r\n000A\r\n0123456789\r\n0\r\n\r\n",
    "chunked-empty": POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "pipelined-three": b"GET /1 HTTP/1.1\r\n" + H + b"\r\n" + POST + b"Content-Length: 3\r\n\r\nabc"
                       b"GET /3 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\nGET /4 HTTP/1.1\r\n" + H + b"\r\n",
    "http10-no-host": b"GET / HTTP/1.0\r\n\r\n",
    "http10-keep-alive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
    "expect-100-continue": POST + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    "options-star": b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form": b"GET http://example.com/x?y HTTP/1.1\r\n" + H + b"\r\n",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\n" + H + b"\r\nrest",
    "upgrade-websocket": b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes",
    "head": b"HEAD /x HTTP/1.1\r\n" + H + b"\r\n",
    "obs-text-value": b"GET / HTTP/1.1\r\n" + H + b"X-Name: caf\xc3\xa9 \xff\r\n\r\n",
    "utf8-target-fragment": b"GET /caf\xc3\xa9#frag HTTP/1.1\r\n" + H + b"\r\n",
    "long-target": b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\n" + H + b"\r\n",
    "content-length-zero": POST + b"Content-Length: 0\r\n\r\n",
    "body-then-eof": POST + b"Content-Length: 10\r\n\r\nhalf",
    "leading-empty-lines": b"\r\n\r\nGET / HTTP/1.1\r\n" + H + b"\r\n",
    "data-after-close": b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H
                        + b"\r\n",
    "lowercase-method": b"get / HTTP/1.1\r\n" + H + b"\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: a\n\n",
    # malformed
    "empty-lines-only": b"\r\n\r\n",
    "method-only": b"GET\r\n\r\n",
    "no-crlf-then-eof": b"GET / HTTP/1.1",
    "missing-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "empty-host": b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    "http2-version": b"GET / HTTP/2.0\r\n" + H + b"\r\n",
    "http-1-10": b"GET / HTTP/1.10\r\n" + H + b"\r\n",
    "lowercase-http": b"GET / http/1.1\r\n" + H + b"\r\n",
    "double-space": b"GET  / HTTP/1.1\r\n" + H + b"\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\n" + H + b"\r\n",
    "extra-token": b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n",
    "bad-method-token": b"G(T / HTTP/1.1\r\n" + H + b"\r\n",
    "nul-in-request-line": b"GET /\x00 HTTP/1.1\r\n" + H + b"\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n folded\r\n\r\n",
    "leading-whitespace-header": b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    "nul-in-name": b"GET / HTTP/1.1\r\n" + H + b"X-\x00A: a\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "cr-in-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n",
    "no-colon": b"GET / HTTP/1.1\r\n" + H + b"NoColon\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\n" + H + b": a\r\n\r\n",
    "huge-header": b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 40000 + b"\r\n\r\n",
    "tls-client-hello": bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00\x00\x02\x13\x01",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    # Content-Length
    "cl-negative": POST + b"Content-Length: -1\r\n\r\n",
    "cl-letters": POST + b"Content-Length: abc\r\n\r\n",
    "cl-plus": POST + b"Content-Length: +5\r\n\r\nhello",
    "cl-hex": POST + b"Content-Length: 0x5\r\n\r\nhello",
    "cl-inner-space": POST + b"Content-Length: 1 2\r\n\r\n",
    "cl-list-same": POST + b"Content-Length: 5, 5\r\n\r\nhello",
    "cl-list-different": POST + b"Content-Length: 5, 6\r\n\r\nhello",
    "cl-twice-same": POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl-twice-different": POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-huge": POST + b"Content-Length: 99999999999999999999999\r\n\r\nx",
    "cl-leading-zeros": POST + b"Content-Length: 005\r\n\r\nhello",
    # Transfer-Encoding and smuggling
    "cl-te": POST + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n"
             + H + b"\r\n",
    "te-cl": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "te-gzip": POST + b"Transfer-Encoding: gzip\r\n\r\n",
    "te-gzip-chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-gzip": POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te-identity": POST + b"Transfer-Encoding: identity\r\nContent-Length: 1\r\n\r\nx",
    "te-twice": POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-then-identity": POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "te-xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-tab": POST + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
    "te-vertical-tab": POST + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "te-quoted": POST + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n',
    "te-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-name-underscore": POST + b"Transfer_Encoding: chunked\r\nContent-Length: 1\r\n\r\nx",
    # chunk framing
    "chunk-bad-size": POST + b"Transfer-Encoding: chunked\r\n\r\ng\r\n",
    "chunk-negative": POST + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n",
    "chunk-size-trailing-space": POST + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk-size-leading-space": POST + b"Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-0x": POST + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-long": POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 30 + b"5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\nx",
    "chunk-ext-bare": POST + b"Transfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
    "chunk-ext-quoted-crlf": POST + b'Transfer-Encoding: chunked\r\n\r\n5;a="b\r\n"\r\nhello\r\n0\r\n\r\n',
    "chunk-ext-lf-smuggle": POST + b"Transfer-Encoding: chunked\r\n\r\n5;x\nGET /x\r\nhello\r\n0\r\n\r\n",
    "chunk-end-garbage": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",  # CVE-2025-43859
    "chunk-end-lf": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
    "chunk-size-lf": POST + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\n\n",
    "chunk-longer-than-said": POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    "chunk-eof-mid": POST + b"Transfer-Encoding: chunked\r\n\r\n10\r\nshort",
    "chunk-no-last": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    "trailer-bad": POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer\r\n\r\n",
    "trailer-content-length": POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("max_head", HEAD_LIMITS)
@pytest.mark.parametrize("name", REQUESTS)
def test_requests_give_the_same_events_and_errors(name, max_head):
    assert_alike(lambda lib, chunks: serve(lib, chunks, max_head), REQUESTS[name])


# -- responses (the client role) -----------------------------------------------------

RESPONSES: dict[str, bytes] = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    "close-delimited": b"HTTP/1.1 200 OK\r\n\r\nuntil eof",
    "http10": b"HTTP/1.0 200 OK\r\n\r\nbody",
    "continue-then-ok": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "no-content-with-length": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    "not-modified": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
    "no-reason": b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    "reason-with-obs-text": b"HTTP/1.1 200 \xc3\xa9t\xc3\xa9\r\nContent-Length: 0\r\n\r\n",
    "status-four-digits": b"HTTP/1.1 2000 OK\r\n\r\n",
    "status-letters": b"HTTP/1.1 abc OK\r\n\r\n",
    "icy": b"ICY 200 OK\r\n\r\n",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    "short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw",
}


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("name", RESPONSES)
def test_responses_give_the_same_events_and_errors(name, method):
    assert_alike(lambda lib, chunks: fetch(lib, chunks, HEAD_LIMITS[0], method), RESPONSES[name])


# -- serialising (what the gateway sends) ------------------------------------------------

#: (request, what the server then sends: (kind, args) with kind Response, InformationalResponse, Data, EndOfMessage)
SENDS: dict[str, tuple[bytes, list[tuple[str, dict[str, Any]]]]] = {
    "length": (REQUESTS["get"], [("Response", {"status_code": 200, "headers": [("Content-Length", "5")]}),
                                 ("Data", {"data": b"hello"}), ("EndOfMessage", {})]),
    "chunked-by-default": (REQUESTS["get"], [("Response", {"status_code": 200, "headers": []}),
                                             ("Data", {"data": b"a"}), ("Data", {"data": b""}),
                                             ("EndOfMessage", {"headers": [("X-Trailer", "t")]})]),
    "http10-close-delimited": (REQUESTS["http10-no-host"], [
        ("Response", {"status_code": 200, "headers": [("Transfer-Encoding", "chunked")]}),
        ("Data", {"data": b"body"}), ("EndOfMessage", {})]),
    "head": (REQUESTS["head"], [("Response", {"status_code": 200, "headers": [("Content-Length", "99")]}),
                                ("Data", {"data": b"ignored?"}), ("EndOfMessage", {})]),
    "continue": (REQUESTS["expect-100-continue"], [("InformationalResponse", {"status_code": 100, "headers": []}),
                                                   ("Response", {"status_code": 200, "reason": b"Fine",
                                                                 "headers": [("Content-Length", "0")]}),
                                                   ("EndOfMessage", {})]),
    "no-content-with-body": (REQUESTS["get"], [("Response", {"status_code": 204, "headers": []}),
                                               ("Data", {"data": b"x"}), ("EndOfMessage", {})]),
    "more-than-length": (REQUESTS["get"], [("Response", {"status_code": 200, "headers": [("Content-Length", "1")]}),
                                           ("Data", {"data": b"xy"})]),
    "less-than-length": (REQUESTS["get"], [("Response", {"status_code": 200, "headers": [("Content-Length", "3")]}),
                                           ("Data", {"data": b"x"}), ("EndOfMessage", {})]),
    "crlf-in-value": (REQUESTS["get"], [("Response", {"status_code": 200, "headers": [("X", "a\r\nSet-Cookie: x")]})]),
    "lf-in-value": (REQUESTS["get"], [("Response", {"status_code": 200, "headers": [("X", b"a\nb")]})]),
    "space-in-name": (REQUESTS["get"], [("Response", {"status_code": 200, "headers": [("X Y", "a")]})]),
    "obs-text-value": (REQUESTS["get"], [("Response", {"status_code": 200, "headers": [("X", b"caf\xc3\xa9")]})]),
    "non-ascii-str": (REQUESTS["get"], [("Response", {"status_code": 200, "headers": [("X", "caf\u00e9")]})]),
    "crlf-in-reason": (REQUESTS["get"], [("Response", {"status_code": 200, "reason": b"OK\r\nX: y", "headers": []})]),
    "status-99": (REQUESTS["get"], [("Response", {"status_code": 99, "headers": []})]),
    "status-1000": (REQUESTS["get"], [("Response", {"status_code": 1000, "headers": []})]),
    "informational-as-final": (REQUESTS["get"], [("Response", {"status_code": 103, "headers": []})]),
    "close-then-more": (REQUESTS["pipelined-three"], [
        ("Response", {"status_code": 200, "headers": [("Connection", "close"), ("Content-Length", "0")]}),
        ("EndOfMessage", {}), ("Response", {"status_code": 200, "headers": []})]),
    "switch-protocols": (REQUESTS["upgrade-websocket"], [
        ("InformationalResponse", {"status_code": 101, "headers": [("Upgrade", "websocket")]})]),
    "connect-ok": (REQUESTS["connect"], [("Response", {"status_code": 200, "headers": []})]),
}


def send_sequence(lib: ModuleType, request: bytes, sends: list[tuple[str, dict[str, Any]]]) -> Trace:
    conn = lib.Connection(lib.SERVER)
    conn.receive_data(request)
    out: Trace = []
    while (ev := conn.next_event()) not in (lib.NEED_DATA, lib.PAUSED):
        out.append(_event(ev, lib))
        if isinstance(ev, lib.EndOfMessage):
            break
    for kind, kwargs in sends:
        try:
            event = getattr(lib, kind)(**kwargs)
        except Exception as exc:
            out.append(_error(exc))
            break
        if not _send(conn, event, out):
            break
    out.append(("end", _states(conn)))
    return out


@pytest.mark.parametrize("name", SENDS)
def test_the_same_events_serialise_to_the_same_bytes_or_errors(name):
    request, sends = SENDS[name]
    assert send_sequence(compiled, request, sends) == send_sequence(upstream, request, sends)


# -- random mutations ------------------------------------------------------------------

TOKENS = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b",", b"0", b"5", b"\x00", b"\x0b", b"\x7f", b"\xff",
          b"chunked", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"Content-Length: 0\r\n",
          b"0\r\n\r\n", b"HTTP/1.1", b"HTTP/1.0", b"Host: x\r\n", b"Connection: close\r\n", b"Expect: 100-continue\r\n",
          b"ffffffffffffffffff", b"GET / HTTP/1.1\r\nHost: y\r\n\r\n"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, at = rng.randrange(5), rng.randint(0, len(b))
        if op == 0 and b:
            b[min(at, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[at:at] = rng.choice(TOKENS)
        elif op == 2:
            del b[at:at + rng.randint(1, 8)]
        elif op == 3:
            b[at:at] = b[at:at + rng.randint(1, 16)]
        else:
            del b[rng.randint(at, len(b)):]
    return bytes(b)


def test_random_mutations_give_the_same_events_and_errors():
    rng = random.Random(SEED)
    seeds = [v for k, v in REQUESTS.items() if k not in ("huge-header", "long-target")]
    differ = []
    for _ in range(CASES):
        data = mutate(rng.choice(seeds), rng)
        max_head = rng.choice(HEAD_LIMITS)
        points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 3))) if len(data) > 1 else []
        for chunks in ([data], [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]):
            if serve(compiled, chunks, max_head) != serve(upstream, chunks, max_head):
                differ.append((chunks, max_head))
    assert not differ, f"{len(differ)} of {CASES} inputs differ; the first: {differ[0]!r}"


def test_the_differential_driver_sees_what_it_compares():
    """The traces hold what the assertions are about: events, errors with hints, states, sent bytes."""
    trace = serve(upstream, [REQUESTS["pipelined-three"]], HEAD_LIMITS[0])
    targets = [e[2] for e in trace if e[0] == "Request"]
    assert targets == [b"/1", b"/form", b"/3"]  # /4 comes after Connection: close
    assert any(e[0] == "sent" and e[1].startswith(b"HTTP/1.1 200 ") for e in trace)
    trace = serve(upstream, [REQUESTS["chunk-end-garbage"]], HEAD_LIMITS[0])
    errors = [e for e in trace if e[:2] == ("raised", "RemoteProtocolError")]
    assert errors and errors[0][3] == 400
    big = REQUESTS["huge-header"]
    trace = serve(upstream, [big[:100], big[100:]], HEAD_LIMITS[1])  # (h11 measures only an incomplete head)
    assert [e[3] for e in trace if e[:2] == ("raised", "RemoteProtocolError")] == [431]
    # a difference would be seen: the two libraries' traces are compared as plain data
    assert serve(upstream, [b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"], 64) != serve(
        upstream, [b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"], 64)
