"""The fast path over HTTP/2 (``App.ready`` answered by the connection's
reader, ``Http2Connection._answer_ready``) against the full path (a stream
task running ``App.handle``): the corpus of the HTTP/1.1 fast-path test goes
to both over the real HTTP/2 connection code in memory, with h2 as the
client, and each response's header fields (in order), body, and whether its
END_STREAM came with its HEADERS must be the same (but Date and Expires, per
second). The fast path must have answered what it is for, so this cannot
pass by declining everything."""

from __future__ import annotations

import logging
import re

import h2.config
import h2.connection
import trio
import trio.testing
from hyperframe.frame import RstStreamFrame

from gateway.front.downstream import Downstream
from gateway.front.h1 import ConnectionSettings, ListenerState
from gateway.front.h2 import Http2Connection
from tests.gateway.app.test_fastpath import CORPUS, PAGE, Counted, make_app
from tests.gateway.front.test_h2 import start

SETTINGS = ConnectionSettings.from_config()
_PER_SECOND = re.compile(rb"^(date|expires)$")


async def exchange(handler, nursery, host, method, target, extra, **client_kw):
    """One request on a new connection: (fields, body, END_STREAM on HEADERS, reset code)."""
    c = await start(nursery, handler=handler, settings=SETTINGS, **client_kw)
    sid = c.open(target, method=method.decode(), headers=extra, authority=host)
    await c.flush()
    await c.until(lambda: sid in c.ended or sid in c.resets)
    fields = [(n, b"(per second)" if _PER_SECOND.match(n) else v) for n, v in c.fields.get(sid, [])]
    return fields, bytes(c.data.get(sid, b"")), sid in c.ended_with_head, c.resets.get(sid)


