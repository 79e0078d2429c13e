"""Small helpers shared by the IO modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_exception() -> Iterator[None]:
    """Re-raise a one-exception ``BaseExceptionGroup`` from a nursery as that exception.

    Our request-scoped nurseries run one helper task that never raises (a body
    pump, a disconnect watcher) beside the main work, so a group always holds
    the main work's one exception; callers then catch ``UpstreamTimeout``,
    ``ClientGone`` and friends by their own names.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
