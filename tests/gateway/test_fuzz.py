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

from tests.fuzz_helpers import BACKEND_CLASSES, CLIENT_CLASSES, format_report, run_batch

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
