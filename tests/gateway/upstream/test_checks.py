"""Active health checks of a group's addresses, on the autojump clock."""

from __future__ import annotations

import logging

import pytest
import trio

from gateway.upstream.checks import CheckFailed, CheckPolicy, http_probe, run_checks
from gateway.upstream.pool import Pool
from tests.helpers import CLOSE, FakeHttp, http_response


async def _never() -> object:
    raise AssertionError("checks never take a pool connection")


class Switch:
    """A probe whose answer the test flips."""

    def __init__(self) -> None:
        self.ok = True
        self.calls: list[float] = []

    async def __call__(self) -> None:
        self.calls.append(trio.current_time())
        if self.ok is None:
            await trio.sleep(100)  # hangs
        if not self.ok:
            raise CheckFailed("GET /healthz answered 503")


def group() -> Pool:
    return Pool("app", [("a:80", _never), ("b:80", _never)], size=2, queue_depth=1, queue_timeout=1)


async def test_fails_take_out_and_passes_bring_back(nursery, autojump_clock, caplog):
    caplog.set_level(logging.INFO)
    pool = group()
    a, b = Switch(), Switch()
    nursery.start_soon(run_checks, pool, [a, b], CheckPolicy(interval=5, timeout=2, fails=2, passes=3))
    await trio.sleep(1)
    assert pool.size == 4 and a.calls == [0.0]
    b.ok = False
    await trio.sleep(5)  # one failed check: not yet
    assert pool.members[1].down_since is None
    await trio.sleep(5)  # two in a row: out
    assert pool.members[1].down_since == pytest.approx(10) and pool.size == 2
    assert "b:80 taken out of rotation: health check failed: GET /healthz answered 503 (1 of 2 addresses serving)" \
        in caplog.text
    b.ok = True
    await trio.sleep(10)  # two answered: not yet
    assert pool.members[1].down_since is not None
    await trio.sleep(5)
    assert pool.members[1].down_since is None and pool.size == 4


async def test_a_hung_address_fails_by_timeout(nursery, autojump_clock):
    pool = group()
    a, b = Switch(), Switch()
    a.ok = None
    nursery.start_soon(run_checks, pool, [a, b], CheckPolicy(interval=5, timeout=2, fails=1, passes=1))
    await trio.sleep(2.5)
    assert pool.members[0].down_reason == "health check failed: no answer within 2s"


async def test_one_address_is_not_checked(nursery, autojump_clock):
    pool = Pool("app", _never, size=2, queue_depth=1, queue_timeout=1)
    probe = Switch()
    await run_checks(pool, [probe], CheckPolicy(interval=5, timeout=2, fails=1, passes=1))
    assert probe.calls == []


async def test_the_http_probe(nursery, autojump_clock):
    async def health(req):
        if req.target == b"/healthz":
            return [http_response(b"ok"), CLOSE]
        return [http_response(b"no", status=503), CLOSE]

    app = FakeHttp(health)
    await http_probe(app.connector(nursery), "/healthz", "app.internal")()
    assert app.requests_seen[0].header(b"host") == b"app.internal"
    with pytest.raises(CheckFailed, match="GET /down answered 503"):
        await http_probe(app.connector(nursery), "/down", "app.internal")()


async def test_the_connect_probe(nursery, autojump_clock):
    from gateway.http.errors import UpstreamConnectError
    from gateway.upstream.checks import connect_probe

    app = FakeHttp(lambda req: None)
    await connect_probe(app.connector(nursery))()
    assert app.connections == 1 and app.requests_seen == []  # no request: no php-fpm worker needed
    app.fail_connect = True
    with pytest.raises(UpstreamConnectError):
        await connect_probe(app.connector(nursery))()
