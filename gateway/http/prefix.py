"""Longest-prefix matching of URI paths, shared by the site rules.

Rules of one kind (``access``, ``rate_limit``, ``basic_auth``...) each list
URI prefixes in ``paths``; for a request the rule with the longest prefix
that the (normalised, decoded) path starts with decides, whatever the order
in the file (nginx's prefix locations). A prefix is plain text: ``/wp-admin/``
matches ``/wp-admin/x``; ``/wp-login.php`` matches that script (and, as
``deny`` does, ``/wp-login.php/more``). Among equal prefixes the first rule
given wins.

Pure, no IO.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def by_length(entries: Iterable[tuple[str, T]]) -> tuple[tuple[str, T], ...]:
    """``(prefix, value)`` pairs, longest prefix first (stable: equal ones
    keep their order), ready for ``longest``."""
    return tuple(sorted(entries, key=lambda entry: -len(entry[0])))


def longest(path: str, ordered: Sequence[tuple[str, T]],
            accept: Callable[[T], bool] | None = None) -> T | None:
    """The value of the longest prefix of ``path`` in ``ordered`` (from
    ``by_length``) whose value ``accept`` takes (all, when None), or None."""
    for prefix, value in ordered:
        if path.startswith(prefix) and (accept is None or accept(value)):
            return value
    return None
