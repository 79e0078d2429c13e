"""The HTTP/2 connection over memory streams, with a real h2 client on the other end.

Autojump clock throughout: the timeouts (idle, body, stalled window) are
asserted at their exact virtual times. The attacks (rapid reset, CONTINUATION
flood, PING flood) are sent as raw frames, as an attacker would."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
import trio
import trio.testing
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, RstStreamFrame

from gateway.config import LimitsConfig, TimeoutsConfig
from gateway.front.h1 import ConnectionSettings, ListenerState
from gateway.front.h2 import MAX_ACKS_OWED, MAX_CONCURRENT_STREAMS, RESET_LIMIT, Http2Connection
from gateway.front.h2_limits import Flood, FrameScanner, ResetBudget
from gateway.http.request import Request
from gateway.http.response import FileRange, Response

SETTINGS = ConnectionSettings.from_config(
    timeouts=TimeoutsConfig(client_header=10, client_body=7, keepalive=30, send=5),
    limits=LimitsConfig(max_header_size=4096, max_uri_size=1024, client_max_body_size=100_000,
                        body_buffer_size=100))


async def echo(req: Request) -> Response:
    body = b"".join(req.body.chunks()) if req.body is not None else b""
    info = b"%s %s host=%s cookie=%s body=%d:" % (req.method, req.target, req.host, req.header(b"cookie") or b"-",
                                                  req.body.size if req.body else -1)
    return Response(200, [(b"content-type", b"text/plain")], info + body)


class Client:
    """An h2 client on a memory stream: requests out, responses collected by stream."""

    def __init__(self, stream: trio.abc.Stream, *, window: int | None = None, ack: bool = True) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.ack = ack
        self.headers: dict[int, dict[bytes, bytes]] = {}
        #: each stream's last HEADERS as received: every field, in order
        self.fields: dict[int, list[tuple[bytes, bytes]]] = {}
        #: streams whose END_STREAM came on their HEADERS (no DATA frame)
        self.ended_with_head: set[int] = set()
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self._buffer = bytearray()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def open(self, path: str | bytes, method: str = "GET", *, body: bytes | None = None,
             headers: list[tuple[bytes, bytes]] = (), end: bool = True,  # type: ignore[assignment]
             authority: bytes = b"example.com") -> int:
        sid = self.conn.get_next_available_stream_id()
        raw = path if isinstance(path, bytes) else path.encode()
        self.conn.send_headers(sid, [(b":method", method.encode()), (b":scheme", b"https"),
                                     (b":authority", authority), (b":path", raw), *headers],
                               end_stream=body is None and end)
        if body is not None:  # (within the default windows: up to 64 KiB)
            for i in range(0, max(len(body), 1), 16384):
                self.conn.send_data(sid, body[i : i + 16384], end_stream=i + 16384 >= len(body))
        return sid

    async def receive(self) -> bool:
        """One read; False at EOF."""
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed = True
            return False
        self._buffer += data
        while len(self._buffer) >= 9:  # frame by frame: see the GOAWAY case below
            end = 9 + int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < end:
                break
            frame, self._buffer = bytes(self._buffer[:end]), self._buffer[end:]
            self._events(self.conn.receive_data(frame))
        await self.flush()
        return True

    def _events(self, events) -> None:
        for event in events:
            if isinstance(event, (h2.events.ResponseReceived, h2.events.InformationalResponseReceived)):
                self.headers[event.stream_id] = dict(event.headers)
                self.fields[event.stream_id] = list(event.headers)
                if getattr(event, "stream_ended", None) is not None:
                    self.ended_with_head.add(event.stream_id)
                self.data[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.data[event.stream_id] += event.data
                if self.ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
                # h2 as a client stops at any GOAWAY; browsers and curl go on
                # reading the streams up to last_stream_id (RFC 9113 6.8)
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    async def until(self, done) -> None:
        while not done():
            if not await self.receive():
                return

    async def get(self, path: str | bytes, **kw) -> tuple[dict[bytes, bytes], bytes]:
        sid = self.open(path, **kw)
        await self.flush()
        await self.until(lambda: sid in self.ended or sid in self.resets)
        assert sid in self.headers, (sid, self.resets, self.goaway)
        return self.headers[sid], bytes(self.data[sid])

    async def read_to_eof(self) -> None:
        await self.until(lambda: False)


async def start(nursery, handler=echo, settings=SETTINGS, listener_state=None, reclaim=None, **client_kw) -> Client:
    client, server = trio.testing.memory_stream_pair()
    from gateway.front.downstream import Downstream
    conn = Http2Connection(Downstream(server, settings.send_timeout), handler, settings, client=("10.0.0.1", 1234),
                           server=("10.0.0.2", 443), listener_state=listener_state, reclaim=reclaim)
    nursery.start_soon(conn.run)
    c = Client(client, **client_kw)
    await c.flush()
    return c


# -- requests ---------------------------------------------------------------------------


async def test_get_post_and_headers(nursery, autojump_clock, caplog):
    c = await start(nursery)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        head, body = await c.get("/a?x=1", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
        assert head[b":status"] == b"200" and head[b"server"] == b"gateway" and head[b"date"]
        assert head[b"content-length"] == b"%d" % len(body)
        # Host from :authority, cookie crumbs joined for PHP as one header
        assert body == b"GET /a?x=1 host=example.com cookie=a=1; b=2 body=-1:"
        head, body = await c.get("/p", method="POST", body=b"x" * 5000)  # spooled past body_buffer_size
        assert body == b"POST /p host=example.com cookie=- body=5000:" + b"x" * 5000
        await trio.testing.wait_all_tasks_blocked()  # (the line is written after the last frame)
    assert '"GET /a?x=1 HTTP/2.0" 200' in caplog.text and '"POST /p HTTP/2.0" 200' in caplog.text


async def test_head_sends_no_body(nursery, autojump_clock):
    c = await start(nursery)
    head, body = await c.get("/h", method="HEAD")
    assert head[b":status"] == b"200" and body == b""


async def test_big_file_body_honours_a_small_window(nursery, autojump_clock):
    payload = bytes(range(256)) * 1200  # 300 KiB
    f = tempfile.TemporaryFile()  # noqa: SIM115 - the response owns it: the front end closes it
    f.write(payload)
    f.flush()

    async def handler(req):
        return Response(200, [(b"content-length", b"%d" % len(payload))], FileRange(f, 0, len(payload)))

    c = await start(nursery, handler, window=1000)
    head, body = await c.get("/big")
    assert head[b":status"] == b"200" and body == payload
    await trio.testing.wait_all_tasks_blocked()
    assert f.closed  # the front end closed the file


async def test_headers_go_out_while_the_window_is_shut(nursery, autojump_clock):
    c = await start(nursery, window=0)
    sid = c.open("/a")
    await c.flush()
    await c.until(lambda: sid in c.headers)
    assert c.headers[sid][b":status"] == b"200" and bytes(c.data[sid]) == b""
    c.conn.increment_flow_control_window(1000, stream_id=sid)
    await c.flush()
    await c.until(lambda: sid in c.ended)
    assert bytes(c.data[sid]).startswith(b"GET /a ")


async def test_streams_are_served_concurrently(nursery, autojump_clock):
    second_done = trio.Event()

    async def handler(req):
        if req.target == b"/first":
            await second_done.wait()
        else:
            second_done.set()
        return Response(200, [], req.target)

    c = await start(nursery, handler)
    s1, s2 = c.open("/first"), c.open("/second")
    await c.flush()
    await c.until(lambda: {s1, s2} <= c.ended)
    assert (bytes(c.data[s1]), bytes(c.data[s2])) == (b"/first", b"/second")


async def test_bad_requests_get_their_status(nursery, autojump_clock):
    c = await start(nursery)
    head, _ = await c.get("/x", method="TRACE")
    assert head[b":status"] == b"405"
    head, _ = await c.get("/" + "a" * 2000)
    assert head[b":status"] == b"414"
    head, _ = await c.get("/big", method="POST", headers=[(b"content-length", b"100001")], end=False)
    assert head[b":status"] == b"413"  # at once, from Content-Length; the stream is then reset
    head, _ = await c.get("/ok")
    assert head[b":status"] == b"200"  # the connection lives on


@pytest.mark.parametrize("path", [b"/a b", b"/caf\xc3\xa9", b"/x\x7f", b"/a\tb"])
async def test_a_path_h11_would_refuse_is_a_400_on_its_stream_only(nursery, autojump_clock, caplog, path):
    ran: list[bytes] = []

    async def handler(req: Request) -> Response:
        ran.append(req.target)
        return await echo(req)

    c = await start(nursery, handler)
    caplog.set_level(logging.INFO, logger="gateway")
    head, _ = await c.get(path)
    assert head[b":status"] == b"400"
    assert ran == []  # no handler saw it: it never reaches $request_uri, Location or a proxied request
    refused = [r for r in caplog.records if r.levelno >= logging.INFO and "invalid request target" in r.getMessage()]
    assert len(refused) == 1, caplog.text
    head, body = await c.get("/ok")
    assert head[b":status"] == b"200" and body.startswith(b"GET /ok ")  # the connection lives on
    assert c.goaway is None


async def test_body_over_the_limit_gets_413_and_the_rest_is_refused(nursery, autojump_clock):
    c = await start(nursery, settings=replace(SETTINGS, max_body_size=20000))
    sid = c.open("/up", method="POST", body=b"z" * 60000)
    await c.flush()
    await c.until(lambda: sid in c.ended or sid in c.resets)
    assert c.headers[sid][b":status"] == b"413"
    head, _ = await c.get("/ok")
    assert head[b":status"] == b"200"


async def test_expect_100_continue_is_answered_before_the_body(nursery, autojump_clock):
    c = await start(nursery)
    sid = c.open("/u", method="POST", headers=[(b"expect", b"100-continue")], end=False)
    await c.flush()
    await c.until(lambda: sid in c.headers)
    assert c.headers[sid][b":status"] == b"100" and sid not in c.ended
    c.conn.send_data(sid, b"late body", end_stream=True)
    await c.flush()
    await c.until(lambda: sid in c.ended)
    assert c.headers[sid][b":status"] == b"200" and bytes(c.data[sid]).endswith(b"body=9:late body")


async def test_a_drip_fed_body_gets_408_at_the_minimum_rate(nursery, autojump_clock):
    c = await start(nursery, settings=replace(SETTINGS, body_min_rate=1000))
    sid = c.open("/u", method="POST", end=False)
    await c.flush()
    t0 = trio.current_time()
    for _ in range(2):  # 100 bytes every 5 s: within client_body (7 s), far under 1000 B/s
        c.conn.send_data(sid, b"d" * 100)
        await c.flush()
        await trio.sleep(5)
    c.conn.send_data(sid, b"d" * 100)
    await c.flush()
    await c.until(lambda: sid in c.headers)
    # cut when the grace period ends (10 s), not at a gap (client_body)
    assert c.headers[sid][b":status"] == b"408" and trio.current_time() - t0 == pytest.approx(10)


async def test_slow_request_body_gets_408(nursery, autojump_clock):
    c = await start(nursery)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"x"),
                              (b":path", b"/u")])
    c.conn.send_data(sid, b"part")
    await c.flush()
    start_time = trio.current_time()
    await c.until(lambda: sid in c.headers)
    assert c.headers[sid][b":status"] == b"408" and trio.current_time() - start_time == pytest.approx(7)


# -- the client leaves ------------------------------------------------------------------


async def test_reset_cancels_only_that_stream(nursery, autojump_clock, caplog):
    started = trio.Event()
    cancelled = []

    async def handler(req):
        if req.target == b"/slow":
            started.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.append(req.target)
                raise
        return Response(200, [], b"fast")

    c = await start(nursery, handler)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        slow = c.open("/slow")
        await c.flush()
        await started.wait()
        c.conn.reset_stream(slow, h2.errors.ErrorCodes.CANCEL)
        await c.flush()
        head, body = await c.get("/fast")
        assert body == b"fast"
        await trio.testing.wait_all_tasks_blocked()
    assert cancelled == [b"/slow"]
    assert '"GET /slow HTTP/2.0" 499' in caplog.text


async def test_a_stream_without_window_is_reset_after_the_send_timeout(nursery, autojump_clock):
    closed = trio.Event()

    class Body:
        def __init__(self):
            self.chunks = [b"a" * 40000, b"b" * 40000]

        def __aiter__(self):
            return self

        async def __anext__(self):
            if not self.chunks:
                raise StopAsyncIteration
            return self.chunks.pop()

        async def aclose(self):
            closed.set()

    async def handler(req):
        return Response(200, [], Body())

    c = await start(nursery, handler, ack=False)  # the client never opens its window again
    sid = c.open("/stream")
    await c.flush()
    t0 = trio.current_time()
    await c.until(lambda: sid in c.resets)
    assert c.resets[sid] == h2.errors.ErrorCodes.CANCEL
    assert trio.current_time() - t0 == pytest.approx(5)  # timeouts.send
    assert closed.is_set() and len(c.data[sid]) == 65535  # the default window, then nothing
    head, body = await c.get("/again")  # the connection serves on
    assert head[b":status"] == b"200"


async def test_a_client_that_leaves_mid_response_is_no_traceback(nursery, autojump_clock, caplog):
    async def handler(req):
        return Response(200, [], b"z" * 1_000_000)

    c = await start(nursery, handler)
    with caplog.at_level(logging.INFO):
        sid = c.open("/big")
        await c.flush()
        await c.until(lambda: len(c.data.get(sid, b"")) > 100_000)
        await c.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert '"GET /big HTTP/2.0" 200' in caplog.text  # what went out is logged, as a cut HTTP/1.1 response


# -- connection lifetime -----------------------------------------------------------------


async def test_idle_connection_gets_goaway_after_keepalive(nursery, autojump_clock):
    c = await start(nursery)
    await c.get("/a")
    t0 = trio.current_time()
    await c.read_to_eof()
    assert c.goaway is not None and c.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert trio.current_time() - t0 == pytest.approx(30)


async def test_a_connection_with_no_stream_open_may_be_reclaimed_at_max_connections(nursery, autojump_clock):
    state = ListenerState()
    release = trio.Event()
    reclaimed = []

    async def handler(req):
        await release.wait()
        return Response(200, [], b"")

    c = await start(nursery, handler, listener_state=state, reclaim=lambda: reclaimed.append(1))
    sid = c.open("/busy")
    await c.flush()
    await trio.sleep(5)
    assert not state.reclaim_silent()  # a stream is open: never
    release.set()
    await c.until(lambda: sid in c.ended)
    assert not state.reclaim_silent()  # idle for less than SILENT_RECLAIM_AFTER
    await trio.sleep(2)
    assert state.reclaim_silent() and reclaimed == [1]


async def test_shutdown_lets_streams_finish_and_refuses_new_ones(nursery, autojump_clock):
    state = ListenerState()
    release = trio.Event()
    running = trio.Event()

    async def handler(req):
        running.set()
        await release.wait()
        return Response(200, [], b"done")

    c = await start(nursery, handler, listener_state=state)
    first = c.open("/inflight")
    await c.flush()
    await running.wait()
    state.begin_shutdown()
    await c.until(lambda: c.goaway is not None)
    assert c.goaway.last_stream_id == first and c.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    late = c.open("/late")  # sent after our GOAWAY: refused, safe for the client to retry
    await c.flush()
    await c.until(lambda: late in c.resets)
    assert c.resets[late] == h2.errors.ErrorCodes.REFUSED_STREAM
    release.set()
    await c.read_to_eof()
    assert bytes(c.data[first]) == b"done" and first in c.ended


# -- attacks ------------------------------------------------------------------------------


async def test_rapid_reset_gets_goaway_and_never_runs_the_handler(nursery, autojump_clock):
    calls = []

    async def handler(req):
        calls.append(req.target)
        return Response(200, [], b"")

    state = ListenerState()
    c = await start(nursery, handler, listener_state=state)
    for _ in range(RESET_LIMIT + 20):
        sid = c.open("/php")
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    await c.flush()
    await c.read_to_eof()
    assert c.goaway is not None and c.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert calls == []
    assert state.stats.http2.refused["rapid_reset"] == 1


def _raw_headers(c: Client, sid: int) -> bytes:
    return c.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                                  (b":path", b"/")])


async def test_continuation_flood_gets_goaway(nursery, autojump_clock):
    state = ListenerState()
    c = await start(nursery, listener_state=state)
    block = _raw_headers(c, 1) + c.conn.encoder.encode([(b"x-pad", b"p" * 3000)])
    raw = HeadersFrame(1, data=block[:100]).serialize()
    filler = b"\x00" * 1000
    for _ in range(100):  # never END_HEADERS
        raw += ContinuationFrame(1, data=filler).serialize()
    await c.stream.send_all(raw)
    await c.read_to_eof()
    assert c.goaway is not None and c.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert state.stats.http2.refused["header_flood"] == 1


async def test_ping_flood_gets_goaway(nursery, autojump_clock):
    c = await start(nursery)
    await c.stream.send_all(b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize()
                                     for i in range(MAX_ACKS_OWED + 10)))
    await c.read_to_eof()
    assert c.goaway is not None and c.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


async def test_too_many_streams_is_a_protocol_error(nursery, autojump_clock):
    wait = trio.Event()

    async def handler(req):
        await wait.wait()
        return Response(200, [], b"")

    c = await start(nursery, handler)
    await c.receive()  # the server's SETTINGS: max_concurrent_streams
    assert c.conn.remote_settings.max_concurrent_streams == MAX_CONCURRENT_STREAMS
    for _ in range(MAX_CONCURRENT_STREAMS):
        c.open("/wait")
    await c.flush()
    await trio.testing.wait_all_tasks_blocked()
    # one more, past what the server allowed (a client that ignores SETTINGS)
    c.conn.local_settings  # noqa: B018
    raw = HeadersFrame(2 * MAX_CONCURRENT_STREAMS + 1, data=_raw_headers(c, 0), flags=["END_HEADERS", "END_STREAM"])
    await c.stream.send_all(raw.serialize())
    await c.read_to_eof()
    assert c.goaway is not None and c.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


# -- the limits, sans-IO -----------------------------------------------------------------


def _feed_bytewise(scanner: FrameScanner, raw: bytes) -> None:
    for i in range(len(raw)):
        scanner.feed(raw[i : i + 1])


def test_scanner_bounds_a_header_block_split_anywhere():
    raw = HeadersFrame(1, data=b"a" * 900).serialize() + b"".join(
        ContinuationFrame(1, data=b"b" * 900).serialize() for _ in range(3))
    with pytest.raises(Flood) as exc:
        _feed_bytewise(FrameScanner(3000, preface=False), raw)  # one byte at a time
    assert exc.value.kind == "header_flood"
    _feed_bytewise(FrameScanner(3600, preface=False), raw)  # just within the bound


def test_scanner_bounds_empty_continuation_frames():
    raw = HeadersFrame(1, data=b"a").serialize() + ContinuationFrame(1, data=b"").serialize() * 40
    with pytest.raises(Flood, match="CONTINUATION"):
        FrameScanner(3000, preface=False).feed(raw)


def test_scanner_counts_resets_and_pings_and_skips_payloads():
    scanner = FrameScanner(1000)
    from gateway.front.h2_limits import PREFACE
    data = PREFACE + PingFrame(0, opaque_data=b"12345678").serialize() + RstStreamFrame(1).serialize() \
        + HeadersFrame(3, data=b"\x09" * 50, flags=["END_HEADERS"]).serialize()
    scanner.feed(data[:30])
    scanner.feed(data[30:])
    assert (scanner.resets, scanner.acks_owed, scanner.in_block) == (1, 1, False)


def test_reset_budget_is_per_window():
    budget = ResetBudget(10, 10.0)
    assert not budget.over(10, 0.0)
    assert budget.over(11, 1.0)
    assert not budget.over(20, 11.0)  # a new window: 9 since its start
    assert budget.over(22, 12.0)


def test_settings_map():
    s = replace(SETTINGS, http2_cleartext=True)
    assert s.http2_cleartext and not SETTINGS.http2_cleartext


async def test_starts_with_peeks_the_preface_and_consumes_nothing(autojump_clock):
    from gateway.front.downstream import Downstream
    from gateway.front.h2_limits import PREFACE
    for first, expected in ((PREFACE + b"rest", True), (b"GET / HTTP/1.1\r\n", False), (b"PRI * HTTP/1.1\r\n", False)):
        client, server = trio.testing.memory_stream_pair()
        down = Downstream(server)
        await client.send_all(first[:5])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, first[5:])
            assert await down.starts_with(PREFACE) is expected
        got = b""
        while len(got) < len(first):
            got += await down.receive_some(100)
        assert got == first  # all of it still there for the protocol


async def test_a_header_list_over_the_limit_closes_the_connection(nursery, autojump_clock, caplog):
    state = ListenerState()
    c = await start(nursery, listener_state=state)
    with caplog.at_level(logging.INFO):
        c.open("/", headers=[(b"x-big", b"v" * 5000)])  # limits.max_header_size = 4096
        await c.flush()
        await c.read_to_eof()
    assert c.goaway is not None and c.goaway.error_code != h2.errors.ErrorCodes.NO_ERROR
    assert state.stats.http2.refused["protocol_error"] == 1
    assert not any(r.exc_info for r in caplog.records)


async def test_not_http2_after_all_is_one_line_and_a_close(nursery, autojump_clock, caplog):
    client, server = trio.testing.memory_stream_pair()
    from gateway.front.downstream import Downstream
    conn = Http2Connection(Downstream(server), echo, SETTINGS, client=("10.0.0.1", 1), server=("10.0.0.2", 443))
    with caplog.at_level(logging.INFO):
        nursery.start_soon(conn.run)
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while await client.receive_some(1000):
            pass
    lines = [r for r in caplog.records if r.name.startswith("gateway")]
    assert len(lines) == 1 and "protocol error" in lines[0].getMessage() and not lines[0].exc_info


# -- random frames: whatever a client sends, one connection ends quietly ------------------


def _random_frames(rng, encoder) -> bytes:
    from hyperframe.frame import DataFrame, GoAwayFrame, PriorityFrame, SettingsFrame, WindowUpdateFrame
    out: list[bytes] = [SettingsFrame(0).serialize()] if rng.random() < 0.9 else []
    sids = [1, 3, rng.randrange(1, 2**31)]
    next_sid = [5]
    for _ in range(rng.randrange(1, 30)):
        sid = rng.choice(sids)
        kind = rng.choices(range(11), weights=[10, 10, 8, 8, 8, 4, 4, 3, 1, 2, 40])[0]
        odd = rng.random() < 0.15
        methods = [b"GET", b"POST", b"HEAD", b"TRACE", b"CONNECT"] if odd else [b"GET", b"POST"]
        heads = [(b":method", rng.choice(methods)),
                 (b":scheme", b"https"), (b":authority", rng.choice([b"a b", b"", b"x:99999"] if odd else [b"x"])),
                 (b":path", rng.choice([b"/", b"/x", b"/" + b"a" * rng.randrange(3000)] if odd else [b"/", b"/x"]))]
        if rng.random() < 0.1:
            heads.append((rng.choice([b"connection", b"te", b"content-length", b"cookie", b"Upper"]),
                          rng.choice([b"1", b"x", b"trailers", b"-1"])))
        if rng.random() < 0.05:
            rng.shuffle(heads)
        if kind == 0:
            flags = [f for f in ("END_HEADERS", "END_STREAM") if rng.random() < 0.8]
            out.append(HeadersFrame(sid, data=encoder.encode(heads), flags=flags).serialize())
        elif kind == 1:
            flags = ["END_STREAM"] if rng.random() < 0.5 else []
            out.append(DataFrame(sid, data=bytes(rng.randrange(256) for _ in range(rng.randrange(100))),
                                 flags=flags).serialize())
        elif kind == 2:
            out.append(RstStreamFrame(sid, error_code=rng.randrange(14)).serialize())
        elif kind == 3:
            out.append(WindowUpdateFrame(rng.choice([0, sid]), window_increment=rng.randrange(1, 2**31)).serialize())
        elif kind == 4:
            out.append(PingFrame(0, opaque_data=b"12345678", flags=rng.choice([[], ["ACK"]])).serialize())
        elif kind == 5:
            out.append(SettingsFrame(0, settings={rng.choice([1, 2, 3, 4, 5, 6]): rng.randrange(2**31)}).serialize())
        elif kind == 6:
            out.append(PriorityFrame(sid, depends_on=rng.choice([0, sid]), stream_weight=7).serialize())
        elif kind == 7:
            out.append(ContinuationFrame(sid, data=encoder.encode(heads[:1]),
                                         flags=rng.choice([[], ["END_HEADERS"]])).serialize())
        elif kind == 8:
            out.append(GoAwayFrame(0, last_stream_id=sid).serialize())
        elif kind == 9:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
        else:
            sid2 = next_sid[0]
            next_sid[0] += 2
            sids.append(sid2)
            end = ["END_STREAM"] if rng.random() < 0.5 else []
            out.append(HeadersFrame(sid2, data=encoder.encode(heads), flags=["END_HEADERS", *end]).serialize())
            if not end:
                out.append(DataFrame(sid2, data=b"body", flags=["END_STREAM"]).serialize())
    return b"".join(out)


def test_random_frames_never_crash_the_connection(caplog):
    import random

    import hpack

    from gateway.front.downstream import Downstream
    from gateway.front.h2_limits import PREFACE

    async def handler(req):
        if req.target == b"/":
            await trio.sleep(1)
            return Response(200, [], b"ok" * 100_000)  # more than the windows: waits for the client
        return Response(200, [], b"ok")

    async def one(data: bytes, rng) -> None:
        client, server = trio.testing.memory_stream_pair()
        conn = Http2Connection(Downstream(server, 5), handler, SETTINGS, client=("10.0.0.1", 1),
                               server=("10.0.0.2", 443), listener_state=state)
        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run)
                try:
                    i = 0
                    while i < len(data):
                        step = rng.randrange(1, 400)
                        await client.send_all(data[i : i + step])
                        i += step
                    if rng.random() < 0.3:  # the client leaves, maybe mid-response
                        await trio.sleep(rng.choice([0, 0.5, 1.5]))
                        await client.aclose()
                        return
                    while await client.receive_some(65536):  # read until the server closes (idle timeout)
                        pass
                except trio.BrokenResourceError:
                    pass

    state = ListenerState()
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "20261127")))
    with caplog.at_level(logging.INFO):
        for _ in range(300):
            data = PREFACE + _random_frames(rng, hpack.Encoder())
            trio.run(one, data, rng, clock=trio.testing.MockClock(autojump_threshold=0))
            stats = state.stats  # nothing left counted as open or in flight
            assert (stats.open_connections, stats.in_flight, stats.http2.open) == (0, 0, 0), data
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, bad[0].getMessage() + "\n" + str(bad[0].exc_info)
    served = [r for r in caplog.records if r.name == "gateway.access" and '" 200 ' in r.getMessage()]
    assert len(served) > 20  # the cases reach the handler, not only h2's refusals


async def test_no_upgrade_over_http2_and_no_websocket_over_it(nursery, autojump_clock):
    """HTTP/2 has no Upgrade (RFC 9113 8.6): a request carrying one is
    malformed and never reaches a handler; and the server does not offer
    WebSocket over HTTP/2 (RFC 8441's SETTINGS_ENABLE_CONNECT_PROTOCOL), so a
    browser opens an HTTP/1.1 connection for its WebSockets."""
    calls = []

    async def handler(req):
        calls.append(req)
        return Response(200, [], b"")

    c = await start(nursery, handler)
    await c.receive()  # the server's SETTINGS
    assert not c.conn.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
    block = c.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                                   (b":path", b"/ws"), (b"upgrade", b"websocket")])
    await c.stream.send_all(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    await c.until(lambda: c.goaway is not None or 1 in c.resets)
    refused = c.goaway.error_code if c.goaway is not None else c.resets[1]
    assert refused == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert calls == []
