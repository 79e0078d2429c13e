"""The page cache in the request path, in memory: h11 client -> HttpConnection ->
App -> cache -> pool -> FastCGI -> a php-fpm stand-in, on the autojump clock."""

from __future__ import annotations

import gzip
import json

import trio
import trio.testing

from gateway.app.site import App
from gateway.config import validate
from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.http.cache_policy import purge_url
from gateway.http.request import Request
from gateway.observe.admin import parse_purge, purge_json
from gateway.serve.process import pool_from_config
from tests.helpers import FakeFpm, HttpClient, php_output


def make_app(tmp_path, fpm: FakeFpm, nursery, *, pool_size: int = 4, run: bool = True, **cache) -> App:
    (tmp_path / "index.php").write_text("front controller")
    cfg = validate({"backends": {"php": {"pool_size": pool_size}},
                    "sites": {"s": {"root": str(tmp_path), "php": "php", "server_names": ["example.com"],
                                    "cache": {"enabled": True, **cache}}}})
    pool = pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)
    app = App(cfg, {"php": pool})
    if run:
        nursery.start_soon(app.run)
    return app


async def client_for(app, nursery, address: str = "192.0.2.7") -> HttpClient:
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, app.handle, ConnectionSettings.from_config(), client=(address, 40000),
                          server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    return HttpClient(client)


def counting(body=b"page", headers=(), status=None, delay=0.0):
    """A script that answers ``body`` + the run number, and counts its runs."""
    runs = []

    async def script(req):
        runs.append(req)
        if delay:
            await trio.sleep(delay)
        return [php_output(body + b" %d" % len(runs), status=status, headers=headers)]

    return script, runs


async def test_anonymous_get_is_a_miss_then_a_hit(tmp_path, nursery, autojump_clock):
    script, runs = counting(headers=(b"X-Cache-Tags: home",))
    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    first = await c.request("GET", "/", host="example.com")
    second = await c.request("GET", "/?utm_source=news", host="example.com")
    head = await c.request("HEAD", "/", host="example.com")
    assert (first.status, first.header("x-cache"), first.body) == (200, "MISS", b"page 1")
    assert (second.status, second.header("x-cache"), second.body) == (200, "HIT", b"page 1")
    assert (head.status, head.header("x-cache"), head.body, head.header("content-length")) == (200, "HIT", b"", "6")
    assert second.header("age") == "0" and second.header("x-cache-tags") is None
    assert len(runs) == 1
    stats = app.cache_stats
    assert (stats.requests["MISS"], stats.requests["HIT"], stats.entries) == (1, 2, 1)


async def test_a_hit_is_compressed_per_client(tmp_path, nursery, autojump_clock):
    script, runs = counting(body=b"<p>hello</p>" * 200)
    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    await c.request("GET", "/", host="example.com")
    entry_bytes = app.cache_stats.bytes
    zipped = [await c.request("GET", "/", [("Accept-Encoding", "gzip")], host="example.com") for _ in range(3)]
    plain = await c.request("GET", "/", host="example.com")
    assert [r.header("x-cache") for r in [*zipped, plain]] == ["HIT"] * 4
    assert {r.body for r in zipped} == {zipped[0].body} and gzip.decompress(zipped[0].body) == plain.body
    assert zipped[0].header("content-encoding") == "gzip" and zipped[0].header("vary") == "Accept-Encoding"
    assert zipped[0].header("content-length") == str(len(zipped[0].body))
    assert plain.header("content-encoding") is None and plain.header("vary") == "Accept-Encoding"
    assert len(runs) == 1
    # the gzip variant was made once, kept in the entry, and counted in its size
    assert app.compressor.stats.bytes_in == len(plain.body) and app.compressor.stats.responses["gzip"] == 3
    assert app.cache_stats.bytes == entry_bytes + len(zipped[0].body)


