"""Accept-Encoding, the compress-or-not decision and the redirect target, sans-IO."""

from __future__ import annotations

import pytest

from gateway.http import https_redirect
from gateway.http.encoding import (
    Decision,
    add_vary,
    choose_coding,
    coded_headers,
    decide,
    is_compressible_type,
    parse_accept_encoding,
    weak_etag,
)

BOTH = ("br", "gzip")


@pytest.mark.parametrize(("accept", "offered", "chosen"), [
    (None, BOTH, None),
    (b"", BOTH, None),
    (b"gzip", BOTH, "gzip"),
    (b"br, gzip", BOTH, "br"),
    (b"gzip, br", BOTH, "br"),  # equal q: the server's order
    (b"gzip, deflate, br, zstd", BOTH, "br"),  # Chrome
    (b"br;q=0.5, gzip", BOTH, "gzip"),  # the client's q first
    (b"br;q=0, gzip", BOTH, "gzip"),
    (b"br;q=0, gzip;q=0", BOTH, None),
    (b"*", BOTH, "br"),
    (b"*;q=0", BOTH, None),
    (b"gzip;q=0, *", BOTH, "br"),
    (b"br;q=0, *;q=0.1", BOTH, "gzip"),
    (b"identity", BOTH, None),
    (b"identity;q=0", BOTH, None),  # nothing else accepted: identity anyway, as nginx
    (b"x-gzip", BOTH, "gzip"),
    (b"GZIP;Q=1.0", BOTH, "gzip"),
    (b"br;q=banana, gzip", BOTH, "gzip"),
    (b"br;q=2, gzip", BOTH, "gzip"),  # out of range: refused
    (b"deflate, compress", BOTH, None),
    (b"br, gzip", ("gzip",), "gzip"),
    (b"br, gzip", ("gzip", "br"), "gzip"),
    (b"br, gzip", (), None),
])
def test_accept_encoding_choice(accept, offered, chosen):
    assert choose_coding(accept, offered) == chosen


def test_parse_keeps_q_values():
    assert parse_accept_encoding(b"br;q=1.0, gzip; q=0.5 , *;q=0") == {"br": 1.0, "gzip": 0.5, "*": 0.0}


@pytest.mark.parametrize(("ctype", "yes"), [
    (b"text/html; charset=UTF-8", True), (b"text/css", True), (b"text/plain", True), (b"text/xml", True),
    (b"application/javascript", True), (b"text/javascript", True), (b"application/json", True),
    (b"application/xml", True), (b"image/svg+xml", True), (b"application/rss+xml; charset=UTF-8", True),
    (b"application/ld+json", True), (b"TEXT/HTML", True),
    (b"image/png", False), (b"font/woff2", False), (b"application/octet-stream", False),
    (b"text/event-stream", False), (b"application/gzip", False), (None, False), (b"", False),
])
def test_compressible_types(ctype, yes):
    assert is_compressible_type(ctype) is yes


HTML = [(b"content-type", b"text/html; charset=UTF-8")]


def _decide(status=200, headers=HTML, length=10_000, accept=b"br, gzip", offered=BOTH, min_size=512, **kw):
    return decide(status=status, headers=headers, length=length, accept=accept, offered=offered,
                  min_size=min_size, **kw)


@pytest.mark.parametrize(("case", "kw", "decision"), [
    ("html", {}, Decision("br", True)),
    ("gzip-only client", {"accept": b"gzip"}, Decision("gzip", True)),
    ("no Accept-Encoding: Vary still", {"accept": None}, Decision(None, True)),
    ("compression off", {"offered": ()}, Decision(None, False)),
    ("image", {"headers": [(b"content-type", b"image/png")]}, Decision(None, False)),
    ("no type", {"headers": []}, Decision(None, False)),
    ("type from a hint (304 of a file)", {"status": 304, "headers": [], "content_type": b"text/css"},
     Decision(None, True)),
    ("small", {"length": 511}, Decision(None, True)),
    ("at the minimum", {"length": 512}, Decision("br", True)),
    ("unknown length (streamed)", {"length": None}, Decision("br", True)),
    ("206", {"status": 206}, Decision(None, True)),
    ("304", {"status": 304}, Decision(None, True)),
    ("204", {"status": 204}, Decision(None, False)),
    ("1xx", {"status": 103}, Decision(None, False)),
    ("already coded", {"headers": [*HTML, (b"Content-Encoding", b"gzip")]}, Decision(None, False)),
    ("no-transform", {"headers": [*HTML, (b"cache-control", b"public, No-Transform")]}, Decision(None, False)),
    ("error page", {"status": 404}, Decision("br", True)),
])
def test_decision_table(case, kw, decision):
    assert _decide(**kw) == decision, case


@pytest.mark.parametrize(("before", "after"), [
    ([], [(b"vary", b"Accept-Encoding")]),
    ([(b"Vary", b"Cookie")], [(b"Vary", b"Cookie, Accept-Encoding")]),
    ([(b"vary", b"accept-encoding")], [(b"vary", b"accept-encoding")]),
    ([(b"vary", b"*")], [(b"vary", b"*")]),
    ([(b"vary", b"Cookie, Accept-Encoding")], [(b"vary", b"Cookie, Accept-Encoding")]),
])
def test_vary_is_merged(before, after):
    assert add_vary(before) == after


@pytest.mark.parametrize(("etag", "weak"), [
    (b'"5f-1a"', b'W/"5f-1a"'), (b'W/"5f-1a"', b'W/"5f-1a"'), (b"junk", b"junk"),
])
def test_etag_weakened_as_nginx(etag, weak):
    assert weak_etag(etag) == weak


def test_coded_headers():
    headers = [(b"content-type", b"text/css"), (b"content-length", b"9000"), (b"etag", b'"a-b"'),
               (b"accept-ranges", b"bytes"), (b"vary", b"Cookie")]
    assert coded_headers(headers, "br", length=1234) == [
        (b"content-type", b"text/css"), (b"etag", b'W/"a-b"'), (b"vary", b"Cookie, Accept-Encoding"),
        (b"content-encoding", b"br"), (b"content-length", b"1234")]
    assert (b"content-length", b"9000") not in coded_headers(headers, "gzip")


@pytest.mark.parametrize(("host", "target", "port", "location"), [
    (b"example.com", b"/a/b?c=d", 443, b"https://example.com/a/b?c=d"),
    (b"example.com", b"/", 8443, b"https://example.com:8443/"),
    (b"[::1]", b"/x", 8443, b"https://[::1]:8443/x"),
    (b"example.com", b"http://example.com:8080/p?q", 443, b"https://example.com/p?q"),
    (b"example.com", b"http://example.com", 443, b"https://example.com/"),
])
def test_https_location(host, target, port, location):
    assert https_redirect.location(host, target, port) == location


@pytest.mark.parametrize(("path", "exempt"), [
    ("/.well-known/acme-challenge/abc", True), ("/.well-known/security.txt", False), ("/", False),
])
def test_acme_challenge_is_never_redirected(path, exempt):
    assert https_redirect.exempt(path) is exempt
