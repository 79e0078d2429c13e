"""The pool and the FastCGI exchange against an in-memory php-fpm stand-in
(fastcgi's SERVER role over memory streams), on the autojump clock."""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial

import pytest
import trio
import trio.testing

import fastcgi
from gateway.config import BackendConfig
from gateway.http.errors import (
    ClientGone,
    QueueFull,
    QueueTimeout,
    UpstreamClosedEarly,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.upstream.exchange import run_php
from gateway.upstream.fastcgi import FastCgiConn, PhpSettings, fastcgi_pool
from gateway.upstream.pool import Pool
from tests.helpers import FakeFpm, php_output

SETTINGS = PhpSettings.from_config(BackendConfig(read_timeout=30, max_response_header_size=4096,
                                                response_buffer_size=1024))
PARAMS = [(b"SCRIPT_FILENAME", b"/srv/index.php"), (b"REQUEST_METHOD", b"GET")]


def make_pool(fpm: FakeFpm, nursery: trio.Nursery, **kw) -> Pool:
    args = dict(size=2, queue_depth=100, queue_timeout=60, idle_timeout=10)
    args.update(kw)
    return fastcgi_pool("php", fpm.connector(nursery), **args)


async def hello(req):
    return [php_output(b"hello " + req.params.get(b"REQUEST_METHOD", b""))]


def slow(seconds):
    async def script(req):
        await trio.sleep(seconds)
        return [php_output(b"slept")]

    return script


async def test_a_request_and_connection_reuse(nursery, autojump_clock):
    fpm = FakeFpm(hello)
    pool = make_pool(fpm, nursery)
    for _ in range(3):
        result = await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
        assert (result.head.status, result.body.getvalue()) == (200, b"hello GET")
    assert fpm.connections == 1
    assert repr(pool) == "<Pool php [slots 0/2 busy, 1 idle, 0 waiting]>"


async def test_pool_bound_holds_and_every_request_is_answered(nursery, autojump_clock):
    fpm = FakeFpm(slow(1))
    pool = make_pool(fpm, nursery, size=2)
    results = []

    async def one():
        r = await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
        results.append(r.body.getvalue())

    async with trio.open_nursery() as n:
        for _ in range(10):
            n.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        assert (pool.busy, pool.waiting) == (2, 8)
    assert results == [b"slept"] * 10
    assert fpm.max_running == 2
    assert fpm.connections == 2
    assert trio.current_time() == pytest.approx(5.0)  # 10 requests, 2 at a time, 1 s each


async def test_queue_full_is_refused_at_once(nursery, autojump_clock):
    fpm = FakeFpm(slow(10))
    pool = make_pool(fpm, nursery, size=1, queue_depth=2)
    async with trio.open_nursery() as n:
        for _ in range(3):  # one runs, two wait
            n.start_soon(partial(run_php, pool, PARAMS, None, SETTINGS, request_id="x"))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(QueueFull) as exc:
            await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
        assert exc.value.status == 503 and (b"retry-after", b"1") in exc.value.headers
        assert pool.stats.queue_full == 1


async def test_queue_timeout_is_504_after_exactly_the_limit(nursery, autojump_clock):
    fpm = FakeFpm(slow(100))
    pool = make_pool(fpm, nursery, size=1, queue_timeout=7)
    nursery.start_soon(partial(run_php, pool, PARAMS, None, SETTINGS, request_id="x"))
    await trio.testing.wait_all_tasks_blocked()
    t0 = trio.current_time()
    with pytest.raises(QueueTimeout) as exc:
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert exc.value.status == 504
    assert trio.current_time() - t0 == pytest.approx(7)


async def test_the_queue_timer_times_each_waiter_as_its_own_scope_would(nursery, autojump_clock):
    """With ``run_reaper`` running, the pool's one timer ends the waits
    (no cancel scope per waiter): each waiter's 504 comes exactly
    queue_timeout after it queued, whenever it came; a slot freed meanwhile
    goes to the first in line; a waiter cancelled by its client leaves the
    line; and once the timer stops, a waiter left is timed by a scope of
    its own, from the time it queued."""
    fpm = FakeFpm(slow(100))
    pool = make_pool(fpm, nursery, size=1, queue_timeout=7)
    reaper = trio.CancelScope()

    async def reap() -> None:
        with reaper:
            await pool.run_reaper()

    nursery.start_soon(reap)
    nursery.start_soon(partial(run_php, pool, PARAMS, None, SETTINGS, request_id="holder"))
    await trio.testing.wait_all_tasks_blocked()
    t0 = trio.current_time()
    outcomes: dict[str, tuple[str, float]] = {}

    async def waiter(name: str) -> None:
        try:
            await run_php(pool, PARAMS, None, SETTINGS, request_id=name)
            outcomes[name] = ("answered", trio.current_time() - t0)
        except QueueTimeout:
            outcomes[name] = ("504", trio.current_time() - t0)

    gone = trio.CancelScope()

    async def leaves() -> None:
        with gone:
            await run_php(pool, PARAMS, None, SETTINGS, request_id="gone")

    for name, at in (("a", 0), ("b", 2), ("gone", 3), ("c", 4)):
        await trio.sleep(at - (trio.current_time() - t0))
        nursery.start_soon(leaves if name == "gone" else partial(waiter, name))
        await trio.testing.wait_all_tasks_blocked()
    assert pool.waiting == 4
    gone.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert pool.waiting == 3
    await trio.sleep(7.5 - (trio.current_time() - t0))
    assert outcomes == {"a": ("504", pytest.approx(7))}
    assert pool.waiting == 2 and pool.stats.queue_timeouts == 1
    await trio.sleep(9.5 - (trio.current_time() - t0))
    assert outcomes["b"] == ("504", pytest.approx(9)) and pool.waiting == 1
    reaper.cancel()  # the timer stops: "c" keeps its deadline on a scope of its own
    await trio.testing.wait_all_tasks_blocked()
    assert pool.waiting == 1
    await trio.sleep(12 - (trio.current_time() - t0))
    assert outcomes["c"] == ("504", pytest.approx(11))
    assert pool.waiting == 0 and pool.stats.queue_timeouts == 3 and pool.busy == 1


async def test_the_queue_timer_hands_a_freed_slot_to_the_first_in_line(nursery, autojump_clock):
    fpm = FakeFpm(slow(5))
    pool = make_pool(fpm, nursery, size=1, queue_timeout=60)
    nursery.start_soon(pool.run_reaper)
    done: list[str] = []

    async def request(name: str) -> None:
        await run_php(pool, PARAMS, None, SETTINGS, request_id=name)
        done.append(name)

    for name in ("first", "second", "third"):
        nursery.start_soon(request, name)
        await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(16)
    assert done == ["first", "second", "third"] and pool.stats.queue_timeouts == 0


async def test_client_gone_in_queue_never_reaches_php_and_leaks_no_slot(nursery, autojump_clock):
    # the front end cancels a request whose client left: here, by hand
    fpm = FakeFpm(slow(5))
    pool = make_pool(fpm, nursery, size=1)
    nursery.start_soon(partial(run_php, pool, PARAMS, None, SETTINGS, request_id="first"))
    await trio.testing.wait_all_tasks_blocked()
    client = trio.CancelScope()

    async def waiter():
        with client:
            await run_php(pool, PARAMS + [(b"X", b"waiter")], None, SETTINGS, request_id="w",
                          client_left=lambda: True)  # its socket is closed

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    assert pool.waiting == 1
    client.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert client.cancelled_caught
    assert pool.waiting == 0 and pool.stats.client_gone_in_queue == 1
    await trio.sleep(10)
    assert all(b"X" not in r.params for r in fpm.requests_seen)
    assert pool.busy == 0 and pool.limiter.borrowed_tokens == 0


async def test_client_gone_after_a_short_wait_is_caught_leaving_the_queue(nursery, autojump_clock):
    fpm = FakeFpm(slow(0.5))
    pool = make_pool(fpm, nursery, size=1)
    nursery.start_soon(partial(run_php, pool, PARAMS, None, SETTINGS, request_id="first"))
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(ClientGone):
        await run_php(pool, PARAMS + [(b"X", b"waiter")], None, SETTINGS, request_id="w", client_left=lambda: True)
    assert pool.stats.client_gone_in_queue == 1
    await pool.wait_idle()
    assert all(b"X" not in r.params for r in fpm.requests_seen)


async def test_client_gone_while_php_runs_closes_the_fastcgi_connection(nursery, autojump_clock):
    fpm = FakeFpm(slow(5))
    pool = make_pool(fpm, nursery, size=1)
    client = trio.CancelScope()

    async def req():
        with client:
            await run_php(pool, PARAMS, None, SETTINGS, request_id="r")

    nursery.start_soon(req)
    await trio.testing.wait_all_tasks_blocked()
    assert fpm.running == 1
    client.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert pool.busy == 0 and pool.idle == 0 and pool.open_connections == 0


async def test_ignore_client_abort_lets_php_finish(nursery, autojump_clock):
    fpm = FakeFpm(slow(5))
    pool = make_pool(fpm, nursery, size=1)
    client = trio.CancelScope()
    settings = replace(SETTINGS, ignore_client_abort=True)
    results = []

    async def req():
        with client:
            r = await run_php(pool, PARAMS, None, settings, request_id="r")
            results.append(r.body.getvalue())  # PHP's answer; writing it would meet the cancel

    nursery.start_soon(req)
    await trio.testing.wait_all_tasks_blocked()
    client.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert fpm.running == 1  # PHP runs on
    await trio.sleep(6)
    assert results == [b"slept"]
    assert len(fpm.requests_seen) == 1 and pool.idle == 1  # it ran to its end: the connection is kept


async def test_ignore_client_abort_still_ends_at_the_shutdown_deadline(nursery, autojump_clock):
    # shielded from its client, not from shutdown: SIGTERM's graceful period
    # bounds it like any request (it kept the process alive until PHP ended)
    fpm = FakeFpm(slow(1000))
    pool = make_pool(fpm, nursery, size=1)
    settings = replace(SETTINGS, ignore_client_abort=True)
    client = trio.CancelScope()
    ended = []

    async def req():
        with client:
            try:
                await run_php(pool, PARAMS, None, settings, request_id="r")
            except UpstreamTimeout as exc:
                ended.append((trio.current_time(), str(exc)))

    nursery.start_soon(req)
    await trio.testing.wait_all_tasks_blocked()
    client.cancel()  # the client left: PHP runs on
    await trio.sleep(3)
    assert fpm.running == 1 and not ended
    t0 = trio.current_time()
    pool.end_shielded_at(t0 + 10)  # shutdown, graceful = 10 s
    await pool.wait_idle()
    assert ended and ended[0][0] - t0 == pytest.approx(10) and "graceful" in ended[0][1]
    assert pool.open_connections == 0
    # a shielded run that starts after shutdown began gets the same deadline
    with pytest.raises(UpstreamTimeout):
        await run_php(pool, PARAMS, None, settings, request_id="late")
    assert trio.current_time() - t0 == pytest.approx(10)


async def test_reused_connection_closed_by_backend_is_retried_once(nursery, autojump_clock, caplog):
    # close_after=1 is php-fpm's pm.max_requests = 1: it closes after each response.
    fpm = FakeFpm(hello, close_after=1)
    pool = make_pool(fpm, nursery, size=1)
    await run_php(pool, PARAMS, None, SETTINGS, request_id="a")
    await trio.testing.wait_all_tasks_blocked()
    with caplog.at_level(logging.INFO, logger="gateway.upstream.exchange"):
        result = await run_php(pool, PARAMS, None, SETTINGS, request_id="b", retry_safe=True)
    assert result.body.getvalue() == b"hello GET"
    assert pool.stats.retries == 1
    assert fpm.connections == 2
    assert len(fpm.requests_seen) == 2  # the failed attempt never ran
    assert "retrying on a fresh one" in caplog.text


async def test_a_post_is_never_run_twice_when_its_worker_dies(nursery, autojump_clock):
    # A php-fpm worker killed while running the request (segfault, request_terminate_timeout)
    # looks like pm.max_requests recycling: EOF before any response. Retrying would run it twice.
    async def dies_on_the_second(req):
        if len(fpm.requests_seen) == 2:
            raise trio.BrokenResourceError  # the worker dies mid-request: EOF, no output
        return [php_output(b"ran")]

    fpm = FakeFpm(dies_on_the_second)
    pool = make_pool(fpm, nursery, size=1)
    post = [(n, b"POST" if n == b"REQUEST_METHOD" else v) for n, v in PARAMS]
    await run_php(pool, post, None, SETTINGS, request_id="a")
    with pytest.raises(UpstreamClosedEarly, match="not retried") as exc:
        await run_php(pool, post, None, SETTINGS, request_id="b")  # retry_safe defaults to False
    assert exc.value.status == 502
    assert len(fpm.requests_seen) == 2 and pool.stats.retries == 0
    assert (pool.busy, pool.open_connections) == (0, 0)
    # the same death for an idempotent request: retried once on a fresh connection
    fpm.requests_seen.clear()
    await run_php(pool, PARAMS, None, SETTINGS, request_id="c")
    result = await run_php(pool, PARAMS, None, SETTINGS, request_id="d", retry_safe=True)
    assert result.body.getvalue() == b"ran" and pool.stats.retries == 1


async def test_fresh_connection_closed_before_response_is_502_not_retried(nursery, autojump_clock):
    async def die(req):
        raise trio.BrokenResourceError  # the fake's connection task ends: EOF

    fpm = FakeFpm(die)
    pool = make_pool(fpm, nursery)
    with pytest.raises(UpstreamClosedEarly) as exc:
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert exc.value.status == 502
    assert pool.stats.retries == 0 and pool.busy == 0


async def test_eof_mid_response_is_502(nursery, autojump_clock):
    async def connect():
        client, server = trio.testing.memory_stream_pair()

        async def serve():
            conn = fastcgi.Connection(fastcgi.SERVER)
            while conn.their_state is not fastcgi.DONE:
                if conn.next_event() is fastcgi.NEED_DATA:
                    conn.receive_data(await server.receive_some(65536))
            await server.send_all(conn.send(fastcgi.Stdout(php_output(b"partial"))))
            await server.aclose()

        nursery.start_soon(serve)
        return client

    pool = fastcgi_pool("php", connect, size=1, queue_depth=1, queue_timeout=5)
    with pytest.raises(UpstreamProtocolError, match="mid-response"):
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")


async def test_garbage_from_backend_is_502(nursery, autojump_clock):
    async def connect():
        client, server = trio.testing.memory_stream_pair()

        async def serve():
            await server.receive_some(65536)
            await server.send_all(b"HTTP/1.1 200 OK\r\n\r\n")  # not FastCGI

        nursery.start_soon(serve)
        return client

    pool = fastcgi_pool("php", connect, size=1, queue_depth=1, queue_timeout=5)
    with pytest.raises(UpstreamProtocolError, match="FastCGI"):
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert pool.open_connections == 0


async def test_read_timeout_is_504(nursery, autojump_clock):
    fpm = FakeFpm(slow(1000))
    pool = make_pool(fpm, nursery)
    t0 = trio.current_time()
    with pytest.raises(UpstreamTimeout) as exc:
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert exc.value.status == 504
    assert trio.current_time() - t0 == pytest.approx(SETTINGS.read_timeout)


async def test_overloaded_is_503(nursery, autojump_clock):
    async def busy(req):
        return [fastcgi.EndRequest(0, fastcgi.ProtocolStatus.OVERLOADED)]

    pool = make_pool(FakeFpm(busy), nursery)
    with pytest.raises(UpstreamOverloaded) as exc:
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert exc.value.status == 503


async def test_invalid_cgi_headers_are_502(nursery, autojump_clock):
    async def bad(req):
        return [b"this is not a header\r\n\r\nbody"]

    pool = make_pool(FakeFpm(bad), nursery)
    with pytest.raises(UpstreamProtocolError, match="invalid header"):
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")


async def test_stderr_is_logged_with_request_id(nursery, autojump_clock, caplog):
    async def noisy(req):
        return [fastcgi.Stderr(b"PHP Warning: one\nPHP Warn"), fastcgi.Stderr(b"ing: two\n"), php_output()]

    pool = make_pool(FakeFpm(noisy), nursery)
    with caplog.at_level(logging.WARNING, logger="gateway.upstream.fastcgi"):
        await run_php(pool, PARAMS, None, SETTINGS, request_id="req-42")
    assert "[req-42] PHP stderr: PHP Warning: one" in caplog.text
    assert "[req-42] PHP stderr: PHP Warning: two" in caplog.text


async def test_large_output_spools_to_disk_and_body_reaches_php(nursery, autojump_clock):
    from gateway.http.spool import Spool

    async def echo(req):
        return [php_output(req.stdin * 3)]

    pool = make_pool(FakeFpm(echo), nursery)
    body = Spool(100)
    body.write(b"0123456789" * 20_000)
    result = await run_php(pool, PARAMS, body, SETTINGS, request_id="t")
    assert not result.body.in_memory
    assert b"".join(result.body.chunks()) == b"0123456789" * 60_000


async def test_idle_connections_expire(nursery, autojump_clock):
    fpm = FakeFpm(hello)
    pool = make_pool(fpm, nursery, idle_timeout=10)
    nursery.start_soon(pool.run_reaper)
    await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert pool.idle == 1
    await trio.sleep(15)
    assert pool.idle == 0 and pool.open_connections == 0
    await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert fpm.connections == 2


async def test_an_idle_connection_is_closed_when_it_is_due_not_a_period_later(nursery, autojump_clock):
    fpm = FakeFpm(hello)
    pool = make_pool(fpm, nursery, idle_timeout=10)
    nursery.start_soon(pool.run_reaper)
    await trio.sleep(3)  # the reaper found nothing idle: it sleeps, and the connection below is due at 13
    await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    await trio.sleep(9.9)
    assert pool.idle == 1
    await trio.sleep(0.2)
    assert pool.idle == 0 and pool.open_connections == 0


async def test_connect_failure_is_502(autojump_clock):
    from gateway.http.errors import UpstreamConnectError
    from gateway.upstream.connect import make_connector

    pool = fastcgi_pool("php", make_connector("unix:/nonexistent/php.sock"), size=1, queue_depth=1, queue_timeout=5)
    with pytest.raises(UpstreamConnectError) as exc:
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert exc.value.status == 502
    assert pool.busy == 0 and pool.stats.connect_errors == 1


async def test_connect_timeout_is_504(autojump_clock):
    from gateway.http.errors import UpstreamConnectTimeout

    async def never_connects():
        await trio.sleep_forever()

    pool = fastcgi_pool("php", never_connects, size=1, queue_depth=1, queue_timeout=60, connect_timeout=5)
    t0 = trio.current_time()
    with pytest.raises(UpstreamConnectTimeout) as exc:
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert exc.value.status == 504
    assert trio.current_time() - t0 == pytest.approx(5)
    assert pool.busy == 0 and pool.open_connections == 0


async def test_a_client_gone_before_php_is_refused_but_counted_as_queued_only_if_it_queued(nursery, autojump_clock):
    fpm = FakeFpm(hello)
    pool = make_pool(fpm, nursery)
    with pytest.raises(ClientGone):
        await run_php(pool, PARAMS, None, SETTINGS, request_id="h", client_left=lambda: True)
    assert fpm.requests_seen == [] and pool.stats.client_gone_in_queue == 0
    assert pool.instruments.queue_wait.count == 1 and pool.instruments.queue_wait.sum == 0.0


async def test_ignore_client_abort_runs_php_for_a_client_that_half_closed(nursery, autojump_clock):
    # nginx with fastcgi_ignore_client_abort on runs it too (review finding 9)
    fpm = FakeFpm(hello)
    pool = make_pool(fpm, nursery)
    settings = replace(SETTINGS, ignore_client_abort=True)
    result = await run_php(pool, PARAMS, None, settings, request_id="h", client_left=lambda: True)
    assert result.body.getvalue() == b"hello GET" and len(fpm.requests_seen) == 1


# -- over real sockets (reads and writes that need no wait take no cancel scope) -------------------


def socket_pool(fpm: FakeFpm, nursery: trio.Nursery, **kw) -> Pool:
    """``make_pool``, its connections socket pairs: the exchange's raw-socket path."""

    async def connect() -> trio.abc.Stream:
        ours, theirs = trio.socket.socketpair()
        fpm.connections += 1
        nursery.start_soon(fpm._serve, trio.SocketStream(theirs))
        return trio.SocketStream(ours)

    args = dict(size=2, queue_depth=100, queue_timeout=60, idle_timeout=10)
    args.update(kw)
    return fastcgi_pool("php", connect, **args)


async def test_over_a_socket_requests_reuse_the_connection_and_keep_the_read_timeout(nursery, autojump_clock):
    fpm = FakeFpm(hello)
    pool = socket_pool(fpm, nursery)
    for _ in range(3):
        result = await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
        assert (result.head.status, result.body.getvalue()) == (200, b"hello GET")
    assert fpm.connections == 1
    fpm.script = slow(1000)
    t0 = trio.current_time()
    with pytest.raises(UpstreamTimeout):
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    assert trio.current_time() - t0 == pytest.approx(SETTINGS.read_timeout)


async def test_over_a_socket_a_large_body_and_output_pass_whole(nursery, autojump_clock):
    from gateway.http.spool import Spool

    async def echo(req):
        return [php_output(req.stdin * 3)]

    pool = socket_pool(FakeFpm(echo), nursery)
    body = Spool(100)
    body.write(b"0123456789" * 200_000)  # 2 MB: more than the socket pair's buffers, written while PHP reads
    result = await run_php(pool, PARAMS, body, SETTINGS, request_id="t")
    assert b"".join(result.body.chunks()) == b"0123456789" * 600_000


async def test_over_a_socket_a_backend_that_closes_unanswered_is_closed_early(nursery, autojump_clock):
    pool = socket_pool(FakeFpm(hello), nursery)

    async def closing() -> FastCgiConn:
        ours, theirs = trio.socket.socketpair()
        theirs.close()
        return FastCgiConn(trio.SocketStream(ours))

    pool.members[0].connect = closing
    with pytest.raises(UpstreamClosedEarly):
        await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