async def test_the_fast_path_over_http2_sends_what_the_full_path_sends(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    for host, method, target, extra in CORPUS:
        await exchange(app, nursery, host, method, target, extra)  # a MISS stored, a variant made, a file kept
        full = await exchange(app.handle, nursery, host, method, target, extra)
        fast = await exchange(handler, nursery, host, method, target, extra)
        assert fast == full, (host, method, target, extra)
        assert full[0] and full[0][0][0] == b":status", full
    print("answered", handler.answered, "of", handler.asked)
    assert handler.answered >= 25, (handler.answered, handler.asked)
    assert app.cache_stats.requests["HIT"] >= 7


async def test_many_streams_in_one_read_are_answered_and_counted(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    c = await start(nursery, handler=handler, settings=SETTINGS)
    host = b"files.test"
    tiny = [c.open("/tiny.txt", authority=host) for _ in range(20)]
    php = c.open("/hello.php", authority=host)  # the full path, beside them
    cached = [c.open("/", authority=b"cached.test") for _ in range(2)]
    await c.flush()
    await c.until(lambda: all(s in c.ended for s in [*tiny, php, *cached]))
    assert all(c.headers[s][b":status"] == b"200" and bytes(c.data[s]) == b"hi" for s in tiny)
    assert bytes(c.data[php]) == PAGE
    assert handler.answered == 20 and handler.asked == 23  # the cached page: a MISS first (both asked at once)
    hit = c.open("/", authority=b"cached.test")
    await c.flush()
    await c.until(lambda: hit in c.ended)
    assert c.headers[hit][b"x-cache"] == b"HIT" and bytes(c.data[hit]) == PAGE and handler.answered == 21


async def test_a_fast_answer_over_http2_is_counted_and_in_the_access_log(tmp_path, nursery, autojump_clock, caplog):
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    state = ListenerState()
    c = await start(nursery, handler=handler, settings=SETTINGS, listener_state=state)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        one = c.open("/tiny.txt", headers=[(b"user-agent", b"probe/1")], authority=b"files.test")
        two = c.open("/tiny.txt", method="HEAD", authority=b"files.test")
        await c.flush()
        await c.until(lambda: one in c.ended and two in c.ended)
        await trio.testing.wait_all_tasks_blocked()  # (a line is written once the reader's flush returns)
    assert handler.answered == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 2
    assert '"GET /tiny.txt HTTP/2.0" 200 2 "-" "probe/1"' in lines[0]
    assert '"HEAD /tiny.txt HTTP/2.0" 200 0 ' in lines[1]
    stats = state.stats
    assert (stats.requests, stats.in_flight, stats.http2.streams) == (2, 0, 2)
    assert stats.states["idle"] == 1  # (the connection's state: no stream open)


async def test_an_answer_bigger_than_the_window_waits_for_it(tmp_path, nursery, autojump_clock):
    """A client's window smaller than the answer: a stream task sends it as the window opens."""
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    extra = [(b"accept-encoding", b"identity")]
    full = await exchange(app.handle, nursery, b"files.test", b"GET", b"/file.txt", extra, window=100)
    fast = await exchange(handler, nursery, b"files.test", b"GET", b"/file.txt", extra, window=100)
    assert fast == full and len(fast[1]) == 1100 and handler.answered == 1


async def test_a_bug_in_ready_is_that_streams_and_the_full_path_answers(tmp_path, nursery, autojump_clock, caplog):
    app, _ = make_app(tmp_path, nursery, [])

    def boom(req):
        raise RuntimeError("a bug")

    app.fastpath.ready = boom
    fields, body, _, reset = await exchange(app, nursery, b"files.test", b"GET", b"/tiny.txt", [])
    assert dict(fields)[b":status"] == b"200" and body == b"hi" and reset is None
    assert any("fast path failed" in r.getMessage() for r in caplog.records)


async def test_a_stream_reset_in_the_read_that_opened_it_is_not_answered(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    c = await start(nursery, handler=handler, settings=SETTINGS)
    sid = c.open("/tiny.txt", authority=b"files.test")
    raw = c.conn.data_to_send()
    rst = RstStreamFrame(sid)
    rst.error_code = 8
    await c.stream.send_all(raw + rst.serialize())
    after = c.open("/tiny.txt", authority=b"files.test")  # the connection goes on
    await c.flush()
    await c.until(lambda: after in c.ended)
    assert handler.asked == 1 and bytes(c.data[after]) == b"hi" and sid not in c.headers


async def test_a_client_gone_before_its_fast_answer_is_written_is_a_499(tmp_path, nursery, autojump_clock, caplog):
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    client, server = trio.testing.lockstep_stream_pair()
    conn = Http2Connection(Downstream(server, SETTINGS.send_timeout), handler, SETTINGS, client=("10.0.0.1", 1234),
                           server=("10.0.0.2", 443))
    done = trio.Event()

    async def serve():
        await conn.run()
        done.set()

    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    h2c.initiate_connection()
    sid = h2c.get_next_available_stream_id()
    h2c.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"files.test"),
                           (b":path", b"/tiny.txt")], end_stream=True)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        nursery.start_soon(serve)
        await client.send_all(h2c.data_to_send())
        await client.aclose()  # gone before reading anything
        with trio.fail_after(60):
            await done.wait()
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert handler.answered == 1 and len(lines) == 1 and '"GET /tiny.txt HTTP/2.0" 499 0 ' in lines[0], lines
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_big_ready_answer_is_sent_whole_in_pieces(nursery, autojump_clock):
    """Over ``WRITE_CHUNK`` (a big page-cache hit): a stream task sends it, as it sends any body."""
    from gateway.http.prepared import prepare
    from gateway.http.response import Response

    body = bytes(range(256)) * 400  # 100 KiB

    class Ready:
        async def __call__(self, req):
            raise AssertionError("the full path is not asked")

        def ready(self, req):
            return prepare(Response(200, [(b"content-type", b"application/octet-stream")], body), head_only=False)

    c = await start(nursery, handler=Ready(), settings=SETTINGS, window=1 << 20)
    c.conn.increment_flow_control_window(1 << 20)  # (the connection's window too: no wait for it)
    got = await c.get("/big")
    assert got == ({b":status": b"200", b"server": SETTINGS.server_software, b"date": got[0][b"date"],
                    b"content-type": b"application/octet-stream", b"content-length": b"102400"}, body)
