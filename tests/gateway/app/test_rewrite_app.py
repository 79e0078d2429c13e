"""Return and rewrite rules through the App (in memory, a FastCGI stand-in,
autojump clock): what a client sees and what PHP is given."""

from __future__ import annotations

import logging
from typing import Any

from gateway.app.site import App
from gateway.config import validate
from gateway.serve.process import pool_from_config
from tests.gateway.app.test_app import client_for
from tests.helpers import FakeFpm, php_output


def make_app(tmp_path, nursery, fpm: FakeFpm, **site: Any) -> App:
    (tmp_path / "index.php").write_text("front controller")
    (tmp_path / "style.css").write_text("body{}")
    cfg = validate({"backends": {"php": {"pool_size": 1}},
                    "sites": {"s": {"root": str(tmp_path), "php": "php", "server_names": ["example.com"],
                                    "default": True, **site},
                              "www": {"server_names": ["www.example.com"],
                                      "return": [{"paths": ["/"], "code": 301,
                                                  "to": "$scheme://example.com$request_uri"}]}}})
    pool = pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)
    return App(cfg, {"php": pool})


def echo_fpm() -> FakeFpm:
    async def script(req):
        p = req.params
        return [php_output(b"%s|%s|%s" % (p[b"SCRIPT_NAME"], p[b"REQUEST_URI"], p[b"QUERY_STRING"]))]
    return FakeFpm(script)


async def test_www_to_apex_from_a_site_without_root(tmp_path, nursery, autojump_clock):
    fpm = echo_fpm()
    app = make_app(tmp_path, nursery, fpm)
    c = await client_for(app, nursery)
    for method in ("GET", "POST", "HEAD"):
        r = await c.request(method, "/a%20b/?x=1", host="www.example.com")
        assert (r.status, r.header("location")) == (301, "http://example.com/a%20b/?x=1")
    r = await c.request("GET", "/style.css", host="example.com")
    assert (r.status, r.body) == (200, b"body{}")
    assert fpm.requests_seen == []


async def test_return_rules_answer_before_routing(tmp_path, nursery, autojump_clock):
    fpm = echo_fpm()
    app = make_app(tmp_path, nursery, fpm, **{"return": [
        {"paths": ["/old/"], "code": 302, "to": "/new/"},
        {"regex": r"^/p/(\d+)$", "code": 308, "to": "https://$host/posts/$1"},
        {"paths": ["/xmlrpc.php"], "code": 403, "to": "no xmlrpc here"},
        {"paths": ["/wp-login.php"], "methods": ["PUT"], "code": 405},
        {"paths": ["/ping"], "code": 204},
    ]})
    (tmp_path / "wp-login.php").write_text("login")
    c = await client_for(app, nursery)
    r = await c.request("GET", "/old/x", host="example.com")
    assert (r.status, r.header("location")) == (302, "http://example.com/new/")
    r = await c.request("GET", "/p/42", host="example.com")
    assert (r.status, r.header("location")) == (308, "https://example.com/posts/42")
    r = await c.request("POST", "/xmlrpc.php", host="example.com", body=b"<x/>")
    assert (r.status, r.body, r.header("content-type")) == (403, b"no xmlrpc here", "text/plain; charset=utf-8")
    r = await c.request("HEAD", "/xmlrpc.php", host="example.com")
    assert (r.status, r.body, r.header("content-length")) == (403, b"", "14")
    r = await c.request("PUT", "/wp-login.php", host="example.com", body=b"")
    assert r.status == 405 and b"405" in r.body
    r = await c.request("GET", "/ping", host="example.com")
    assert (r.status, r.body) == (204, b"")
    r = await c.request("GET", "/wp-login.php", host="example.com")  # the method does not match: PHP
    assert r.status == 200 and fpm.requests_seen


async def test_rewrites_reach_php_with_the_original_request_uri(tmp_path, nursery, autojump_clock):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "item.css").write_text("item")
    app = make_app(tmp_path, nursery, echo_fpm(), rewrite=[
        {"regex": r"^/product/([a-z-]+)/?$", "to": "/index.php?product=$1&$args"},
        {"paths": ["/shop/"], "to": "/store/"},
    ])
    c = await client_for(app, nursery)
    r = await c.request("GET", "/product/blue-shoe/?ref=x", host="example.com")
    assert (r.status, r.body) == (200, b"/index.php|/product/blue-shoe/?ref=x|product=blue-shoe&ref=x")
    r = await c.request("GET", "/shop/item.css", host="example.com")
    assert (r.status, r.body) == (200, b"item")


async def test_a_rewrite_loop_is_one_log_line_and_a_500(tmp_path, nursery, autojump_clock, caplog):
    fpm = echo_fpm()
    app = make_app(tmp_path, nursery, fpm, rewrite=[{"paths": ["/a"], "to": "/b"}, {"paths": ["/b"], "to": "/a"}])
    c = await client_for(app, nursery)
    with caplog.at_level(logging.INFO, logger="gateway.app"):
        r = await c.request("GET", "/a/x", host="example.com")
    assert r.status == 500 and fpm.requests_seen == []
    lines = [rec.getMessage() for rec in caplog.records if rec.name.startswith("gateway.app")]
    assert len(lines) == 1 and "rewrite loop: /a/x -> /b/x -> /a/x (rewrite[0], rewrite[1]) -> 500" in lines[0]
    # the connection goes on: the next request is served
    r = await c.request("GET", "/style.css", host="example.com")
    assert r.status == 200


async def test_a_rewrite_then_a_return_rule_on_the_new_uri(tmp_path, nursery, autojump_clock):
    app = make_app(tmp_path, nursery, echo_fpm(), rewrite=[{"paths": ["/legacy/"], "to": "/old/"}],
                   **{"return": [{"paths": ["/old/"], "code": 410}]})
    c = await client_for(app, nursery)
    r = await c.request("GET", "/legacy/page", host="example.com")
    assert r.status == 410
