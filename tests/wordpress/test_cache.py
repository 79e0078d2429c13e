"""The page cache in front of a real WordPress (Debian's package, MariaDB, a
spawned php-fpm) with the mu-plugin from contrib/: what a visitor, a logged-in
author and a commenter see."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import trio

from gateway.config import validate
from gateway.serve.process import Running, serve

from .conftest import Browser
from .test_wordpress import publish
from .wp_parts import WordPress

MU_PLUGIN = Path(__file__).resolve().parents[2] / "contrib" / "wordpress" / "gateway-cache.php"


@pytest.fixture
def mu_plugin(wordpress: WordPress):
    target = wordpress.content_dir / "mu-plugins" / MU_PLUGIN.name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(MU_PLUGIN, target)
    yield
    target.unlink()


async def start(wordpress: WordPress, nursery: trio.Nursery, tmp_path: Path, **cache) -> Browser:
    site = wordpress.site_config() | {"cache": {"enabled": True, "ttl": "1h", **cache}}
    cfg = validate({
        # (trusted: the comment below comes "from" another address, so WordPress's comment-flood check
        # does not hold it against later tests' visitors from 127.0.0.1)
        "server": {"listen": ["127.0.0.1:0"], "access_log": "off", "runtime_dir": str(tmp_path / "run"),
                   "trusted_proxies": ["127.0.0.1"]},
        "admin": {"listen": "off"},
        "backends": {"php": {"pool_size": 2, "idle_timeout": "30s", "php_fpm": {"user": "root"}}},
        "sites": {"wordpress": site},
    })
    running: Running = await nursery.start(partial(serve, cfg, handle_signals=False))
    return Browser(running.listeners[0].socket.getsockname()[1])


async def test_anonymous_home_is_a_miss_then_a_hit_and_a_logged_in_user_bypasses(wordpress, nursery, tmp_path,
                                                                                mu_plugin):
    visitor = await start(wordpress, nursery, tmp_path)
    author = Browser(visitor.port)
    await author.login()
    first = await visitor.get("/")
    assert first.header("x-cache") in ("MISS", "EXPIRED") and first.header("x-cache-tags") is None
    hit = await visitor.get("/")
    assert (hit.status, hit.header("x-cache"), hit.body) == (200, "HIT", first.body)
    # the author never sees the cached page (it has their admin bar), nor stores theirs
    mine = await author.get("/")
    assert mine.header("x-cache") == "BYPASS" and b"wp-admin-bar" in mine.body
    again = await visitor.get("/")
    assert again.header("x-cache") == "HIT" and b"wp-admin-bar" not in again.body


async def test_publishing_and_commenting_purge_the_right_pages(wordpress, nursery, tmp_path, mu_plugin):
    visitor = await start(wordpress, nursery, tmp_path)
    author = Browser(visitor.port)
    await author.login()
    post = await publish(author, "Cached gateway post")
    other = await publish(author, "Untouched gateway post")
    path, other_path = "/cached-gateway-post/", "/untouched-gateway-post/"
    for p in ("/", path, other_path):
        await visitor.get(p)
        assert (await visitor.get(p)).header("x-cache") == "HIT"
    # the author comments (approved at once): the post's page and the lists go, the other post stays
    form = f"comment=A+fresh+gateway+comment&comment_post_ID={post['id']}&comment_parent=0"
    r = await author.request("POST", "/wp-comments-post.php",
                             [("Content-Type", "application/x-www-form-urlencoded"),
                              ("X-Forwarded-For", "192.0.2.55")], form.encode())
    assert r.status == 302 and r.header("x-cache-purge") is None
    page = await visitor.get(path)
    assert page.header("x-cache") == "MISS" and b"A fresh gateway comment" in page.body
    assert (await visitor.get(other_path)).header("x-cache") == "HIT"
    # a new post: the home page lists it at once
    await publish(author, "Brand new gateway post")
    home = await visitor.get("/")
    assert home.header("x-cache") == "MISS" and b"Brand new gateway post" in home.body
    assert (await visitor.get(other_path)).header("x-cache") == "HIT"
    assert json.loads((await visitor.get(f"/wp-json/wp/v2/posts/{other['id']}")).body)["id"] == other["id"]


async def test_set_cookie_responses_are_never_cached(wordpress, nursery, tmp_path):
    # no bypass paths: the login page goes through the cache's own rules, and its Set-Cookie keeps it out
    visitor = await start(wordpress, nursery, tmp_path, bypass_paths=[])
    answers = [await Browser(visitor.port).get("/wp-login.php") for _ in range(2)]
    assert [r.header("x-cache") for r in answers] == ["MISS", "MISS"]
    assert all(r.header("set-cookie") for r in answers)


async def test_a_host_variant_does_not_store_its_links_for_every_visitor(wordpress, nursery, tmp_path):
    """A wp-config that builds WP_HOME from the Host header (this install's,
    and many a Docker image's) links to whatever Host a visitor sent; keyed on
    the host name alone (no port), one visitor's Host was every visitor's links."""
    visitor = await start(wordpress, nursery, tmp_path)
    attacker = Browser(visitor.port)
    attacker.host = "127.0.0.1:1"  # one host name, another port: the same site to the gateway
    poisoned = await attacker.get("/")
    assert poisoned.status == 200 and b"http://127.0.0.1:1/" in poisoned.body
    page = await visitor.get("/")
    assert (page.status, page.header("x-cache")) == (200, "MISS")
    assert b"http://127.0.0.1:1/" not in page.body and f"http://127.0.0.1:{visitor.port}/".encode() in page.body
    assert (await visitor.get("/")).header("x-cache") == "HIT"