async def test_set_cookie_no_store_and_errors_are_never_cached(tmp_path, nursery, autojump_clock):
    for headers, status in (((b"Set-Cookie: session=1",), None), ((b"Cache-Control: no-store",), None),
                            ((b"Cache-Control: private, max-age=60",), None), ((), b"500 Oops"),
                            ((), b"302 Found")):
        script, runs = counting(headers=headers, status=status)
        app = make_app(tmp_path, FakeFpm(script), nursery)
        c = await client_for(app, nursery)
        answers = [await c.request("GET", "/", host="example.com") for _ in range(2)]
        assert [r.header("x-cache") for r in answers] == ["MISS", "MISS"], headers
        assert len(runs) == 2 and app.cache_stats.entries == 0
        if headers and headers[0].startswith(b"Set-Cookie"):
            assert answers[1].header("set-cookie") == "session=1"


async def test_a_redirect_to_the_canonical_host_is_not_every_visitors_page(tmp_path, nursery, autojump_clock):
    """WordPress answers a Host it does not know as its own (a port, a trailing
    dot, X-Forwarded-Host in some wp-configs) with a 301 to the canonical URL."""
    runs = []

    async def script(req):
        runs.append(req)
        host = req.params.get(b"HTTP_X_FORWARDED_HOST", req.params[b"HTTP_HOST"])
        if host != b"example.com":
            return [php_output(b"", status=b"301 Moved Permanently", headers=(b"Location: http://example.com/",))]
        return [php_output(b"home")]

    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    await c.request("GET", "/", host="example.com:1234")
    await c.request("GET", "/", host="example.com.")
    await c.request("GET", "/", [("X-Forwarded-Host", "evil.example")], host="example.com")
    assert [r.params[b"HTTP_HOST"] for r in runs] == [b"example.com:1234", b"example.com.", b"example.com"]
    visitor = await c.request("GET", "/", host="example.com")
    assert (visitor.status, visitor.body, visitor.header("x-cache")) == (200, b"home", "MISS")


async def test_a_parameter_left_out_of_the_key_does_not_reach_php(tmp_path, nursery, autojump_clock):
    """A page that echoes utm_source (a plugin's hidden form field) must not
    store one visitor's value, a script, as everybody's page."""
    runs = []

    async def script(req):
        runs.append(req)
        return [php_output(b"<form>" + req.params[b"QUERY_STRING"] + b" " + req.params[b"REQUEST_URI"])]

    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    first = await c.request("GET", "/?p=1&utm_source=%3Cscript%3Ealert(1)%3C/script%3E", host="example.com")
    visitor = await c.request("GET", "/?p=1", host="example.com")
    assert (first.body, visitor.body, visitor.header("x-cache")) == (b"<form>p=1 /?p=1",) * 2 + ("HIT",)
    post = await c.request("POST", "/?utm_source=mail", body=b"x", host="example.com")
    assert post.body == b"<form>utm_source=mail /?utm_source=mail"  # (only what the cache keys is cleaned)


async def test_bypass_paths_are_matched_as_the_router_reads_the_path(tmp_path, nursery, autojump_clock):
    script, runs = counting()
    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    for target in ("//wp-json/wp/v2/users", "/%77p-json/wp/v2/users", "/x/../wp-json/wp/v2/users", "/cart/%2e/"):
        resp = await c.request("GET", target, host="example.com")
        assert resp.header("x-cache") == "BYPASS", target
    assert app.cache_stats.entries == 0 and len(runs) == 4


async def test_php_is_not_asked_for_a_coding_the_cache_makes_itself(tmp_path, nursery, autojump_clock):
    """PHP that gzips for a client asking for it (ob_gzhandler) answers
    identity: the page is stored once, and each client gets its coding from the cache."""
    runs = []

    async def script(req):
        runs.append(req)
        body = b"<p>hello</p>" * 200
        if b"gzip" in req.params.get(b"HTTP_ACCEPT_ENCODING", b""):
            return [php_output(gzip.compress(body), headers=(b"Content-Encoding: gzip", b"Vary: Accept-Encoding"))]
        return [php_output(body)]

    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    zipped = [await c.request("GET", "/", [("Accept-Encoding", "gzip, br")], host="example.com") for _ in range(2)]
    plain = await c.request("GET", "/", host="example.com")
    assert [r.header("x-cache") for r in [*zipped, plain]] == ["MISS", "HIT", "HIT"] and len(runs) == 1
    assert zipped[1].header("content-encoding") in ("gzip", "br") and plain.body == b"<p>hello</p>" * 200


