"""Header rules, sans-IO: which rules apply to a path and a status, in what
order, and what a CORS preflight is."""

from __future__ import annotations

from gateway.http.header_rules import HeaderRule, HeaderRules

SECURITY = HeaderRule.build(["/"], add={"X-Frame-Options": "SAMEORIGIN"}, set={"X-Content-Type-Options": "nosniff"})
API = HeaderRule.build(["/wp-json/", "/api"], set={"Access-Control-Allow-Origin": "*", "X-Frame-Options": "DENY"},
                       remove=["X-Powered-By"], always=True, preflight=True)


def names(headers):
    return [(n.decode(), v.decode()) for n, v in headers]


def test_every_matching_rule_applies_the_longest_prefix_last():
    rules = HeaderRules([API, SECURITY])  # written in the other order: the prefix length decides
    out = rules.apply("/wp-json/wp/v2/posts", 200, [(b"X-Powered-By", b"PHP/8.2"), (b"Content-Type", b"text/html")])
    assert names(out) == [("Content-Type", "text/html"), ("x-content-type-options", "nosniff"),
                          ("access-control-allow-origin", "*"), ("x-frame-options", "DENY")]


def test_a_path_outside_a_rule_gets_only_the_others():
    out = HeaderRules([SECURITY, API]).apply("/blog/", 200, [(b"X-Powered-By", b"PHP/8.2")])
    assert names(out) == [("X-Powered-By", "PHP/8.2"), ("x-content-type-options", "nosniff"),
                          ("x-frame-options", "SAMEORIGIN")]
    # "/api" is a prefix as deny's are: "/apix" is under it too, "/ap" is not
    assert HeaderRules([API]).apply("/apix", 200, []) != []
    assert HeaderRules([API]).apply("/ap", 200, []) == []


def test_add_keeps_a_header_of_the_same_name_set_replaces_it_in_any_case():
    rule = HeaderRule.build(["/"], add={"Link": "<a>"}, set={"Cache-Control": "no-store"})
    out = HeaderRules([rule]).apply("/", 200, [(b"Link", b"<b>"), (b"Cache-Control", b"max-age=60")])
    assert names(out) == [("Link", "<b>"), ("cache-control", "no-store"), ("link", "<a>")]


def test_without_always_only_success_and_redirect_statuses():
    rules = HeaderRules([SECURITY])
    for status in (200, 201, 204, 206, 301, 302, 303, 304, 307, 308):
        assert rules.apply("/", status, []), status
    for status in (400, 403, 404, 429, 500, 502, 503, 504, 202, 300):
        assert rules.apply("/", status, []) == [], status
    assert HeaderRules([API]).apply("/api/x", 404, [])  # always


def test_preflight_is_options_with_a_request_method_under_a_preflight_rule():
    rules = HeaderRules([SECURITY, API])
    acrm = [(b"origin", b"https://app.example"), (b"access-control-request-method", b"POST")]
    assert rules.is_preflight("/wp-json/x", b"OPTIONS", acrm)
    assert not rules.is_preflight("/wp-json/x", b"OPTIONS", acrm[:1])  # a plain OPTIONS goes to the app
    assert not rules.is_preflight("/wp-json/x", b"POST", acrm)
    assert not rules.is_preflight("/blog/", b"OPTIONS", acrm)
    assert not HeaderRules([SECURITY]).is_preflight("/", b"OPTIONS", acrm)
