"""The page cache's rules without IO: bypass, key, lifetime, stale windows, purge matching."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.cache import DEFAULT_BYPASS_COOKIES, DEFAULT_BYPASS_PATHS, DEFAULT_IGNORE_PARAMS
from gateway.http.cache_policy import (
    CachePolicy,
    Freshness,
    Lifetime,
    Purge,
    cache_control,
    cache_key,
    drop_params,
    freshness,
    not_modified,
    purge_item,
    purge_url,
    raw_target,
    request_bypass,
    storable,
    stored_headers,
    tag_list,
    would_store,
)
from gateway.http.response import http_date

WP = CachePolicy.build(ttl=600, bypass_cookies=DEFAULT_BYPASS_COOKIES, bypass_paths=DEFAULT_BYPASS_PATHS,
                       ignore_params=DEFAULT_IGNORE_PARAMS, vary=["X-Device"])
NOW = 1_800_000_000.0


@pytest.mark.parametrize(("method", "path", "headers", "why"), [
    (b"GET", "/", [], None),
    (b"HEAD", "/hello-world/", [(b"cookie", b"wp-settings-1=x; _ga=GA1")], None),
    (b"POST", "/", [], "method"),
    (b"GET", "/", [(b"cookie", b"a=1; wordpress_logged_in_abc123=admin%7C1")], "cookie wordpress_logged_in_abc123"),
    (b"GET", "/", [(b"cookie", b"wp-postpass_0123=x")], "cookie wp-postpass_0123"),
    (b"GET", "/", [(b"cookie", b"comment_author_5f=Ann")], "cookie comment_author_5f"),
    (b"GET", "/", [(b"cookie", b"woocommerce_items_in_cart=1")], "cookie woocommerce_items_in_cart"),
    (b"GET", "/", [(b"cookie", b"x=1"), (b"cookie", b"wp_woocommerce_session_9=y")],
     "cookie wp_woocommerce_session_9"),
    # as PHP names them in $_COOKIE (PHP 8.2: "." and " " and a lone "[" are "_", name[x] is an array "name")
    (b"GET", "/", [(b"cookie", b"wordpress.logged.in_abc=admin%7C1")], "cookie wordpress_logged_in_abc"),
    (b"GET", "/", [(b"cookie", b"a=1;  wordpress logged_in_abc=admin%7C1")], "cookie wordpress_logged_in_abc"),
    (b"GET", "/", [(b"cookie", b"wordpress[logged_in_abc=admin%7C1")], "cookie wordpress_logged_in_abc"),
    (b"GET", "/", [(b"cookie", b"woocommerce_items_in_cart[x]=1")], "cookie woocommerce_items_in_cart"),
    (b"GET", "/", [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"cookie", b"comment_author_5f=Ann")],
     "cookie comment_author_5f"),  # HTTP/2's crumbs, one cookie a field
    (b"GET", "/", [(b"cookie", b"%77ordpress_logged_in_abc=x; Wordpress_logged_in_abc=y")], None),  # not WP's
    (b"GET", "/wp-admin/edit.php", [], "path"),
    (b"GET", "/wp-login.php", [], "path"),
    (b"GET", "/wp-json/wp/v2/posts", [], "path"),
    (b"GET", "/cart/", [], "path"),
    (b"GET", "/", [(b"authorization", b"Basic eDp5")], "authorization"),
])
def test_which_requests_bypass(method, path, headers, why) -> None:
    assert request_bypass(WP, method, path, headers) == why


def test_the_key_sorts_the_query_and_drops_tracking_parameters() -> None:
    def key(query: str, headers=()) -> bytes:
        return cache_key(WP, https=False, host=b"example.com", path="/p/", query=query, headers=list(headers)).key

    assert key("b=2&a=1") == key("a=1&b=2") == key("utm_source=x&a=1&fbclid=y&b=2&gclid=z&utm_medium=m")
    assert key("a=1&b=2").startswith(b"http://example.com/p/?a=1&b=2")
    assert key("a=%7e") == key("a=~")
    assert key("x[]=2&b=1&x[]=1") != key("x[]=1&b=1&x[]=2")  # one name's values keep their order
    assert key("x[]=2&b=1&x[]=1") == key("b=1&x[]=2&x[]=1")
    assert key("a=1") != key("a=2") != key("")
    assert key("", [(b"x-device", b"mobile")]) != key("", [(b"x-device", b"desktop")])
    assert key("", [(b"user-agent", b"a")]) == key("", [(b"user-agent", b"b")])
    https = cache_key(WP, https=True, host=b"example.com", path="/p/", query="", headers=[]).key
    assert https != key("")
    other = cache_key(WP, https=False, host=b"other.example", path="/p/", query="", headers=[]).key
    assert other != key("")


def test_parameters_left_out_of_the_key_are_left_out_of_the_query() -> None:
    assert drop_params(b"b=2&utm_source=%3Cscript%3E&a=1&fbclid=x&utm%5Fmedium=y", WP.ignore_params) == b"b=2&a=1"
    assert drop_params(b"utm_source=x", WP.ignore_params) == b""
    assert drop_params(b"a=1&&b", WP.ignore_params) == b"a=1&&b"


def test_request_headers_php_reads_are_keyed_as_sent() -> None:
    def key(*headers: tuple[bytes, bytes]) -> bytes:
        return cache_key(WP, https=False, host=b"example.com", path="/p/", query="", headers=list(headers)).key

    plain = key((b"host", b"example.com"))
    for variant in (b"example.com:1234", b"example.com.", b"EXAMPLE.com"):  # one host name, another page to WordPress
        assert key((b"host", variant)) != plain
    for name in (b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port", b"x-original-url"):
        assert key((b"host", b"example.com"), (name, b"evil.example")) != plain
    assert key((b"host", b"example.com"), (b"forwarded", b"for=192.0.2.1;host=evil.example")) != plain
    # what differs per client is not keyed: behind a proxy every visitor shares the entry
    assert key((b"host", b"example.com"), (b"forwarded", b"for=192.0.2.1;proto=https")) == \
        key((b"host", b"example.com"), (b"forwarded", b"for=192.0.2.9;proto=https"))
    assert key((b"host", b"example.com"), (b"x-forwarded-for", b"192.0.2.1")) == plain
    assert isinstance(storable(WP, b"GET", 200, [(b"vary", b"X-Forwarded-Proto, Host")], 1, NOW), Lifetime)


def test_the_raw_path_is_the_key_not_the_normalised_one() -> None:
    assert raw_target(b"/a/../b?x=1#f") == ("/a/../b", "x=1")
    assert raw_target(b"http://example.com/b?x") == ("/b", "x")
    assert raw_target(b"https://example.com") == ("/", "")


def test_lifetime_from_php_headers_or_the_ttl() -> None:
    def life(*headers: tuple[bytes, bytes], status: int = 200, size: int | None = 10, method: bytes = b"GET"):
        return storable(WP, method, status, list(headers), size, NOW)

    assert life() == Lifetime(600.0, 0.0, 0.0)
    assert life((b"cache-control", b"public, max-age=60")).fresh == 60
    assert life((b"cache-control", b"max-age=60, s-maxage=300")).fresh == 300
    assert life((b"x-accel-expires", b"5"), (b"cache-control", b"max-age=60")).fresh == 5
    # nginx's absolute form: until that Unix time (past: not stored, not the ttl)
    assert life((b"x-accel-expires", b"@%d" % (NOW + 30)), (b"cache-control", b"max-age=60")).fresh == 30
    assert life((b"x-accel-expires", b"@%d" % (NOW - 30))) == "expires now"
    assert life((b"expires", http_date(NOW + 120)), (b"date", http_date(NOW))).fresh == 120
    assert life((b"expires", http_date(NOW + 120))).fresh == 120
    assert life((b"cache-control", b"max-age=10, stale-while-revalidate=30, stale-if-error=600")) == \
        Lifetime(10.0, 30.0, 600.0)
    assert life(status=301).fresh == 600 and life(status=404).fresh == 600


@pytest.mark.parametrize(("headers", "status", "size", "method", "why"), [
    ([(b"set-cookie", b"s=1")], 200, 10, b"GET", "set-cookie"),
    ([(b"cache-control", b"no-store")], 200, 10, b"GET", "cache-control no-store"),
    ([(b"cache-control", b"private, max-age=60")], 200, 10, b"GET", "cache-control private"),
    ([(b"cache-control", b"no-cache, must-revalidate, max-age=0")], 200, 10, b"GET", "cache-control no-cache"),
    ([(b"cache-control", b"max-age=0")], 200, 10, b"GET", "expires now"),
    ([(b"expires", b"Wed, 11 Jan 1984 05:00:00 GMT")], 200, 10, b"GET", "expires now"),
    ([(b"expires", b"0")], 200, 10, b"GET", "expires now"),
    ([(b"x-accel-expires", b"0"), (b"cache-control", b"max-age=60")], 200, 10, b"GET", "expires now"),
    ([(b"vary", b"*")], 200, 10, b"GET", "vary *"),
    ([(b"vary", b"Accept-Encoding, Cookie")], 200, 10, b"GET", "vary cookie"),
    ([(b"content-encoding", b"gzip")], 200, 10, b"GET", "content-encoding"),
    ([(b"x-accel-redirect", b"/protected/a.zip")], 200, 10, b"GET", "x-accel-redirect"),
    ([(b"X-Sendfile", b"/srv/a.zip")], 200, 10, b"GET", "x-accel-redirect"),
    ([], 500, 10, b"GET", "status 500"),
    ([], 302, 10, b"GET", "status 302"),
    ([], 200, None, b"GET", "streamed"),
    ([], 200, 3 * 1024 * 1024, b"GET", "too large"),
    ([], 200, 10, b"HEAD", "method"),
])
def test_what_is_never_stored(headers, status, size, method, why) -> None:
    assert storable(WP, method, status, headers, size, NOW) == why


def test_vary_on_accept_encoding_or_a_keyed_header_is_stored() -> None:
    assert isinstance(storable(WP, b"GET", 200, [(b"vary", b"Accept-Encoding, X-Device")], 1, NOW), Lifetime)


def test_an_entry_is_fresh_then_stale_then_for_errors_then_expired() -> None:
    life = Lifetime(10, 5, 100)
    assert [freshness(0, life, t) for t in (0, 9.9, 10, 14.9, 15, 114.9, 115)] == [
        Freshness.FRESH, Freshness.FRESH, Freshness.STALE, Freshness.STALE, Freshness.ERROR_ONLY,
        Freshness.ERROR_ONLY, Freshness.EXPIRED]
    assert freshness(0, Lifetime(10, 0, 0), 10) is Freshness.EXPIRED


def test_cache_control_parsing() -> None:
    assert cache_control([(b"Cache-Control", b'max-age=5, private="set-cookie", no-transform')]) == {
        "max-age": "5", "private": "set-cookie", "no-transform": ""}


def test_php_instructions_and_hop_headers_are_not_stored() -> None:
    headers = [(b"content-type", b"text/html"), (b"content-length", b"5"), (b"x-cache-tags", b"post-1"),
               (b"x-cache-purge", b"/"), (b"server-timing", b"php;dur=3"), (b"link", b"<x>"),
               (b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")]
    assert stored_headers(headers) == [(b"content-type", b"text/html"), (b"link", b"<x>")]
    assert tag_list([(b"x-cache-tags", b"post-1, home"), (b"X-Cache-Tags", b"feed")]) == {"post-1", "home", "feed"}


def _where(host: str, path: str, query: str = ""):
    return cache_key(WP, https=True, host=host.encode(), path=path, query=query, headers=[])


def test_purge_items_match_paths_prefixes_tags_and_everything() -> None:
    post, post_q = _where("a.example", "/p/"), _where("a.example", "/p/", "replytocom=5")
    home = _where("a.example", "/")
    other = _where("b.example", "/p/")
    item = purge_item("/p/", "a.example")
    assert [item.matches(w, frozenset()) for w in (post, post_q, home, other)] == [True, True, False, False]
    item = purge_item("/p/?replytocom=5", "a.example")
    assert [item.matches(w, frozenset()) for w in (post, post_q)] == [False, True]
    item = purge_item("/p*", "a.example")
    assert [item.matches(w, frozenset()) for w in (post, post_q, home, other)] == [True, True, False, False]
    item = purge_item("tag:post-1", "a.example")
    assert item.matches(home, frozenset({"post-1"})) and not item.matches(post, frozenset({"post-2"}))
    assert purge_item("*", "a.example").matches(other, frozenset())


def test_admin_urls() -> None:
    post, other = _where("a.example", "/p/"), _where("b.example", "/p/")
    assert purge_url("http://A.example:8080/p/").matches(post, frozenset())
    assert not purge_url("https://a.example/p/").matches(other, frozenset())
    assert purge_url("/p/").matches(other, frozenset())
    assert purge_url("*") == Purge(everything=True)
    assert purge_url("https://a.example/", prefix=True).matches(post, frozenset())
    assert purge_url("https://a.example/q*").matches(post, frozenset()) is False
    for bad in ("ftp://x/", "p/", "https:///p"):
        with pytest.raises(ValueError):
            purge_url(bad)


def test_conditional_requests_against_an_entry() -> None:
    stored = [(b"etag", b'"abc"'), (b"last-modified", http_date(NOW - 60))]
    assert not_modified([(b"if-none-match", b'"x", W/"abc"')], stored)
    assert not_modified([(b"if-none-match", b"*")], stored)
    assert not not_modified([(b"if-none-match", b'"x"'), (b"if-modified-since", http_date(NOW))], stored)
    assert not_modified([(b"if-modified-since", http_date(NOW))], stored)
    assert not not_modified([(b"if-modified-since", http_date(NOW - 120))], stored)
    assert not not_modified([(b"if-modified-since", b"yesterday")], stored)
    assert not not_modified([(b"if-none-match", b'"abc"')], [])
    assert not not_modified([], stored)


def test_would_store_is_request_bypass_and_storable_together() -> None:
    """The verdict a cacheless site counts (``would_store``, with its short
    cut for plain requests and responses) is the two full checks' on every
    mix of what they read."""
    policies = [WP, CachePolicy.build(ttl=0), CachePolicy.build(ttl=60, statuses=[200], max_entry_size=10),
                CachePolicy.build(ttl=60, bypass_paths=["/admin"])]
    requests = [[], [(b"host", b"a")], [(b"cookie", b"_ga=1")], [(b"cookie", b"wordpress_logged_in_x=1")],
                [(b"authorization", b"Basic eA==")], [(b"x-http-method-override", b"PUT")]]
    responses = [[], [(b"Content-Type", b"text/html")], [(b"Set-Cookie", b"a=1")], [(b"Cache-Control", b"no-store")],
                 [(b"cache-control", b"max-age=0")], [(b"Cache-Control", b"max-age=5")], [(b"Vary", b"Cookie")],
                 [(b"vary", b"Accept-Encoding")], [(b"Content-Encoding", b"gzip")], [(b"X-Accel-Expires", b"0")],
                 [(b"Expires", b"Thu, 01 Jan 1970 00:00:00 GMT")], [(b"X-Sendfile", b"/f")],
                 [(b"X-Accel-Redirect", b"/f")], [(b"date", b"x"), (b"X-Powered-By", b"PHP")]]
    seen = set()
    for policy, method, path, req, status, resp, size in itertools.product(
            policies, [b"GET", b"HEAD", b"POST"], ["/", "/admin/x"], requests, [200, 301, 404, 500], responses,
            [None, 0, 5, 100]):
        full = request_bypass(policy, method, path, req) is None and isinstance(
            storable(policy, b"GET", status, resp, size, time.time()), Lifetime)
        assert would_store(policy, method, path, req, status, resp, size) is full, (policy, method, path, req,
                                                                                     status, resp, size)
        seen.add(full)
    assert seen == {True, False}


_REQ_NAMES = [b"cookie", b"Cookie", b"authorization", b"Authorization", b"x-http-method-override",
              b"X-HTTP-Method-Override", b"x-method-override", b"x-http-method", b"host", b"accept-encoding"]
_RESP_NAMES = [b"set-cookie", b"Set-Cookie", b"SET-COOKIE", b"content-encoding", b"Vary", b"vary", b"Cache-Control",
               b"cache-control", b"X-Accel-Expires", b"x-accel-expires", b"Expires", b"Date", b"X-Sendfile",
               b"X-Accel-Redirect", b"content-type", b"pragma", b"age"]
_VALUES = [b"", b"*", b"0", b"5", b"@0", b"@99999999999", b"max-age=5", b"s-maxage=0", b"private", b"no-cache",
           b"Thu, 01 Jan 1970 00:00:00 GMT", b"a=1", b"wordpress_logged_in=1", b"Accept-Encoding, *", b"cookie",
           b"GET"]


def _fields(names: list[bytes]) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    return st.lists(st.tuples(st.sampled_from(names), st.sampled_from(_VALUES)), max_size=2)


@settings(max_examples=1000)
@given(st.builds(lambda ttl, statuses, size, paths, cookies, vary: CachePolicy.build(
           ttl=ttl, statuses=statuses, max_entry_size=size, bypass_paths=paths, bypass_cookies=cookies, vary=vary),
           st.sampled_from([60, 0.5, 0]), st.sampled_from([[200, 404], [200]]), st.sampled_from([1 << 20, 10]),
           st.sampled_from([[], ["/admin"]]), st.sampled_from([["*"], ["wordpress_logged_in*"], []]),
           st.sampled_from([[], ["cookie"]])),
       st.sampled_from([b"GET", b"HEAD", b"POST", b"get"]), st.sampled_from(["/", "/admin/x"]),
       _fields(_REQ_NAMES), st.sampled_from([200, 404, 500]), _fields(_RESP_NAMES),
       st.sampled_from([5, None, 100, 1 << 21]))
def test_would_store_agrees_with_the_full_checks_on_odd_mixes(policy: CachePolicy, method: bytes, path: str,
                                                              req: list[tuple[bytes, bytes]], status: int,
                                                              resp: list[tuple[bytes, bytes]],
                                                              size: int | None) -> None:
    """Upper-case names either side, a Set-Cookie on a 404, a Vary: *, an
    X-Accel-Expires in the past, a method override: ``would_store``'s short
    cut never answers other than ``request_bypass`` and ``storable``."""
    full = request_bypass(policy, method, path, req) is None and isinstance(
        storable(policy, b"GET", status, resp, size, time.time()), Lifetime)
    assert would_store(policy, method, path, req, status, resp, size) is full
