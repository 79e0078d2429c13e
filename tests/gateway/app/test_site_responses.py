"""X-Accel-Redirect / X-Sendfile, error pages and header rules through the
whole request path in memory (h11 client -> HttpConnection -> App -> an
in-memory php-fpm or HTTP backend). What a client checks: status, bytes,
headers; and what PHP was asked (REDIRECT_STATUS, REQUEST_URI)."""

from __future__ import annotations

import gzip

import trio
import trio.testing

from gateway.app.site import App
from gateway.config import validate
from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.serve.process import pool_from_config
from tests.helpers import FakeFpm, FakeHttp, HttpClient, http_response, php_output

FILE = bytes(range(256)) * 40  # 10240 bytes


def make_app(tmp_path, nursery, script, site=None, pool_size=2, proxy=None):
    root = tmp_path / "root"
    (root / "errors").mkdir(parents=True, exist_ok=True)
    (root / "index.php").write_text("front controller")
    (root / "download.php").write_text("<?php")
    (root / "error.php").write_text("<?php")
    (root / "style.css").write_text("body{}")
    (root / "errors" / "404.html").write_bytes(b"<h1>custom 404</h1>")
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    (files / "f.zip").write_bytes(FILE)
    (files / "run.php").write_text("<?php")
    fpm = FakeFpm(script)
    backends = {"php": {"pool_size": pool_size}}
    if proxy is not None:
        backends["app"] = {"type": "http", "addresses": ["10.0.0.5:3000"], "pool_size": 1}
    site = {"aliases": {"/protected/": {"path": str(files), "internal": True}}, **(site or {})}
    cfg = validate({"backends": backends,
                    "sites": {"s": {"root": str(root), "php": "php", "server_names": ["example.com"], **site}}})
    pools = {"php": pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)}
    if proxy is not None:
        pools["app"] = pool_from_config("app", proxy.connector(nursery), cfg.backends["app"], cfg.limits)
    return App(cfg, pools), fpm, files


async def client_for(app, nursery) -> HttpClient:
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, app.handle, ConnectionSettings.from_config(), client=("192.0.2.7", 40000),
                          server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    return HttpClient(client)


async def get(c, target, *headers, method="GET"):
    return await c.request(method, target, [*headers], host="example.com")


def accel_script(value=b"/protected/f.zip", header=b"X-Accel-Redirect"):
    async def script(req):
        return [b"Status: 200\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=f.zip\r\n"
                b"X-Powered-By: PHP/8.2\r\nETag: \"php\"\r\n" + header + b": " + value + b"\r\n\r\nignored body"]

    return script


# -- X-Accel-Redirect / X-Sendfile ----------------------------------------------------------


async def test_x_accel_redirect_serves_the_file_with_phps_download_headers(tmp_path, nursery, autojump_clock):
    app, fpm, _ = make_app(tmp_path, nursery, accel_script())
    c = await client_for(app, nursery)
    r = await get(c, "/download.php?id=7")
    assert (r.status, r.body) == (200, FILE)
    assert r.header("content-type") == "application/zip"
    assert r.header("content-disposition") == "attachment; filename=f.zip"
    assert r.header("content-length") == str(len(FILE)) and r.header("accept-ranges") == "bytes"
    assert r.header("etag") != '"php"' and r.header("x-powered-by") is None
    assert not [n for n, _ in r.header_list if n.startswith(b"x-accel")]
    ranged = await get(c, "/download.php?id=7", ("Range", "bytes=100-199"))
    assert (ranged.status, ranged.body, ranged.header("content-range")) == (206, FILE[100:200],
                                                                             f"bytes 100-199/{len(FILE)}")
    head = await get(c, "/download.php?id=7", method="HEAD")
    assert (head.status, head.body, head.header("content-length")) == (200, b"", str(len(FILE)))
    assert fpm.requests_seen[-1].params[b"REQUEST_METHOD"] == b"HEAD"  # PHP decides on HEAD too
    nm = await get(c, "/download.php?id=7", ("If-None-Match", r.header("etag")))
    assert (nm.status, nm.body) == (304, b"")


async def test_the_internal_alias_is_404_to_clients(tmp_path, nursery, autojump_clock):
    app, _, _ = make_app(tmp_path, nursery, accel_script())
    c = await client_for(app, nursery)
    for target in ("/protected/f.zip", "/protected/", "/protected/run.php", "/x/../protected/f.zip",
                   "/%70rotected/f.zip"):
        assert (await get(c, target)).status == 404, target


