"""HTTP-01: ``/.well-known/acme-challenge/TOKEN`` is answered from the state
dir on every site, before routing (deny rules, PHP), and only for a token
being validated; other tokens go on to routing as any path."""

from __future__ import annotations

from gateway.app.site import App
from gateway.config import validate
from gateway.serve.process import pool_from_config
from gateway.tls.store import StateDir
from tests.gateway.app.test_app import client_for
from tests.helpers import FakeFpm, php_output

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


def make_app(tmp_path, nursery, fpm: FakeFpm):
    (tmp_path / "www").mkdir()
    cfg = validate({
        "server": {"listen": ["127.0.0.1:0", "127.0.0.1:0 tls"]},
        "acme": {"state_dir": str(tmp_path / "state")},
        "backends": {"php": {"pool_size": 1}},
        "sites": {"shop": {"root": str(tmp_path / "www"), "php": "php", "server_names": ["shop.example"],
                           "tls": {"acme": True}, "deny": ["/.well-known/"]},
                  "blog": {"root": str(tmp_path / "www"), "php": "php", "server_names": ["blog.example"],
                           "default": True}}})
    pool = pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)
    return App(cfg, {"php": pool}), StateDir(str(tmp_path / "state"))


async def test_a_token_being_validated_is_answered_on_every_site_before_routing(tmp_path, nursery):
    async def script(req):
        return [php_output(b"php ran")]

    fpm = FakeFpm(script)
    app, state = make_app(tmp_path, nursery, fpm)
    state.write(state.http_challenge(TOKEN), f"{TOKEN}.thumb".encode())
    c = await client_for(app, nursery)
    for host in ("shop.example", "blog.example", "unknown.example"):
        r = await c.request("GET", f"/.well-known/acme-challenge/{TOKEN}", host=host)
        assert (r.status, r.body) == (200, f"{TOKEN}.thumb".encode())
        assert r.header("content-type") == "application/octet-stream"
    r = await c.request("HEAD", f"/.well-known/acme-challenge/{TOKEN}", host="shop.example")
    assert r.status == 200 and r.body == b""
    assert fpm.requests_seen == []  # never PHP


async def test_other_tokens_and_paths_are_routed_as_usual(tmp_path, nursery):
    async def script(req):
        return [php_output(b"php ran")]

    fpm = FakeFpm(script)
    app, state = make_app(tmp_path, nursery, fpm)
    c = await client_for(app, nursery)
    # no validation under way: shop's deny rule answers, blog's front controller runs
    r = await c.request("GET", f"/.well-known/acme-challenge/{TOKEN}", host="shop.example")
    assert r.status == 403
    r = await c.request("GET", "/.well-known/acme-challenge/..%2f..%2fstate", host="shop.example")
    assert r.status == 404  # normalised to /state: not a challenge path at all
    state.write(state.http_challenge(TOKEN), b"x")
    r = await c.request("POST", f"/.well-known/acme-challenge/{TOKEN}", host="shop.example", body=b"")
    assert r.status == 403  # only GET and HEAD are answered
