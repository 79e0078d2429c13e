"""Issue 16 items 5-7 with a real php-fpm and curl: a WooCommerce-style
protected download through X-Accel-Redirect (byte-exact, ranges, HEAD, the
protected prefix 404 to direct requests), X-Sendfile, the PHP worker free
while a slow client reads the file, custom error pages (static and PHP,
PHP's own errors intercepted) and header rules with a CORS preflight."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import trio

DOWNLOAD = """<?php
// as WooCommerce's "X-Accel-Redirect/X-Sendfile" download method: check, then hand the file over
if (($_GET['key'] ?? '') !== 'k3y') { http_response_code(403); echo "not yours"; exit; }
header('Content-Type: application/zip');
header('Content-Disposition: attachment; filename="album.zip"');
header('X-Powered-By: PHP');
if (isset($_GET['sendfile'])) {
    header('X-Sendfile: ' . getenv('FILES_DIR') . '/album.zip');
} else {
    header('X-Accel-Redirect: /protected/' . ($_GET['f'] ?? 'album.zip'));
}
echo str_repeat('PHP body the client must never see', 100);
"""
ERROR_PHP = """<?php
header('Content-Type: text/plain');
echo 'error page: status ', $_SERVER['REDIRECT_STATUS'], ' uri ', $_SERVER['REQUEST_URI'],
     ' method ', $_SERVER['REQUEST_METHOD'];
