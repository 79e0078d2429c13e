"""Small helpers shared by the IO modules."""

from __future__ import annotations

import select
import socket
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


def events_probe(sock: trio.socket.SocketType) -> select.poll:
    """A poll object on ``sock`` for ``socket_events``' question asked again
    and again (``probe.poll(0)``: one syscall; ``socket_events`` makes and
    fills a poll object each time)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | _POLL_GONE)
    return poller


def peer_closed(sock: trio.socket.SocketType) -> bool:
    """True if the peer has closed (or reset) ``sock``: a client that left."""
    try:
        return bool(socket_events(sock) & _POLL_GONE)
    except (OSError, ValueError):
        return True


# -- socket calls without needless checkpoints ------------------------------------------

#: The fairness budget: after this many calls on one socket that did not
#: have to wait, the next one yields to the scheduler once (a big upload or
#: download whose socket is always ready still lets the others run).
FAIR_OPS = 16


class SockIO:
    """Non-blocking calls on a trio socket that wait only when the kernel says so.

    trio's socket methods always yield to the scheduler (a task switch each,
    ~4 us with a request's stack of coroutines), also when the call succeeds
    at once, which is what almost every call does. Here the syscall comes
    first; only ``BlockingIOError`` waits (``wait_readable``/``wait_writable``,
    under the caller's cancel scope, created only then). Cancellation is seen
    as before (``checkpoint_if_cancelled`` before each call), and the
    fairness budget (``FAIR_OPS``) keeps a never-waiting connection from
    starving the others. ``of(sock)`` is None where the trio socket does not
    expose its stdlib socket (then use trio's methods).
    """

    __slots__ = ("sock", "raw", "streak")

    def __init__(self, sock: trio.socket.SocketType, raw: socket.socket) -> None:
        self.sock = sock
        self.raw = raw
        #: calls in a row that did not wait (``FAIR_OPS``)
        self.streak = 0

    async def fair_tick(self) -> None:
        """Count one call that did not wait; yield once the budget is used up."""
        self.streak += 1
        if self.streak >= FAIR_OPS:
            self.streak = 0
            await trio.lowlevel.checkpoint()

    @classmethod
    def of(cls, sock: trio.socket.SocketType | None) -> SockIO | None:
        raw = getattr(sock, "_sock", None)
        if sock is None or not isinstance(raw, socket.socket) or raw.getblocking():
            return None
        return cls(sock, raw)

    async def recv_ready(self, max_bytes: int) -> bytes | None:
        """What is there to read now (b"": EOF), or None if a read would wait.

        Raises ``OSError`` as the socket does (the caller maps it)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data = self.raw.recv(max_bytes)
        except BlockingIOError:
            return None
        await self.fair_tick()
        return data

    async def recv_waiting(self, max_bytes: int) -> bytes:
        """Wait until the socket is readable, then read (after ``recv_ready``
        said it would wait: no second try first)."""
        self.streak = 0
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.raw.recv(max_bytes)
            except BlockingIOError:
                continue

    async def recv(self, max_bytes: int) -> bytes:
        data = await self.recv_ready(max_bytes)
        return data if data is not None else await self.recv_waiting(max_bytes)

    def send_ready(self, data: memoryview | bytes) -> int:
        """Bytes the kernel took now (0: it would wait). ``OSError`` as the socket's."""
        try:
            return self.raw.send(data)
        except BlockingIOError:
            return 0

    def sendmsg_ready(self, buffers: list[memoryview]) -> int:
        """``send_ready`` of several buffers in one call (``sendmsg``)."""
        try:
            return self.raw.sendmsg(buffers)
        except BlockingIOError:
            return 0

    async def wait_writable_for(self, seconds: float) -> None:
        """Wait until the socket takes more (after a send it would not), at
        most ``seconds`` (``trio.TooSlowError``): the send timeout, a
        cancel scope made only here, where a send has to wait."""
        self.streak = 0
        scope = trio.CancelScope(deadline=trio.current_time() + seconds)
        with scope:  # (a hand-made scope: cheaper than fail_after's generator)
            await trio.lowlevel.wait_writable(self.sock)
        if scope.cancelled_caught:
            raise trio.TooSlowError()

    async def send_all(self, data: bytes | memoryview) -> None:
        """All of ``data``, waiting (with no deadline of its own) whenever the
        kernel's buffer is full."""
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            sent = self.send_ready(view)
            if not sent:
                self.streak = 0
                await trio.lowlevel.wait_writable(self.sock)
                continue
            view = view[sent:]
        await self.fair_tick()
