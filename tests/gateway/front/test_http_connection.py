"""The per-connection task over memory streams, with a real h11 client.

Every test runs on the autojump clock (memory streams only, no real IO), so
timeouts and lingering closes cost no real time and are asserted exactly."""

from __future__ import annotations

import logging
import socket

import pytest
import trio
import trio.testing

from gateway.config import LimitsConfig, TimeoutsConfig
from gateway.front.h1 import ConnectionSettings, HttpConnection, ListenerState
from gateway.front.liveness import WATCH_AFTER, InFlightWatcher
from gateway.http.errors import ClientGone
from gateway.http.request import Request
from gateway.http.response import FileRange, Response
from gateway.http.spool import Spool
from tests.helpers import HttpClient, read_all, read_until

SETTINGS = ConnectionSettings.from_config(
    timeouts=TimeoutsConfig(client_header=10, client_body=7, keepalive=30, send=5),
    limits=LimitsConfig(max_header_size=4096, max_uri_size=1024, client_max_body_size=1000, body_buffer_size=100))


async def echo(req: Request) -> Response:
    body = req.body.getvalue() if req.body is not None and req.body.in_memory else b""
    info = b"%s %s body=%d:" % (req.method, req.target, req.body.size if req.body else -1)
    return Response(200, [(b"content-type", b"text/plain")], info + body)


async def start(nursery, handler=echo, settings=SETTINGS, listener_state=None):
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, handler, settings, client=("10.0.0.1", 1234), server=("10.0.0.2", 80),
                          listener_state=listener_state)
    nursery.start_soon(conn.run)
    return client


async def test_get_and_keep_alive(nursery, autojump_clock):
    c = HttpClient(await start(nursery))
    r1 = await c.request("GET", "/a?x=1")
    r2 = await c.request("GET", "/b")
    assert (r1.status, r1.body) == (200, b"GET /a?x=1 body=-1:")
    assert (r2.status, r2.body) == (200, b"GET /b body=-1:")
    assert r1.header("server") == "gateway" and r1.header("date")


async def test_pipelined_requests_are_answered_in_order(nursery, autojump_clock):
    stream = await start(nursery)
    await stream.send_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await read_all(stream)
    assert data.count(b"HTTP/1.1 200") == 3
    assert data.index(b"GET /1") < data.index(b"GET /2") < data.index(b"GET /3")


async def test_head_has_no_body(nursery, autojump_clock):
    c = HttpClient(await start(nursery))
    r = await c.request("HEAD", "/a")
    assert r.status == 200 and r.body == b""
    assert r.header("content-length") == str(len(b"HEAD /a body=-1:"))


async def test_chunked_body_is_read_fully(nursery, autojump_clock):
    c = HttpClient(await start(nursery))
    r = await c.request("POST", "/p", body=[b"abc", b"defg"])
    assert r.body == b"POST /p body=7:abcdefg"


async def test_body_larger_than_memory_threshold_spools_to_disk(nursery, autojump_clock):
    seen = {}

    async def handler(req):
        seen["in_memory"] = req.body.in_memory
        seen["data"] = b"".join(req.body.chunks())
        return Response(200, [], b"ok")

    c = HttpClient(await start(nursery, handler))
    await c.request("POST", "/p", body=b"z" * 500)
    assert seen == {"in_memory": False, "data": b"z" * 500}


