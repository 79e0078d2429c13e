"""Fuzz the whole request path in memory: random CGI answers from a fake php-fpm
and random request heads from a client, through HttpConnection + App + Pool.

Suite mode: a fixed seed and a bounded number of cases per input class (about
200 per family, a few seconds in all), one test per class so a failing class
shows by name. ``scripts/fuzz`` runs the same generators longer, with fresh
seeds. What is checked, and why, is in ``tests/fuzz_helpers.py``.
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz_helpers import (
    BACKEND_CLASSES,
    CLIENT_CLASSES,
    PLACE,
    BackendCase,
    BackendRequest,
    ClientCase,
    Framed,
    Plan,
    format_report,
    run_batch,
    run_case,
    token,
)

SEED = int(os.environ.get("FUZZ_SEED", "20240601"))
BACKEND_CASES = 10  # per class: 24 classes, 240 cases
CLIENT_CASES = 16  # per class: 13 classes, 208 cases


def _check(family: str, klass: str, cases: int) -> None:
    report = run_batch(family, klass, cases, SEED)
    assert report.cases == cases
    if report.failures:
        pytest.fail(format_report(family, klass, report), pytrace=False)


@pytest.mark.parametrize("klass", list(BACKEND_CLASSES))
def test_backend_answers(klass: str) -> None:
    """Random CGI heads and FastCGI records from the backend, for GET and HEAD."""
    _check("backend", klass, BACKEND_CASES)


@pytest.mark.parametrize("klass", list(CLIENT_CLASSES))
def test_client_requests(klass: str) -> None:
    """Random request heads from the client: framing, Host, targets, pipelining."""
    _check("client", klass, CLIENT_CASES)


# -- the smallest input of each class that failed when this file was written: exact bytes,
# so a fix can be checked against them one by one -----------------------------------------

A, B = token(1), token(2)


def _answer_get(stdout: bytes, method: bytes = b"GET", then: Plan = (), expect=None) -> BackendCase:
    """``method`` answered with ``stdout`` (+ ``then`` records after END_REQUEST), then a GET on
    the same pool connection."""
    plan: Plan = [("out", stdout), ("out", b""), ("end", 0, 0), *then]
    return BackendCase("minimal", [BackendRequest(method, A, expect=expect), BackendRequest(b"GET", B)],
                       {A: plan}, A)


def _client(data: bytes, *framed: Framed) -> ClientCase:
    return ClientCase("minimal", [data], list(framed))


def _refused(method: bytes = b"POST", tok: bytes = A, close: bool = True) -> Framed:
    return Framed(method, tok, frozenset({400}), must_close=close, reachable=False)


_SMUGGLED = b"GET /?t=" + token(9) + b" HTTP/1.1\r\nHost: example.com\r\n\r\n"
_CHUNKED_THEN_SMUGGLED = b"0\r\n\r\n" + _SMUGGLED

MINIMAL: dict[str, BackendCase | ClientCase] = {
    "status-1xx": _answer_get(b"Status: 103\r\n\r\n", expect=frozenset({502})),
    "status-out-of-range": _answer_get(b"Status: 600\r\n\r\n", expect=frozenset({502})),
    "status-reason-cr": _answer_get(b"Status: 200 OK\rX-Injected: 1\r\n\r\n"),
    "status-reason-ctl": _answer_get(b"Status: 200 O\x01K\r\n\r\n"),
    "cr-only-line-endings": _answer_get(b"Status: 200 OK\rContent-Type: text/html\r\r\n\r\n"),
    "header-value-vt": _answer_get(b"X-A: a\x0bb\r\n\r\n"),
    "header-value-nul-location": _answer_get(b"Location: /a\x00b\r\n\r\n"),
    "header-value-cr": _answer_get(b"X-A: a\rb\r\n\r\n"),
    "header-value-ctl": _answer_get(b"X-A: a\x01b\r\n\r\n"),
    "header-value-del": _answer_get(b"X-A: a\x7fb\r\n\r\n"),
    "header-name-obs-text": _answer_get(b"X\x80: v\r\n\r\n"),
    "head-content-length-negative": _answer_get(b"Content-Length: -1\r\n\r\n", method=b"HEAD"),
    "head-content-length-conflict": _answer_get(b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", method=b"HEAD"),
    "stray-stdout-after-end": _answer_get(b"Content-Type: text/plain\r\n\r\nbody " + PLACE, then=[
        ("out", b"Content-Type: text/plain\r\n\r\nstray " + PLACE)]),
    "cl-then-te": _client(
        b"POST /?t=" + A + b" HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % len(_CHUNKED_THEN_SMUGGLED) + _CHUNKED_THEN_SMUGGLED, _refused()),
    "te-then-cl": _client(
        b"POST /?t=" + A + b" HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: %d\r\n\r\n" % len(_CHUNKED_THEN_SMUGGLED) + _CHUNKED_THEN_SMUGGLED, _refused()),
    "cl-and-te-gzip": _client(
        b"POST /?t=" + A + b" HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\nTransfer-Encoding: gzip\r\n\r\n",
        Framed(b"POST", A, frozenset({400, 501}), must_close=True, reachable=False)),  # nginx: 501
    "http10-te": _client(
        b"POST /?t=" + A + b" HTTP/1.0\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        _refused()),
    "bad-host": _client(b"GET /?t=" + A + b" HTTP/1.1\r\nHost: <script>\r\n\r\n", _refused(b"GET", close=False)),
    "bad-host-two": _client(b"GET /?t=" + A + b" HTTP/1.1\r\nHost: example.com\r\nHost: other.example\r\n\r\n",
                            _refused(b"GET", close=False)),
}


@pytest.mark.parametrize("name", list(MINIMAL))
def test_minimal_example(name: str) -> None:
    case = MINIMAL[name]
    outcome = run_case(case)
    if outcome.violations:
        pytest.fail(f"{name}: {case.example()}\n" + "\n".join(f"  -> {v}" for v in outcome.violations),
                    pytrace=False)
