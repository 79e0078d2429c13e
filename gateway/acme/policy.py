"""When to obtain, renew and retry. Pure: every function takes ``now``.

- A certificate is **due** once a third of its lifetime is left (Let's
  Encrypt's 90 days: at day 60), or when it is missing, expired, or for other
  names than the site's ``server_names``.
- A stored certificate that is not due is **reused**, whatever restarted: no
  order is placed (no issuance storm on restart).
- After a **failure** the next attempt waits ``BACKOFF_FIRST`` doubling to
  ``BACKOFF_MOST`` (or the CA's Retry-After when longer, e.g. rateLimited);
  the time is stored in ``meta.json``, so a restart keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Renew when this share of the lifetime is left.
RENEW_REMAINING = 1 / 3
BACKOFF_FIRST = 60.0
BACKOFF_MOST = 3600.0


@dataclass(frozen=True)
class Stored:
    """What the state dir holds for one certificate (``meta.json`` and the bundle)."""

    names: frozenset[str]
    not_before: float
    not_after: float


def renew_at(not_before: float, not_after: float) -> float:
    """When a certificate valid from ``not_before`` to ``not_after`` is due."""
    return not_after - (not_after - not_before) * RENEW_REMAINING


def backoff(failures: int, first: float = BACKOFF_FIRST, most: float = BACKOFF_MOST) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...)."""
    return min(most, first * 2.0 ** max(0, min(failures - 1, 30)))


def next_attempt(stored: Stored | None, names: list[str], now: float, *, retry_at: float = 0.0) -> float:
    """When to next ask the CA for ``names`` (<= ``now``: now). ``retry_at``:
    the earliest retry after failures (``meta.json``), honoured even when due."""
    if stored is None or stored.names != frozenset(n.lower() for n in names) or stored.not_after <= now:
        due = now
    else:
        due = renew_at(stored.not_before, stored.not_after)
    return max(due, retry_at)
