"""Idle keep-alive connections without a task each.

A connection task that waits for the next request keeps its coroutine frames,
its h11 state and its cancel scopes alive: about 10 KB per idle connection. A
site with many idle keep-alive clients pays that for nothing. So once a
kept-alive connection has been idle for ``PARK_AFTER`` seconds, its task hands
the socket to the ``Parker`` and ends. The parker is one task with one epoll
set of its own (registered in trio's loop through its file descriptor, as
``trio.lowlevel.wait_readable`` allows for any fd):

- when a parked socket becomes readable (a request, or EOF), it leaves the set
  and a new connection task is started for it, with a fresh h11 state (the old
  one was idle: nothing buffered, nothing owed);
- when its keep-alive deadline passes it is closed, as the task would have done;
- at shutdown every parked connection is closed at once;
- at ``max_connections``, when a new client waits to be accepted, the
  connection parked longest is closed to make room for it (``close_oldest``,
  nginx's reuse of idle keep-alive connections), unless one silent since its
  accept can go first (``ListenerState.reclaim_silent``). Connections park in the
  order they went idle, after the same ``PARK_AFTER``, so that is the one idle
  longest; a connection mid-request is never closed for room.

Parking costs an epoll_ctl and, on wake-up, a task start (and for a plain
connection its socket objects, a few syscalls): negligible against a
connection that sat idle for ``PARK_AFTER``, and never paid by a client that
sends its next request sooner (busy keep-alive clients stay in their task).

What a parked connection still holds: its file descriptor and one small
record (``Parked``, with ``__slots__``; the listener's owner subclasses it with
what it needs to serve the connection again). The owner, one per listener,
resumes and closes parked connections: no closure or bound method is kept
per connection. A plain connection's socket objects are let go while it is
parked (``front.listen`` detaches the fd and builds them again on resume):
about 0.3 KB per parked connection in all, where the objects cost 2.4 KB.
"""

from __future__ import annotations

import logging
import math
import select
from collections import deque
from typing import Protocol

import trio

from ..metrics import ListenerStats

log = logging.getLogger(__name__)

#: Seconds a kept-alive connection stays in its task before it is parked.
PARK_AFTER = 0.1
_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class Owner(Protocol):
    """Who parked a connection: serves it again, or closes it for good."""

    def resume(self, parked: Parked) -> None:
        """Start a task to serve it again (it owns the connection from then on)."""

    def close(self, parked: Parked) -> None:
        """Close it now and release what it holds (slot, per-IP count)."""


class Parked:
    """A connection waiting for its next request without a task: its socket's
    ``fd``, requests ``served`` on it, its keep-alive ``deadline`` (trio's
    clock), and its ``owner``. Owners subclass it for what they keep."""

    __slots__ = ("fd", "served", "deadline", "owner", "active")

    def __init__(self, fd: int, served: int, deadline: float, owner: Owner) -> None:
        self.fd = fd
        self.served = served
        self.deadline = deadline
        self.owner = owner
        self.active = True


class Parker:
    """One task and one epoll set for every parked connection of a listener."""

    def __init__(self, stats: ListenerStats) -> None:
        self.stats = stats
        self._epoll = select.epoll()
        self._parked: dict[int, Parked] = {}
        #: in parking order; every connection has the same keep-alive timeout,
        #: so this is deadline order too (resumed ones are skipped lazily)
        self._queue: deque[Parked] = deque()
        self._scope: trio.CancelScope | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, parked: Parked) -> bool:
        """Take ``parked`` over; False if it cannot be (then the caller keeps it)."""
        if self._closed:
            return False
        fd = parked.fd
        try:
            self._epoll.register(fd, _EVENTS)
        except (OSError, ValueError):
            return False
        self._parked[fd] = parked
        self._queue.append(parked)
        self.stats.states["idle"] += 1
        if self._scope is not None and parked.deadline < self._scope.deadline:
            self._scope.deadline = parked.deadline
        return True

    def close_oldest(self) -> bool:
        """Close the connection parked longest, releasing its slot at once, to
        make room for a new client; False if none can be. One whose next
        request has arrived (readable, not resumed yet) is spared."""
        while self._queue and not self._queue[0].active:
            self._queue.popleft()  # resumed (run() skips them lazily too)
        if not self._parked:
            return False
        hup = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
        has_request = {fd for fd, events in self._epoll.poll(0) if not events & hup}
        for parked in self._queue:
            if parked.active and parked.fd not in has_request:
                self._unpark(parked)
                parked.owner.close(parked)
                return True
        return False

    def _unpark(self, parked: Parked) -> None:
        parked.active = False
        self._parked.pop(parked.fd, None)
        try:
            self._epoll.unregister(parked.fd)
        except (OSError, ValueError):
            pass
        self.stats.states["idle"] -= 1

    async def run(self) -> None:
        """Wake parked connections that have something to read; close expired ones."""
        try:
            while not self._closed:
                deadline = self._queue[0].deadline if self._queue else math.inf
                with trio.CancelScope(deadline=deadline) as scope:
                    self._scope = scope
                    await trio.lowlevel.wait_readable(self._epoll.fileno())
                self._scope = None
                for fd, _ in self._epoll.poll(0):
                    parked = self._parked.get(fd)
                    if parked is not None:
                        self._unpark(parked)
                        parked.owner.resume(parked)
                self._expire(trio.current_time())
        finally:
            self.close_all()
            self._epoll.close()

    def _expire(self, now: float) -> None:
        queue = self._queue
        while queue and (not queue[0].active or queue[0].deadline <= now):
            parked = queue.popleft()
            if parked.active:
                self._unpark(parked)
                parked.owner.close(parked)

    def close_all(self) -> None:
        """Close every parked connection (shutdown); park nothing more."""
        self._closed = True
        for parked in list(self._parked.values()):
            self._unpark(parked)
            parked.owner.close(parked)
        self._queue.clear()
        if self._scope is not None:
            self._scope.cancel()  # run() ends, and closes the epoll set
