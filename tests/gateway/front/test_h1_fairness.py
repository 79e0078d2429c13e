"""The fairness yield of an HTTP/1.1 connection (``HttpConnection.receive``):
a request whose bytes were already there when the last one ended is served
after one yield to the scheduler, unless the connection's task yielded
during the last request already (it waited for PHP, its queue, the client):
one yield per request either way, never a run of requests without one."""

from __future__ import annotations

import socket
import sys

import pytest
import trio

from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.http.response import Response

REQUEST = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize(("handler_yields", "fairness_yields"), [(False, 4), (True, 1)])
async def test_one_yield_per_request_whether_the_handler_yields_or_not(nursery, monkeypatch, handler_yields,
                                                                       fairness_yields):
    raw_ours, raw_theirs = socket.socketpair()
    ours, theirs = trio.socket.from_stdlib_socket(raw_ours), trio.socket.from_stdlib_socket(raw_theirs)
    made = 0
    real = trio.lowlevel.cancel_shielded_checkpoint

    async def counted() -> None:
        nonlocal made
        if sys._getframe(1).f_code.co_name == "receive":
            made += 1
        await real()

    monkeypatch.setattr(trio.lowlevel, "cancel_shielded_checkpoint", counted)
    served: list[bytes] = []

    async def handler(req):
        served.append(req.target)
        if len(served) < 4:
            # the client's next request, in the socket before this one's answer is written
            raw_ours.send(REQUEST % (len(served) + 1))  # (no await: nothing else runs meanwhile)
        if handler_yields:
            await trio.lowlevel.checkpoint()
        return Response(200, [(b"content-type", b"text/plain")], b"ok")

    conn = HttpConnection(trio.SocketStream(theirs), handler, ConnectionSettings.from_config(),
                          client=("10.0.0.1", 1234), server=("10.0.0.2", 80))
    nursery.start_soon(conn.run)
    await trio.SocketStream(ours).send_all(REQUEST % 1)
    client = trio.SocketStream(ours)
    got = b""
    while got.count(b"HTTP/1.1 200") < 4:
        got += await client.receive_some(65536)
    assert served == [b"/1", b"/2", b"/3", b"/4"]
    # every request was there when the connection came to read it: a yield
    # before each, unless the handler had yielded in the one before (the
    # first request has no "before": its yield is always made)
    assert made == fairness_yields