async def test_a_method_override_is_not_a_get(tmp_path, nursery, autojump_clock):
    script, runs = counting()
    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    await c.request("GET", "/?rest_route=/wp/v2/posts/1", [("X-HTTP-Method-Override", "DELETE")], host="example.com")
    anon = await c.request("GET", "/?rest_route=/wp/v2/posts/1", host="example.com")
    assert (anon.body, anon.header("x-cache"), app.cache_stats.entries) == (b"page 2", "MISS", 1)


async def test_a_logged_in_user_neither_sees_nor_fills_the_cache(tmp_path, nursery, autojump_clock):
    script, runs = counting()
    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    cookie = [("Cookie", "wordpress_test_cookie=WP; wordpress_logged_in_0123=admin%7C17")]
    admin = await c.request("GET", "/", cookie, host="example.com")
    assert (admin.header("x-cache"), app.cache_stats.entries) == ("BYPASS", 0)
    anon = await c.request("GET", "/", host="example.com")
    admin = await c.request("GET", "/", cookie, host="example.com")
    assert (anon.header("x-cache"), anon.body) == ("MISS", b"page 2")
    assert (admin.header("x-cache"), admin.body) == ("BYPASS", b"page 3")
    login = await c.request("GET", "/wp-json/wp/v2/posts", host="example.com")
    assert login.header("x-cache") == "BYPASS"
    post = await c.request("POST", "/2024/hello/", body=b"comment=hi", host="example.com")
    assert post.header("x-cache") is None and len(runs) == 5


async def test_a_burst_on_a_cold_url_runs_php_once(tmp_path, nursery, autojump_clock):
    script, runs = counting(delay=0.5)
    app = make_app(tmp_path, FakeFpm(script), nursery)
    answers = []

    async def visit():
        c = await client_for(app, nursery)
        answers.append(await c.request("GET", "/cold/", host="example.com"))

    async with trio.open_nursery() as burst:
        for _ in range(100):
            burst.start_soon(visit)
    assert len(runs) == 1
    assert {(r.status, r.body) for r in answers} == {(200, b"page 1")}
    assert sorted(r.header("x-cache") for r in answers) == ["HIT"] * 99 + ["MISS"]
    assert app.cache_stats.lock_waits == 99


async def test_waiters_go_to_php_themselves_after_lock_timeout(tmp_path, nursery, autojump_clock):
    script, runs = counting(delay=10)
    app = make_app(tmp_path, FakeFpm(script), nursery, lock_timeout="2s")
    answers = []

    async def visit():
        c = await client_for(app, nursery)
        answers.append((await c.request("GET", "/slow/", host="example.com"), trio.current_time()))

    t0 = trio.current_time()
    async with trio.open_nursery() as burst:
        for _ in range(3):
            burst.start_soon(visit)
    assert len(runs) == 3  # one leader, two that waited 2 s and went themselves
    assert sorted(round(t - t0) for _, t in answers) == [10, 12, 12]


async def test_an_uncacheable_page_is_not_serialised_by_the_lock(tmp_path, nursery, autojump_clock):
    script, runs = counting(headers=(b"Cache-Control: no-store",), delay=1)
    app = make_app(tmp_path, FakeFpm(script), nursery)
    done = []

    async def visit():
        await (await client_for(app, nursery)).request("GET", "/", host="example.com")
        done.append(trio.current_time())

    t0 = trio.current_time()
    async with trio.open_nursery() as burst:
        for _ in range(4):
            burst.start_soon(visit)
    # the first answer says "not cacheable": the three waiters go to PHP together, not one after another
    assert len(runs) == 4 and app.cache_stats.entries == 0
    assert sorted(t - t0 for t in done) == [1, 2, 2, 2]
    # and for a while the page skips the lock altogether
    async with trio.open_nursery() as burst:
        for _ in range(3):
            burst.start_soon(visit)
    assert sorted(t - t0 for t in done[4:]) == [3, 3, 3] and len(runs) == 7


