"""Suite-wide switches."""

import os
import sys

if os.environ.get("GATEWAY_TEST_PURE_H11"):
    # Make ``import h11_mypyc`` fail, so the gateway runs on pure h11 (its fallback).
    sys.modules["h11_mypyc"] = None  # type: ignore[assignment]
