"""conf.d/examples/wordpress-hardened.toml served as written (its paths moved
into tmp_path), with a real php-fpm and curl over HTTP/1.1 and HTTP/2: the
issue 16 rules together, as an operator moving from nginx would check them.
The client is 127.0.0.1, outside the example's office network."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tomllib
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gateway.config import validate
from gateway.serve.process import serve

EXAMPLE = Path(__file__).parents[2] / "conf.d" / "examples" / "wordpress-hardened.toml"

FRONT = """<?php
header('X-Powered-By: PHP');
echo 'wordpress ', $_SERVER['SCRIPT_NAME'], ' ', $_SERVER['REQUEST_URI'],
     ' user=', ($_SERVER['REMOTE_USER'] ?? '' ?: '-');
"""
DOWNLOAD = """<?php
header('Content-Type: application/zip');
header('X-Accel-Redirect: /protected/album.zip');
echo 'PHP body the client must never see';
"""
PAGES = {"403.html": "<h1>not from here</h1>", "404.html": "<h1>no such page</h1>",
         "429.html": "<h1>slow down</h1>", "down.html": "<h1>back soon</h1>"}
SECURITY = {"x-frame-options": "SAMEORIGIN", "x-content-type-options": "nosniff"}


def layout(tmp_path: Path) -> tuple[dict[str, Path], bytes]:
    """The example's directories under tmp_path, with a stand-in WordPress."""
    dirs = {name: tmp_path / name for name in ("wordpress", "error-pages", "wordpress-downloads", "staging")}
    for d in dirs.values():
        d.mkdir()
    wp = dirs["wordpress"]
    for script in ("index.php", "wp-login.php", "xmlrpc.php", "wp-admin/index.php", "wp-admin/admin-ajax.php"):
        (wp / script).parent.mkdir(parents=True, exist_ok=True)
        (wp / script).write_text(FRONT)
    (wp / "download.php").write_text(DOWNLOAD)
    (wp / "wp-config.php").write_text("<?php define('DB_PASSWORD', 'secret');")
    cached = wp / "wp-content/cache/supercache/example.com/about"
    cached.mkdir(parents=True)
    (cached / "index.html").write_text("<p>cached about page</p>")
    (dirs["staging"] / "index.php").write_text(FRONT)
    for name, text in PAGES.items():
        (dirs["error-pages"] / name).write_text(text)
    data = os.urandom(300_000)
    (dirs["wordpress-downloads"] / "album.zip").write_bytes(data)
    users = tmp_path / "staging.htpasswd"
    users.write_text(subprocess.run(["htpasswd", "-nbB", "alice", "s3cret"], capture_output=True, text=True,
                                    check=True).stdout)
    dirs["users"] = users
    return dirs, data


def example_text(dirs: dict[str, Path]) -> str:
    """The example with its paths moved to ``dirs``."""
    text = EXAMPLE.read_text()
    for name in ("wordpress-downloads", "error-pages", "wordpress", "staging"):
        text = text.replace(f'"/var/www/{name}"', f'"{dirs[name]}"')
    return text.replace('"/etc/gateway/staging.htpasswd"', f'"{dirs["users"]}"')


def config(tmp_path: Path, dirs: dict[str, Path]) -> dict[str, Any]:
    cfg = tomllib.loads(example_text(dirs))
    assert "/var/www" not in str(cfg) and "/etc/gateway" not in str(cfg)
    cfg["server"] = {"listen": ["127.0.0.1:0"], "access_log": "off", "runtime_dir": str(tmp_path / "run"),
                     "http2_cleartext": True}
    cfg["admin"] = {"listen": "127.0.0.1:0"}
    cfg["backends"]["wordpress"].update(pool_size=2, idle_timeout="30s", php_fpm={"user": "root"})
    return cfg


