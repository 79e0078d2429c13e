"""``CgiParams.encode`` (per-site runs encoded once) sends exactly the bytes of
``encode_pairs(build_params(...))`` with the site's ``params`` and an error
page's extras replacing variables, as ``App._php_run`` built them before."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastcgi
from gateway.app import cgi_params
from gateway.app.cgi_params import CgiParams, build_params
from gateway.app.routing import PhpScript, Router
from gateway.config import SiteConfig
from gateway.http.request import Request

SCRIPT = PhpScript("/srv/www/index.php", "/index.php", "/index.php", "", b"")
REQ = Request(method=b"GET", target=b"/", http_version=b"1.1", headers=[(b"host", b"example.com")],
              client=("127.0.0.1", 45678), server=("127.0.0.1", 80), body=None, request_id="t",
              host=b"example.com")


def reference(req: Request, router: Router, script: PhpScript, server_name: bytes, body_length: int | None,
              extra: dict[bytes, bytes] | None = None, software: bytes = b"gateway") -> list[tuple[bytes, bytes]]:
    """What ``App._php_run`` sent before ``CgiParams``: ``build_params``, then
    the site's params and the extras each replacing and appending."""
    params = build_params(method=req.method, target=req.target, http_version=req.http_version, headers=req.headers,
                          script=script, document_root=router.root, client=req.client, server=req.server,
                          server_name=server_name, server_software=software, body_length=body_length,
                          https=req.https)
    for more in (router.extra_params, extra):
        if more:
            params = [(n, v) for n, v in params if n not in more]
            params += more.items()
    return params


def check(cp: CgiParams, req: Request, router: Router, script: PhpScript = SCRIPT, body_length: int | None = None,
          extra: dict[bytes, bytes] | None = None) -> list[tuple[bytes, bytes]]:
    want = reference(req, router, script, router.server_name or req.host, body_length, extra, cp.server_software)
    got = cp.encode(req, router, script, body_length, extra)
    assert fastcgi.decode_pairs(got) == want
    assert got == fastcgi.encode_pairs(want)  # byte for byte, order included
    return want


def router(**site: object) -> Router:
    return Router(SiteConfig(root="/srv/www", php="php", **site))  # type: ignore[arg-type]


ODD_HEADERS = [
    (b"host", b"example.com"), (b"cookie", b"a=1"), (b"accept", b"text/html"), (b"cookie", b"b=2"),
    (b"accept", b"*/*"), (b"proxy", b"http://evil/"), (b"x_forwarded_for", b"6.6.6.6"),
    (b"x-forwarded-for", b"1.2.3.4"), (b"php_value", b"auto_prepend_file=/etc/passwd"),
    (b"content-type", b"application/x-www-form-urlencoded"), (b"authorization", b"Basic dXNlcjpwYXNz"),
    (b"user-agent", b"M" * 300), (b"x-" + b"n" * 200, b"v"), (b"content-type", b"text/plain"),
    (b"x-empty", b""),
]


@pytest.mark.parametrize("https", [False, True])
@pytest.mark.parametrize("server", [("127.0.0.1", 80), ("::1", 8443), ("10.0.0.7", 27001)])
@pytest.mark.parametrize("version", [b"1.0", b"1.1", b"2"])
def test_listener_scheme_and_version(https: bool, server: tuple[str, int], version: bytes) -> None:
    cp = CgiParams(b"gateway")
    r = router(server_names=["example.com"])
    req = replace(REQ, https=https, server=server, http_version=version, headers=ODD_HEADERS)
    p = dict(check(cp, req, r))
    assert p[b"SERVER_PORT"] == str(server[1]).encode() and (p.get(b"HTTPS") == b"on") is https
    assert b"HTTP_PROXY" not in p and p[b"HTTP_COOKIE"] == b"a=1; b=2" and p[b"REMOTE_USER"] == b"user"
    check(cp, req, r)  # the second time from the kept runs


@pytest.mark.parametrize("params", [
    {},
    {"APP_ENV": "prod"},
    {"DOCUMENT_ROOT": "/elsewhere", "HTTPS": "on", "SERVER_PORT": "443", "REDIRECT_STATUS": "", "X": "1"},
    {"SERVER_NAME": "fixed.example", "GATEWAY_INTERFACE": "CGI/1.0", "SERVER_SOFTWARE": "nginx"},
    {"SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_SCHEME": "https", "SERVER_ADDR": "192.0.2.1"},
    # per-request variables: these sites take build_params itself
    {"QUERY_STRING": "q=1"},
    {"SCRIPT_FILENAME": "/other.php", "PATH_INFO": "/x"},
    {"HTTP_HOST": "forced", "APP": "x"},
    {"REMOTE_ADDR": "203.0.113.9"},
])
@pytest.mark.parametrize("server_names", [[], ["example.com"]])
def test_site_params_replace_defaults(params: dict[str, str], server_names: list[str]) -> None:
    cp = CgiParams(b"gateway/1")
    r = router(params=params, server_names=server_names)
    for https in (False, True):
        req = replace(REQ, https=https, headers=ODD_HEADERS, host=b"h.example")
        p = check(cp, req, r)
        for name, value in params.items():
            assert dict(p)[name.encode()] == value.encode()
            assert [n for n, _ in p].count(name.encode()) == 1


