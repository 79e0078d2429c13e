"""``gateway status`` shows each ACME certificate in one line: until when,
when it renews, and the last error while attempts fail."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.observe.views import summary_lines

GOLDEN = Path(__file__).parent / "observe_golden"


def test_one_line_per_certificate():
    st = json.loads((GOLDEN / "status.json").read_text())
    st["certificates"] = [
        {"names": ["example.com", "www.example.com"], "not_after": "2027-02-24T20:00:00Z",
         "renew_at": "2027-01-25T20:00:00Z", "next_attempt": "2027-01-25T20:00:00Z", "failures": 0,
         "last_error": None},
        {"names": ["shop.example"], "not_after": None, "renew_at": None, "next_attempt": "2026-11-26T21:02:00Z",
         "failures": 2, "last_error": "rateLimited: too many certificates"},
    ]
    lines = summary_lines(st)
    assert lines[-2:] == [
        "certificate example.com, www.example.com: valid until 2027-02-24T20:00:00Z, renewal from "
        "2027-01-25T20:00:00Z",
        "certificate shop.example: none yet; 2 failed attempt(s), last: rateLimited: too many certificates; "
        "next attempt 2026-11-26T21:02:00Z",
    ]
