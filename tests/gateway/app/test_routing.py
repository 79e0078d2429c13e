from __future__ import annotations

import os
from urllib.parse import quote

import pytest

from gateway.app.routing import (
    BadRequestTarget,
    PhpScript,
    Redirect,
    Refuse,
    Router,
    StaticFile,
    VirtualHosts,
    split_target,
)
from gateway.config import SiteConfig
from gateway.http.head import parse_host


@pytest.fixture
def docroot(tmp_path):
    root = tmp_path / "www"
    (root / "wp-admin").mkdir(parents=True)
    (root / "uploads").mkdir()
    (root / "emptydir").mkdir()
    (root / ".git").mkdir()
    (root / ".well-known").mkdir()
    for name in ("index.php", "info.php", "style.css", "wp-admin/index.php", "uploads/x.jpg", "uploads/evil.php",
                 ".env", ".git/config", ".well-known/security.txt", "config.inc", "old.phtml"):
        (root / name).write_text("x")
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", root / "link-out.txt")
    os.symlink(root / "style.css", root / "link-in.css")
    return root


def route(root, target: bytes, **site):
    router = Router(SiteConfig(root=str(root), php=site.pop("php", "php"), **site))
    path, query = split_target(target)
    return router.route(path, query)


def test_existing_php_script_runs(docroot):
    r = route(docroot, b"/info.php?a=1")
    assert r == PhpScript(str(docroot / "info.php"), "/info.php", "/info.php", "", b"a=1")


def test_pretty_permalink_goes_to_front_controller_with_original_query(docroot):
    r = route(docroot, b"/2024/hello-world/?utm=x")
    assert isinstance(r, PhpScript)
    assert (r.script_name, r.document_uri, r.query) == ("/index.php", "/index.php", b"utm=x")


def test_static_file_is_served(docroot):
    assert route(docroot, b"/style.css") == StaticFile(str(docroot / "style.css"), "/style.css")


def test_directory_without_slash_redirects_and_keeps_query(docroot):
    assert route(docroot, b"/wp-admin?x=1") == Redirect("/wp-admin/?x=1")


def test_directory_with_slash_uses_index_php(docroot):
    r = route(docroot, b"/wp-admin/")
    assert isinstance(r, PhpScript)
    assert r.script_name == "/wp-admin/index.php"


def test_directory_without_index_is_forbidden(docroot):
    assert route(docroot, b"/emptydir/") == Refuse(403, "directory has no index file (directory listing is off)")


def test_path_info_split(docroot):
    r = route(docroot, b"/index.php/a/b?q")
    assert isinstance(r, PhpScript)
    assert (r.script_name, r.path_info, r.document_uri) == ("/index.php", "/a/b", "/index.php/a/b")


def test_php_after_an_image_never_executes(docroot):
    r = route(docroot, b"/uploads/x.jpg/y.php")
    assert isinstance(r, Refuse) and r.status == 404


def test_missing_php_script_is_404_not_the_front_controller(docroot):
    r = route(docroot, b"/nope.php")
    assert isinstance(r, Refuse) and r.status == 404


def test_no_php_under_refuses_scripts_in_uploads(docroot):
    r = route(docroot, b"/uploads/evil.php", no_php_under=["/uploads/"])
    assert isinstance(r, Refuse) and r.status == 403


@pytest.mark.parametrize("target", [b"/.env", b"/.git/config", b"/%2egit/config", b"/a/../.env", b"/.htaccess"])
def test_dotfiles_are_refused(docroot, target):
    r = route(docroot, target)
    assert isinstance(r, Refuse) and r.status == 403


def test_well_known_is_allowed(docroot):
    assert isinstance(route(docroot, b"/.well-known/security.txt"), StaticFile)


@pytest.mark.parametrize("target", [b"/config.inc", b"/old.phtml"])
def test_php_source_is_never_served(docroot, target):
    r = route(docroot, target)
    assert isinstance(r, Refuse) and r.status == 403


def test_php_in_a_static_site_is_not_served_as_source(docroot):
    r = route(docroot, b"/info.php", php="")
    assert isinstance(r, Refuse) and r.status == 403


@pytest.mark.parametrize("target", [b"/../etc/passwd", b"/%2e%2e/etc/passwd", b"/a/%2E%2E/%2e%2e/x", b"/..%2fetc"])
def test_dot_dot_never_escapes(target):
    with pytest.raises(BadRequestTarget) as exc:
        split_target(target)
    assert exc.value.status == 400


@pytest.mark.parametrize("target", [b"/index.php%0a", b"/a%0d%0ab.php", b"/x%00.php", b"/bad%zz"])
def test_control_characters_and_bad_escapes_are_400(target):
    with pytest.raises(BadRequestTarget):
        split_target(target)


def test_normalisation_merges_slashes_and_dots():
    assert split_target(b"//a/./b//c/?x") == ("/a/b/c/", b"x")
    assert split_target(b"/a/b/../c") == ("/a/c", b"")
    assert split_target(b"http://example.com/p?q=1") == ("/p", b"q=1")