async def test_expect_100_continue(nursery, autojump_clock):
    stream = await start(nursery)
    await stream.send_all(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    first = await read_until(stream, b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 100 ")
    await stream.send_all(b"hello")
    rest = await read_until(stream, b"body=5:hello")
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"body=5:hello")


async def test_too_large_content_length_is_413_without_reading(nursery, autojump_clock):
    stream = await start(nursery)
    await stream.send_all(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in data.lower()


async def test_too_large_chunked_body_is_413(nursery, autojump_clock):
    c = HttpClient(await start(nursery))
    r = await c.request("POST", "/u", body=[b"x" * 600, b"y" * 600])
    assert r.status == 413


async def test_long_uri_is_414(nursery, autojump_clock):
    c = HttpClient(await start(nursery))
    r = await c.request("GET", "/" + "a" * 2000)
    assert r.status == 414


async def test_huge_header_is_431(nursery, autojump_clock):
    stream = await start(nursery)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert (await read_all(stream)).startswith(b"HTTP/1.1 431 ")


async def test_huge_request_line_is_414(nursery, autojump_clock):
    stream = await start(nursery)
    await stream.send_all(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_all(stream)).startswith(b"HTTP/1.1 414 ")


async def test_malformed_request_is_400(nursery, autojump_clock):
    stream = await start(nursery)
    await stream.send_all(b"GET / HTTP/1.1\r\nBad header line\r\n\r\n")
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"Traceback" not in data


async def test_handler_crash_is_500_without_traceback(nursery, autojump_clock):
    async def crash(req):
        raise RuntimeError("secret internals")

    c = HttpClient(await start(nursery, crash))
    r = await c.request("GET", "/")
    assert r.status == 500
    assert b"secret" not in r.body and b"Traceback" not in r.body


async def test_partial_header_times_out_with_408(nursery, autojump_clock):
    stream = await start(nursery)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
    t0 = trio.current_time()
    data = await read_until(stream, b"</html>")
    assert data.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - t0 == pytest.approx(SETTINGS.header_timeout, abs=0.01)


async def test_slowloris_header_deadline_counts_from_accept(nursery, autojump_clock):
    stream = await start(nursery)
    t0 = trio.current_time()

    async def trickle():
        # one byte every 3 s: never idle long, but the header never completes
        try:
            for byte in b"GET / HTTP/1.1\r\nX-A: bbbbbbbbbbbbbbbbbbbbbbbbbbbb":
                await trio.sleep(3)
                await stream.send_all(bytes([byte]))
        except trio.BrokenResourceError:
            pass

    nursery.start_soon(trickle)
    data = await read_until(stream, b"</html>")
    assert data.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - t0 == pytest.approx(SETTINGS.header_timeout, abs=0.01)


async def test_silent_connection_is_closed_quietly(nursery, autojump_clock):
    stream = await start(nursery)
    t0 = trio.current_time()
    assert await read_all(stream) == b""
    assert trio.current_time() - t0 == pytest.approx(SETTINGS.header_timeout, abs=0.01)


async def test_keepalive_idle_timeout(nursery, autojump_clock):
    stream = await start(nursery)
    c = HttpClient(stream)
    await c.request("GET", "/")
    t0 = trio.current_time()
    assert await read_all(stream) == b""
    assert trio.current_time() - t0 == pytest.approx(SETTINGS.keepalive_timeout, abs=0.01)


async def test_stalled_body_is_408(nursery, autojump_clock):
    stream = await start(nursery)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    t0 = trio.current_time()
    data = await read_until(stream, b"</html>")
    assert data.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - t0 == pytest.approx(SETTINGS.body_timeout, abs=0.01)


async def test_client_that_stops_reading_is_cut_after_send_timeout(nursery, autojump_clock):
    done = trio.Event()

    async def big(req):
        return Response(200, [], b"x" * 10_000_000)

    client, server = trio.testing.lockstep_stream_pair()
    conn = HttpConnection(server, big, SETTINGS, client=("c", 1), server=("s", 2))

    async def run():
        await conn.run()
        done.set()

    nursery.start_soon(run)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await client.receive_some(100)  # read a little, then stop
    t0 = trio.current_time()
    await done.wait()
    assert trio.current_time() - t0 == pytest.approx(SETTINGS.send_timeout, abs=0.01)


async def test_client_that_leaves_cancels_the_handler_once_watched(nursery, autojump_clock, caplog):
    # over a real socket pair: the in-flight watcher waits on the socket in epoll
    listener_state = ListenerState()
    listener_state.inflight = InFlightWatcher()
    nursery.start_soon(listener_state.inflight.run)
    entered, cancelled = trio.Event(), trio.Event()

    async def slow(req):
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    ours, theirs = trio.socket.socketpair()
    conn = HttpConnection(trio.SocketStream(theirs), slow, SETTINGS, client=("10.0.0.1", 1234),
                          server=("10.0.0.2", 80), listener_state=listener_state)
    nursery.start_soon(conn.run)
    client = trio.SocketStream(ours)
    await client.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await entered.wait()
    t0 = trio.current_time()
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await client.aclose()
        await cancelled.wait()
        await trio.testing.wait_all_tasks_blocked()
    # noticed when the watch starts (WATCH_AFTER), not when the handler would have ended
    assert trio.current_time() - t0 == pytest.approx(WATCH_AFTER)
    assert '"GET /slow HTTP/1.1" 499' in caplog.text
    assert listener_state.stats.in_flight == 0 and listener_state.open_connections == 0


async def test_a_fast_request_is_never_watched(nursery, autojump_clock):
    listener_state = ListenerState()
    listener_state.inflight = InFlightWatcher()
    nursery.start_soon(listener_state.inflight.run)
    ours, theirs = trio.socket.socketpair()
    nursery.start_soon(HttpConnection(trio.SocketStream(theirs), echo, SETTINGS, client=("10.0.0.1", 1234),
                                      server=("10.0.0.2", 80), listener_state=listener_state).run)
    c = HttpClient(trio.SocketStream(ours))
    assert (await c.request("GET", "/")).status == 200
    await trio.sleep(2 * WATCH_AFTER)
    assert listener_state.inflight.registered == 0  # no epoll_ctl for it, ever


async def test_shutdown_closes_idle_connections_at_once(nursery, autojump_clock):
    listener_state = ListenerState()
    stream = await start(nursery, listener_state=listener_state)
    c = HttpClient(stream)
    await c.request("GET", "/")
    await trio.testing.wait_all_tasks_blocked()
    t0 = trio.current_time()
    listener_state.begin_shutdown()
    assert await read_all(stream) == b""
    assert trio.current_time() == t0


async def test_shutdown_gives_a_fresh_connection_a_moment_to_send_its_first_request(nursery, autojump_clock):
    # a reload's old worker accepted it just before it stopped accepting: the
    # client is about to send its request, which must be answered, not reset
    from gateway.front.h1 import FIRST_REQUEST_GRACE

    listener_state = ListenerState()
    stream = await start(nursery, listener_state=listener_state)
    await trio.testing.wait_all_tasks_blocked()
    listener_state.begin_shutdown()
    await trio.sleep(FIRST_REQUEST_GRACE / 2)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" in data.lower()

    silent = await start(nursery, listener_state=listener_state)  # accepted during the shutdown, sends nothing
    t0 = trio.current_time()
    assert await read_all(silent) == b""
    assert trio.current_time() - t0 == pytest.approx(FIRST_REQUEST_GRACE)


async def test_shutdown_lets_busy_request_finish_with_connection_close(nursery, autojump_clock):
    listener_state = ListenerState()
    release = trio.Event()
    entered = trio.Event()

    async def slow(req):
        entered.set()
        await release.wait()
        return Response(200, [], b"done")

    stream = await start(nursery, slow, listener_state=listener_state)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await entered.wait()
    listener_state.begin_shutdown()
    release.set()
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"done")
    assert b"connection: close" in data.lower()


async def test_body_below_the_minimum_rate_is_408(nursery, autojump_clock):
    from dataclasses import replace

    settings = replace(SETTINGS, body_timeout=60, body_min_rate=1000, max_body_size=10**6)
    stream = await start(nursery, settings=settings)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    t0 = trio.current_time()

    async def trickle():
        # 500 bytes every second: each gap is far below body_timeout, but the
        # average (500 B/s) is half the minimum rate
        try:
            while True:
                await stream.send_all(b"x" * 500)
                await trio.sleep(1)
        except trio.BrokenResourceError:
            pass

    nursery.start_soon(trickle)
    data = await read_until(stream, b"</html>")
    assert data.startswith(b"HTTP/1.1 408 ")
    # cut once the 10 s grace is over and the bytes received no longer cover the rate
    assert 10 <= trio.current_time() - t0 <= 12


async def test_trace_is_405_and_never_reaches_the_handler(nursery, autojump_clock):
    seen = []

    async def handler(req):
        seen.append(req.method)
        return Response(200, [], b"x")

    stream = await start(nursery, handler)
    await stream.send_all(b"TRACE / HTTP/1.1\r\nHost: x\r\nCookie: secret=1\r\n\r\n")
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 405 ") and b"secret" not in data
    assert seen == []


async def test_access_log_escapes_what_the_client_sent_as_nginx(nursery, autojump_clock, caplog):
    c = HttpClient(await start(nursery))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await c.request("GET", "/a", headers=[("User-Agent", 'evil" 200 999 "x\x1b[31m'),
                                              ("Referer", "back\\slash")])
    line = caplog.records[-1].getMessage()
    assert '"GET /a HTTP/1.1" 200 ' in line
    assert '"back\\x5Cslash" "evil\\x22 200 999 \\x22x\\x1B[31m"' in line
    assert line.count('"') == 6  # request line, referer, user agent: no forged field


async def test_a_head_that_never_parses_is_logged_too(nursery, autojump_clock, caplog):
    stream = await start(nursery)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await stream.send_all(b"GET /\x01\"x HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert '"GET /\\x01\\x22x HTTP/1.1" 400 ' in caplog.records[-1].getMessage()


async def test_a_handler_that_sees_its_client_gone_is_499_not_500(nursery, autojump_clock, caplog):
    # run_php raises ClientGone when Request.client_left() says so as the request
    # leaves the PHP queue (a client that left before it was watched, or half-closed)
    async def probe(req):
        await trio.sleep(0.1)  # the client leaves meanwhile
        assert req.client_left()
        raise ClientGone()

    ours, theirs = trio.socket.socketpair()
    listener_state = ListenerState()
    done = trio.Event()
    conn = HttpConnection(trio.SocketStream(theirs), probe, SETTINGS, client=("10.0.0.1", 1234),
                          server=("10.0.0.2", 80), listener_state=listener_state)

    async def run():
        await conn.run()
        done.set()

    nursery.start_soon(run)
    client = trio.SocketStream(ours)
    with caplog.at_level(logging.INFO):
        await client.send_all(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.send_eof()
        assert await read_all(client) == b""  # no 500 page for a client that left
        await done.wait()
    assert '"GET /gone HTTP/1.1" 499' in caplog.text
    assert "unhandled error" not in caplog.text and "Traceback" not in caplog.text
    assert listener_state.stats.in_flight == 0 and listener_state.open_connections == 0


@pytest.mark.parametrize("kind", ["bytes", "file", "stream"])
async def test_a_cut_response_logs_the_bytes_the_client_got(nursery, autojump_clock, caplog, tmp_path, kind):
    # the access log's size is what went out, also when the client stopped
    # reading halfway (it was 0 for files and for a stream's unfinished piece)
    size = 8 * 1024 * 1024
    path = tmp_path / "big"
    path.write_bytes(b"f" * size)

    async def chunks():
        for _ in range(size // (1 << 20)):
            yield b"s" * (1 << 20)

    class Stream:
        def __init__(self):
            self.it = chunks()

        def __aiter__(self):
            return self

        async def __anext__(self):
            return await self.it.__anext__()

        async def aclose(self):
            await self.it.aclose()

    async def big(req):
        if kind == "bytes":
            return Response(200, [], b"b" * size)
        if kind == "file":
            return Response(200, [(b"content-length", b"%d" % size)], FileRange(path.open("rb"), 0, size))
        return Response(200, [], Stream())

    ours, theirs = trio.socket.socketpair()
    done = trio.Event()
    conn = HttpConnection(trio.SocketStream(theirs), big, SETTINGS, client=("10.0.0.1", 1234),
                          server=("10.0.0.2", 80))

    async def run():
        await conn.run()
        done.set()

    nursery.start_soon(run)
    client = trio.SocketStream(ours)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await client.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        got = len(await client.receive_some(65536))  # read a little, then stop
        await done.wait()  # cut after the send timeout
    logged = int(caplog.text.split('"GET /big HTTP/1.1" 200 ')[1].split()[0])
    # at least what we read (less its head), not more than the body: the kernel took the rest
    assert got - 200 <= logged < size
    await client.aclose()


async def test_a_response_ready_after_its_client_left_is_logged_499(nursery, autojump_clock, caplog):
    # ignore_client_abort: the PHP run is shielded and finishes, but its client
    # left meanwhile and the watcher cancelled the connection: nothing was sent
    listener_state = ListenerState()
    listener_state.inflight = InFlightWatcher()
    nursery.start_soon(listener_state.inflight.run)

    async def shielded(req):
        with trio.CancelScope(shield=True):
            await trio.sleep(5)
        return Response(200, [], b"finished for nobody")

    ours, theirs = trio.socket.socketpair()
    done = trio.Event()
    conn = HttpConnection(trio.SocketStream(theirs), shielded, SETTINGS, client=("10.0.0.1", 1234),
                          server=("10.0.0.2", 80), listener_state=listener_state)

    async def run():
        await conn.run()
        done.set()

    nursery.start_soon(run)
    client = trio.SocketStream(ours)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await client.send_all(b"GET /shielded HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.5)
        await client.aclose()
        await done.wait()
    assert '"GET /shielded HTTP/1.1" 499 0' in caplog.text


async def test_a_request_cut_by_shutdown_leaves_a_log_line(autojump_clock, caplog):
    # past timeouts.graceful the connection is cancelled before any status:
    # there is no access-log line, so the error log must say what was dropped
    listener_state = ListenerState()
    entered = trio.Event()

    async def slow(req):
        entered.set()
        await trio.sleep_forever()

    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, slow, SETTINGS, client=("10.0.0.1", 1234), server=("10.0.0.2", 80),
                          listener_state=listener_state)
    graceful = trio.CancelScope()

    async def run():
        with graceful:
            await conn.run()

    with caplog.at_level(logging.INFO):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await client.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await entered.wait()
            listener_state.begin_shutdown()
            graceful.deadline = trio.current_time() + 10
    assert "GET /slow from 10.0.0.1: cut by shutdown" in caplog.text


# -- the same timeouts over a real socket (reads that find bytes there take no cancel scope) -------


async def start_on_socket(nursery, handler=echo, settings=SETTINGS, listener_state=None):
    ours, theirs = trio.socket.socketpair()
    conn = HttpConnection(trio.SocketStream(theirs), handler, settings, client=("10.0.0.1", 1234),
                          server=("10.0.0.2", 80), listener_state=listener_state)
    nursery.start_soon(conn.run)
    return trio.SocketStream(ours)


@pytest.mark.parametrize(("sent", "answer", "seconds"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n", b"HTTP/1.1 408 ", SETTINGS.header_timeout),  # a partial head
    (b"", b"", SETTINGS.header_timeout),  # nothing at all: closed quietly
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", b"HTTP/1.1 408 ", SETTINGS.body_timeout),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 ", SETTINGS.keepalive_timeout),  # answered, then idle
])
async def test_over_a_socket_the_timeouts_are_the_same(nursery, autojump_clock, sent, answer, seconds):
    stream = await start_on_socket(nursery)
    if sent:
        await stream.send_all(sent)
    t0 = trio.current_time()
    data = await read_all(stream)
    assert data.startswith(answer)
    assert trio.current_time() - t0 == pytest.approx(seconds, abs=0.01)


async def test_over_a_socket_pipelined_requests_are_answered_in_order(nursery, autojump_clock):
    stream = await start_on_socket(nursery)
    await stream.send_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nxyz")
    data = await read_all(stream)
    assert data.count(b"HTTP/1.1 200 ") == 3
    assert data.index(b"GET /a body=-1:") < data.index(b"GET /b body=-1:") < data.index(b"POST /c body=3:xyz")


async def test_over_a_socket_a_big_body_arrives_whole_after_its_head(nursery, autojump_clock):
    page = bytes(range(256)) * 1000  # 256 KB: sent with its head in one sendmsg, not joined to it

    async def big(req: Request) -> Response:
        return Response(200, [(b"content-type", b"application/octet-stream")], page)

    c = HttpClient(await start_on_socket(nursery, big))
    for _ in range(2):  # and the connection is kept for the next one
        r = await c.request("GET", "/big")
        assert r.status == 200 and r.body == page


@pytest.mark.parametrize("length", [True, False])
async def test_over_a_socket_a_spooled_page_arrives_whole_in_its_pieces_order(nursery, autojump_clock, length):
    """A PHP page spooled in memory goes out as the pieces PHP sent (one
    sendmsg with the head, not joined): framed by its Content-Length, or
    chunked without one; a HEAD gets the head alone."""
    pieces = [bytes([i]) * (5000 + i) for i in range(1, 12)]  # ~55 KB in 11 records, as php-fpm writes them

    async def spooled(req: Request) -> Response:
        spool = Spool(1 << 20)
        for piece in pieces:
            spool.write(piece)
        headers = [(b"content-type", b"text/html")] + ([(b"content-length", b"%d" % spool.size)] if length else [])
        return Response(200, headers, spool)

    c = HttpClient(await start_on_socket(nursery, spooled))
    for _ in range(2):  # and the connection is kept for the next one
        r = await c.request("GET", "/page")
        assert r.status == 200 and r.body == b"".join(pieces)
        assert (r.header("transfer-encoding") == "chunked") is not length
    r = await c.request("HEAD", "/page")
    assert r.status == 200 and r.body == b""


async def test_a_client_whose_next_request_is_always_there_does_not_hold_the_others_back(nursery):
    """Each connection gets one request per scheduler round: a client that
    sends its next request before it has read the answer (so it is in the
    kernel when the cycle ends) is not served in a run while another
    connection's request waits (issue 19: p99 of seconds at c64 without this)."""
    order: list[str] = []
    all_served = trio.Event()
    eager_client, eager_server = socket.socketpair()  # the clients' ends: plain blocking sockets
    other_client, other_server = socket.socketpair()

    async def handler(req: Request) -> Response:
        order.append(req.target.decode())
        if req.target.startswith(b"/eager") and len(order) < 10:
            eager_client.send(b"GET /eager%d HTTP/1.1\r\nHost: x\r\n\r\n" % len(order))  # the next is there already
        if req.target == b"/eager0":
            other_client.send(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")  # meanwhile another client asks
        if "/other" in order and len(order) >= 10:
            all_served.set()
        return Response(200, [], b"ok")

    for sock in (eager_server, other_server):
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        nursery.start_soon(HttpConnection(stream, handler, SETTINGS, client=("10.0.0.1", 1234),
                                          server=("10.0.0.2", 80)).run)
    eager_client.send(b"GET /eager0 HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.move_on_after(5):
        await all_served.wait()
    if not all_served.is_set():
        pytest.fail(f"not all served within 5 s: {order}")
    assert order.index("/other") <= 3, order
