"""Suite-wide switches."""

import os

# The suite runs on the parser the default install runs: upstream h11, in this
# process and in every gateway it starts (they inherit GATEWAY_H11). Where the
# [fast] extra is installed (scripts/setup --test installs it),
# tests/gateway/front/test_h11_differential.py compares the two and
# test_h11_choice.py runs the HTTP/1.1 connection tests on h11-mypyc too.
# `GATEWAY_H11=h11-mypyc bash scripts/test` runs the whole suite on the extra.
os.environ.setdefault("GATEWAY_H11", "h11")

# Property tests check what is parsed, not how fast: hypothesis's default 200 ms
# deadline per example failed them on a loaded 2-core machine (the CI box runs
# the whole suite at once), so it is off for the suite.
from hypothesis import settings  # noqa: E402

settings.register_profile("suite", deadline=None)
settings.load_profile("suite")
