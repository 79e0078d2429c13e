"""Cancelling HTTP requests to a group at any moment leaves the pool whole:
no slot held, every member's busy count back to 0, every counted connection
idle, and the next request served (httpcore's cancellation matrix, swept over
time on the autojump clock instead of listed point by point)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.config import BackendConfig
from gateway.http.spool import Spool
from gateway.upstream.exchange import UpstreamBody, run_http
from gateway.upstream.http1 import HttpSettings, UpstreamRequest, http_pool
from tests.helpers import FakeHttp

SETTINGS = HttpSettings.from_config(BackendConfig(type="http", addresses=["h:80"], read_timeout=30,
                                                  response_buffer_size=1024))


def pause(seconds: float):
    async def wait() -> None:
        await trio.sleep(seconds)

    return wait


async def paced(req):
    if req.target == b"/stream":
        out: list[object] = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n"]
        for i in range(4):
            out += [pause(1), b"9\r\ndata: %d\n\n\r\n" % i]
        return [*out, b"0\r\n\r\n"]
    return [pause(1), b"HTTP/1.1 200 OK\r\ncontent-length: 4000\r\n\r\n", pause(1), b"x" * 2000, pause(1),
            b"y" * 2000]


def whole(pool) -> None:
    assert (pool.busy, pool.waiting) == (0, 0)
    assert [m.busy for m in pool.members] == [0] * len(pool.members)
    assert pool.limiter.available_tokens == pool.size
    assert pool.open_connections == pool.idle


@pytest.mark.parametrize("cancel_at", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.5, 4.5])
@pytest.mark.parametrize("target", [b"/", b"/stream"])
async def test_cancel_anywhere(nursery, autojump_clock, cancel_at, target):
    apps = [FakeHttp(paced), FakeHttp(paced)]
    pool = http_pool("app", [(f"h{i}:80", app.connector(nursery)) for i, app in enumerate(apps)], size=1,
                     queue_depth=10, queue_timeout=60)
    body = Spool(1 << 20)
    body.write(b"z" * 100_000)  # written while the response is read
    request = UpstreamRequest(b"POST", target, [(b"host", b"h")], body)

    async def one() -> None:
        result = await run_http(pool, request, SETTINGS, request_id="t")
        try:
            if isinstance(result.body, UpstreamBody):
                async for _ in result.body:
                    pass
        finally:
            if isinstance(result.body, UpstreamBody):
                await result.body.aclose()
            else:
                result.body.close()

    with trio.move_on_after(cancel_at):
        async with trio.open_nursery() as n:
            for _ in range(4):  # two run, two queue
                n.start_soon(one)
    await trio.testing.wait_all_tasks_blocked()
    whole(pool)
    result = await run_http(pool, UpstreamRequest(b"GET", b"/", [(b"host", b"h")]), SETTINGS, request_id="next")
    assert result.body.size == 4000
    result.body.close()
    whole(pool)
