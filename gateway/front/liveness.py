"""Is the client still there? One watcher for every in-flight request of a listener.

While a handler waits (in the PHP queue, on PHP), a client may give up and
close its connection. php-fpm would still run the request, for nobody, and a
waiter would still take a worker. So the front end watches, as nginx's
``check_broken_connection`` does, and cancels the request when its client
leaves; the handler unwinds (a queued request leaves the queue, a PHP run's
connection is closed) and the access log says 499.

How, cheaply: one task and one epoll set for all in-flight requests. A request
is registered when its handler starts (a deque append, no syscall); only one
still running after ``WATCH_AFTER`` seconds gets its socket added to the epoll
set, for EPOLLRDHUP (the client's FIN), EPOLLHUP and EPOLLERR, never EPOLLIN:
a pipelined next request stays in the socket for the connection to read. Fast
requests (almost all) cost no syscall at all. A client that left during a
shorter wait is caught by ``Request.client_left`` (one poll()) as its request
leaves the PHP queue.

The cancel scope a watch cancels is the connection task's own: the client is
gone, so the whole connection ends.
"""

from __future__ import annotations

import math
import select
from collections import deque

import trio

#: Seconds a request runs before its client is watched.
WATCH_AFTER = 1.0
_EVENTS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class Watch:
    """One in-flight request's registration."""

    __slots__ = ("fd", "scope", "deadline", "active", "registered", "left")

    def __init__(self, fd: int, scope: trio.CancelScope, deadline: float) -> None:
        self.fd = fd
        self.scope = scope
        self.deadline = deadline
        self.active = True
        self.registered = False
        #: the client left and ``scope`` was cancelled for it
        self.left = False


class InFlightWatcher:
    """Cancels an in-flight request's scope when its client closes the connection."""

    def __init__(self, watch_after: float = WATCH_AFTER) -> None:
        self.watch_after = watch_after
        self._epoll = select.epoll()
        self._queue: deque[Watch] = deque()  # registration order = deadline order
        self._by_fd: dict[int, Watch] = {}
        self._timer: trio.CancelScope | None = None
        self._closed = False
        #: requests whose socket was ever added to the epoll set (a counter)
        self.registered = 0

    def watch(self, fd: int, scope: trio.CancelScope) -> Watch:
        """Watch ``fd`` from ``watch_after`` seconds on; ``done()`` ends it."""
        w = Watch(fd, scope, trio.current_time() + self.watch_after)
        self._queue.append(w)
        if self._timer is not None and self._timer.deadline == math.inf:
            self._timer.deadline = w.deadline
        return w

    def done(self, w: Watch) -> None:
        if not w.active:
            return
        w.active = False
        if w.registered:
            w.registered = False
            self._by_fd.pop(w.fd, None)
            try:
                self._epoll.unregister(w.fd)
            except (OSError, ValueError):
                pass

    async def run(self) -> None:
        """Until cancelled: add due requests to the epoll set, cancel the ones
        whose client left."""
        try:
            while True:
                with trio.CancelScope(deadline=self._next_deadline()) as timer:
                    self._timer = timer
                    await trio.lowlevel.wait_readable(self._epoll.fileno())
                self._timer = None
                self._register_due(trio.current_time())
                for fd, _ in self._epoll.poll(0):
                    w = self._by_fd.get(fd)
                    if w is not None:
                        w.left = True
                        self.done(w)
                        w.scope.cancel()
        finally:
            self._closed = True
            self._epoll.close()

    def _next_deadline(self) -> float:
        queue = self._queue
        while queue and not queue[0].active:
            queue.popleft()
        return queue[0].deadline if queue else math.inf

    def _register_due(self, now: float) -> None:
        queue = self._queue
        while queue and (not queue[0].active or queue[0].deadline <= now):
            w = queue.popleft()
            if not w.active:
                continue
            try:
                self._epoll.register(w.fd, _EVENTS)
            except (OSError, ValueError):  # closed meanwhile, or already watched
                continue
            w.registered = True
            self.registered += 1
            self._by_fd[w.fd] = w
