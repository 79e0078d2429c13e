"""The gateway runs on h11 compiled with mypyc when it is installed, and on pure
h11 otherwise: the HTTP/1.1 component tests pass on both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gateway.front.h1

REPO = Path(__file__).parents[3]


def test_the_compiled_h11_is_used_when_installed():
    try:
        import h11_mypyc  # noqa: F401
    except ImportError:
        expected = "h11"
    else:
        expected = "h11_mypyc"
    assert gateway.front.h1.h11.__name__ == expected


def test_the_http_connection_tests_pass_on_pure_h11():
    env = {**os.environ, "GATEWAY_TEST_PURE_H11": "1"}
    code = ("import sys, pytest; import gateway.front.h1 as m; "
            "assert m.h11.__name__ == 'h11', m.h11.__name__; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/gateway/front/test_http_connection.py', "
            "'tests/gateway/front/test_parking.py']))")
    out = subprocess.run([sys.executable, "-c", "import tests.conftest; " + code], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout
