"""Compression, precompressed files, site headers and redirect_to_https, through
the whole request path in memory (h11 client -> HttpConnection -> App -> an
in-memory php-fpm stand-in). What a client checks: the coding it got, the
bytes after decoding, Content-Length, Vary, ETag.

Tests whose bodies go to a compression thread run on the real clock (the
autojump clock would jump timeouts while a thread works); they wait on
events, never on sleeps."""

from __future__ import annotations

import gzip
import os
import threading
import zlib

import brotli
import pytest
import trio
import trio.testing

from gateway.app import compress
from gateway.app.site import App
from gateway.config import ConfigError, validate
from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.http.request import Request
from gateway.metrics import CompressionStats
from gateway.serve.process import pool_from_config
from tests.helpers import FakeFpm, HttpClient, php_output

CSS = b"".join(b".c%d { color: #%06x; margin: %dpx }\n" % (i, i * 7919 % 0xFFFFFF, i % 40) for i in range(3000))
PAGE = b"<!doctype html><title>t</title>" + b"".join(b"<p class=x%d>paragraph %d of the page</p>\n" % (i % 9, i)
                                                    for i in range(2000))


def answer(*out):
    async def script(req):
        return list(out)

    return script


def decode(r) -> bytes:
    coding = r.header("content-encoding")
    if coding == "br":
        return brotli.decompress(r.body)
    if coding == "gzip":
        return gzip.decompress(r.body)
    assert coding is None
    return r.body


def make_app(tmp_path, nursery, script=None, site=None, server=None, stats=None):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "index.php").write_text("front controller")
    (root / "style.css").write_bytes(CSS)
    (root / "small.css").write_bytes(b"body{}")
    (root / "logo.png").write_bytes(b"\x89PNG" + bytes(4000))
    fpm = FakeFpm(script or (lambda req: None))
    cfg = validate({"server": server or {}, "backends": {"php": {"pool_size": 2}},
                    "sites": {"s": {"root": str(root), "php": "php", "server_names": ["example.com"],
                                    **(site or {})}}})
    pool = pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)
    return App(cfg, {"php": pool}, stats), root


async def client_for(app, nursery) -> HttpClient:
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, app.handle, ConnectionSettings.from_config(), client=("192.0.2.7", 40000),
                          server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    return HttpClient(client)


async def get(c, target, *headers, method="GET"):
    return await c.request(method, target, [*headers], host="example.com")


# -- static files ---------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "coding"), [("br, gzip", "br"), ("gzip", "gzip"), ("gzip, br;q=0.5", "gzip")])
async def test_static_text_file_is_compressed_and_byte_exact(tmp_path, nursery, accept, coding):
    stats = CompressionStats()
    app, _ = make_app(tmp_path, nursery, stats=stats)
    c = await client_for(app, nursery)
    plain = await get(c, "/style.css")
    r = await get(c, "/style.css", ("Accept-Encoding", accept))
    assert r.status == 200 and r.header("content-encoding") == coding
    assert decode(r) == CSS and len(r.body) < len(CSS) / 4
    assert r.header("content-length") == str(len(r.body))
    assert r.header("content-type") == "text/css" and r.header("vary") == "Accept-Encoding"
    assert r.header("etag") == "W/" + plain.header("etag") and r.header("accept-ranges") is None
    assert plain.header("content-encoding") is None and plain.body == CSS and plain.header("vary") == "Accept-Encoding"
    assert stats.responses[coding] == 1 and stats.bytes_in == len(CSS) and stats.bytes_out == len(r.body)
    assert stats.cpu_seconds > 0


async def test_untouched_static_cases(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, nursery)
    c = await client_for(app, nursery)
    br = ("Accept-Encoding", "br, gzip")
    small = await get(c, "/small.css", br)
    assert (small.body, small.header("content-encoding"), small.header("vary")) == (b"body{}", None, "Accept-Encoding")
    png = await get(c, "/logo.png", br)
    assert png.header("content-encoding") is None and png.header("vary") is None and len(png.body) == 4004
    ranged = await get(c, "/style.css", br, ("Range", "bytes=10-19"))
    assert (ranged.status, ranged.body, ranged.header("content-encoding")) == (206, CSS[10:20], None)
    etag = (await get(c, "/style.css")).header("etag")
    for tag in (etag, "W/" + etag):  # the compressed variant's weak ETag revalidates too
        nm = await get(c, "/style.css", br, ("If-None-Match", tag))
        assert (nm.status, nm.body, nm.header("content-encoding"), nm.header("vary")) == (
            304, b"", None, "Accept-Encoding")


