"""WordPress fixtures: one MariaDB + WordPress install per test session (sync,
session-scoped), and a fresh gateway with a spawned php-fpm per test."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import h11
import pytest
import trio

from gateway.config import validate
from gateway.serve.process import Running, serve
from tests.helpers import HttpClient, HttpResponse

from .wp_parts import ADMIN_PASSWORD, ADMIN_USER, WordPress, start_wordpress


@pytest.fixture(scope="session")
def wordpress(tmp_path_factory) -> WordPress:
    wp = start_wordpress(tmp_path_factory.mktemp("wordpress"))
    yield wp
    wp.stop()


class Browser:
    """Keep-alive HTTP client with a cookie jar, speaking to the gateway as 127.0.0.1:PORT."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.cookies: dict[str, str] = {}
        self.client: HttpClient | None = None

    async def request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes | None = None) -> HttpResponse:
        if target.startswith(("http://", "https://")):
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        hdrs = list(headers or [])
        if self.cookies:
            hdrs.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        if self.client is None or self.client.conn.our_state is h11.MUST_CLOSE:
            self.client = await self.connect()
        try:
            r = await self.client.request(method, target, hdrs, body, host=self.host)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.client = await self.connect()
            r = await self.client.request(method, target, hdrs, body, host=self.host)
        for name, value in r.header_list:
            if name == b"set-cookie":
                cookie = value.decode().split(";", 1)[0]
                k, _, v = cookie.partition("=")
                if v == "deleted" or "expires=Thu, 01-Jan-1970" in value.decode():
                    self.cookies.pop(k, None)
                else:
                    self.cookies[k] = v
        return r

    async def connect(self) -> HttpClient:
        return await HttpClient.connect(self.port)

    async def get(self, target: str, **kw) -> HttpResponse:
        return await self.request("GET", target, **kw)

    async def login(self) -> HttpResponse:
        self.cookies["wordpress_test_cookie"] = "WP%20Cookie%20check"
        form = f"log={ADMIN_USER}&pwd={ADMIN_PASSWORD}&wp-submit=Log+In&testcookie=1&redirect_to=%2Fwp-admin%2F"
        return await self.request("POST", "/wp-login.php", [("Content-Type", "application/x-www-form-urlencoded")],
                                  form.encode())

    async def rest_nonce(self) -> str:
        r = await self.get("/wp-admin/admin-ajax.php?action=rest-nonce")
        assert r.status == 200 and re.fullmatch(rb"[0-9a-f]{10}", r.body), r.body[:200]
        return r.body.decode()


@pytest.fixture
async def wp_gateway(wordpress: WordPress, nursery: trio.Nursery, tmp_path: Path):
    cfg = validate({
        "server": {"listen": ["127.0.0.1:0"], "access_log": "off", "runtime_dir": str(tmp_path / "run")},
        "admin": {"listen": "off"},
        "backends": {"php": {"pool_size": 2, "idle_timeout": "30s", "php_fpm": {"user": "root"}}},
        "sites": {"wordpress": wordpress.site_config()},
    })
    running: Running = await nursery.start(partial(serve, cfg, handle_signals=False))
    yield running
    running.shutdown.set()


@pytest.fixture
async def browser(wp_gateway: Running) -> Browser:
    port = wp_gateway.listeners[0].socket.getsockname()[1]
    return Browser(port)
