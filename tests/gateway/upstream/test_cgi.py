from __future__ import annotations

import pytest

from gateway.app.cgi_params import build_params
from gateway.app.routing import PhpScript
from gateway.upstream.cgi import CgiResponseError, CgiResponseHead, parse_cgi_headers


def params(headers, **kw):
    script = kw.pop("script", PhpScript("/srv/index.php", "/index.php", "/index.php", "", b"a=1"))
    args = dict(method=b"GET", target=b"/x?a=1", http_version=b"1.1", headers=headers, script=script,
                document_root="/srv", client=("127.0.0.1", 5555), server=("127.0.0.1", 80),
                server_name=b"example.com", server_software=b"gateway", body_length=None)
    args.update(kw)
    return dict(build_params(**args))


def test_nginx_fastcgi_conf_variables():
    p = params([(b"host", b"example.com")])
    assert p[b"SCRIPT_FILENAME"] == b"/srv/index.php"
    assert p[b"QUERY_STRING"] == b"a=1"
    assert p[b"REQUEST_URI"] == b"/x?a=1"
    assert p[b"DOCUMENT_URI"] == b"/index.php"
    assert p[b"CONTENT_LENGTH"] == b"" and p[b"CONTENT_TYPE"] == b""
    assert p[b"REDIRECT_STATUS"] == b"200"
    assert p[b"GATEWAY_INTERFACE"] == b"CGI/1.1"
    assert p[b"SERVER_PROTOCOL"] == b"HTTP/1.1"
    assert p[b"REMOTE_PORT"] == b"5555"
    assert p[b"HTTP_HOST"] == b"example.com"
    assert b"HTTPS" not in p and p[b"PATH_INFO"] == b"" and b"PATH_TRANSLATED" not in p
    assert p[b"REMOTE_USER"] == b""


def test_httpoxy_and_underscore_headers_are_dropped():
    p = params([(b"proxy", b"http://evil"), (b"x_forwarded_for", b"1.2.3.4"), (b"php_value", b"auto_prepend_file=x"),
                (b"x-forwarded-for", b"5.6.7.8")])
    assert b"HTTP_PROXY" not in p
    assert p[b"HTTP_X_FORWARDED_FOR"] == b"5.6.7.8"
    assert b"PHP_VALUE" not in p and b"HTTP_PHP_VALUE" not in p


def test_repeated_headers_are_joined_and_cookies_with_semicolons():
    p = params([(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"accept", b"x"), (b"accept", b"y")])
    assert p[b"HTTP_COOKIE"] == b"a=1; b=2"
    assert p[b"HTTP_ACCEPT"] == b"x, y"


def test_body_length_and_path_info():
    script = PhpScript("/srv/index.php", "/index.php", "/index.php/a/b", "/a/b", b"")
    p = params([(b"content-type", b"text/plain")], script=script, body_length=12, https=True)
    assert p[b"CONTENT_LENGTH"] == b"12"
    assert p[b"CONTENT_TYPE"] == b"text/plain"
    assert p[b"PATH_INFO"] == b"/a/b"
    assert p[b"PATH_TRANSLATED"] == b"/srv/a/b"
    assert p[b"HTTPS"] == b"on" and p[b"REQUEST_SCHEME"] == b"https"


def test_status_header_sets_status():
    head = parse_cgi_headers(b"Status: 404 Not Found\r\nContent-Type: text/plain")
    assert (head.status, head.reason, head.headers) == (404, b"Not Found", [(b"Content-Type", b"text/plain")])


def test_location_without_status_is_302_and_with_status_keeps_it():
    assert parse_cgi_headers(b"Location: http://x/").status == 302
    assert parse_cgi_headers(b"Status: 301\nLocation: /y").status == 301


def test_several_set_cookie_headers_are_kept():
    head = parse_cgi_headers(b"Set-Cookie: a=1\nSet-Cookie: b=2\nX: y")
    assert [v for n, v in head.headers if n == b"Set-Cookie"] == [b"a=1", b"b=2"]


def test_hop_by_hop_headers_from_php_are_dropped():
    head = parse_cgi_headers(b"Connection: close\nTransfer-Encoding: chunked\nX: y")
    assert head.headers == [(b"X", b"y")]


@pytest.mark.parametrize("block", [b"no colon here", b"Status: abc", b"A: b\n folded", b"Bad Name: x"])
def test_invalid_header_blocks(block):
    with pytest.raises(CgiResponseError):
        parse_cgi_headers(block)


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\n\n", b"\n\r\n"])
def test_header_block_ends_at_blank_line_in_any_style(sep):
    parser = CgiResponseHead(1024)
    # fed in small pieces so the terminator straddles feeds
    data = b"X-A: 1" + sep.replace(b"\n\n", b"\nX-B: 2\n\n", 0) + b"body"
    got = None
    for i in range(0, len(data), 3):
        got = parser.feed(data[i : i + 3]) or got
        if got:
            got = (got[0], got[1] + data[i + 3 :])
            break
    assert got is not None
    head, body = got
    assert head.headers == [(b"X-A", b"1")]
    assert body == b"body"


