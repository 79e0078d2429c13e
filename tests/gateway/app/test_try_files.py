"""try_files with any number of entries (issue 16 item 1): the router on a
real directory tree, no sockets."""

from __future__ import annotations

import pytest

from gateway.app.routing import PhpScript, Redirect, Refuse, Router, StaticFile, split_target
from gateway.config import SiteConfig

SUPERCACHE = ["/wp-content/cache/supercache/$host$uri/index.html", "$uri", "$uri/", "/index.php?$args"]
CACHE = ["/cache$uri/index.html", "$uri", "$uri/", "/index.php?$args"]


@pytest.fixture
def docroot(tmp_path):
    root = tmp_path / "www"
    for name in ("index.php", "style.css", "app.php", "cache/2024/post/index.html", "cache/index.html",
                 "wp-content/cache/supercache/example.com/2024/post/index.html",
                 "wp-content/cache/supercache/example.com/index.html",
                 "wp-content/cache/supercache/.git/index.html", "about.html", "docs/index.html", "ro/x.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "index.html").write_text("secret")
    return root


def route(root, target: bytes, try_files, host: bytes = b"example.com", **site):
    router = Router(SiteConfig(root=str(root), php="php", try_files=try_files, **site))
    path, query = split_target(target)
    return router.route(path, query, host)


@pytest.mark.parametrize("rule", [SUPERCACHE, CACHE])
def test_the_cached_page_is_served_when_present(docroot, rule):
    prefix = "/wp-content/cache/supercache/example.com" if rule is SUPERCACHE else "/cache"
    for target, cached in ((b"/2024/post/", "/2024/post/index.html"), (b"/2024/post", "/2024/post/index.html"),
                           (b"/", "/index.html"), (b"/2024/post/?utm=1", "/2024/post/index.html")):
        r = route(docroot, target, rule)
        assert r == StaticFile(str(docroot) + prefix + cached, prefix + cached), target


@pytest.mark.parametrize("rule", [SUPERCACHE, CACHE])
def test_without_a_cached_page_php_runs_and_static_files_are_unaffected(docroot, rule):
    r = route(docroot, b"/2024/other/?p=2", rule)
    assert isinstance(r, PhpScript) and (r.script_name, r.query) == ("/index.php", b"p=2")
    assert route(docroot, b"/style.css", rule) == StaticFile(str(docroot / "style.css"), "/style.css")
    assert route(docroot, b"/docs", rule) == Redirect("/docs/")
    assert route(docroot, b"/docs/", rule) == StaticFile(str(docroot / "docs/index.html"), "/docs/index.html")


def test_host_is_per_site_and_never_leaves_the_root(docroot):
    # another host has no cache: PHP
    assert isinstance(route(docroot, b"/2024/post/", SUPERCACHE, host=b"other.example"), PhpScript)
    # a hidden segment from Host ("." is allowed in a host name) is skipped, not read
    assert isinstance(route(docroot, b"/", SUPERCACHE, host=b".git"), PhpScript)
    # no Host and no server name: entries with $host are skipped
    assert isinstance(route(docroot, b"/2024/post/", SUPERCACHE, host=b""), PhpScript)
    # the site's server name stands in for a missing Host, as nginx's $host
    r = route(docroot, b"/2024/post/", SUPERCACHE, host=b"", server_names=["example.com"])
    assert isinstance(r, StaticFile)


def test_an_entry_that_would_climb_out_of_the_root_is_skipped(docroot):
    # $args is the raw query: "/../../outside/" normalises above the root
    r = route(docroot, b"/x?../../outside", ["/$args/index.html", "=404"])
    assert r == Refuse(404, "try_files ended in =404")
    r = route(docroot, b"/x?a/../../../outside", ["/ro/$args/index.html", "=404"])
    assert r == Refuse(404, "try_files ended in =404")


def test_a_cached_page_linked_out_of_the_root_is_skipped_with_symlinks_within_root(docroot, tmp_path):
    (docroot / "cache" / "elsewhere").symlink_to(tmp_path / "outside")
    r = route(docroot, b"/elsewhere/", CACHE, symlinks="within_root")
    assert isinstance(r, PhpScript) and r.script_name == "/index.php"
    r = route(docroot, b"/elsewhere/", CACHE)  # symlinks = "follow", as nginx
    assert r == StaticFile(str(docroot / "cache/elsewhere/index.html"), "/cache/elsewhere/index.html")


def test_file_checks_with_suffixes_and_directories(docroot):
    assert route(docroot, b"/about", ["$uri", "$uri.html", "=404"]) == StaticFile(str(docroot / "about.html"),
                                                                                 "/about.html")
    assert route(docroot, b"/x", ["/docs/", "=404"]) == StaticFile(str(docroot / "docs/index.html"),
                                                                  "/docs/index.html")
    assert route(docroot, b"/x", ["/ro/", "=404"]) == Refuse(403, "directory has no index file (directory "
                                                                  "listing is off)")
    assert route(docroot, b"/nothing", ["$uri", "$uri.html", "=410"]) == Refuse(410, "try_files ended in =410")


def test_a_php_file_found_by_an_entry_runs_it_never_leaks_its_source(docroot):
    r = route(docroot, b"/app", ["$uri.php", "=404"])
    assert isinstance(r, PhpScript) and r.script_name == "/app.php"


def test_fallbacks(docroot):
    r = route(docroot, b"/a/b?x=1", ["$uri", "/app.php$uri"])
    assert isinstance(r, PhpScript) and (r.script_name, r.path_info, r.query) == ("/app.php", "/a/b", b"")
    r = route(docroot, b"/a b?x=1", ["$uri", "/index.php$is_args$args"])
    assert isinstance(r, PhpScript) and r.query == b"x=1"
    r = route(docroot, b"/a b", ["$uri", "/index.php?u=$uri&$args"])
    assert isinstance(r, PhpScript) and r.query == b"u=/a%20b&"
    assert route(docroot, b"/a", ["$uri", "/about.html"]) == StaticFile(str(docroot / "about.html"), "/about.html")
    assert route(docroot, b"/a", ["$uri", "/docs/"]) == StaticFile(str(docroot / "docs/index.html"),
                                                                  "/docs/index.html")
    assert route(docroot, b"/a", ["$uri", "/missing.html"]) == Refuse(404, "try_files fallback /missing.html does "
                                                                            "not exist")


def test_the_default_rule_is_unchanged(docroot):
    r = route(docroot, b"/2024/post/?utm=x", None)
    assert isinstance(r, PhpScript) and r.query == b"utm=x"


def test_a_site_without_root_routes_nothing(tmp_path):
    router = Router(SiteConfig(**{"return": [{"paths": ["/"], "code": 301, "to": "https://example.com/"}]}))
    assert router.root == "" and router.route("/", b"") == Refuse(404, "the site has no root")
