"""The WordPress home page compressed: brotli to a client that accepts br and
gzip, byte-exact after decoding, and smaller than what nginx sends the same
client (``gzip on`` with nginx's defaults: ``gzip_comp_level 1``). nginx is the
real one scripts/_install-nginx installs, as a proxy in front of this same
gateway asked for identity, so both compress the same page."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import time
import zlib
from pathlib import Path

import brotli
import pytest
import trio

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)

NGINX_CONF = """
daemon off;
worker_processes 1;
{user}
pid {run}/nginx.pid;
error_log {run}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    gzip on;
    gzip_proxied any;
    gzip_types text/plain text/css text/xml application/javascript application/json application/xml image/svg+xml;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host 127.0.0.1:{upstream};
            proxy_set_header Accept-Encoding "";
        }}
    }}
}}
"""


def free_fixed_port() -> int:
    """A free port in 24000-24999 (nginx cannot be given port 0)."""
    for port in range(24000 + os.getpid() % 500, 25000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 24000-24999")


class Nginx:
    def __init__(self, run: Path, upstream: int) -> None:
        self.port = free_fixed_port()
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (run / d).mkdir(parents=True)
        conf = run / "nginx.conf"
        conf.write_text(NGINX_CONF.format(run=run, port=self.port, upstream=upstream,
                                          user="user root;" if os.geteuid() == 0 else ""))
        assert NGINX is not None
        self.proc = subprocess.Popen([NGINX, "-c", str(conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:  # an external process: poll its port until it listens (or exits)
            assert self.proc.poll() is None, (run / "error.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(15)
        self.proc.wait(10)


def http_get(port: int, accept: str, host: str) -> tuple[dict[str, str], bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/", headers={"Host": host, "Accept-Encoding": accept})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    assert r.status == 200
    return {k.lower(): v for k, v in r.getheaders()}, body


async def test_home_page_is_brotli_and_smaller_than_nginx_gzip(browser, wp_gateway, tmp_path):
    identity = await browser.get("/")
    assert identity.status == 200 and identity.header("content-encoding") is None
    assert identity.header("vary") is not None and "accept-encoding" in identity.header("vary").lower()
    r = await browser.get("/", headers=[("Accept-Encoding", "br, gzip")])
    assert r.header("content-encoding") == "br" and r.header("content-length") == str(len(r.body))
    page = brotli.decompress(r.body)
    assert page == identity.body and b"</html>" in page
    g = await browser.get("/", headers=[("Accept-Encoding", "gzip")])
    assert g.header("content-encoding") == "gzip" and gzip.decompress(g.body) == page

    if NGINX is None:
        # no nginx here: compare with what its default gzip_comp_level 1 makes of the page
        theirs = len(zlib.compress(page, 1, wbits=31))
        what = "zlib level 1 (nginx not installed)"
    else:
        nginx = await trio.to_thread.run_sync(Nginx, tmp_path / "nginx", browser.port)
        try:
            headers, body = await trio.to_thread.run_sync(http_get, nginx.port, "br, gzip", browser.host)
        finally:
            await trio.to_thread.run_sync(nginx.stop)
        assert headers.get("content-encoding") == "gzip"
        assert len(gzip.decompress(body)) == len(page)  # the same page (WordPress's output has no nonce here)
        theirs, what = len(body), "nginx gzip (level 1)"
    print(f"\nWordPress home page: {len(page)} bytes; gateway br {len(r.body)}, gateway gzip {len(g.body)}, "
          f"{what} {theirs}")
    assert len(r.body) < theirs


@pytest.mark.parametrize("coding", ["br", "gzip"])
async def test_static_assets_of_wordpress_compressed(browser, coding):
    url = "/wp-includes/css/dist/block-library/style.min.css"
    plain = await browser.get(url)
    r = await browser.get(url, headers=[("Accept-Encoding", coding)])
    assert r.header("content-encoding") == coding
    decoded = brotli.decompress(r.body) if coding == "br" else gzip.decompress(r.body)
    assert decoded == plain.body and r.header("etag") == "W/" + plain.header("etag")