def test_lf_lines_are_not_truncated():
    # flup's parser dropped the last character of LF-terminated lines
    head = parse_cgi_headers(b"Content-Type: text/plain\nX-Long: abcdef")
    assert head.headers == [(b"Content-Type", b"text/plain"), (b"X-Long", b"abcdef")]


def test_oversized_header_block_is_an_error():
    parser = CgiResponseHead(100)
    with pytest.raises(CgiResponseError, match="exceed 100"):
        parser.feed(b"X: " + b"a" * 200)


def test_remote_user_from_basic_auth_as_nginx():
    import base64

    p = params([(b"authorization", b"Basic " + base64.b64encode(b"alice:secret"))])
    assert p[b"REMOTE_USER"] == b"alice"
    assert params([(b"authorization", b"Bearer xyz")])[b"REMOTE_USER"] == b""


# -- validation of what PHP sends: nothing h11 or a client would choke on gets through


@pytest.mark.parametrize("byte", [*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f])  # LF ends a CGI line
def test_a_header_value_with_a_control_byte_is_dropped(byte):
    # PHP apps echo user input into headers: header('X-Echo: ' . $_GET['v']) with ?v=a%0bb
    value = b"a" + bytes([byte]) + b"b"
    head = parse_cgi_headers(b"Content-Type: text/html\nX-Echo: " + value + b"\nX-After: 1")
    assert head.headers == [(b"Content-Type", b"text/html"), (b"X-After", b"1")]
    assert head.dropped == ("X-Echo (control byte in its value)",)


@pytest.mark.parametrize("value", [b"/a\rb", b"/a\x00b", b"/x\x0b"])
def test_location_with_control_bytes_is_dropped(value):
    head = parse_cgi_headers(b"Status: 302 Found\nLocation: " + value)
    assert head.status == 302 and head.headers == []


def test_tab_and_obs_text_are_valid_value_bytes():
    head = parse_cgi_headers(b"X-A: a\tb\nX-B: caf\xc3\xa9 \xff")
    assert head.headers == [(b"X-A", b"a\tb"), (b"X-B", b"caf\xc3\xa9 \xff")] and head.dropped == ()


@pytest.mark.parametrize("status", [b"100", b"101", b"103", b"199", b"000", b"099", b"600", b"999", b"1000",
                                    b"20", b"abc", b"", b"-200", b"2OO"])
def test_status_outside_200_to_599_is_a_protocol_error(status):
    with pytest.raises(CgiResponseError):
        parse_cgi_headers(b"Status: " + status + b"\nContent-Type: text/html")


@pytest.mark.parametrize(("status", "code"), [(b"200", 200), (b"599", 599), (b"404 Not Found", 404),
                                              (b"418\tI'm a teapot", 418)])
def test_final_statuses_pass(status, code):
    assert parse_cgi_headers(b"Status: " + status).status == code


def test_a_reason_phrase_with_a_control_byte_is_dropped_not_the_status():
    head = parse_cgi_headers(b"Status: 404 Not\x0bFound")
    assert (head.status, head.reason) == (404, b"")


@pytest.mark.parametrize(("lines", "length", "dropped"), [
    (b"Content-Length: 12", 12, 0),
    (b"Content-Length: 007", 7, 0),
    (b"Content-Length: 5\nContent-Length: 5", 5, 0),
    (b"Content-Length: ", None, 1),
    (b"Content-Length: -1", None, 1),
    (b"Content-Length: 1e3", None, 1),
    (b"Content-Length: 5, 5", None, 1),
    (b"Content-Length: " + b"9" * 30, None, 1),
    (b"Content-Length: 5\nContent-Length: 6", None, 1),
])
def test_content_length_is_parsed_strictly_and_never_passed_as_is(lines, length, dropped):
    head = parse_cgi_headers(lines + b"\nX: y")
    assert head.content_length == length
    assert head.headers == [(b"X", b"y")]
    assert len(head.dropped) == dropped


@pytest.mark.parametrize("data", [
    b"Content-Type: text/html\r\n\r\nhello",
    b"Status: 404 Not Found\nX-A: 1\n\nbody\r\n\r\nmore",
    b"X-A: 1\r\n\r\n",
    b"\r\n\r\nno headers",
    b"Location: /x\n\r\n",
])
def test_a_head_in_one_piece_is_read_as_in_many(data):
    """A whole head in PHP's first output (``feed``'s short way) gives what it does fed byte by byte."""
    whole = CgiResponseHead(1024).feed(data)
    parser = CgiResponseHead(1024)
    for i in range(len(data)):
        got = parser.feed(data[i : i + 1])
        if got is not None:
            got = (got[0], got[1] + data[i + 1 :])
            break
    assert whole == got


def test_an_oversized_head_in_one_piece_is_an_error():
    with pytest.raises(CgiResponseError, match="exceed 100"):
        CgiResponseHead(100).feed(b"X: " + b"a" * 200 + b"\r\n\r\nbody")