async def test_x_accel_redirect_failures(tmp_path, nursery, autojump_clock):
    cases = [(b"/protected/missing.zip", 404), (b"/uploads/missing.zip", 404), (b"/protected/run.php", 502),
             (b"/download.php", 502), (b"/errors", 502), (b"protected/f.zip", 502),
             (b"/protected/../../etc/passwd", 502), (b"/style.css", 200)]
    for value, status in cases:
        app, _, _ = make_app(tmp_path, nursery, accel_script(value))
        r = await get(await client_for(app, nursery), "/download.php")
        assert r.status == status, value
        assert r.header("x-accel-redirect") is None


async def test_x_sendfile_only_inside_an_internal_alias(tmp_path, nursery, autojump_clock):
    files = tmp_path / "files"
    app, _, _ = make_app(tmp_path, nursery, accel_script(str(files / "f.zip").encode(), b"X-Sendfile"))
    r = await get(await client_for(app, nursery), "/download.php")
    assert (r.status, r.body, r.header("x-sendfile")) == (200, FILE, None)
    for outside in (b"/etc/passwd", str(tmp_path / "root" / "index.php").encode(),
                    str(files / ".." / "root" / "index.php").encode()):
        app, _, _ = make_app(tmp_path, nursery, accel_script(outside, b"X-Sendfile"))
        r = await get(await client_for(app, nursery), "/download.php")
        assert (r.status, r.header("x-sendfile")) == (502, None), outside


async def test_x_accel_redirect_from_a_proxied_backend(tmp_path, nursery, autojump_clock):
    async def backend(req):
        return [http_response(b"ignored", headers=[(b"Content-Type", b"application/zip"),
                                                   (b"X-Accel-Redirect", b"/protected/f.zip")])]

    app, _, _ = make_app(tmp_path, nursery, accel_script(), site={"routes": {"/api/": "app"}},
                         proxy=FakeHttp(backend))
    r = await get(await client_for(app, nursery), "/api/file")
    assert (r.status, r.body, r.header("content-type"), r.header("x-accel-redirect")) == (
        200, FILE, "application/zip", None)


# -- error pages ---------------------------------------------------------------------------------


def php_404():
    async def script(req):
        if req.params[b"SCRIPT_NAME"] == b"/error.php":
            return [php_output(b"page for " + req.params[b"REDIRECT_STATUS"] + b" at " + req.params[b"REQUEST_URI"]
                               + b" " + req.params[b"REQUEST_METHOD"])]
        return [php_output(b"php's own 404", status=b"404 Not Found")]

    return script


async def test_a_static_page_for_the_gateways_own_404_keeps_the_status(tmp_path, nursery, autojump_clock):
    app, _, _ = make_app(tmp_path, nursery, php_404(), site={"error_pages": {"404": "/errors/404.html"}})
    c = await client_for(app, nursery)
    for target in ("/nope.php", "/protected/f.zip"):
        r = await get(c, target)
        assert (r.status, r.body, r.header("content-type")) == (404, b"<h1>custom 404</h1>", "text/html"), target
        assert r.header("etag") is None and r.header("last-modified") is None
    head = await get(c, "/nope.php", method="HEAD")
    assert (head.status, head.body, head.header("content-length")) == (404, b"", "19")
    # PHP's own 404 is PHP's, without intercept_errors
    r = await get(c, "/index.php")
    assert (r.status, r.body) == (404, b"php's own 404")


async def test_intercept_errors_gives_phps_404_the_php_page(tmp_path, nursery, autojump_clock):
    app, fpm, _ = make_app(tmp_path, nursery, php_404(),
                           site={"error_pages": {"404": "/error.php?from=gw"}, "intercept_errors": True})
    c = await client_for(app, nursery)
    r = await c.request("POST", "/index.php?a=1", body=b"x=1", host="example.com")
    assert (r.status, r.body) == (404, b"page for 404 at /index.php?a=1 GET")
    page_req = fpm.requests_seen[-1]
    assert page_req.params[b"QUERY_STRING"] == b"from=gw" and page_req.stdin == b""
    assert page_req.params[b"CONTENT_LENGTH"] == b""
    head = await get(c, "/index.php", method="HEAD")
    assert (head.status, head.body) == (404, b"")
    # the page is compressed as any PHP response; PHP's own 404 body was not (it was discarded)
    gz = await get(c, "/index.php?" + "x" * 2000, ("Accept-Encoding", "gzip"))
    assert gz.status == 404 and gz.header("content-encoding") == "gzip"
    assert gzip.decompress(gz.body) == b"page for 404 at /index.php?" + b"x" * 2000 + b" GET"