async def curl(port: int, host: str, target: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one request to ``host``."""
    result = await trio.run_process(
        ["curl", "-sS", "--max-time", "20", "-D", "-", "--resolve", f"{host}:{port}:127.0.0.1", *args,
         f"http://{host}:{port}{target}"], capture_stdout=True)
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def test_the_hardened_wordpress_example_rules_together(nursery, tmp_path):
    dirs, data = layout(tmp_path)
    # gateway check, as an operator runs it on the copied file: roots, aliases and the user file exist
    conf = tmp_path / "conf"
    conf.mkdir()
    # (tmp_path is not www-data's to read: the gateway and php-fpm run as root here)
    (conf / "00-server.toml").write_text('[server]\nuser = "root"\n')
    (conf / "50-wordpress.toml").write_text(example_text(dirs).replace('user = "www-data"', 'user = "root"'))
    checked = await trio.run_process([sys.executable, "-m", "gateway", "check", "--config", str(conf)],
                                     capture_stdout=True, capture_stderr=True, check=False)
    assert checked.returncode == 0, checked.stderr.decode()
    running = await nursery.start(partial(serve, validate(config(tmp_path, dirs)), handle_signals=False))
    port = next(s.socket.getsockname()[1] for s in running.listeners if s.socket.family.name == "AF_INET")
    try:
        await check_all(port, data)
    finally:
        running.shutdown.set()


async def check_all(port: int, data: bytes) -> None:
    get = partial(curl, port, "example.com")

    # www -> apex, with the query, whatever the Host's case or trailing dot
    for host in ("www.example.com", "WWW.Example.COM."):
        status, headers, _ = await curl(port, "www.example.com", "/shop/?p=2", "-H", f"Host: {host}")
        assert (status, headers["location"]) == (301, "http://example.com/shop/?p=2"), host

    # XML-RPC: 403 with the site's page and its security headers (always), PHP never ran
    status, headers, body = await get("/xmlrpc.php", "-d", "<methodCall/>")
    assert (status, body.decode()) == (403, PAGES["403.html"])
    assert SECURITY.items() <= headers.items()

    # the dashboard: 403 from home, however the path is spelled; admin-ajax.php open
    for target in ("/wp-admin/", "/wp-admin/index.php", "//wp-admin/", "/wp%2Dadmin/", "/%77p-admin/index.php",
                   "/x/../wp-admin/", "/wp-admin/./index.php"):
        status, headers, body = await get(target)
        assert (status, body.decode()) == (403, PAGES["403.html"]), target
    status, headers, _ = await get("/x", "--request-target", "http://example.com/wp-admin/")
    assert status == 403  # absolute-form target
    status, headers, body = await get("/wp-admin")
    assert (status, headers["location"]) == (301, f"http://example.com:{port}/wp-admin/")
    status, headers, body = await get("/wp-admin/admin-ajax.php?action=x")
    assert (status, body) == (200, b"wordpress /wp-admin/admin-ajax.php /wp-admin/admin-ajax.php?action=x user=-")
    assert SECURITY.items() <= headers.items() and "x-powered-by" not in headers
    # the case differs: another (missing) file, WordPress's front controller answers, not the dashboard
    status, _, body = await get("/WP-ADMIN/")
    assert (status, body) == (200, b"wordpress /index.php /WP-ADMIN/ user=-")

    # the configuration and the internal prefixes: the gateway's 403/404 with the site's pages
    assert (await get("/wp-config.php"))[::2] == (403, PAGES["403.html"].encode())
    for target in ("/protected/album.zip", "/errors/404.html", "/%65rrors/403.html"):
        assert (await get(target))[::2] == (404, PAGES["404.html"].encode()), target

    # WP Super Cache: the cached page without PHP; an uncached one from WordPress
    status, headers, body = await get("/about/")
    assert (status, body) == (200, b"<p>cached about page</p>") and SECURITY.items() <= headers.items()
    assert (await get("/contact/"))[::2] == (200, b"wordpress /index.php /contact/ user=-")

    # a protected download: byte-exact, a range too
    status, headers, body = await get("/download.php")
    assert (status, body, headers["content-type"]) == (200, data, "application/zip")
    status, _, body = await get("/download.php", "-r", "1000-1999")
    assert (status, body) == (206, data[1000:2000])

    # a login flood over one connection: 1 + burst 5 pass, then 429 with the page and Retry-After
    result = await trio.run_process(
        ["curl", "-sS", "--max-time", "20", "-w", "%{http_code} ", "-d", "log=admin&pwd=x",
         "--resolve", f"example.com:{port}:127.0.0.1",
         *[arg for _ in range(9) for arg in ("-o", "/dev/null", f"http://example.com:{port}/wp-login.php")]],
        capture_stdout=True)
    codes = result.stdout.decode().split()
    assert codes[:6] == ["200"] * 6 and "429" in codes[6:], codes  # (a 6 s refill may let one more through)
    status, headers, body = await get("/wp-login.php", "-d", "log=admin&pwd=x")
    assert (status, body.decode()) == (429, PAGES["429.html"])
    assert int(headers["retry-after"]) >= 1 and SECURITY.items() <= headers.items()
    assert (await get("/wp-login.php"))[0] == 200  # GETs of the login form are not limited

    # the same rules over HTTP/2 (h2c prior knowledge): one table, one client
    h2 = ("--http2-prior-knowledge",)
    status, headers, body = await get("/wp-login.php", *h2, "-d", "log=admin&pwd=x")
    assert (status, body.decode()) == (429, PAGES["429.html"]) and "retry-after" in headers
    status, headers, body = await get("/wp-admin/", *h2)
    assert (status, body.decode()) == (403, PAGES["403.html"]) and SECURITY.items() <= headers.items()
    status, headers, body = await get("/download.php", *h2, "-r", "0-99")
    assert (status, body) == (206, data[:100])

    # staging: 401 keeps WWW-Authenticate (and gets its site's header); the user reaches PHP
    stage = partial(curl, port, "staging.example.com")
    for extra in ((), h2):
        status, headers, _ = await stage("/", *extra)
        assert (status, headers["www-authenticate"], headers["x-robots-tag"]) == (
            401, 'Basic realm="Staging"', "noindex, nofollow")
    auth = "Authorization: Basic " + base64.b64encode(b"alice:s3cret").decode()
    status, headers, body = await stage("/?p=1", "-H", auth)
    assert (status, body) == (200, b"wordpress /index.php /?p=1 user=alice")
    status, headers, body = await stage("/?p=1", "-H", auth, *h2)
    assert (status, body) == (200, b"wordpress /index.php /?p=1 user=alice")