def test_symlinks_followed_by_default_and_refused_outside_root_on_request(docroot):
    assert isinstance(route(docroot, b"/link-out.txt"), StaticFile)
    strict = route(docroot, b"/link-out.txt", symlinks="within_root")
    assert isinstance(strict, Refuse)
    assert isinstance(route(docroot, b"/link-in.css", symlinks="within_root"), StaticFile)


def test_try_files_404_for_static_sites(docroot):
    r = route(docroot, b"/missing", php="")
    assert isinstance(r, Refuse) and r.status == 404


def test_virtual_hosts(tmp_path):
    sites = {
        "a": SiteConfig(root=str(tmp_path), server_names=["a.example"]),
        "wild": SiteConfig(root=str(tmp_path), server_names=["*.example.com"]),
        "dflt": SiteConfig(root=str(tmp_path), server_names=["_"], default=True),
    }
    v = VirtualHosts(sites)
    assert v.lookup(parse_host(b"A.Example:8080")) is v.routers["a"]
    assert v.lookup(parse_host(b"a.example.")) is v.routers["a"]
    assert v.lookup(parse_host(b"blog.example.com")) is v.routers["wild"]
    assert v.lookup(parse_host(b"example.com")) is v.routers["dflt"]
    assert v.lookup(b"") is v.routers["dflt"]
    assert v.lookup(parse_host(b"[::1]:80")) is v.routers["dflt"]


def test_aliases_deny_and_their_php(docroot, tmp_path):
    content = tmp_path / "content"
    (content / "themes").mkdir(parents=True)
    (content / "themes" / "style.css").write_text("x")
    (content / "plugin.php").write_text("<?php")
    site = dict(aliases={"/wp-content/": str(content)}, deny=["/wp-config.php", "/readme"])
    assert route(docroot, b"/wp-content/themes/style.css", **site) == StaticFile(
        str(content / "themes" / "style.css"), "/wp-content/themes/style.css")
    php = route(docroot, b"/wp-content/plugin.php", **site)
    assert isinstance(php, PhpScript) and php.script_filename == str(content / "plugin.php")
    assert route(docroot, b"/wp-config.php", **site).status == 403
    assert route(docroot, b"/readme.html", **site).status == 403
    # an alias target counts as inside the root for symlinks = within_root
    assert isinstance(route(docroot, b"/wp-content/themes/style.css", symlinks="within_root", **site), StaticFile)


def test_missing_file_under_an_alias_is_404_not_the_front_controller(docroot, tmp_path):
    (tmp_path / "content").mkdir()
    r = route(docroot, b"/wp-content/themes/missing.css", aliases={"/wp-content/": str(tmp_path / "content")})
    assert isinstance(r, Refuse) and r.status == 404


COPIES = ["wp-config.php~", "wp-config.php.bak", "wp-config.php.orig", "wp-config.php.save", "wp-config.php.old",
          "wp-config.php.swp", "#wp-config.php#", "wp-config.php.txt", "wp-config.php_old", "wp-config.php-1",
          "WP-CONFIG.PHP.BAK", "settings.inc.bak", "x.phtml~", "notes.txt~", "data.json.orig", "db.sql.save",
          "wp-config.php,v", "wp-config.php ", "wp-config.php1", "wp-config.phpx", "wp-config.php;.txt",
          "wp-config.php::$DATA", "wp-config.php?", "wp-config.php\\", "x.phar.gz"]


@pytest.mark.parametrize("name", COPIES)
def test_backup_and_editor_copies_are_refused(docroot, name):
    (docroot / name).write_text("<?php $password = 'secret';")
    target = b"/" + quote(name).encode()
    r = route(docroot, target)
    assert isinstance(r, Refuse) and r.status == 403, r


def test_backup_copies_are_served_when_the_site_allows_it(docroot):
    (docroot / "notes.txt~").write_text("x")
    assert isinstance(route(docroot, b"/notes.txt~", serve_backup_files=True), StaticFile)


@pytest.mark.parametrize("name", ["phpinfo.html", "my-php-notes.txt", "backup.zip", "old-style.css", "a~b.txt",
                                  "a#b.txt", "include.js", "jquery.include.js", "php.ini.txt"])
def test_ordinary_names_are_not_taken_for_copies(docroot, name):
    (docroot / name).write_text("x")
    assert isinstance(route(docroot, b"/" + name.replace("#", "%23").encode()), StaticFile)


@pytest.mark.parametrize(("dirname", "location"), [("100%", "/100%25/"), ("q?x", "/q%3Fx/"), ("h#x", "/h%23x/"),
                                                   ("dir with space", "/dir%20with%20space/"), ("a\x01b", "/a%01b/"),
                                                   ("caf\u00e9", "/caf%C3%A9/")])
def test_directory_redirect_location_is_percent_encoded(docroot, dirname, location):
    (docroot / dirname).mkdir()
    assert route(docroot, b"/" + quote(dirname).encode() + b"?k=v") == Redirect(location + "?k=v")
