"""Fuzz the gateway in process for longer than the test suite does.

The generators and invariants are those of tests/gateway/app/test_fuzz.py
(tests/fuzz_helpers.py): random CGI answers from a fake php-fpm, random request
heads from a client, through HttpConnection + App + Pool over memory streams on
a mock clock. Each round runs every input class with a new seed, until
``--cases`` cases ran or ``--seconds`` passed; then a report per class (counts,
violation kinds, the smallest failing input). Exit status 1 if any case failed.

    scripts/fuzz [--cases 5000] [--seconds 60] [--seed N] [--family backend|client] [--klass NAME]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.fuzz_helpers import (  # noqa: E402
    BACKEND_CLASSES,
    CLIENT_CLASSES,
    ClassReport,
    format_report,
    merge,
    run_batch,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=5000, help="stop after this many cases (default 5000)")
    ap.add_argument("--seconds", type=float, default=60.0, help="stop after this long (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock)")
    ap.add_argument("--family", choices=["backend", "client"], help="only this family")
    ap.add_argument("--klass", help="only this input class (see --list)")
    ap.add_argument("--per-round", type=int, default=5, help="cases per class per round (default 5)")
    ap.add_argument("--list", action="store_true", help="list the input classes and exit")
    args = ap.parse_args()

    classes = [("backend", k) for k in BACKEND_CLASSES] + [("client", k) for k in CLIENT_CLASSES]
    if args.list:
        for family, klass in classes:
            print(f"{family:8} {klass}")
        return 0
    if args.family:
        classes = [c for c in classes if c[0] == args.family]
    if args.klass:
        classes = [c for c in classes if c[1] == args.klass]
        if not classes:
            ap.error(f"no input class {args.klass!r} (see --list)")

    # the gateway's own logs would drown the report; the harness collects what it needs
    gateway_log = logging.getLogger("gateway")
    gateway_log.propagate = False
    gateway_log.addHandler(logging.NullHandler())

    seed = args.seed if args.seed is not None else int(time.time())
    started = time.monotonic()
    deadline = started + args.seconds
    reports = {c: ClassReport() for c in classes}
    total = 0
    rnd = 0
    while total < args.cases and time.monotonic() < deadline:
        for family, klass in classes:
            n = min(args.per_round, args.cases - total)
            if n <= 0 or time.monotonic() >= deadline:
                break
            report = run_batch(family, klass, n, seed + rnd, deadline=deadline)
            merge(reports[(family, klass)], report)
            total += report.cases
        rnd += 1
    elapsed = time.monotonic() - started

    failing = [(c, r) for c, r in reports.items() if r.failures]
    for (family, klass), report in failing:
        print(format_report(family, klass, report))
        print()
    passing = [f"{f}/{k} ({r.cases})" for (f, k), r in reports.items() if not r.failures and r.cases]
    if passing:
        print("passing classes:", ", ".join(passing))
    noted = [(c, r) for c, r in reports.items() if r.notes and not r.failures]
    for (family, klass), report in noted:
        for key, n in report.notes.items():
            print(f"note {family}/{klass} ({n}x): {key}")
    print(f"\n{total} cases in {elapsed:.1f}s, seeds {seed}..{seed + max(rnd - 1, 0)}: "
          f"{len(failing)} of {len(reports)} input classes failing")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