def _request(target: bytes = b"/", method: bytes = b"GET", client: str = "192.0.2.7") -> Request:
    return Request(method, target, b"1.1", [(b"host", b"example.com")], (client, 40000), ("192.0.2.1", 80), None,
                   "t", host=b"example.com")


async def test_a_leader_whose_client_left_stores_nothing_and_a_waiter_leads(tmp_path, nursery, autojump_clock):
    script, runs = counting(delay=3)
    app = make_app(tmp_path, FakeFpm(script), nursery)
    with trio.move_on_after(1):  # the client leaves while PHP runs: the front end cancels its handler
        await app.handle(_request())
    assert app.cache_stats.entries == 0 and len(runs) == 1
    got = []

    async def wait_one():
        got.append(await app.handle(_request()))

    async with trio.open_nursery() as both:
        both.start_soon(wait_one)
        both.start_soon(wait_one)
    assert sorted(dict(r.headers)[b"x-cache"] for r in got) == [b"HIT", b"MISS"]
    assert len(runs) == 2 and app.cache_stats.entries == 1


async def test_expired_entries_are_refetched(tmp_path, nursery, autojump_clock):
    script, runs = counting(headers=(b"Cache-Control: max-age=60",))
    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    await c.request("GET", "/", host="example.com")
    await trio.sleep(30)
    hit = await c.request("GET", "/", host="example.com")
    await trio.sleep(31)
    expired = await c.request("GET", "/", host="example.com")
    assert (hit.header("x-cache"), hit.header("age"), hit.body) == ("HIT", "30", b"page 1")
    assert (expired.header("x-cache"), expired.body) == ("EXPIRED", b"page 2")


async def test_stale_while_revalidate_answers_at_once_and_refreshes_in_the_background(tmp_path, nursery,
                                                                                     autojump_clock):
    script, runs = counting(delay=3)
    app = make_app(tmp_path, FakeFpm(script), nursery, ttl="60s", stale_while_revalidate="1m")
    c = await client_for(app, nursery)
    await c.request("GET", "/", host="example.com")
    await trio.sleep(61)
    t0 = trio.current_time()
    stale = [await c.request("GET", "/", host="example.com") for _ in range(3)]
    assert trio.current_time() == t0  # served at once, PHP still running
    assert [(r.header("x-cache"), r.body) for r in stale] == [("STALE", b"page 1")] * 3
    await trio.sleep(5)
    fresh = await c.request("GET", "/", host="example.com")
    assert (fresh.header("x-cache"), fresh.body) == ("HIT", b"page 2")
    assert len(runs) == 2  # one background refresh for the three stale answers
    await trio.sleep(200)  # past both windows
    c = await client_for(app, nursery)
    assert (await c.request("GET", "/", host="example.com")).header("x-cache") == "EXPIRED"


async def test_stale_if_error_replaces_a_php_failure(tmp_path, nursery, autojump_clock):
    failing = False

    async def script(req):
        if failing:
            return [php_output(b"db down", status=b"500 Internal Server Error")]
        return [php_output(b"good")]

    app = make_app(tmp_path, FakeFpm(script), nursery, ttl="60s", stale_if_error="1h")
    c = await client_for(app, nursery)
    await c.request("GET", "/", host="example.com")
    failing = True
    await trio.sleep(120)
    c = await client_for(app, nursery)
    r = await c.request("GET", "/", host="example.com")
    assert (r.status, r.header("x-cache"), r.body) == (200, "STALE", b"good")
    await trio.sleep(3600)
    c = await client_for(app, nursery)
    r = await c.request("GET", "/", host="example.com")
    assert (r.status, r.header("x-cache")) == (500, "EXPIRED")