async def test_a_failing_page_falls_back_to_the_builtin_one(tmp_path, nursery, autojump_clock):
    async def script(req):
        return [php_output(b"fatal", status=b"500 Internal Server Error")]

    for page in ("/errors/missing.html", "/error.php", "/errors/"):
        app, _, _ = make_app(tmp_path, nursery, script, site={"error_pages": {"404": page, "500": page}})
        c = await client_for(app, nursery)
        r = await get(c, "/nope.php")
        assert r.status == 404 and b"<h1>404 Not Found</h1>" in r.body, page


async def test_a_gateway_504_gets_its_php_page_on_the_freed_slot(tmp_path, nursery, autojump_clock):
    release = trio.Event()

    async def script(req):
        if req.params[b"SCRIPT_NAME"] == b"/index.php":
            await release.wait()
        return [php_output(b"sorry, " + req.params[b"REDIRECT_STATUS"])]

    app, _, _ = make_app(tmp_path, nursery, script, pool_size=1, site={"error_pages": {"504": "/error.php"}})
    c = await client_for(app, nursery)
    r = await get(c, "/")  # PHP never answers: 504 after the read timeout; its page needs the one slot
    assert (r.status, r.body) == (504, b"sorry, 504")


async def test_header_rules_on_pages_and_php_and_files(tmp_path, nursery, autojump_clock):
    async def script(req):
        return [php_output(b"hi", headers=(b"X-Powered-By: PHP/8.2",))]

    rules = [{"add": {"X-Frame-Options": "SAMEORIGIN"}, "remove": ["X-Powered-By"]},
             {"paths": ["/wp-json/"], "set": {"Access-Control-Allow-Origin": "https://app.example",
                                              "Access-Control-Allow-Methods": "GET, POST",
                                              "Access-Control-Max-Age": "600"},
              "always": True, "preflight": True}]
    app, fpm, _ = make_app(tmp_path, nursery, script,
                           site={"headers": rules, "error_pages": {"404": "/errors/404.html"}})
    c = await client_for(app, nursery)
    r = await get(c, "/")
    assert (r.header("x-frame-options"), r.header("x-powered-by"), r.header("access-control-allow-origin")) == (
        "SAMEORIGIN", None, None)
    assert (await get(c, "/style.css")).header("x-frame-options") == "SAMEORIGIN"
    missing = await get(c, "/nope.php")  # an error without always: not the "/" rule
    assert missing.status == 404 and missing.header("x-frame-options") is None
    api = await get(c, "/wp-json/missing.php")  # "always" reaches the 404 page
    assert api.status == 404 and api.header("access-control-allow-origin") == "https://app.example"
    seen = len(fpm.requests_seen)
    pre = await get(c, "/wp-json/wp/v2/posts", ("Origin", "https://app.example"),
                    ("Access-Control-Request-Method", "POST"), method="OPTIONS")
    assert (pre.status, pre.body, pre.header("access-control-allow-methods"), pre.header("access-control-max-age"),
            pre.header("x-frame-options")) == (204, b"", "GET, POST", "600", "SAMEORIGIN")
    assert len(fpm.requests_seen) == seen  # PHP never saw the preflight
    plain = await get(c, "/wp-json/wp/v2/posts", method="OPTIONS")  # not a preflight: the app's
    assert plain.status == 200 and len(fpm.requests_seen) == seen + 1


async def test_an_intercepted_streamed_error_frees_the_only_slot_for_its_page(tmp_path, nursery, autojump_clock):
    async def script(req):
        if req.params[b"SCRIPT_NAME"] == b"/error.php":
            return [php_output(b"page for " + req.params[b"REDIRECT_STATUS"])]
        # a streamed 404 (X-Accel-Buffering: no) holds the one PHP slot until it is closed
        return [b"Status: 404\r\nX-Accel-Buffering: no\r\nContent-Type: text/html\r\n\r\nfirst", trio.sleep_forever]

    app, fpm, _ = make_app(tmp_path, nursery, script, pool_size=1,
                           site={"error_pages": {"404": "/error.php"}, "intercept_errors": True})
    c = await client_for(app, nursery)
    with trio.fail_after(5):  # well under the queue timeout: the slot came back at once
        r = await get(c, "/index.php")
    assert (r.status, r.body) == (404, b"page for 404")


