"""Groups: several addresses behind one backend's queue, balanced, with
passive health and failover, on the autojump clock (memory streams)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.lowlevel
import trio.testing

from gateway.config import BackendConfig
from gateway.http.errors import UpstreamClosedEarly, UpstreamConnectError
from gateway.upstream.exchange import run_http, run_php
from gateway.upstream.fastcgi import PhpSettings, fastcgi_pool
from gateway.upstream.http1 import HttpSettings, UpstreamRequest, http_pool
from tests.helpers import FakeFpm, FakeHttp, http_response, php_output

SETTINGS = HttpSettings.from_config(BackendConfig(type="http", addresses=["h:80"], read_timeout=30))
GET = UpstreamRequest(b"GET", b"/", [(b"host", b"h")])


def named(text: bytes):
    async def answer(req):
        return [http_response(text)]

    return answer


def slow(text: bytes, seconds: float):
    async def answer(req):
        await trio.sleep(seconds)
        return [http_response(text)]

    return answer


def group(apps: dict[str, FakeHttp], nursery, **kw):
    args = dict(size=2, queue_depth=100, queue_timeout=60, idle_timeout=10, max_fails=1, fail_timeout=10)
    args.update(kw)
    return http_pool("app", [(name, app.connector(nursery)) for name, app in apps.items()], **args)


async def test_round_robin_takes_turns(nursery, autojump_clock):
    a, b = FakeHttp(named(b"a")), FakeHttp(named(b"b"))
    pool = group({"a:80": a, "b:80": b}, nursery, balance="round_robin")
    got = [(await run_http(pool, GET, SETTINGS, request_id="t")).body.getvalue() for _ in range(6)]
    assert sorted(got) == [b"a"] * 3 + [b"b"] * 3
    assert got[0] != got[1]
    assert (a.connections, b.connections) == (1, 1)  # each kept alive


async def test_least_busy_fills_the_freest_and_the_queue_is_one_fifo(nursery, autojump_clock):
    a, b = FakeHttp(slow(b"a", 1)), FakeHttp(slow(b"b", 1))
    pool = group({"a:80": a, "b:80": b}, nursery, size=3)
    assert pool.size == 6
    async with trio.open_nursery() as n:
        for _ in range(8):
            n.start_soon(lambda: run_http(pool, GET, SETTINGS, request_id="t"))
            await trio.lowlevel.checkpoint()
        await trio.testing.wait_all_tasks_blocked()
        busy = {m.name: m.busy for m in pool.members}
        assert busy == {"a:80": 3, "b:80": 3} and pool.waiting == 2
    assert (a.max_running, b.max_running) == (3, 3)


async def test_ip_hash_sticks_a_client_to_one_address(nursery, autojump_clock):
    apps = {f"h{i}:80": FakeHttp(named(b"%d" % i)) for i in range(3)}
    pool = group(apps, nursery, balance="ip_hash")
    for client in (b"192.0.2.1", b"192.0.2.2", b"198.51.100.9"):
        got = {(await run_http(pool, GET, SETTINGS, request_id="t", key=client)).body.getvalue() for _ in range(4)}
        assert len(got) == 1


async def test_failover_and_passive_health(nursery, autojump_clock, caplog):
    caplog.set_level(logging.INFO)
    good, dead = FakeHttp(named(b"good")), FakeHttp(named(b"dead"), fail_connect=True)
    pool = group({"dead:80": dead, "good:80": good}, nursery, balance="round_robin", fail_timeout=10)
    for _ in range(4):  # every request answered: the dead address's connect error moves it to the other
        assert (await run_http(pool, GET, SETTINGS, request_id="t")).body.getvalue() == b"good"
    member = {m.name: m for m in pool.members}
    assert member["dead:80"].stats.connect_errors == 1  # max_fails 1: out of rotation at once
    assert member["dead:80"].down_since is not None
    assert pool.size == 2  # the queue waits for the live address's connections only
    assert repr(pool) == "<Pool app [slots 0/2 busy, 1 idle, 0 waiting; dead:80 0/2 down, good:80 0/2]>"
    down = [r.getMessage() for r in caplog.records if "taken out of rotation" in r.getMessage()]
    assert down == ["backend app: dead:80 taken out of rotation: cannot connect to fake: Connection refused "
                    "(max_fails 1 within 10s) (1 of 2 addresses serving)"]
    # fail_timeout later it is tried again; it works now
    dead.fail_connect = False
    await trio.sleep(10)
    pool.refresh()
    assert pool.size == 4
    got = {(await run_http(pool, GET, SETTINGS, request_id="t")).body.getvalue() for _ in range(4)}
    assert got == {b"good", b"dead"}
    assert any("dead:80 is back in rotation after 10s (2 of 2 addresses serving)" in m for m in caplog.messages)


async def test_max_fails_counts_within_fail_timeout(nursery, autojump_clock):
    a, b = FakeHttp(named(b"a")), FakeHttp(named(b"b"))
    pool = group({"a:80": a, "b:80": b}, nursery, max_fails=2, fail_timeout=10)
    member = pool.members[0]
    for _ in range(3):
        pool.record_failure(member, "refused")
        await trio.sleep(11)  # failures 11 s apart never add up to 2 within 10 s
    assert member.down_since is None
    pool.record_failure(member, "refused")
    await trio.sleep(9)
    pool.record_failure(member, "refused")
    assert member.down_since == trio.current_time()
    assert pool.size == 2


async def test_every_address_down_is_a_502_and_all_are_still_tried(nursery, autojump_clock):
    a, b = FakeHttp(named(b"a"), fail_connect=True), FakeHttp(named(b"b"), fail_connect=True)
    pool = group({"a:80": a, "b:80": b}, nursery)
    with pytest.raises(UpstreamConnectError):
        await run_http(pool, GET, SETTINGS, request_id="t")
    assert all(m.down_since is not None for m in pool.members)
    assert pool.size == 4  # none in rotation: all of them are tried
    b.fail_connect = False
    assert (await run_http(pool, GET, SETTINGS, request_id="t")).body.getvalue() == b"b"


async def test_a_single_address_is_never_taken_out(nursery, autojump_clock):
    a = FakeHttp(named(b"a"), fail_connect=True)
    pool = http_pool("app", a.connector(nursery), size=2, queue_depth=10, queue_timeout=5)
    for _ in range(3):
        with pytest.raises(UpstreamConnectError):
            await run_http(pool, GET, SETTINGS, request_id="t")
    assert pool.members[0].down_since is None and pool.size == 2


async def test_php_groups_too(nursery, autojump_clock):
    async def hello(req):
        return [php_output(b"hi")]

    one, two = FakeFpm(hello), FakeFpm(hello)
    pool = fastcgi_pool("php", [("10.0.0.2:9000", one.connector(nursery)), ("10.0.0.3:9000", two.connector(nursery))],
                        size=1, queue_depth=10, queue_timeout=5, balance="round_robin")
    settings = PhpSettings.from_config(BackendConfig())
    for _ in range(4):
        result = await run_php(pool, [(b"SCRIPT_FILENAME", b"/x.php")], None, settings, request_id="t")
        assert result.body.getvalue() == b"hi"
    assert (one.connections, two.connections) == (1, 1)
    assert len(one.requests_seen) == len(two.requests_seen) == 2


async def test_a_post_on_a_fresh_connection_closed_unanswered_takes_its_address_out(nursery, autojump_clock):
    # a php-fpm being killed (a dying worker still holds its listen socket) or refusing the gateway
    # (listen.allowed_clients) accepts a connection and closes it unanswered: a POST sent there gets
    # its 502 (it was sent: never retried), and the address leaves rotation as it does for a GET,
    # so the next POSTs go to the live one instead of failing there too
    async def dies(req):
        raise trio.BrokenResourceError  # the connection closed, no reply

    async def runs(req):
        return [php_output(b"ran")]

    dead, good = FakeFpm(dies), FakeFpm(runs)
    pool = fastcgi_pool("php", [("dead:9000", dead.connector(nursery)), ("good:9000", good.connector(nursery))],
                        size=1, queue_depth=10, queue_timeout=5, balance="round_robin", max_fails=1,
                        fail_timeout=10)
    settings = PhpSettings.from_config(BackendConfig())
    post = [(b"SCRIPT_FILENAME", b"/x.php"), (b"REQUEST_METHOD", b"POST")]
    got: list[bytes | int] = []
    for _ in range(6):
        try:  # (retry_safe defaults to False, as for a POST)
            got.append((await run_php(pool, post, None, settings, request_id="t")).body.getvalue())
        except UpstreamClosedEarly as exc:
            got.append(exc.status)
    assert got.count(502) == 1 and got.count(b"ran") == 5, got
    assert len(dead.requests_seen) == 1 and pool.stats.retries == 0  # sent there once, never run twice
    member = pool.members[0]
    assert member.down_since is not None and "before responding" in member.down_reason
    assert pool.size == 1  # only the live address's slots


def test_a_group_from_the_configuration():
    from gateway.config import validate
    from gateway.serve.process import backend_connectors, pool_from_config

    cfg = validate({"backends": {"app": {"type": "http", "addresses": ["http://10.0.0.2:8080", "https://api.internal"],
                                         "pool_size": 3, "balance": "ip_hash",
                                         "health": {"max_fails": 2, "fail_timeout": "30s"}},
                                 "php": {"addresses": ["10.0.0.2:9000", "unix:/run/php.sock"], "pool_size": 5}},
                    "sites": {"s": {"root": "/srv", "php": "php", "routes": {"/api/": "app"}}}})
    app = pool_from_config("app", backend_connectors(cfg.backends["app"], ""), cfg.backends["app"], cfg.limits)
    assert [m.name for m in app.members] == ["http://10.0.0.2:8080", "https://api.internal"]
    assert (app.size, app.balance, app.max_fails, app.fail_timeout) == (6, "ip_hash", 2, 30.0)
    php = pool_from_config("php", backend_connectors(cfg.backends["php"], ""), cfg.backends["php"], cfg.limits)
    assert [m.name for m in php.members] == ["10.0.0.2:9000", "unix:/run/php.sock"]
    assert php.size == 10


async def test_an_address_that_closes_before_answering_passes_safe_requests_on(nursery, autojump_clock):
    """A host whose server dies with the request (a reset before any byte):
    a GET goes to the next address, a POST is not run twice (502)."""
    from gateway.http.errors import UpstreamClosedEarly
    from tests.helpers import CLOSE

    async def dies(req):
        return [CLOSE]

    broken, good = FakeHttp(dies), FakeHttp(named(b"good"))
    # (max_fails 0: kept in rotation, to show what each method gets; by default it leaves at once)
    pool = group({"broken:80": broken, "good:80": good}, nursery, balance="round_robin", max_fails=0)
    for _ in range(4):
        result = await run_http(pool, GET, SETTINGS, request_id="t", retry_safe=True)
        assert result.body.getvalue() == b"good"
    post = UpstreamRequest(b"POST", b"/", [(b"host", b"h")])
    failed = 0
    for _ in range(4):
        try:
            await run_http(pool, post, SETTINGS, request_id="t", retry_safe=False)
        except UpstreamClosedEarly:
            failed += 1
    assert failed == 2  # the POSTs that went to the broken host
    assert (pool.busy, pool.open_connections) == (0, 1)


async def test_failover_waits_for_a_busy_live_address(nursery, autojump_clock):
    """The dead address's request moves to the live one even when all its
    connections are busy: it waits for one to free (not a 502)."""
    dead, live = FakeHttp(named(b"dead"), fail_connect=True), FakeHttp(slow(b"live", 1))
    pool = group({"dead:80": dead, "live:80": live}, nursery, size=1, balance="round_robin")
    results = []

    async def one():
        results.append((await run_http(pool, GET, SETTINGS, request_id="t")).body.getvalue())

    async with trio.open_nursery() as n:
        n.start_soon(one)
        n.start_soon(one)
    assert results == [b"live", b"live"]
    assert trio.current_time() == pytest.approx(2)  # one after the other on the live address


async def test_a_hung_address_is_taken_out_by_its_read_timeout(nursery, autojump_clock):
    """It accepts connections but never answers (a stopped process, a
    blackholed link): one request waits read_timeout (504), then the address
    leaves rotation and the next requests go to the other."""
    from gateway.http.errors import UpstreamTimeout

    async def hang(req):
        await trio.sleep(1000)
        return []

    hung, good = FakeHttp(hang), FakeHttp(named(b"good"))
    pool = group({"hung:80": hung, "good:80": good}, nursery, balance="round_robin")
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append((await run_http(pool, GET, SETTINGS, request_id="t")).body.getvalue())
        except UpstreamTimeout:
            outcomes.append(b"504")
    assert sorted(outcomes) == [b"504", b"good", b"good", b"good"]
    assert pool.members[0].down_since is not None


async def test_a_safe_request_on_a_hung_address_is_answered_by_another_after_read_timeout(nursery, autojump_clock):
    """A host whose link went down (or that hangs) with GETs in flight: each
    waits read_timeout, then goes to the other address, as nginx's default
    ``fastcgi_next_upstream error timeout``; a POST there gets its 504 (it may
    have run), and a single address has nowhere else to go."""
    from gateway.http.errors import UpstreamTimeout

    async def hang(req):
        await trio.sleep(1000)
        return []

    hung, good = FakeHttp(hang), FakeHttp(named(b"good"))
    pool = group({"hung:80": hung, "good:80": good}, nursery, balance="round_robin", max_fails=0)
    got = [(await run_http(pool, GET, SETTINGS, request_id="t", retry_safe=True)).body.getvalue() for _ in range(4)]
    assert got == [b"good"] * 4
    retried = pool.stats.retries
    assert retried >= 1 and pool.members[0].stats.errors == {504: retried}
    assert trio.current_time() == pytest.approx(retried * 30)  # each waited read_timeout on the hung one
    post = UpstreamRequest(b"POST", b"/", [(b"host", b"h")])
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append((await run_http(pool, post, SETTINGS, request_id="t")).body.getvalue())
        except UpstreamTimeout:
            outcomes.append(b"504")
    assert b"504" in outcomes  # a POST that went there

    alone = group({"hung:80": FakeHttp(hang)}, nursery)
    with pytest.raises(UpstreamTimeout):
        await run_http(alone, GET, SETTINGS, request_id="t", retry_safe=True)


async def test_the_timing_names_each_address_tried_and_its_time(nursery, autojump_clock):
    """The addresses a request went to and the seconds on each (the access
    log's $upstream_addr and $upstream_response_time), also on the error of
    one that failed; a PHP group passes a hung request on as an HTTP one does."""
    from gateway.http.errors import UpstreamTimeout

    async def hang(req):
        await trio.sleep(1000)
        return []

    async def hello(req):
        return [php_output(b"hi")]

    hung, good = FakeFpm(hang), FakeFpm(hello)
    pool = fastcgi_pool("php", [("10.0.0.2:9000", hung.connector(nursery)),
                                ("10.0.0.3:9000", good.connector(nursery))],
                        size=1, queue_depth=10, queue_timeout=5, balance="round_robin", max_fails=0)
    settings = PhpSettings.from_config(BackendConfig(read_timeout=3))
    params = [(b"SCRIPT_FILENAME", b"/x.php")]
    pool._turn = len(pool.members) - 1  # the next turn is the hung address's
    result = await run_php(pool, params, None, settings, request_id="t", retry_safe=True)
    assert result.body.getvalue() == b"hi"
    assert [(addr, round(t or 0, 3)) for addr, t in result.timing.tried] == [
        ("10.0.0.2:9000", 3.0), ("10.0.0.3:9000", 0.0)]
    assert pool.stats.retries == 1 and pool.members[0].stats.errors == {504: 1}
    pool._turn = len(pool.members) - 1
    with pytest.raises(UpstreamTimeout) as caught:
        await run_php(pool, params, None, settings, request_id="t", retry_safe=False)
    assert [(addr, t) for addr, t in caught.value.timing.tried] == [("10.0.0.2:9000", 3.0)]
    assert len(good.requests_seen) == 1  # the unsafe request was not run a second time
    assert (pool.busy, trio.current_time()) == (0, 6.0)
