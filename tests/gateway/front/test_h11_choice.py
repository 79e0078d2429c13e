"""The gateway parses with upstream h11 unless told otherwise, says which
parser runs, and refuses a GATEWAY_H11 it cannot honour (gateway/http/_h11.py);
the HTTP/1.1 connection tests pass on h11-mypyc (the [fast] extra) too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.front.h1
from gateway.http import _h11
from gateway.http._h11 import COMPILED, UPSTREAM, ParserChoiceError, choose

REPO = Path(__file__).parents[3]

try:
    import h11_mypyc  # noqa: F401
except ImportError:
    HAVE_EXTRA = False
else:
    HAVE_EXTRA = True
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="the [fast] extra (h11-mypyc) is not installed: "
                                 "pip install -e '.[fast]' (scripts/setup --test installs it)")


def test_the_choice():
    assert choose(None, compiled_installed=False) == UPSTREAM
    assert choose("", compiled_installed=False) == UPSTREAM
    assert choose("h11", compiled_installed=True) == UPSTREAM
    assert choose("auto", compiled_installed=True) == COMPILED
    assert choose(None, compiled_installed=True) == UPSTREAM  # installing the extra is not choosing it
    assert choose("auto", compiled_installed=False) == UPSTREAM
    assert choose("h11-mypyc", compiled_installed=True) == COMPILED
    with pytest.raises(ParserChoiceError, match=r"GATEWAY_H11=h11-mypyc: h11-mypyc is not installed"):
        choose("h11-mypyc", compiled_installed=False)
    with pytest.raises(ParserChoiceError, match=r"GATEWAY_H11='pure': expected one of h11, h11-mypyc, auto"):
        choose("pure", compiled_installed=True)


def test_the_suite_runs_on_upstream_h11():
    # tests/conftest.py sets GATEWAY_H11=h11 unless the run asks for another parser
    expected = "h11_mypyc" if os.environ["GATEWAY_H11"] == COMPILED else "h11"
    assert gateway.front.h1.h11.__name__ == expected
    assert _h11.describe()["package"] == expected.replace("_", "-")


def _gateway(*args: str, parser: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_H11"}
    if parser is not None:
        env["GATEWAY_H11"] = parser
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


def test_gateway_version_names_the_parser():
    import h11

    out = _gateway("--version", parser="h11")
    assert out.returncode == 0, out.stderr
    assert f"HTTP/1.1 parser h11 {h11.__version__}" in out.stdout
    out = _gateway("--version", parser=None)
    assert out.returncode == 0, out.stderr
    assert "parser h11 " in out.stdout  # unset: upstream h11, whether or not the extra is installed
    out = _gateway("--version", parser="auto")
    assert out.returncode == 0, out.stderr
    assert ("parser h11-mypyc" if HAVE_EXTRA else "parser h11 ") in out.stdout


def test_a_parser_that_cannot_run_is_one_line_and_exit_status_2():
    out = _gateway("--version", parser="fast")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "error: GATEWAY_H11='fast': expected one of h11, h11-mypyc, auto\n"
    if not HAVE_EXTRA:
        out = _gateway("--version", parser="h11-mypyc")
        assert out.returncode == 2 and "h11-mypyc is not installed" in out.stderr


@needs_extra
def test_the_http_connection_tests_pass_on_h11_mypyc():
    env = {**os.environ, "GATEWAY_H11": COMPILED}
    code = ("import sys, pytest; import gateway.front.h1 as m; "
            "assert m.h11.__name__ == 'h11_mypyc', m.h11.__name__; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/gateway/front/test_http_connection.py', "
            "'tests/gateway/front/test_parking.py', 'tests/gateway/upstream/test_http1.py']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
