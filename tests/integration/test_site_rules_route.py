"""try_files, return and rewrite rules (issue 16 items 1 and 4) with the real
gateway, a real php-fpm and curl, as an operator moving from nginx checks them."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.config import validate
from gateway.serve.process import Running, serve
from tests.integration.conftest import gateway_config

SUPERCACHE = ["/wp-content/cache/supercache/$host$uri/index.html", "$uri", "$uri/", "/index.php?$args"]
ISSUE_RULE = ["/cache$uri/index.html", "$uri", "$uri/", "/index.php?$args"]
PHP = (b"<?php header('Content-Type: application/json'); echo json_encode(['script' => $_SERVER['SCRIPT_NAME'], "
       b"'request_uri' => $_SERVER['REQUEST_URI'], 'query' => $_SERVER['QUERY_STRING'], 'get' => $_GET]);")


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.php").write_bytes(PHP)
    (root / "style.css").write_text("body{color:red}")
    (root / "wp-content" / "uploads").mkdir(parents=True)
    (root / "wp-content" / "uploads" / "a.txt").write_text("upload")
    for prefix in ("wp-content/cache/supercache/localhost", "cache"):
        page = root / prefix / "2024" / "post" / "index.html"
        page.parent.mkdir(parents=True)
        page.write_text(f"<html>cached by {prefix}</html>")
    return root


@pytest.fixture
async def start(nursery: trio.Nursery, tmp_path: Path):
    started: list[Running] = []

    async def run(root: Path, site: dict[str, Any], more_sites: dict[str, Any] | None = None) -> int:
        data = gateway_config(root, site=site, runtime_dir=str(tmp_path / f"run{len(started)}"))
        data["sites"].update(more_sites or {})
        running: Running = await nursery.start(partial(serve, validate(data), handle_signals=False))
        started.append(running)
        return next(ls.socket.getsockname()[1] for ls in running.listeners
                    if ls.socket.family.name == "AF_INET")

    yield run
    for running in started:
        running.shutdown.set()


async def curl(port: int, target: str, *args: str, host: str = "localhost") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) as curl gets them."""
    out = await trio.run_process(["curl", "-s", "-D", "-", "-H", f"Host: {host}", *args,
                                  f"http://127.0.0.1:{port}{target}"], capture_stdout=True)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(("rule", "prefix"), [(SUPERCACHE, "wp-content/cache/supercache/localhost"),
                                              (ISSUE_RULE, "cache")])
async def test_disk_cache_rule_serves_the_cached_page_else_php(start, docroot, rule, prefix):
    port = await start(docroot, {"try_files": rule})
    # present: the cached file, PHP not involved
    status, headers, body = await curl(port, "/2024/post/")
    assert (status, body) == (200, f"<html>cached by {prefix}</html>".encode())
    assert headers["content-type"].startswith("text/html")
    # absent: falls through to PHP, with the query
    status, headers, body = await curl(port, "/2024/other/?p=7")
    assert status == 200 and json.loads(body) == {"script": "/index.php", "request_uri": "/2024/other/?p=7",
                                                  "query": "p=7", "get": {"p": "7"}}
    # static files unaffected (the issue: every URL was a 404)
    assert (await curl(port, "/style.css"))[::2] == (200, b"body{color:red}")
    assert (await curl(port, "/wp-content/uploads/a.txt"))[::2] == (200, b"upload")
    # a page cached while serving is picked up at once
    (docroot / prefix / "2024" / "other").mkdir()
    (docroot / prefix / "2024" / "other" / "index.html").write_text("now cached")
    assert (await curl(port, "/2024/other/"))[::2] == (200, b"now cached")


async def test_supercache_is_per_host_and_host_cannot_climb(start, docroot, tmp_path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "index.html").write_text("secret")
    port = await start(docroot, {"try_files": SUPERCACHE})
    status, _, body = await curl(port, "/2024/post/", host="other.example")
    assert status == 200 and json.loads(body)["script"] == "/index.php"
    # a Host with "/" or ".." is refused before routing; curl sends it as given
    for host in ("..", "../../../secret", "a/../../x"):
        status, _, body = await curl(port, "/", host=host)
        assert status == 400 and b"secret" not in body, host


async def test_www_to_apex_with_curl(start, docroot):
    port = await start(docroot, {"server_names": ["example.com"]}, {"www": {
        "server_names": ["www.example.com"],
        "return": [{"paths": ["/"], "code": 301, "to": "$scheme://example.com$request_uri"}]}})
    status, headers, _ = await curl(port, "/2024/post/?a=1&b=%20", host="www.example.com")
    assert (status, headers["location"]) == (301, "http://example.com/2024/post/?a=1&b=%20")
    status, headers, _ = await curl(port, "/x", "-X", "POST", "-d", "a=1", host="www.example.com")
    assert (status, headers["location"]) == (301, "http://example.com/x")
    # where it leads is the apex site, served by PHP
    status, _, body = await curl(port, "/hello?x=1", host="example.com")
    assert status == 200 and json.loads(body)["request_uri"] == "/hello?x=1"


async def test_return_and_rewrite_rules_with_php(start, docroot):
    port = await start(docroot, {
        "return": [{"paths": ["/xmlrpc.php"], "code": 403, "to": "xmlrpc is off"},
                   {"regex": r"^/go/(\d+)$", "code": 302, "to": "/?p=$1"}],
        "rewrite": [{"regex": r"^/product/([a-z-]+)/?$", "to": "/index.php?product=$1&$args"},
                    {"paths": ["/assets/"], "to": "/"},
                    {"paths": ["/loop-a/"], "to": "/loop-b/"}, {"paths": ["/loop-b/"], "to": "/loop-a/"}],
    })
    assert (await curl(port, "/xmlrpc.php", "-d", "<x/>"))[::2] == (403, b"xmlrpc is off")
    status, headers, _ = await curl(port, "/go/12")
    assert (status, headers["location"]) == (302, "http://localhost/?p=12")
    status, _, body = await curl(port, "/product/red-hat/?ref=mail")
    assert status == 200 and json.loads(body) == {
        "script": "/index.php", "request_uri": "/product/red-hat/?ref=mail", "query": "product=red-hat&ref=mail",
        "get": {"product": "red-hat", "ref": "mail"}}
    assert (await curl(port, "/assets/style.css"))[::2] == (200, b"body{color:red}")
    status, _, _ = await curl(port, "/loop-a/x")
    assert status == 500
    # the gateway goes on serving
    assert (await curl(port, "/style.css"))[0] == 200
