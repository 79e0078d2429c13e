"""WordPress through HTTPS on the gateway's own TLS (the internal CA): PHP is
told HTTPS=on so ``is_ssl()`` is true, links and redirects say https://,
nothing loops back to http://, and logging in works (secure cookies)."""

from __future__ import annotations

import ssl
from functools import partial
from pathlib import Path

import pytest
import trio

from gateway.config import validate
from gateway.serve.process import Running, serve
from tests.helpers import HttpClient

from .conftest import Browser
from .wp_parts import WordPress


class TlsBrowser(Browser):
    def __init__(self, port: int, cafile: str) -> None:
        super().__init__(port)
        self.ctx = ssl.create_default_context(cafile=cafile)

    async def connect(self) -> HttpClient:
        raw = await trio.open_tcp_stream("127.0.0.1", self.port)
        stream = trio.SSLStream(raw, self.ctx, server_hostname="127.0.0.1", https_compatible=True)
        await stream.do_handshake()
        return HttpClient(stream)


@pytest.fixture
async def tls_browser(wordpress: WordPress, nursery: trio.Nursery, tmp_path: Path) -> TlsBrowser:
    site = {**wordpress.site_config(), "tls": {"internal": True}}
    cfg = validate({
        "server": {"listen": ["127.0.0.1:0 tls"], "access_log": "off", "runtime_dir": str(tmp_path / "run")},
        "admin": {"listen": "off"},
        "acme": {"state_dir": str(tmp_path / "state")},
        "backends": {"php": {"pool_size": 2, "idle_timeout": "30s", "php_fpm": {"user": "root"}}},
        "sites": {"wordpress": site},
    })
    running: Running = await nursery.start(partial(serve, cfg, handle_signals=False))
    yield TlsBrowser(running.listeners[0].socket.getsockname()[1], str(tmp_path / "state" / "ca" / "root.pem"))
    running.shutdown.set()


async def test_wordpress_over_https_is_ssl_no_redirect_loop_and_login(tls_browser):
    b = tls_browser
    r = await b.get("/")
    assert r.status == 200, (r.status, r.header("location"))
    assert f"https://{b.host}/".encode() in r.body and f"http://{b.host}/".encode() not in r.body
    # the gateway's own redirect keeps the scheme
    r = await b.get("/wp-admin")
    assert r.status == 301 and r.header("location") == f"https://{b.host}/wp-admin/"
    r = await b.get("/wp-admin/")
    assert r.status == 302 and r.header("location").startswith(f"https://{b.host}/wp-login.php")
    r = await b.login()
    assert r.status == 302 and r.header("location") in ("/wp-admin/", f"https://{b.host}/wp-admin/")
    secure = [v.decode() for k, v in r.header_list if k == b"set-cookie" and b"wordpress_sec_" in v]
    assert secure and all("secure" in v.lower() for v in secure)  # is_ssl(): the secure auth cookie
    r = await b.get("/wp-admin/")
    assert r.status == 200 and b"Dashboard" in r.body
