"""Small helpers shared by the IO modules."""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager

import trio

_POLL_GONE = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


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


def socket_events(sock: trio.socket.SocketType) -> int:
    """poll() events on ``sock`` now, without waiting (any fd number, unlike select)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | _POLL_GONE)
    ready = poller.poll(0)
    return ready[0][1] if ready else 0


def peer_closed(sock: trio.socket.SocketType) -> bool:
    """True if the peer has closed (or reset) ``sock``: a client that left."""
    try:
        return bool(socket_events(sock) & _POLL_GONE)
    except (OSError, ValueError):
        return True
