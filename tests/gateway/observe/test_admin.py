"""The admin listener as its clients see it (``gateway status``, Prometheus, curl):
routes, methods and content types, over an HTTP connection in memory, for one
process (``AdminApp`` on its monitor) and for the router alone given two
coroutines (as the master gives it)."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import trio
import trio.testing

from gateway.front.h1 import HttpConnection
from gateway.http._h11 import PARSER
from gateway.observe.admin import AdminApp, AdminRouter
from gateway.serve.process import admin_connection_settings
from tests.helpers import HttpClient

from .observe_fixture import frozen_monitor

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def admin_client(nursery: trio.Nursery, router: AdminRouter) -> HttpClient:
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, router.handle, admin_connection_settings(),
                          client=("127.0.0.1", 50000), server=("127.0.0.1", 9180))
    nursery.start_soon(conn.run)
    return HttpClient(client)


async def test_one_process_shows_its_monitor(nursery, autojump_clock):
    monitor = frozen_monitor()
    c = admin_client(nursery, AdminApp(monitor))
    r = await c.request("GET", "/status")
    assert r.status == 200
    assert (r.header("content-type"), r.header("cache-control")) == ("application/json", "no-store")
    # the monitor's rows, and which HTTP/1.1 parser runs (the suite's: upstream h11, tests/conftest.py)
    parser = {"package": PARSER, "version": importlib.metadata.version(PARSER)}
    assert json.loads(r.body) == {**monitor.status(), "http1_parser": parser}
    r = await c.request("GET", "/metrics?from=prometheus")  # a query string is ignored
    assert r.status == 200
    assert (r.header("content-type"), r.header("cache-control")) == (PROMETHEUS_TYPE, "no-store")
    assert r.body.decode() == monitor.prometheus()


async def test_routes_and_methods(nursery, autojump_clock):
    async def status() -> dict:
        return {"verdict": {"bottleneck": "healthy"}}

    async def metrics() -> str:
        return "gateway_up 1\n"

    c = admin_client(nursery, AdminRouter(status, metrics))
    r = await c.request("GET", "/status")
    assert json.loads(r.body) == {"verdict": {"bottleneck": "healthy"}} and r.body.endswith(b"}\n")
    assert (await c.request("GET", "/metrics")).body == b"gateway_up 1\n"
    r = await c.request("HEAD", "/status")
    assert r.status == 200 and r.body == b"" and r.header("content-type") == "application/json"
    r = await c.request("GET", "/")
    assert (r.status, r.body) == (200, b"gateway admin: /status /metrics\n")
    assert (await c.request("GET", "/status.json")).status == 404
    assert (await c.request("GET", "/metrics/")).status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_only_get_and_head(nursery, autojump_clock, method):
    c = admin_client(nursery, AdminApp(frozen_monitor()))
    r = await c.request(method, "/status", body=b"")
    assert r.status == 405 and r.header("allow") == "GET, HEAD"