async def test_a_proxied_backends_error_is_intercepted_too(tmp_path, nursery, autojump_clock):
    async def backend(req):
        return [http_response(b"backend's own 500", status=500, headers=[(b"Retry-After", b"30")])]

    app, _, _ = make_app(tmp_path, nursery, accel_script(), proxy=FakeHttp(backend),
                         site={"routes": {"/api/": "app"}, "error_pages": {"500": "/errors/404.html"},
                               "intercept_errors": True})
    r = await get(await client_for(app, nursery), "/api/x")
    assert (r.status, r.body, r.header("retry-after")) == (500, b"<h1>custom 404</h1>", "30")


async def test_x_sendfile_through_a_symlink_to_the_internal_directory(tmp_path, nursery, autojump_clock):
    (tmp_path / "link").symlink_to(tmp_path / "files")
    for alias_path, sent in ((tmp_path / "files", tmp_path / "link" / "f.zip"),
                             (tmp_path / "link", tmp_path / "files" / "f.zip"),
                             (tmp_path / "link", tmp_path / "link" / "f.zip")):
        app, _, _ = make_app(tmp_path, nursery, accel_script(str(sent).encode(), b"X-Sendfile"),
                             site={"aliases": {"/protected/": {"path": str(alias_path), "internal": True}}})
        r = await get(await client_for(app, nursery), "/download.php")
        assert (r.status, r.body) == (200, FILE), (alias_path, sent)


async def test_the_readme_preflight_recipe_with_a_return_rule(tmp_path, nursery, autojump_clock):
    async def script(req):
        return [php_output(b"api")]

    site = {"return": [{"paths": ["/wp-json/"], "methods": ["OPTIONS"], "code": 204}],
            "headers": [{"paths": ["/wp-json/"], "always": True,
                         "set": {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST"}}]}
    app, fpm, _ = make_app(tmp_path, nursery, script, site=site)
    c = await client_for(app, nursery)
    r = await get(c, "/wp-json/x", ("Origin", "https://a.example"), method="OPTIONS")
    assert (r.status, r.header("access-control-allow-methods"), r.header("access-control-allow-origin")) == (
        204, "GET, POST", "*")
    assert fpm.requests_seen == []
    r = await get(c, "/wp-json/x")
    assert (r.status, r.body, r.header("access-control-allow-origin")) == (200, b"api", "*")


async def test_an_x_accel_target_under_an_access_rule_or_basic_auth_is_checked_too(tmp_path, nursery, autojump_clock):
    """nginx runs the access phase again for X-Accel-Redirect's internal redirect: a rule on the
    target's prefix applies, whatever PHP said (the client here is 192.0.2.7)."""
    users = tmp_path / "users"
    users.write_text("bea:{PLAIN}pw\n")
    site = {"access": [{"paths": ["/protected/office/"], "allow": ["198.51.100.0/24"], "deny": ["all"]}],
            "basic_auth": [{"paths": ["/protected/staff/"], "realm": "Staff", "user_file": str(users)}],
            "rate_limit": [{"paths": ["/"], "rate": "1r/m", "burst": 1, "nodelay": True}]}
    for sub in ("office", "staff"):
        (tmp_path / "files" / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / "files" / sub / "f.zip").write_bytes(FILE)
    app, _, _ = make_app(tmp_path, nursery, accel_script(b"/protected/office/f.zip"), site=site)
    r = await get(await client_for(app, nursery), "/download.php")
    assert (r.status, r.header("x-accel-redirect")) == (403, None)
    app, _, _ = make_app(tmp_path, nursery, accel_script(b"/protected/staff/f.zip"), site=site)
    c = await client_for(app, nursery)
    r = await get(c, "/download.php")
    assert (r.status, r.header("www-authenticate")) == (401, 'Basic realm="Staff"')
    # with the credentials the file comes; the internal redirect did not count against the rate limit again
    # (burst 1: the two requests above and below are all this client may make at once)
    r = await get(c, "/download.php", ("Authorization", "Basic YmVhOnB3"))
    assert (r.status, r.body) == (200, FILE)


async def test_a_rewrite_into_an_internal_alias_stays_404(tmp_path, nursery, autojump_clock):
    """A rewrite is the client's request under a new URI: an internal alias stays out of reach,
    by prefix or regex rule (unlike nginx, whose "internal" admits rewritten requests: a
    catch-all rewrite must not expose the protected downloads; an alias meant for rewrites
    is simply not internal)."""
    site = {"rewrite": [{"paths": ["/dl/"], "to": "/protected/"}, {"regex": "^/get/(.+)$", "to": "/protected/$1"}]}
    app, _, _ = make_app(tmp_path, nursery, accel_script(), site=site)
    c = await client_for(app, nursery)
    for target in ("/dl/f.zip", "/get/f.zip", "/dl/run.php"):
        assert (await get(c, target)).status == 404, target