async def test_the_memory_tier_evicts_the_least_recently_used(tmp_path, nursery, autojump_clock):
    async def script(req):
        return [php_output(b"x" * 3000)]

    app = make_app(tmp_path, FakeFpm(script), nursery, max_size="10k", max_entry_size="4k")
    c = await client_for(app, nursery)
    for path in ("/a", "/b", "/c", "/a", "/d"):  # /a used again: /b is the oldest when /d comes
        await c.request("GET", path, host="example.com")
    assert (app.cache_stats.entries, app.cache_stats.evictions) == (3, 1)
    assert app.cache_stats.bytes <= 10 * 1024
    assert [(await c.request("GET", p, host="example.com")).header("x-cache") for p in ("/a", "/c", "/d", "/b")] \
        == ["HIT", "HIT", "HIT", "MISS"]


async def test_big_and_streamed_responses_pass_uncached(tmp_path, nursery, autojump_clock):
    async def script(req):
        if req.params[b"REQUEST_URI"] == b"/stream":
            return [php_output(b"a", headers=(b"X-Accel-Buffering: no",)), b"b"]
        return [php_output(b"x" * 5000)]

    app = make_app(tmp_path, FakeFpm(script), nursery, max_entry_size="4k")
    c = await client_for(app, nursery)
    for path, body in (("/big", b"x" * 5000), ("/stream", b"ab")):
        answers = [await c.request("GET", path, host="example.com") for _ in range(2)]
        assert [(r.body, r.header("x-cache")) for r in answers] == [(body, "MISS")] * 2
    assert app.cache_stats.entries == 0


async def test_php_purges_with_x_cache_purge(tmp_path, nursery, autojump_clock):
    async def script(req):
        uri = req.params[b"REQUEST_URI"]
        if req.params[b"REQUEST_METHOD"] == b"POST":
            return [php_output(b"ok", headers=(b"X-Cache-Purge: /post/, tag:home",))]
        tags = b"home" if uri == b"/" else b"post-1"
        return [php_output(b"page " + uri, headers=(b"X-Cache-Tags: " + tags,))]

    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    for path in ("/", "/post/", "/post/?replytocom=1", "/other/"):
        await c.request("GET", path, host="example.com")
    assert app.cache_stats.entries == 4
    r = await c.request("POST", "/comment/", body=b"c=1", host="example.com")
    assert r.header("x-cache-purge") is None
    assert app.cache_stats.entries == 1
    assert (await c.request("GET", "/other/", host="example.com")).header("x-cache") == "HIT"
    assert (await c.request("GET", "/post/", host="example.com")).header("x-cache") == "MISS"


async def test_a_sites_php_purges_its_own_site_only_in_every_process(tmp_path, nursery, autojump_clock):
    """One customer's PHP sends ``X-Cache-Purge: *``: the worker processes it
    is passed to (``serve.process.share_purges``, through the admin's JSON)
    purge that site's entries, not the other site's."""
    async def script(req):
        if req.params[b"REQUEST_METHOD"] == b"POST":
            return [php_output(b"ok", headers=(b"X-Cache-Purge: *",))]
        return [php_output(b"page")]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "index.php").write_text("front controller")
    cfg = validate({"backends": {"php": {}}, "sites": {
        name: {"root": str(tmp_path / name), "php": "php", "server_names": [f"{name}.example"],
               "cache": {"enabled": True}} for name in ("a", "b")}})
    fpm = FakeFpm(script)
    apps = [App(cfg, {"php": pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)})
            for _ in range(2)]  # two worker processes
    for app in apps:
        nursery.start_soon(app.run)

    async def to_sibling(purge):
        await apps[1].purge(parse_purge(json.loads(json.dumps(purge_json(purge)))))

    apps[0].caches["a"].on_purge = to_sibling
    for app in apps:
        c = await client_for(app, nursery)
        for host in ("a.example", "b.example"):
            await c.request("GET", "/", host=host)
    assert [app.cache_stats.entries for app in apps] == [2, 2]
    c = await client_for(apps[0], nursery)
    await c.request("POST", "/", body=b"c=1", host="a.example")
    assert [app.cache_stats.entries for app in apps] == [1, 1]
    for app in apps:
        c = await client_for(app, nursery)
        assert (await c.request("GET", "/", host="b.example")).header("x-cache") == "HIT"
        assert (await c.request("GET", "/", host="a.example")).header("x-cache") == "MISS"


