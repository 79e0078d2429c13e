"""X-Accel-Redirect / X-Sendfile and error pages, sans-IO: the target a
header names, which backend headers survive, which errors get a page."""

from __future__ import annotations

import pytest

from gateway.app import accel
from gateway.app.error_pages import ErrorPages, page_headers, page_ok

INTERNAL = [("/protected/", "/srv/files/"), ("/dl", "/srv/dl/")]


def test_x_accel_redirect_wins_over_x_sendfile():
    found = accel.find([(b"X-Sendfile", b"/srv/files/a"), (b"X-Accel-Redirect", b" /protected/b.zip ")])
    assert found == accel.AccelRequest(b"x-accel-redirect", b"/protected/b.zip")
    assert accel.find([(b"X-SENDFILE", b"/srv/files/a")]) == accel.AccelRequest(b"x-sendfile", b"/srv/files/a")
    assert accel.find([(b"Content-Type", b"text/html")]) is None


def test_targets():
    redirect = accel.AccelRequest(b"x-accel-redirect", b"/protected/a%20b.zip?x=1")
    assert accel.target(redirect, INTERNAL) == b"/protected/a%20b.zip?x=1"
    sendfile = accel.AccelRequest(b"x-sendfile", "/srv/files/sub/a b é.zip".encode())
    assert accel.target(sendfile, INTERNAL) == b"/protected/sub/a%20b%20%C3%A9.zip"
    assert accel.target(accel.AccelRequest(b"x-sendfile", b"/srv/dl/x"), INTERNAL) == b"/dl/x"


@pytest.mark.parametrize(("header", "value", "says"), [
    (b"x-accel-redirect", b"", "empty"),
    (b"x-accel-redirect", b"protected/a", "not a URI path"),
    (b"x-sendfile", b"/etc/shadow", "outside every internal alias"),
    (b"x-sendfile", b"/srv/files/../../etc/shadow", "not a normalised absolute path"),
    (b"x-sendfile", b"/srv/files/./a", "not a normalised absolute path"),
    (b"x-sendfile", b"files/a", "not a normalised absolute path"),
    (b"x-sendfile", b"/srv/filesx/a", "outside every internal alias"),
])
def test_refused(header, value, says):
    with pytest.raises(accel.AccelRefused, match=says):
        accel.target(accel.AccelRequest(header, value), INTERNAL)


def test_the_backend_headers_nginx_keeps_replace_the_files():
    php = [(b"Content-Type", b"application/zip"), (b"Content-Disposition", b'attachment; filename="f.zip"'),
           (b"Set-Cookie", b"dl=1"), (b"ETag", b'"php"'), (b"X-Accel-Redirect", b"/protected/f.zip"),
           (b"X-Powered-By", b"PHP")]
    file = [(b"content-type", b"application/octet-stream"), (b"etag", b'"f"'), (b"content-length", b"10")]
    assert accel.merge(php, file) == [
        (b"Content-Type", b"application/zip"), (b"Content-Disposition", b'attachment; filename="f.zip"'),
        (b"Set-Cookie", b"dl=1"), (b"etag", b'"f"'), (b"content-length", b"10")]


def test_error_pages_for_own_errors_and_intercepted_ones():
    pages = ErrorPages({"404": "/e/404.html", "502": "/e/502.php"}, intercept=False)
    assert pages.page_for(404, from_upstream=False) == b"/e/404.html"
    assert pages.page_for(404, from_upstream=True) is None
    assert pages.page_for(403, from_upstream=False) is None
    assert ErrorPages({"404": "/e"}, intercept=True).page_for(404, from_upstream=True) == b"/e"
    assert not ErrorPages({}, intercept=True)


def test_a_page_stands_in_when_it_succeeds_or_has_the_errors_status():
    assert page_ok(404, 200) and page_ok(404, 404) and page_ok(503, 503)
    assert not page_ok(404, 500) and not page_ok(404, 302) and not page_ok(502, 404)


def test_page_headers_keep_what_a_client_acts_on():
    original = [(b"content-type", b"text/html"), (b"retry-after", b"1"), (b"www-authenticate", b"Basic")]
    page = [(b"content-type", b"text/html; charset=utf-8"), (b"etag", b'"x"'), (b"last-modified", b"x"),
            (b"accept-ranges", b"bytes"), (b"x-accel-redirect", b"/p/"), (b"content-length", b"9")]
    assert page_headers(original, page) == [(b"content-type", b"text/html; charset=utf-8"),
                                            (b"content-length", b"9"), (b"retry-after", b"1"),
                                            (b"www-authenticate", b"Basic")]


def test_an_x_sendfile_path_through_a_link_counts_where_it_leads():
    links = {"/var/www/private/a.zip": "/srv/files/a.zip", "/srv/files/escape": "/etc/shadow"}
    resolve = lambda p: links.get(p, p)  # noqa: E731 - os.path.realpath's stand-in
    assert accel.target(accel.AccelRequest(b"x-sendfile", b"/var/www/private/a.zip"), INTERNAL, resolve) == (
        b"/protected/a.zip")
    with pytest.raises(accel.AccelRefused):
        accel.target(accel.AccelRequest(b"x-sendfile", b"/var/www/other"), INTERNAL, resolve)
