"""Request framing and Host rules (pure): what h11 accepts but the gateway refuses."""

from __future__ import annotations

import h11
import pytest

from gateway.http.head import BadRequestHead, check_method, check_request_head, parse_host

H = [(b"host", b"example.com")]


@pytest.mark.parametrize("headers", [
    [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
    [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")],
])
def test_content_length_with_transfer_encoding_is_refused(headers):
    with pytest.raises(BadRequestHead, match="smuggling") as info:
        check_request_head(b"/", b"1.1", H + headers)
    assert info.value.status == 400


def test_transfer_encoding_in_http_1_0_is_refused():
    with pytest.raises(BadRequestHead, match="HTTP/1.0"):
        check_request_head(b"/", b"1.0", [(b"transfer-encoding", b"chunked")])


def test_plain_framings_pass():
    assert check_request_head(b"/", b"1.1", H + [(b"transfer-encoding", b"chunked")]).target == b"/"
    assert check_request_head(b"/", b"1.1", H + [(b"content-length", b"5")]).host == b"example.com"
    assert check_request_head(b"/", b"1.0", [(b"content-length", b"5")]).host == b""


@pytest.mark.parametrize("value", [
    b"a b", b"x/../y", b"<script>", b"user@x", b"x:1:2", b"a\\b", b"x\\", b"a..b", b"[::1", b"::1",
    b"x:99999", b"x:port", b"%zz", b"x%00y", b"%41", b":80", b".", b'"x"', b"x\tx", b"[v1.x]",
])
def test_invalid_host_is_refused(value):
    with pytest.raises(BadRequestHead, match="Host"):
        check_request_head(b"/", b"1.1", [(b"host", value)])


@pytest.mark.parametrize(("value", "name"), [
    (b"Example.COM", b"example.com"), (b"example.com.", b"example.com"), (b"example.com:8080", b"example.com"),
    (b"[::1]:8080", b"[::1]"), (b"[::FFFF:127.0.0.1]", b"[::ffff:127.0.0.1]"), (b"127.0.0.1:80", b"127.0.0.1"),
    (b"xn--bcher-kva.example", b"xn--bcher-kva.example"), (b"under_score.example", b"under_score.example"),
    (b"host:", b"host"),
])
def test_host_name_is_lower_case_without_port(value, name):
    assert parse_host(value) == name
    assert check_request_head(b"/", b"1.1", [(b"host", value)]).host == name


def test_two_host_headers_are_refused():
    with pytest.raises(BadRequestHead, match="more than one"):
        check_request_head(b"/", b"1.1", [(b"host", b"a"), (b"host", b"a")])


def test_absolute_form_wins_over_host():
    got = check_request_head(b"http://Site.Example:8080/p/q?x=1", b"1.1", [(b"host", b"other.example"),
                                                                         (b"accept", b"*/*")])
    assert got.target == b"/p/q?x=1"
    assert got.host == b"site.example"
    assert got.headers == [(b"host", b"Site.Example:8080"), (b"accept", b"*/*")]


@pytest.mark.parametrize(("target", "origin"), [
    (b"https://a.example", b"/"), (b"HTTP://a.example?x", b"/?x"), (b"http://a.example/", b"/"),
])
def test_absolute_form_without_path(target, origin):
    assert check_request_head(target, b"1.1", H).target == origin


@pytest.mark.parametrize("target", [b"http://user@a.example/", b"http:///x", b"http://a b/", b"http://<x>/"])
def test_absolute_form_with_a_bad_authority_is_refused(target):
    with pytest.raises(BadRequestHead):
        check_request_head(target, b"1.1", H)


BAD_TARGETS = [b"", b"/a b", b"/a\tb", b"/caf\xc3\xa9", b"/\xff", b"/x\x00", b"/x\x7f", b"/x\x1b[31m"]


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_a_target_that_is_not_visible_ascii_is_refused(target):
    # (an HTTP/2 :path reaches this check raw; h11 already refuses these on the request line)
    with pytest.raises(BadRequestHead, match="invalid request target") as info:
        check_request_head(target, b"2", H)
    assert info.value.status == 400


def _h11_accepts(target: bytes) -> bool:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
    try:
        return isinstance(conn.next_event(), h11.Request)
    except h11.RemoteProtocolError:
        return False


@pytest.mark.parametrize("target", [*BAD_TARGETS, b"/", b"*", b"/a%20b?q=%C3%A9&x[]=1#f", b"/~!$&'()*+,;=:@"])
def test_the_target_rule_is_h11s(target):
    """Same verdict on a target whichever protocol carried it."""
    try:
        check_request_head(target, b"2", H)
        ours = True
    except BadRequestHead:
        ours = False
    assert ours == _h11_accepts(target)


@pytest.mark.parametrize("method", [b"TRACE", b"CONNECT"])
def test_trace_and_connect_are_405_before_any_handler(method):
    with pytest.raises(BadRequestHead) as exc:
        check_method(method)
    assert exc.value.status == 405


@pytest.mark.parametrize("method", [b"GET", b"POST", b"PROPFIND", b"PURGE", b"OPTIONS"])
def test_other_methods_reach_the_handler(method):
    check_method(method)  # PHP apps (WebDAV, cache purges) may answer any other token