async def test_purge_method_from_allowed_addresses_only(tmp_path, nursery, autojump_clock):
    script, runs = counting()
    app = make_app(tmp_path, FakeFpm(script), nursery, purge_allow=["10.0.0.0/8"])
    c = await client_for(app, nursery)
    await c.request("GET", "/p/", host="example.com")
    refused = await (await client_for(app, nursery, "192.0.2.9")).request("PURGE", "/p/", host="example.com")
    assert refused.status == 403 and app.cache_stats.entries == 1
    purged = await (await client_for(app, nursery, "10.1.2.3")).request("PURGE", "/p/", host="example.com")
    assert (purged.status, purged.body) == (200, b'{"purged": 1}\n')
    assert (await c.request("GET", "/p/", host="example.com")).header("x-cache") == "MISS"
    assert len(runs) == 2
    # a unix socket peer (a front proxy's, passing anyone's PURGE) only with "unix:"
    unix = await (await client_for(app, nursery, "unix:")).request("PURGE", "/p/", host="example.com")
    assert unix.status == 403 and app.cache_stats.entries == 1
    app = make_app(tmp_path, FakeFpm(script), nursery, purge_allow=["unix:"])
    unix = await (await client_for(app, nursery, "unix:")).request("PURGE", "/p/", host="example.com")
    assert unix.status == 200


async def test_admin_purge_by_url_prefix_and_all(tmp_path, nursery, autojump_clock):
    script, _ = counting()
    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    for path in ("/", "/a/1", "/a/2", "/b"):
        await c.request("GET", path, host="example.com")
    assert await app.purge(purge_url("http://example.com/a/1")) == 1
    assert await app.purge(purge_url("/a/", prefix=True)) == 1
    assert await app.purge(purge_url("https://other.example/", prefix=True)) == 0
    assert await app.purge(purge_url("/", prefix=True)) == 2 and app.cache_stats.entries == 0


async def test_without_its_nursery_a_stale_entry_is_refetched_in_the_foreground(tmp_path, nursery,
                                                                               autojump_clock):
    script, runs = counting()
    app = make_app(tmp_path, FakeFpm(script), nursery, run=False, ttl="10s", stale_while_revalidate="1m")
    c = await client_for(app, nursery)
    await c.request("GET", "/", host="example.com")
    await trio.sleep(11)
    r = await c.request("GET", "/", host="example.com")
    assert (r.header("x-cache"), r.body) == ("EXPIRED", b"page 2")


async def test_cacheable_php_responses_are_counted_for_the_verdict(tmp_path, nursery, autojump_clock):
    async def script(req):
        if b"nostore" in req.params[b"REQUEST_URI"]:
            return [php_output(b"x", headers=(b"Cache-Control: no-store",))]
        return [php_output(b"x")]

    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    await c.request("GET", "/a", host="example.com")  # MISS, stored
    await c.request("GET", "/a", host="example.com")  # HIT: no PHP
    await c.request("GET", "/a", [("Cookie", "comment_author_1=x")], host="example.com")  # BYPASS, storable
    await c.request("GET", "/nostore", host="example.com")
    await c.request("POST", "/a", body=b"x", host="example.com")
    inst = app.pools["php"].instruments
    assert (inst.responses, inst.cacheable, inst.cache_bypassed, inst.cache_on) == (4, 2, 1, True)


async def test_a_site_without_a_cache_counts_what_one_would_take(tmp_path, nursery, autojump_clock):
    script, _ = counting()
    (tmp_path / "index.php").write_text("front controller")
    cfg = validate({"backends": {"php": {"pool_size": 1}},
                    "sites": {"s": {"root": str(tmp_path), "php": "php", "server_names": ["example.com"]}}})
    pool = pool_from_config("php", FakeFpm(script).connector(nursery), cfg.backends["php"], cfg.limits)
    app = App(cfg, {"php": pool})
    c = await client_for(app, nursery)
    await c.request("GET", "/", host="example.com")
    await c.request("GET", "/", [("Cookie", "wordpress_logged_in_1=x")], host="example.com")
    r = await c.request("GET", "/", host="example.com")
    assert r.header("x-cache") is None
    assert (pool.instruments.responses, pool.instruments.cacheable, pool.instruments.cache_on) == (3, 2, False)