async def test_head_gets_the_headers_of_get_without_a_body(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, nursery)
    c = await client_for(app, nursery)
    br = ("Accept-Encoding", "br")
    head = await get(c, "/style.css", br, method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("content-encoding") == "br" and head.header("vary") == "Accept-Encoding"
    assert head.header("content-length") is None and head.header("etag").startswith('W/"')
    # the connection is still in step: the next answer is whole
    r = await get(c, "/style.css", br)
    assert decode(r) == CSS


async def test_big_static_file_is_compressed_as_a_stream(tmp_path, nursery):
    app, root = make_app(tmp_path, nursery)
    big = CSS * 40  # ~1.6 MB: above the whole-read size, streamed in chunks
    (root / "big.css").write_bytes(big)
    c = await client_for(app, nursery)
    for coding in ("br", "gzip"):
        r = await get(c, "/big.css", ("Accept-Encoding", coding))
        assert r.header("content-encoding") == coding and r.header("transfer-encoding") == "chunked"
        assert r.header("content-length") is None and decode(r) == big


# -- PHP -------------------------------------------------------------------------------


async def test_php_responses(tmp_path, nursery):
    async def script(req):
        uri = req.params[b"REQUEST_URI"]
        if uri == b"/coded":
            return [php_output(gzip.compress(PAGE), headers=(b"Content-Encoding: gzip",))]
        if uri == b"/no-transform":
            return [php_output(PAGE, headers=(b"Cache-Control: no-transform",))]
        if uri == b"/json":
            return [b"Content-Type: application/json\r\nVary: Cookie\r\nETag: \"v1\"\r\n\r\n" + b"[" + b"1," * 900
                    + b"1]"]
        if uri == b"/stream":
            return [php_output(PAGE[:30000], headers=(b"X-Accel-Buffering: no",)), PAGE[30000:]]
        if uri == b"/small":
            return [php_output(b"<p>hi</p>")]
        return [php_output(PAGE)]

    app, _ = make_app(tmp_path, nursery, script)
    c = await client_for(app, nursery)
    for coding in ("br", "gzip"):
        r = await get(c, "/", ("Accept-Encoding", coding))
        assert r.header("content-encoding") == coding and decode(r) == PAGE
        assert r.header("content-length") == str(len(r.body)) and r.header("vary") == "Accept-Encoding"
    head = await get(c, "/", ("Accept-Encoding", "br"), method="HEAD")
    assert (head.body, head.header("content-encoding"), head.header("content-length")) == (b"", "br", None)
    coded = await get(c, "/coded", ("Accept-Encoding", "br, gzip"))
    assert coded.header("content-encoding") == "gzip" and gzip.decompress(coded.body) == PAGE
    nt = await get(c, "/no-transform", ("Accept-Encoding", "br"))
    assert nt.header("content-encoding") is None and nt.body == PAGE
    js = await get(c, "/json", ("Accept-Encoding", "gzip"))
    assert js.header("content-encoding") == "gzip" and js.header("vary") == "Cookie, Accept-Encoding"
    assert js.header("etag") == 'W/"v1"'
    small = await get(c, "/small", ("Accept-Encoding", "br"))
    assert small.header("content-encoding") is None and small.body == b"<p>hi</p>"
    streamed = await get(c, "/stream", ("Accept-Encoding", "br"))
    assert streamed.header("content-encoding") == "br" and streamed.header("transfer-encoding") == "chunked"
    assert decode(streamed) == PAGE
    off_app, _ = make_app(tmp_path, nursery, script, server={"compression": []})
    off = await get(await client_for(off_app, nursery), "/", ("Accept-Encoding", "br"))
    assert off.header("content-encoding") is None and off.body == PAGE and off.header("vary") is None


async def test_server_timing_carries_compression_cpu(tmp_path, nursery):
    app, _ = make_app(tmp_path, nursery, answer(php_output(PAGE)), server={"server_timing": True})
    r = await get(await client_for(app, nursery), "/", ("Accept-Encoding", "br"))
    assert "compress;dur=" in r.header("server-timing") and "php;dur=" in r.header("server-timing")


async def test_a_large_body_is_compressed_in_a_thread_while_others_are_answered(tmp_path, nursery, monkeypatch):
    """While a thread compresses a big page (held there by the test), a small
    request on another connection is answered: the event loop is free."""
    in_thread = threading.Event()
    release = threading.Event()
    real = compress._timed

    def held(work):
        if threading.current_thread() is not threading.main_thread():
            in_thread.set()
            assert release.wait(30), "never released"
        return real(work)

    monkeypatch.setattr(compress, "_timed", held)
    app, _ = make_app(tmp_path, nursery, answer(php_output(PAGE * 4)))
    big_client, small_client = await client_for(app, nursery), await client_for(app, nursery)
    big: list = []
    big_done = trio.Event()

    async def fetch_big():
        big.append(await get(big_client, "/", ("Accept-Encoding", "br")))
        big_done.set()

    with trio.fail_after(30):
        nursery.start_soon(fetch_big)
        await trio.to_thread.run_sync(in_thread.wait)
        small = await get(small_client, "/small.css", ("Accept-Encoding", "br"))
        assert small.status == 200 and not big  # answered while the big one is held in its thread
        release.set()
        await big_done.wait()
    assert decode(big[0]) == PAGE * 4


def write_huge(path) -> int:
    block = (b"0123456789abcdef" * 4 + b"\n") * (1 << 14)
    with open(path, "wb") as f:
        for _ in range((256 << 20) // len(block)):
            f.write(block)
    return os.path.getsize(path)


async def test_memory_stays_bounded_for_a_big_file_compressed_streamed(tmp_path, nursery):
    """256 MiB of text compressed to a client: the process grows by a bounded
    amount (chunks and the coder's window), not by the file."""
    app, root = make_app(tmp_path, nursery)
    size = write_huge(root / "huge.txt")
    req = Request(b"GET", b"/huge.txt", b"HTTP/1.1", [(b"host", b"example.com"), (b"accept-encoding", b"br")],
                  ("192.0.2.7", 1), ("192.0.2.1", 80), None, "t", host=b"example.com")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    resp = await app.handle(req)
    assert resp.streamed and dict(resp.headers)[b"content-encoding"] == b"br"
    before = rss()
    peak = before
    d = brotli.Decompressor()
    total = 0
    async for chunk in resp.body:  # type: ignore[union-attr]
        total += len(d.process(chunk))
        peak = max(peak, rss())
    await resp.aclose()
    assert total == size
    print(f"RSS growth {(peak - before) / 2**20:.1f} MiB while compressing {size >> 20} MiB")
    assert peak - before < 64 << 20, f"RSS grew by {(peak - before) >> 20} MiB for a {size >> 20} MiB file"


# -- precompressed -----------------------------------------------------------------------


async def test_precompressed_siblings(tmp_path, nursery, autojump_clock):
    stats = CompressionStats()
    app, root = make_app(tmp_path, nursery, site={"precompressed": True}, stats=stats)
    (root / "app.js").write_bytes(CSS)
    (root / "app.js.br").write_bytes(brotli.compress(CSS, quality=11))
    (root / "app.js.gz").write_bytes(gzip.compress(CSS, 9))
    (root / "only.css").write_bytes(CSS)
    (root / "only.css.gz").write_bytes(gzip.compress(CSS, 9))
    c = await client_for(app, nursery)
    plain = await get(c, "/app.js")
    for accept, coding, sibling in (("br, gzip", "br", "app.js.br"), ("gzip", "gzip", "app.js.gz")):
        r = await get(c, "/app.js", ("Accept-Encoding", accept))
        assert r.header("content-encoding") == coding and r.body == (root / sibling).read_bytes()
        assert decode(r) == CSS and r.header("content-type") == "application/javascript"
        assert r.header("vary") == "Accept-Encoding" and r.header("content-length") == str(len(r.body))
        st = os.stat(root / sibling)
        assert r.header("etag") == f'"{int(st.st_mtime):x}-{st.st_size:x}"' != plain.header("etag")
        again = await get(c, "/app.js", ("Accept-Encoding", accept), ("If-None-Match", r.header("etag")))
        assert again.status == 304 and again.header("vary") == "Accept-Encoding"
    assert stats.precompressed == {"br": 1, "gzip": 1} and stats.responses == {"br": 0, "gzip": 0}
    assert plain.body == CSS and plain.header("vary") == "Accept-Encoding"
    # only a .gz: a br-only client is compressed on the fly instead
    only = await get(c, "/only.css", ("Accept-Encoding", "br"))
    assert only.header("content-encoding") == "br" and decode(only) == CSS and stats.responses["br"] == 1
    # a range is of the original's bytes, as before
    ranged = await get(c, "/app.js", ("Accept-Encoding", "br"), ("Range", "bytes=0-9"))
    assert (ranged.status, ranged.body, ranged.header("content-encoding")) == (206, CSS[:10], None)
    # a sibling asked for by name is what it is, never passed off as the original's type
    direct = await get(c, "/app.js.br", ("Accept-Encoding", "br"))
    assert direct.header("content-encoding") is None and direct.header("content-type") != "application/javascript"
    assert direct.body == (root / "app.js.br").read_bytes()


async def test_precompressed_is_off_by_default(tmp_path, nursery, autojump_clock):
    app, root = make_app(tmp_path, nursery)
    (root / "app.js").write_bytes(CSS)
    (root / "app.js.gz").write_bytes(b"not what is served")
    r = await get(await client_for(app, nursery), "/app.js", ("Accept-Encoding", "gzip"))
    assert r.header("content-encoding") == "gzip" and decode(r) == CSS


# -- site headers ----------------------------------------------------------------------------

HEADERS = {"Strict-Transport-Security": "max-age=31536000", "X-Frame-Options": "DENY",
           "Access-Control-Allow-Origin": "*", "X-Powered-By": ""}


async def test_site_headers_on_every_response(tmp_path, nursery, autojump_clock):
    async def script(req):
        if req.params[b"REQUEST_URI"] == b"/down":
            await trio.sleep(100)
        return [php_output(b"hi", headers=(b"X-Frame-Options: SAMEORIGIN", b"X-Powered-By: PHP/8.2"))]

    cfg_site = {"headers": HEADERS, "deny": ["/secret"]}
    app, root = make_app(tmp_path, nursery, script, site=cfg_site)
    (root / "dir").mkdir()
    c = await client_for(app, nursery)
    for target, status in (("/", 200), ("/style.css", 200), ("/secret", 403), ("/nope.php", 404), ("/dir", 301)):
        r = await get(c, target)
        assert r.status == status, target
        assert r.header("strict-transport-security") == "max-age=31536000", target
        assert [v for n, v in r.header_list if n == b"x-frame-options"] == [b"DENY"], target
        assert r.header("access-control-allow-origin") == "*" and r.header("x-powered-by") is None, target


async def test_site_headers_on_gateway_errors(tmp_path, nursery, autojump_clock):
    async def hang(req):
        await trio.sleep_forever()

    app, _ = make_app(tmp_path, nursery, hang,
                      site={"headers": {"Strict-Transport-Security": "max-age=1"}})
    r = await get(await client_for(app, nursery), "/")
    assert r.status == 504 and r.header("strict-transport-security") == "max-age=1"


# -- redirect_to_https ---------------------------------------------------------------------------


async def test_redirect_to_https(tmp_path, nursery, autojump_clock):
    app, root = make_app(tmp_path, nursery, answer(php_output(b"php")),
                         site={"redirect_to_https": True, "headers": {"Strict-Transport-Security": "max-age=9"}},
                         server={"listen": ["127.0.0.1:0", "127.0.0.1:8443 tls", "127.0.0.1:9443 tls"]})
    (root / ".well-known" / "acme-challenge").mkdir(parents=True)
    (root / ".well-known" / "acme-challenge" / "tok").write_text("tok.thumb")
    c = await client_for(app, nursery)
    r = await get(c, "/a/b?c=1")
    assert (r.status, r.header("location")) == (308, "https://example.com:8443/a/b?c=1")
    assert r.header("strict-transport-security") == "max-age=9"
    post = await c.request("POST", "/wp-login.php", body=b"x=1", host="example.com")
    assert (post.status, post.header("location")) == (308, "https://example.com:8443/wp-login.php")
    acme = await get(c, "/.well-known/acme-challenge/tok")
    assert (acme.status, acme.body) == (200, b"tok.thumb")
    tls_req = Request(b"GET", b"/", b"HTTP/1.1", [(b"host", b"example.com")], ("192.0.2.7", 1), ("192.0.2.1", 443),
                      None, "t", host=b"example.com", https=True)
    assert (await app.handle(tls_req)).status == 200


async def test_redirect_to_https_on_443_has_no_port(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, nursery, site={"redirect_to_https": True},
                      server={"listen": [":8080", ":443 tls"]})
    r = await get(await client_for(app, nursery), "/x")
    assert (r.status, r.header("location")) == (308, "https://example.com/x")


def test_redirect_to_https_needs_a_tls_listener(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "www").mkdir()
    (tmp_path / "conf.d" / "10-site.toml").write_text(
        '[server]\nlisten = ["127.0.0.1:8080"]\n[sites.blog]\nroot = "www"\nredirect_to_https = true\n')
    from gateway.config import load_dir

    with pytest.raises(ConfigError) as err:
        load_dir(tmp_path / "conf.d")
    lines = str(err.value).splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path / 'conf.d' / '10-site.toml'}: sites.blog.redirect_to_https: ")
    assert "tls" in lines[0] and lines[0].endswith("(line 5)")


def test_zlib_level_one_is_what_nginx_sends_by_default():
    # (the comparison the WordPress test makes when nginx is absent)
    assert zlib.compress(PAGE, 1, wbits=31)[:2] == b"\x1f\x8b"


async def test_gateway_error_page_for_head_is_not_marked_compressed(tmp_path, nursery, autojump_clock):
    async def hang(req):
        await trio.sleep_forever()

    app, _ = make_app(tmp_path, nursery, hang)
    r = await get(await client_for(app, nursery), "/", ("Accept-Encoding", "br"), method="HEAD")
    assert r.status == 504 and r.header("content-encoding") is None and r.body == b""