"""
WP_404 = """<?php
http_response_code(404);
header('X-Powered-By: PHP');
echo "php's own not-found page";
"""
HELLO = """<?php
header('X-Powered-By: PHP');
echo 'hello ', $_SERVER['REQUEST_METHOD'];
"""


async def run(*args: str) -> str:
    result = await trio.run_process(["curl", "-sS", "--max-time", "20", *args], capture_stdout=True)
    return result.stdout.decode("latin-1")


def head_of(out: str) -> tuple[int, dict[str, str]]:
    """Status and headers of the last response in curl -D - output."""
    block = [b for b in out.replace("\r\n", "\n").split("\n\n") if b.startswith("HTTP/")][-1]
    status_line, *lines = block.split("\n")
    return int(status_line.split()[1]), {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def site(tmp_path: Path, file_size: int = 3 * 1024 * 1024) -> tuple[Path, Path, bytes]:
    root = tmp_path / "www"
    (root / "errors").mkdir(parents=True)
    (root / "wp-json").mkdir()
    (root / "download.php").write_text(DOWNLOAD)
    (root / "wp-404.php").write_text(WP_404)
    (root / "hello.php").write_text(HELLO)
    (root / "wp-json" / "index.php").write_text(HELLO)
    (root / "errors" / "404.html").write_text("<h1>our own 404 page</h1>\n")
    (root / "errors" / "error.php").write_text(ERROR_PHP)
    (root / "style.css").write_text("body{}")
    files = tmp_path / "private-files"
    files.mkdir()
    data = os.urandom(file_size)
    (files / "album.zip").write_bytes(data)
    return root, files, data


async def start(start_gateway, tmp_path, *, file_size=3 * 1024 * 1024, site_extra=None, backend=None):
    root, files, data = site(tmp_path, file_size)
    s = {"aliases": {"/protected/": {"path": str(files), "internal": True}},
         "params": {"FILES_DIR": str(files)}, **(site_extra or {})}
    gw = await start_gateway(root, site=s, backend=backend)
    return gw, f"http://127.0.0.1:{gw.port}", data


async def test_protected_download_byte_exact_with_ranges_and_head(start_gateway, tmp_path):
    gw, base, data = await start(start_gateway, tmp_path)
    got = tmp_path / "got.zip"
    out = await run("-D", "-", "-o", str(got), f"{base}/download.php?key=k3y")
    status, headers = head_of(out)
    assert status == 200 and got.read_bytes() == data
    assert headers["content-type"] == "application/zip"
    assert headers["content-disposition"] == 'attachment; filename="album.zip"'
    assert headers["content-length"] == str(len(data)) and "x-powered-by" not in headers
    assert not [h for h in headers if h.startswith("x-accel") or h == "x-sendfile"]
    # ranges (curl -r), the way a download manager resumes
    part = tmp_path / "part"
    out = await run("-D", "-", "-r", "1000000-1999999", "-o", str(part), f"{base}/download.php?key=k3y")
    status, headers = head_of(out)
    assert status == 206 and part.read_bytes() == data[1000000:2000000]
    assert headers["content-range"] == f"bytes 1000000-1999999/{len(data)}"
    tail = await run("-r", "-100", "-o", "-", f"{base}/download.php?key=k3y")
    assert tail.encode("latin-1") == data[-100:]
    # HEAD: the file's length, no body
    out = await run("-I", f"{base}/download.php?key=k3y")
    status, headers = head_of(out)
    assert status == 200 and headers["content-length"] == str(len(data))
    assert headers["content-disposition"] == 'attachment; filename="album.zip"'
    # the protected prefix is not there for clients; PHP's check still applies
    for target in ("/protected/album.zip", "/protected/", "/%70rotected/album.zip", "/x/../protected/album.zip"):
        assert await run("-o", "/dev/null", "-w", "%{http_code}", f"{base}{target}") == "404", target
    assert await run("-o", "/dev/null", "-w", "%{http_code}", f"{base}/download.php?key=no") == "403"
    # a file PHP names that is not there
    assert await run("-o", "/dev/null", "-w", "%{http_code}", f"{base}/download.php?key=k3y&f=gone.zip") == "404"
    # X-Sendfile: the absolute path of a file inside the internal alias
    got.unlink()
    out = await run("-D", "-", "-o", str(got), f"{base}/download.php?key=k3y&sendfile=1")
    status, headers = head_of(out)
    assert status == 200 and got.read_bytes() == data and "x-sendfile" not in headers


async def wait_until(predicate) -> None:
    with trio.fail_after(20):
        while not predicate():  # noqa: ASYNC110 - the gateway exposes counters, not events; poll, bounded
            await trio.sleep(0.01)


async def test_the_php_worker_is_free_while_a_slow_client_reads_the_file(start_gateway, tmp_path):
    gw, base, data = await start(start_gateway, tmp_path, file_size=32 * 1024 * 1024, backend={"pool_size": 1})
    # a client that reads nothing until told: 32 MiB is far more than the socket buffers hold
    slow = await gw.client()
    await slow.stream.send_all(b"GET /download.php?key=k3y HTTP/1.1\r\nHost: x\r\n\r\n")
    slow.request_sent_by_hand()
    # the gateway is writing the file and blocked on the client; PHP is done with it
    await wait_until(lambda: gw.running.listener_state.stats.states["writing"] == 1 and gw.pool.busy == 0
                     and gw.pool.instruments.responses == 1)
    # the one PHP worker answers another request meanwhile
    with trio.fail_after(10):
        assert await run(f"{base}/hello.php") == "hello GET"
    assert gw.running.listener_state.stats.states["writing"] == 1  # still sending the file
    r = await slow.read_response()
    assert r.status == 200 and hashlib.sha256(r.body).digest() == hashlib.sha256(data).digest()
    await slow.aclose()


async def test_error_pages_static_and_php_and_phps_own_errors(start_gateway, tmp_path):
    gw, base, _ = await start(start_gateway, tmp_path, site_extra={
        "error_pages": {"404": "/errors/404.html", "403": "/errors/error.php"}, "deny": ["/secret"]})
    # the gateway's own 404 (a missing script) and 403 (deny) get the site's pages, status kept
    out = await run("-D", "-", f"{base}/missing.php")
    status, headers = head_of(out)
    assert status == 404 and out.endswith("<h1>our own 404 page</h1>\n") and "etag" not in headers
    out = await run("-D", "-", f"{base}/secret/x?y=1")
    status, headers = head_of(out)
    assert status == 403 and out.endswith("error page: status 403 uri /secret/x?y=1 method GET")
    out = await run("-I", f"{base}/missing.php")  # HEAD: no body, the page's length
    assert head_of(out)[0] == 404 and head_of(out)[1]["content-length"] == "26"
    # PHP's own 404 stays PHP's without intercept_errors
    assert await run(f"{base}/wp-404.php") == "php's own not-found page"


async def test_intercept_errors_replaces_phps_404_and_frees_the_worker(start_gateway, tmp_path):
    gw, base, _ = await start(start_gateway, tmp_path, backend={"pool_size": 1}, site_extra={
        "error_pages": {"404": "/errors/error.php"}, "intercept_errors": True})
    out = await run("-D", "-", "--data", "a=1", f"{base}/wp-404.php?p=2")
    status, headers = head_of(out)
    assert status == 404 and out.endswith("error page: status 404 uri /wp-404.php?p=2 method GET")
    assert headers["content-type"].startswith("text/plain")
    assert gw.pool.busy == 0
    assert await run(f"{base}/hello.php") == "hello GET"


async def test_header_rules_and_a_cors_preflight(start_gateway, tmp_path):
    rules = [{"add": {"X-Frame-Options": "SAMEORIGIN", "X-Content-Type-Options": "nosniff"},
              "remove": ["X-Powered-By"]},
             {"paths": ["/wp-json/"], "always": True, "preflight": True,
              "set": {"Access-Control-Allow-Origin": "https://app.example.com",
                      "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                      "Access-Control-Allow-Headers": "Authorization, Content-Type",
                      "Access-Control-Max-Age": "86400"}}]
    gw, base, _ = await start(start_gateway, tmp_path, site_extra={"headers": rules})
    for target in ("/hello.php", "/style.css"):
        status, headers = head_of(await run("-D", "-", "-o", "/dev/null", f"{base}{target}"))
        assert status == 200 and headers["x-frame-options"] == "SAMEORIGIN", target
        assert "x-powered-by" not in headers and "access-control-allow-origin" not in headers, target
    status, headers = head_of(await run("-D", "-", "-o", "/dev/null", f"{base}/missing.php"))
    assert status == 404 and "x-frame-options" not in headers  # no "always" on the "/" rule
    status, headers = head_of(await run("-D", "-", "-o", "/dev/null", f"{base}/wp-json/"))
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example.com"
    assert headers["x-frame-options"] == "SAMEORIGIN"  # the "/" rule applies as well
    ran = gw.pool.instruments.responses
    out = await run("-D", "-", "-X", "OPTIONS", "-H", "Origin: https://app.example.com",
                    "-H", "Access-Control-Request-Method: POST", f"{base}/wp-json/wp/v2/posts")
    status, headers = head_of(out)
    assert status == 204 and headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert headers["access-control-max-age"] == "86400"
    assert gw.pool.instruments.responses == ran  # answered without PHP


def test_gateway_check_names_file_key_and_line_of_each_malformed_rule(tmp_path):
    f = tmp_path / "00.toml"
    f.write_text('[sites.a]\nroot = "/srv"\n[[sites.a.headers]]\npaths = ["/x/"]\nadd = { "X A" = "1" }\n'
                 '[sites.a.error_pages]\n404 = "e.html"\n[sites.a.aliases."/p/"]\ninternal = true\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(tmp_path)], capture_output=True,
                         text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert sorted(out.stderr.splitlines()) == sorted([
        f"{f}: sites.a.headers.0.add: 'X A' is not a valid HTTP header name (line 3)",
        f"{f}: sites.a.error_pages: 'e.html' (for 404) is not a URI of the site like \"/errors/404.html\" (line 6)",
        f"{f}: sites.a.aliases./p/.path: is required: set it (line 8)",
    ])
