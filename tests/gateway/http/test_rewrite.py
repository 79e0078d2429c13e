"""Return/rewrite rules and templates (http.rewrite): sans-IO, no sockets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.app.routing import BadRequestTarget, normalize_path
from gateway.config import rewrite as config_rewrite
from gateway.http.rewrite import (
    MAX_REWRITES,
    VARIABLES,
    Answer,
    Loop,
    Regex,
    Routed,
    Rule,
    SiteRules,
    Template,
    Vars,
    select,
)

BASE = Vars(scheme="https", host="www.example.com", request_uri="/a%20b/c?x=1")


def rule(name: str = "r", paths: tuple[str, ...] = (), regex: str = "", methods: tuple[str, ...] = (),
         code: int = 0, to: str | None = None) -> Rule:
    return Rule(name, paths, Regex(regex) if regex else None, frozenset(methods), code,
                Template.parse(to) if to is not None else None)


def test_config_and_runtime_know_the_same_variables():
    assert config_rewrite.VARIABLES == VARIABLES


@pytest.mark.parametrize(("text", "wire", "want"), [
    ("$scheme://example.com$request_uri", True, ("https://example.com/a%20b/c?x=1", None)),
    ("${scheme}://example.com${request_uri}", True, ("https://example.com/a%20b/c?x=1", None)),
    ("/cache$uri/index.html", False, ("/cache/a b/c/index.html", None)),
    ("/index.php?$args", False, ("/index.php", "y=2&z")),
    ("/index.php$is_args$args", False, ("/index.php", "y=2&z")),
    ("/new$uri", True, ("/new/a%20b/c", None)),  # decoded values are encoded on the wire...
    ("/p?u=$uri", False, ("/p", "u=/a%20b/c")),  # ...and always in a query
    ("/host/$host/$1", False, ("/host/www.example.com/one", None)),
    ("/$2/$9", False, ("//", None)),  # unmatched and missing groups are empty
    ("/$query_string", False, ("/y=2&z", None)),
])
def test_template_expansion(text, wire, want):
    v = Vars("https", "www.example.com", "/a%20b/c?x=1", "/a b/c", "y=2&z", ("one", None))
    assert Template.parse(text).expand(v, wire=wire) == want


def test_is_args_gives_nothing_without_a_query():
    assert Template.parse("/index.php$is_args$args").expand(Vars(uri="/x"), wire=False) == ("/index.php", None)


def test_unknown_variable_is_refused():
    with pytest.raises(ValueError, match=r"\$http_cookie is not a variable"):
        Template.parse("/c/$http_cookie")


def test_regex_first_in_order_then_longest_prefix():
    rules = [rule("short", paths=("/a/",)), rule("long", paths=("/a/b/",)), rule("re1", regex=r"\.zip$"),
             rule("re2", regex=r"b")]
    assert select(rules, "/a/b/c", "GET").rule.name == "re2"  # type: ignore[union-attr]
    assert select(rules, "/a/b/c.zip", "GET").rule.name == "re1"  # type: ignore[union-attr]
    assert select(rules, "/a/c", "GET").rule.name == "short"  # type: ignore[union-attr]
    assert select(rules[:2], "/a/b/c", "GET").rule.name == "long"  # type: ignore[union-attr]
    assert select(rules, "/x", "GET") is None


def test_methods_limit_a_rule_and_head_counts_as_get():
    rules = [rule("any", paths=("/",)), rule("post", paths=("/wp-login.php",), methods=("POST",)),
             rule("get", paths=("/feed",), methods=("GET",))]
    assert select(rules, "/wp-login.php", "POST").rule.name == "post"  # type: ignore[union-attr]
    assert select(rules, "/wp-login.php", "GET").rule.name == "any"  # type: ignore[union-attr]
    assert select(rules, "/feed", "HEAD").rule.name == "get"  # type: ignore[union-attr]


def apply(rules: SiteRules, path: str, query: bytes = b"", method: str = "GET"):
    return rules.apply(method, path, query, BASE, normalize_path)


def test_host_canonicalisation_redirect():
    rules = SiteRules((rule("return[0]", paths=("/",), code=301, to="$scheme://example.com$request_uri"),))
    assert apply(rules, "/a b/c", b"x=1") == Answer(301, "return[0]", location="https://example.com/a%20b/c?x=1")


def test_return_with_regex_groups_encodes_them_in_location():
    rules = SiteRules((rule(regex=r"^/blog/(\d+)/(.*)$", code=308, to="/posts/$1?slug=$2"),))
    out = apply(rules, "/blog/42/héllo wörld")
    assert isinstance(out, Answer) and out.location == "/posts/42?slug=h%C3%A9llo%20w%C3%B6rld"


def test_return_of_a_body_and_of_a_bare_code():
    rules = SiteRules((rule("t", paths=("/health",), code=200, to="ok $host"), rule("f", paths=("/x",), code=403)))
    assert apply(rules, "/health") == Answer(200, "t", body="ok www.example.com")
    assert apply(rules, "/x/y") == Answer(403, "f")


def test_prefix_rewrite_replaces_the_prefix_and_keeps_the_query():
    rules = SiteRules(rewrites=(rule("rewrite[0]", paths=("/old/",), to="/new/"),))
    assert apply(rules, "/old/a/b", b"q=1") == Routed("/new/a/b", b"q=1", ("rewrite[0]",))
    assert apply(rules, "/older", b"q=1") == Routed("/older", b"q=1")
    # a "to" with a query: the rest of the path follows it there, encoded
    rules = SiteRules(rewrites=(rule("rewrite[0]", paths=("/old/",), to="/index.php?page="),))
    assert apply(rules, "/old/a b/c", b"q=1") == Routed("/index.php", b"page=a%20b/c", ("rewrite[0]",))


def test_regex_rewrite_with_a_query_sets_the_query():
    rules = SiteRules(rewrites=(rule(regex=r"^/product/([^/]+)/?$", to="/index.php?product=$1&$args"),))
    assert apply(rules, "/product/blue shoe", b"ref=x") == Routed("/index.php", b"product=blue%20shoe&ref=x", ("r",))
    # "?" at the end: an empty query (as nginx)
    rules = SiteRules(rewrites=(rule(regex=r"^/drop", to="/x?"),))
    assert apply(rules, "/drop", b"a=1") == Routed("/x", b"", ("r",))


def test_the_rewritten_uri_is_matched_again_against_return_and_rewrite_rules():
    rules = SiteRules(returns=(rule("gone", paths=("/c/",), code=410),),
                      rewrites=(rule("ab", paths=("/a/",), to="/b/"), rule("bc", paths=("/b/",), to="/c/")))
    assert apply(rules, "/a/x") == Answer(410, "gone")
    rules = SiteRules(rewrites=rules.rewrites)
    assert apply(rules, "/a/x") == Routed("/c/x", b"", ("ab", "bc"))


def test_a_loop_is_found_at_once():
    rules = SiteRules(rewrites=(rule("front", regex=r"^/(.*)$", to="/index.php?q=$1"),))
    out = apply(rules, "/hello")
    assert out == Loop(("/hello", "/index.php", "/index.php"), ("front", "front"))
    # a regex the target does not match ends it
    rules = SiteRules(rewrites=(rule("front", regex=r"^/([^.]*)$", to="/index.php?q=$1"),))
    assert apply(rules, "/hello") == Routed("/index.php", b"q=hello", ("front",))


def test_a_growing_rewrite_is_stopped_by_the_bound():
    rules = SiteRules(rewrites=(rule("grow", paths=("/a/",), to="/a/a/"),))
    out = apply(rules, "/a/x")
    assert isinstance(out, Loop) and len(out.rules) == MAX_REWRITES + 1


def test_a_rewrite_above_the_root_raises_for_a_400():
    rules = SiteRules(rewrites=(rule(paths=("/x",), to="/../$args"),))
    with pytest.raises(BadRequestTarget):
        apply(rules, "/x", b"..")


def test_a_rewritten_path_is_normalised():
    rules = SiteRules(rewrites=(rule(regex=r"^/go/(.*)$", to="/static/$1"),))
    # a path from split_target is normalised already; the expansion is normalised again
    assert apply(rules, "/go//b") == Routed("/static/b", b"", ("r",))


def test_regex_groups_are_decoded_text_and_not_utf8_paths_still_match():
    r = Regex(r"^/([^/]+)/(x)?(.*)$")
    assert r.search("/é/rest") == ("é", None, "rest")
    # a byte that is no UTF-8 character cannot dodge a rule
    assert r.search("/\udcff/rest") == ("\udcff", None, "rest")
    assert Regex(r"^/private/.*[.]php$").search("/private/\udcff.php") == ()
    assert Regex("^/café/(.*)$").search("/café/x") == ("x",)
    with pytest.raises(ValueError, match="not a valid RE2 regular expression: invalid perl operator"):
        Regex(r"^/(?!index)")


def test_a_pattern_that_backtracks_for_minutes_in_re_is_linear_here():
    """The ReDoS guard: with Python's re this match takes minutes (measured:
    ~400 s at 8 KiB); RE2 answers at once. A subprocess, so a regression
    fails on the timeout instead of hanging the suite."""
    code = ("from gateway.http.rewrite import Regex; "
            "assert Regex(r'^/(.*)/(.*)/(.*)[.]x$').search('/' + 'a/' * 16000) is None; "
            "assert Regex(r'(a+)+$').search('a' * 32000 + '!') is None")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_proxied_request_goes_upstream_with_the_rewritten_target():
    from gateway.app.rewrite import upstream_request
    from gateway.http.request import Request

    req = Request(b"GET", b"/shop/a%20b?x=1", b"1.1", [], ("192.0.2.1", 1), ("192.0.2.2", 80), None, "id")
    assert upstream_request(req, Routed("/shop/a b", b"x=1")) is req
    assert upstream_request(req, Routed("/store/a b", b"x=1", ("r",))).target == b"/store/a%20b?x=1"
    assert upstream_request(req, Routed("/store/", b"", ("r",))).target == b"/store/"


@pytest.mark.parametrize("request_uri", ["//evil.example/x", "/\\evil.example/x", "///evil.example/x"])
def test_a_clients_double_slash_through_a_variable_is_no_open_redirect(request_uri):
    """A Location that starts with "//" or "/\\" is another host to a browser: when a variable made
    that start (the client's $request_uri), it is a path here; a literal "//cdn..." is kept."""
    base = Vars(scheme="https", host="example.com", request_uri=request_uri)
    rules = SiteRules((rule("r", paths=("/",), code=302, to="$request_uri"),))
    assert rules.apply("GET", "/evil.example/x", b"", base, normalize_path) == Answer(
        302, "r", location="/evil.example/x")
    rules = SiteRules((rule("r", regex="^(.*)$", code=302, to="/$1"),))
    assert rules.apply("GET", "/evil.example/x", b"", base, normalize_path) == Answer(
        302, "r", location="/evil.example/x")
    cdn = SiteRules((rule("r", paths=("/",), code=302, to="//cdn.example.com$uri"),))
    assert cdn.apply("GET", "/a", b"", base, normalize_path) == Answer(302, "r", location="//cdn.example.com/a")