async def test_a_site_without_a_cache_strips_the_plugins_headers(tmp_path, nursery, autojump_clock):
    script, _ = counting(headers=(b"X-Cache-Tags: post-1", b"X-Cache-Purge: /"))
    (tmp_path / "index.php").write_text("front controller")
    cfg = validate({"backends": {"php": {"pool_size": 1}},
                    "sites": {"s": {"root": str(tmp_path), "php": "php", "server_names": ["example.com"]}}})
    app = App(cfg, {"php": pool_from_config("php", FakeFpm(script).connector(nursery), cfg.backends["php"],
                                            cfg.limits)})
    r = await (await client_for(app, nursery)).request("GET", "/", host="example.com")
    assert r.status == 200 and r.header("x-cache-tags") is None and r.header("x-cache-purge") is None


async def test_a_conditional_request_gets_a_304_from_the_entry(tmp_path, nursery, autojump_clock):
    script, runs = counting(headers=(b'ETag: "v1"', b"Last-Modified: Wed, 01 Jan 2025 00:00:00 GMT"))
    app = make_app(tmp_path, FakeFpm(script), nursery)
    c = await client_for(app, nursery)
    await c.request("GET", "/", host="example.com")
    r = await c.request("GET", "/", [("If-None-Match", '"v1"')], host="example.com")
    assert (r.status, r.body, r.header("x-cache"), r.header("etag")) == (304, b"", "HIT", '"v1"')
    r = await c.request("GET", "/", [("If-Modified-Since", "Thu, 02 Jan 2025 00:00:00 GMT")], host="example.com")
    assert (r.status, r.header("x-cache")) == (304, "HIT")
    r = await c.request("GET", "/", [("If-None-Match", '"v0"')], host="example.com")
    assert (r.status, r.body, r.header("x-cache")) == (200, b"page 1", "HIT")
    assert len(runs) == 1


async def test_a_cached_404_is_phps_as_a_fresh_one_is(tmp_path, nursery, autojump_clock):
    # the site's error page replaces the gateway's own errors, not PHP's (no intercept_errors): a 404 from
    # the cache is PHP's too
    script, runs = counting(status=b"404 Not Found")
    (tmp_path / "index.php").write_text("front controller")
    (tmp_path / "oops.html").write_text("the site's page")
    cfg = validate({"backends": {"php": {"pool_size": 1}},
                    "sites": {"s": {"root": str(tmp_path), "php": "php", "server_names": ["example.com"],
                                    "error_pages": {"404": "/oops.html"}, "cache": {"enabled": True}}}})
    app = App(cfg, {"php": pool_from_config("php", FakeFpm(script).connector(nursery), cfg.backends["php"],
                                            cfg.limits)})
    c = await client_for(app, nursery)
    answers = [await c.request("GET", "/missing/", host="example.com") for _ in range(2)]
    assert [(r.status, r.header("x-cache"), r.body) for r in answers] == [(404, "MISS", b"page 1"),
                                                                          (404, "HIT", b"page 1")]
    assert len(runs) == 1


async def test_an_x_accel_redirect_answer_is_never_stored(tmp_path, nursery, autojump_clock):
    script, runs = counting(headers=(b"X-Accel-Redirect: /file.txt",))
    app = make_app(tmp_path, FakeFpm(script), nursery)
    (tmp_path / "file.txt").write_text("the file")
    c = await client_for(app, nursery)
    answers = [await c.request("GET", "/download/", host="example.com") for _ in range(2)]
    assert [(r.status, r.body) for r in answers] == [(200, b"the file")] * 2
    assert len(runs) == 2 and app.cache_stats.entries == 0
