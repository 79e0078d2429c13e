"""Cancelling a request at every point of an upstream exchange leaves the pool whole.

httpcore's cancellation matrix: cancel while connecting, while the request body
is written, while waiting for the response head, halfway through a streamed
body, and in the queue; after each, every slot is free, the connection count
matches what is open, and the next request is served. The front end cancels
a request exactly like this when its client leaves.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.config import BackendConfig
from gateway.http.spool import Spool
from gateway.upstream.exchange import UpstreamBody, run_php
from gateway.upstream.fastcgi import FastCgiConn, PhpSettings, fastcgi_pool
from gateway.upstream.pool import Pool
from tests.helpers import FakeFpm, php_output

SETTINGS = PhpSettings.from_config(BackendConfig(read_timeout=30, max_response_header_size=4096,
                                                response_buffer_size=1024))
PARAMS = [(b"SCRIPT_FILENAME", b"/srv/index.php"), (b"REQUEST_METHOD", b"POST")]


async def quick(req):
    return [php_output(b"ok")]


async def assert_whole(pool: Pool[FastCgiConn], fpm: FakeFpm | None = None) -> None:
    """No slot held, nobody queued, every counted connection idle; the next request runs."""
    await trio.testing.wait_all_tasks_blocked()
    assert (pool.busy, pool.waiting) == (0, 0)
    assert pool.limiter.available_tokens == pool.size
    assert pool.open_connections == pool.idle
    if fpm is not None:
        result = await run_php(pool, PARAMS, None, SETTINGS, request_id="next")
        assert result.body.getvalue() == b"ok"
        result.body.close()
        assert (pool.busy, pool.open_connections) == (0, pool.idle)


async def cancel_when(predicate_event: trio.Event, scope: trio.CancelScope) -> None:
    await predicate_event.wait()
    scope.cancel()


async def test_cancel_while_connecting(nursery, autojump_clock):
    connecting = trio.Event()

    async def never_connects() -> trio.abc.Stream:
        connecting.set()
        await trio.sleep_forever()
        raise AssertionError

    pool = fastcgi_pool("php", never_connects, size=1, queue_depth=1, queue_timeout=60, connect_timeout=60)
    with trio.CancelScope() as scope:
        nursery.start_soon(cancel_when, connecting, scope)
        await run_php(pool, PARAMS, None, SETTINGS, request_id="r")
    assert scope.cancelled_caught
    await assert_whole(pool)
    assert pool.open_connections == 0


async def test_cancel_while_the_request_body_is_written(nursery, autojump_clock):
    # a backend that never reads: the body write blocks (lockstep streams have no buffer)
    ends: list[trio.abc.Stream] = []

    async def connect() -> trio.abc.Stream:
        ours, theirs = trio.testing.lockstep_stream_pair()
        ends.append(theirs)
        return ours

    pool = fastcgi_pool("php", connect, size=1, queue_depth=1, queue_timeout=60)
    body = Spool(1 << 20)
    body.write(b"x" * 200_000)  # a large body: written by a task while the response is read
    with trio.move_on_after(5) as scope:
        await run_php(pool, PARAMS, body, SETTINGS, request_id="r")
    assert scope.cancelled_caught
    await assert_whole(pool)
    assert pool.open_connections == 0  # a half-written request is never reused


@pytest.mark.parametrize("body_size", [0, 200_000])
async def test_cancel_while_waiting_for_the_response_head(nursery, autojump_clock, body_size):
    async def slow(req):
        if req.params.get(b"X") == b"slow":
            await trio.sleep(30)
        return [php_output(b"ok")]

    fpm = FakeFpm(slow)
    pool = fastcgi_pool("php", fpm.connector(nursery), size=1, queue_depth=1, queue_timeout=60)
    body = None
    if body_size:
        body = Spool(1 << 20)
        body.write(b"y" * body_size)
    with trio.move_on_after(5) as scope:
        await run_php(pool, [*PARAMS, (b"X", b"slow")], body, SETTINGS, request_id="r")
    assert scope.cancelled_caught and fpm.running == 1
    assert pool.open_connections == 0  # closing is the only abort php-fpm honours
    await assert_whole(pool, fpm)


async def test_cancel_halfway_through_a_streamed_body(nursery, autojump_clock):
    async def sse(req):
        if req.params.get(b"X") != b"sse":
            return [php_output(b"ok")]
        return [php_output(b"event 1\n", headers=(b"X-Accel-Buffering: no",)), trio.sleep_forever]

    fpm = FakeFpm(sse)
    pool = fastcgi_pool("php", fpm.connector(nursery), size=1, queue_depth=1, queue_timeout=60)
    result = await run_php(pool, [*PARAMS, (b"X", b"sse")], None, SETTINGS, request_id="r")
    assert isinstance(result.body, UpstreamBody) and pool.busy == 1  # the body holds the slot
    got = []
    with trio.move_on_after(5) as scope:
        try:
            async for chunk in result.body:
                got.append(chunk)
        finally:
            await result.body.aclose()
    assert scope.cancelled_caught and got == [b"event 1\n"]
    await assert_whole(pool, fpm)


async def test_a_streamed_body_read_to_its_end_gives_the_connection_back(nursery, autojump_clock):
    async def sse(req):
        return [php_output(b"a", headers=(b"X-Accel-Buffering: no",)), trio.lowlevel.checkpoint, b"b"]

    fpm = FakeFpm(sse)
    pool = fastcgi_pool("php", fpm.connector(nursery), size=1, queue_depth=1, queue_timeout=60)
    result = await run_php(pool, PARAMS, None, SETTINGS, request_id="r")
    assert isinstance(result.body, UpstreamBody)
    assert b"".join([c async for c in result.body]) == b"ab"
    await result.body.aclose()
    assert (pool.busy, pool.idle, pool.open_connections) == (0, 1, 1)
    assert result.timing.upstream_time is not None


async def test_cancel_in_the_queue(nursery, autojump_clock):
    async def slow(req):
        await trio.sleep(10 if req.params.get(b"X") == b"first" else 0)
        return [php_output(b"ok")]

    fpm = FakeFpm(slow)
    pool = fastcgi_pool("php", fpm.connector(nursery), size=1, queue_depth=5, queue_timeout=60)
    nursery.start_soon(lambda: run_php(pool, [*PARAMS, (b"X", b"first")], None, SETTINGS, request_id="1"))
    await trio.testing.wait_all_tasks_blocked()
    with trio.move_on_after(2) as scope:
        await run_php(pool, [*PARAMS, (b"X", b"queued")], None, SETTINGS, request_id="2")
    # a cancel that is no departure (a shutdown, a deadline) is not counted as one
    assert scope.cancelled_caught and pool.stats.client_gone_in_queue == 0
    with trio.move_on_after(2) as scope:
        await run_php(pool, [*PARAMS, (b"X", b"queued")], None, SETTINGS, request_id="3", client_left=lambda: True)
    assert scope.cancelled_caught and pool.stats.client_gone_in_queue == 1
    await pool.wait_idle()
    assert all(r.params.get(b"X") != b"queued" for r in fpm.requests_seen)
    await assert_whole(pool, fpm)


async def test_php_answering_before_the_body_is_sent_never_shares_the_connection(nursery, autojump_clock):
    # PHP may answer before its input's last record: the connection must not go
    # back to the pool while our sender task still writes to it
    async def connect() -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(answer_early, theirs)
        return ours

    async def answer_early(stream: trio.abc.Stream) -> None:
        import fastcgi

        conn = fastcgi.Connection(fastcgi.SERVER)
        while not isinstance(conn.next_event(), fastcgi.Params):
            conn.receive_data(await stream.receive_some(65536))
        rid = conn.request_id
        await stream.send_all(conn.send(fastcgi.Stdout(php_output(b"early"), rid))
                              + conn.send(fastcgi.Stdout(b"", rid)))
        await trio.sleep_forever()  # no END_REQUEST: the body is never read

    pool = fastcgi_pool("php", connect, size=1, queue_depth=1, queue_timeout=60)
    body = Spool(1 << 20)
    body.write(b"z" * 200_000)
    with trio.move_on_after(5) as scope:
        await run_php(pool, PARAMS, body, SETTINGS, request_id="r")
    assert scope.cancelled_caught  # (read_timeout would end it later)
    await assert_whole(pool)
    assert pool.open_connections == 0