def test_error_page_extras() -> None:
    cp = CgiParams(b"gateway")
    r = router(params={"REDIRECT_STATUS": "299", "APP_ENV": "x"})
    p = check(cp, replace(REQ, headers=ODD_HEADERS), r, extra={b"REDIRECT_STATUS": b"404"})
    assert dict(p)[b"REDIRECT_STATUS"] == b"404" and p[-1] == (b"REDIRECT_STATUS", b"404")
    check(cp, replace(REQ, headers=ODD_HEADERS), router(), extra={b"REDIRECT_STATUS": b"502", b"HTTP_HOST": b"x"})


@pytest.mark.parametrize("script", [
    SCRIPT,
    PhpScript("/srv/www/index.php", "/index.php", "/index.php/a/b", "/a/b", b"x=1&y=2"),
    PhpScript("/srv/www/caf\udce9.php", "/caf\udce9.php", "/caf\udce9.php", "/\udcff", b"q=" + b"%" * 200),
    PhpScript("/srv/www/" + "d/" * 100 + "i.php", "/" + "d/" * 100 + "i.php", "/i.php", "/" + "p" * 300, b""),
])
@pytest.mark.parametrize("body_length", [None, 0, 12, 10**9])
def test_script_and_body(script: PhpScript, body_length: int | None) -> None:
    cp = CgiParams(b"gateway")
    for headers in ([], [(b"content-type", b"text/plain")], ODD_HEADERS):
        check(cp, replace(REQ, method=b"POST", target=b"/x?" + b"a" * 150, headers=headers), router(), script,
              body_length=body_length)


@pytest.mark.parametrize("client", [("127.0.0.1", 0), ("2001:db8::1", 65535), ("", 0)])
def test_clients(client: tuple[str, int]) -> None:
    cp = CgiParams(b"gateway")
    p = dict(check(cp, replace(REQ, client=client), router()))
    assert p[b"REMOTE_PORT"] == (str(client[1]).encode() if client[1] else b"")


def test_kept_runs_and_header_names_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgi_params, "MAX_TEMPLATES", 4)
    monkeypatch.setattr(cgi_params, "MAX_HEADER_NAMES", 8)
    cp = CgiParams(b"gateway")
    r = router()
    for port in range(1, 30):
        headers = [(b"x-h%d" % i, b"v") for i in range(port)]
        check(cp, replace(REQ, server=("127.0.0.1", port), headers=headers), r)
        assert len(cp._templates) <= 4 and len(cp._names) <= 8


def test_a_reloaded_site_gets_its_own_runs() -> None:
    # a reload builds new Routers: the old site's DOCUMENT_ROOT is never sent for the new one
    cp = CgiParams(b"gateway")
    check(cp, REQ, Router(SiteConfig(root="/srv/old", php="php")))
    p = dict(check(cp, REQ, Router(SiteConfig(root="/srv/new", php="php"))))
    assert p[b"DOCUMENT_ROOT"] == b"/srv/new"


_name = st.binary(min_size=1, max_size=20).map(lambda b: b.lower())
_header = st.tuples(st.one_of(_name, st.sampled_from([b"cookie", b"content-type", b"authorization", b"proxy",
                                                       b"a_b", b"host"])),
                    st.binary(max_size=200))


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(_header, max_size=12), https=st.booleans(), port=st.integers(0, 65535),
       version=st.sampled_from([b"1.0", b"1.1", b"2"]), method=st.sampled_from([b"GET", b"POST", b"PROPFIND"]),
       target=st.binary(max_size=300), body_length=st.one_of(st.none(), st.integers(0, 2**40)),
       query=st.binary(max_size=200), path_info=st.text(max_size=150),
       params=st.dictionaries(st.sampled_from(["APP", "HTTPS", "SERVER_NAME", "DOCUMENT_ROOT", "QUERY_STRING",
                                               "HTTP_COOKIE", "REDIRECT_STATUS", "SERVER_PORT"]),
                              st.text(max_size=5), max_size=3),
       extra=st.one_of(st.none(), st.just({b"REDIRECT_STATUS": b"404"})),
       server_names=st.sampled_from([[], ["example.com"]]), host=st.sampled_from([b"", b"h.example", b"x" * 200]))
def test_random_requests(headers: list[tuple[bytes, bytes]], https: bool, port: int, version: bytes, method: bytes,
                         target: bytes, body_length: int | None, query: bytes, path_info: str,
                         params: dict[str, str], extra: dict[bytes, bytes] | None, server_names: list[str],
                         host: bytes) -> None:
    cp = CgiParams(b"gateway")
    r = router(params=params, server_names=server_names)
    script = PhpScript("/srv/www/i.php", "/i.php", "/i.php" + path_info, path_info, query)
    req = replace(REQ, headers=headers, https=https, server=("0.0.0.0", port), http_version=version, method=method,
                  target=target, host=host)
    check(cp, req, r, script, body_length=body_length, extra=extra)
    check(cp, req, r, script, body_length=body_length, extra=extra)
