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


async def test_nghttp_loads_the_front_page_and_its_assets_over_one_http2_connection(tls_browser):
    """Issue 14: a browser's load, HTTP/2 over TLS (ALPN h2): nghttp -a fetches the
    page, then the CSS, JS and images it links, all on the one connection."""
    result = await trio.run_process(["nghttp", "-ans", "-t", "30", f"https://{tls_browser.host}/"],
                                    capture_stdout=True, capture_stderr=True, check=False)
    out = result.stdout.decode(errors="replace")
    # "  id  responseEnd requestStart  process code size request path", then a row per stream
    header = next((line.split() for line in out.splitlines() if line.strip().endswith("request path")), [])
    code = header.index("code") if "code" in header else 0
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    fetched = {row[-1]: row[code] for row in rows if len(row) > code}
    assert fetched.get("/") == "200", out + result.stderr.decode(errors="replace")
    assets = {path: code for path, code in fetched.items() if path != "/"}
    assert len([p for p in assets if ".css" in p or ".js" in p]) >= 2, out
    assert set(assets.values()) == {"200"}, out
