"""``Downstream``: the client connection, and the only code that touches a client socket.

Protocol code (the h11 loop today, h2 next) sees a ``trio.abc.HalfCloseableStream``;
the socket tricks live here, each with a fallback for streams that are not a
plain socket (a ``trio.SSLStream``, a test's memory stream):

- ``send_all``: a *progress* deadline (``send_timeout`` between two writes that
  make progress, nginx's send_timeout), so a slow but steady reader is served
  and one that stops reading is cut (``trio.TooSlowError``). On a plain socket
  it writes as much as the kernel takes per call; other streams get pieces of
  ``SEND_PIECE``, the deadline re-armed for each.
- ``write`` (the response writer's), ``write_pieces`` and ``receive_ready`` /
  ``receive_waiting`` (h1's reads): on a plain socket the syscall comes
  first (``_util.SockIO``); only a call that would block waits, under a
  cancel scope made then, so a call the kernel answers at once costs no
  scope and no yield to the scheduler; one yield per ``_util.FAIR_OPS``
  such calls on the socket keeps a transfer that never waits from holding
  the loop (h1 adds one per request: ``HttpConnection.receive``).
  ``send_all`` and ``receive_some`` stay trio's checkpoints (h2, tunnels).
- Under TLS, once the handshake is done, the same calls go through
  ``tls_io.TlsIO`` (the SSLStream's SSLObject and BIOs driven directly over
  the socket, the same way: no lock, no yield where nothing waits); a
  stream it cannot drive keeps ``SSLStream``'s methods.
- ``sendfile``: ``os.sendfile`` on a plain socket; reads and ``send_all`` on
  anything else (TLS must encrypt what it sends).
- ``peer_closed()``: has the client closed (or reset) the connection? One
  poll() on the raw socket, no read; False where there is no socket.
- ``fileno``: the raw socket's descriptor (also under TLS) for the parker and
  the in-flight watcher, which wait on it in epoll sets; None for memory
  streams. ``parkable()``: nothing is buffered above the socket (a TLS
  stream's BIOs are empty), so epoll sees everything there is to read.
- ``receive_prefix``: read a header that precedes the protocol (the PROXY
  protocol's) byte-exactly: on a socket it peeks, lets the parser say how
  many bytes are its own, and consumes just those, so what follows stays in
  the kernel for the next layer (h11, or a TLS handshake) and for epoll.
  A parser may also only look (the ClientHello, for TLS-ALPN-01) and take
  nothing. Other streams keep the surplus and hand it to the next
  ``receive_some`` (``tls_transport`` for a handshake).
- ``starts_with``: does the client's first data begin with a given prefix
  (HTTP/2's preface on an h2c listener)? Peeked on a socket, consuming nothing.
"""

from __future__ import annotations

import errno
import operator
import os
import socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import trio

from .._util import SockIO, peer_closed
from ..http.response import FileRange
from .tls_io import TlsIO

#: Writes to a stream that is not a socket go in pieces of this size, the send
#: timeout re-armed for each.
SEND_PIECE = 16 * 1024
#: Under TLS, pieces this big: one ``SSLStream.send_all`` encrypts it into
#: 16 KiB records and hands them to the socket in one go (a static file read in
#: ``READ_CHUNK``s is 4 such sends, not 16 round trips through the event loop).
#: A reader must take this much per ``send_timeout`` (1 KiB/s for 60 s).
TLS_SEND_PIECE = 64 * 1024
SENDFILE_CHUNK = 4 * 1024 * 1024
READ_CHUNK = 256 * 1024
#: ``receive_prefix`` waiting for more bytes where ``SO_RCVLOWAT`` does not
#: hold epoll back (unix sockets) looks again this often, not in a busy loop.
LOWAT_FALLBACK_POLL = 0.01
#: ``starts_with``: how often a client that sent part of the prefix is peeked again.
SNIFF_RETRY = 0.01


class PrefixParser(Protocol):
    """An incremental parser of a header before the protocol (``receive_prefix``)."""

    @property
    def done(self) -> bool: ...

    def wanted(self) -> int:
        """The most bytes that may still be the header's (how many to look
        at); after an offer it took none of: how many it needs to see."""
        ...

    def offer(self, data: bytes) -> int:
        """Take the header's bytes from the start of ``data`` (every byte not
        taken yet); how many. None, and not done: it needs more than these."""
        ...


async def _wait_for_bytes(sock: trio.socket.SocketType, count: int) -> None:
    """Until ``count`` bytes are in ``sock``'s receive buffer (or it is closed,
    or fails): epoll reports it readable only then (``SO_RCVLOWAT``)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)
    except OSError as exc:
        raise trio.BrokenResourceError(f"setsockopt failed: {exc}") from exc
    try:
        await trio.lowlevel.wait_readable(sock)
    finally:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        except OSError:
            pass


def _raw_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(stream, trio.SocketStream):
        return stream.socket
    if isinstance(stream, trio.SSLStream) and isinstance(stream.transport_stream, trio.SocketStream):
        return stream.transport_stream.socket
    return None


async def send_tls_alert(stream: trio.SSLStream[trio.abc.Stream], seconds: float = 1.0) -> None:
    """After a failed handshake: send what OpenSSL queued (its alert, e.g.
    ``unrecognized_name``), which trio drops when it marks the stream broken,
    so the client learns why instead of seeing the connection just close."""
    outgoing: Any = getattr(stream, "_outgoing", None)
    alert = outgoing.read() if outgoing is not None else b""
    if not alert:
        return
    with trio.move_on_after(seconds):
        try:
            await stream.transport_stream.send_all(alert)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class Downstream(trio.abc.HalfCloseableStream):
    """A client connection: a ``trio.SocketStream``, an ``SSLStream`` over one,
    or any stream (tests). ``send_timeout``: seconds without write progress."""

    def __init__(self, stream: trio.abc.Stream, send_timeout: float = 60.0) -> None:
        self.stream = stream
        self.send_timeout = send_timeout
        self._sock = _raw_socket(stream)
        #: writes may go straight to the socket (no TLS in between)
        self._plain = self._sock if isinstance(stream, trio.SocketStream) else None
        #: the plain socket's calls without trio's yield per call (``SockIO``)
        self._io = SockIO.of(self._plain)
        #: the same for TLS records, after the handshake (``TlsIO``)
        self._tls = TlsIO.of(stream, send_timeout) if self._plain is None else None
        self._sending = False
        #: a ``receive_some`` through ``TlsIO`` is under way (one at a time)
        self._receiving = False
        self._closed = False
        self._eof_sent = False
        #: bytes received past a prefix on a stream that cannot peek (tests)
        self._pushback = b""
        #: bytes written so far (taken by the kernel, or by the wrapped stream):
        #: the access log's count of what a client got, also of a cut response
        self.sent = 0

    # -- capabilities ----------------------------------------------------------------

    @property
    def fileno(self) -> int | None:
        return None if self._sock is None else self._sock.fileno()

    @property
    def tls(self) -> bool:
        return isinstance(self.stream, trio.SSLStream)

    @property
    def alpn(self) -> str | None:
        """The protocol the TLS handshake chose by ALPN (None: none, or no TLS)."""
        if isinstance(self.stream, trio.SSLStream):
            chosen: str | None = self.stream.selected_alpn_protocol()
            return chosen
        return None

    def peer_closed(self) -> bool:
        return self._sock is not None and peer_closed(self._sock)

    def parkable(self) -> bool:
        """Can the connection wait in an epoll set? Only if no byte the client
        sent is buffered above the socket."""
        if self._sock is None or self._closed or self._pushback:
            return False
        if isinstance(self.stream, trio.SSLStream):
            # trio keeps TLS records read from the socket in a MemoryBIO and
            # decrypted bytes in the SSLObject; either would be invisible to epoll
            incoming: Any = getattr(self.stream, "_incoming", None)
            ssl_object: Any = getattr(self.stream, "_ssl_object", None)
            return incoming is not None and ssl_object is not None and not incoming.pending \
                and not ssl_object.pending()
        return True

    def getpeername(self) -> Any:
        assert self._sock is not None
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        assert self._sock is not None
        return self._sock.getsockname()

    @property
    def family(self) -> int | None:
        return None if self._sock is None else self._sock.family

    def set_nodelay(self) -> None:
        if self._sock is not None and self._sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    # -- trio.abc.HalfCloseableStream ------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """trio's ``send_all``: always a checkpoint (a yield to the scheduler)."""
        await self.write(data)
        if self._io is not None or self._tls is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """``send_all`` without the yield when the kernel took it all at once
        (the common case): a cancel scope and a wait only if it has to wait,
        and a yield once per ``FAIR_OPS`` calls (``SockIO.fair_tick``). Cancellation
        is seen as in ``send_all``. The response writer's call."""
        self._claim_sender()  # (``_one_sender`` without its context manager: once per response)
        try:
            await self._send_all(memoryview(data))
        finally:
            self._sending = False

    @contextmanager
    def _one_sender(self) -> Iterator[None]:
        """One send at a time, and none after close or EOF (trio's stream contract)."""
        self._claim_sender()
        try:
            yield
        finally:
            self._sending = False

    def _claim_sender(self) -> None:
        """Mark this task the one sender (``_one_sender``, ``write``), or refuse."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this connection")
        if self._closed or self._eof_sent:
            raise trio.ClosedResourceError("the connection was closed (or half-closed) for sending")
        self._sending = True

    async def _send_all(self, view: memoryview) -> None:
        timeout = self.send_timeout
        io = self._io
        tls = self._tls
        if tls is not None:
            if len(view) <= TLS_SEND_PIECE:  # (a response's head and small body, or nothing: one call, one record)
                try:
                    await tls.send(view, timeout)
                except OSError as exc:
                    raise self._broken("send", exc) from exc
                self.sent += len(view)
                return
            for i in range(0, len(view), TLS_SEND_PIECE):
                piece = view[i : i + TLS_SEND_PIECE]
                try:
                    await tls.send(piece, timeout)
                except OSError as exc:
                    raise self._broken("send", exc) from exc
                self.sent += len(piece)
            return
        if io is None:
            scope = trio.CancelScope(deadline=trio.current_time() + timeout)
            with scope:
                if not view:
                    await self.stream.send_all(b"")
                piece_size = TLS_SEND_PIECE if self.tls else SEND_PIECE
                for i in range(0, len(view), piece_size):
                    scope.deadline = trio.current_time() + timeout
                    piece = view[i : i + piece_size]
                    await self.stream.send_all(piece)
                    self.sent += len(piece)
            if scope.cancelled_caught:
                raise trio.TooSlowError()
            return
        await self._send_views([view])

    async def _send_views(self, views: list[memoryview]) -> None:
        """A plain socket: as much as the kernel takes per call (fewer syscalls
        than pieces; several buffers in one ``sendmsg``, not joined first); a
        cancel scope only when it would wait, its deadline send_timeout from
        the last progress (the write just before)."""
        io = self._io
        assert io is not None
        timeout = self.send_timeout
        await trio.lowlevel.checkpoint_if_cancelled()
        views = [v for v in views if v]
        while views:
            try:
                sent = io.send_ready(views[0]) if len(views) == 1 else io.sendmsg_ready(views)
            except OSError as exc:
                raise self._broken("send", exc) from exc
            if sent:
                self.sent += sent
                while sent:  # drop what went out
                    first = views[0]
                    if len(first) > sent:
                        views[0] = first[sent:]
                        break
                    sent -= len(first)
                    del views[0]
                continue
            await io.wait_writable_for(timeout)
        await io.fair_tick()

    async def write_pieces(self, pieces: Sequence[bytes | bytearray]) -> None:
        """``write`` of the pieces one after another: on a plain socket in one
        ``sendmsg`` (a big body is not copied to join it to its head), else joined."""
        if self._io is None or len(pieces) < 2:
            await self.write(b"".join(pieces))
            return
        with self._one_sender():
            await self._send_views([memoryview(p) for p in pieces])

    def _broken(self, what: str, exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self._closed or exc.errno == errno.EBADF:
            return trio.ClosedResourceError("the connection was closed")
        return trio.BrokenResourceError(f"{what} failed: {exc}")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._closed:
            raise trio.ClosedResourceError("the connection was closed")
        if self._pushback:
            n = len(self._pushback) if max_bytes is None else max_bytes
            data, self._pushback = self._pushback[:n], self._pushback[n:]
            await trio.lowlevel.checkpoint()
            return data
        if self._tls is not None:
            return await self._tls_receive_some(max_bytes)
        return await self.stream.receive_some(max_bytes)

    async def _tls_receive_some(self, max_bytes: int | None) -> bytes:
        """``receive_some`` through ``TlsIO``, with trio's contract (one
        receiver at a time, ``max_bytes`` >= 1, always a checkpoint)."""
        size = TlsIO.RECV_SIZE if max_bytes is None else operator.index(max_bytes)
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this connection")
        self._receiving = True
        try:
            got = await self.receive_ready(size)
            if got is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return got
            return bytes(await self.receive_waiting(size))
        finally:
            self._receiving = False

    async def receive_ready(self, max_bytes: int) -> bytes | None:
        """What the client sent that is there now (b"": EOF), without waiting
        and without a cancel scope; None if a read would wait (and always on
        a stream that is neither a plain socket nor ``TlsIO``'s: then
        ``receive_waiting``)."""
        if self._pushback or (self._io is None and self._tls is None):
            return None
        if self._closed:
            raise trio.ClosedResourceError("the connection was closed")
        try:
            if self._io is not None:
                return await self._io.recv_ready(max_bytes)
            assert self._tls is not None
            return await self._tls.receive_ready(max_bytes)
        except OSError as exc:
            raise self._broken("receive", exc) from exc

    async def receive_waiting(self, max_bytes: int) -> bytes | bytearray:
        """Wait for the client's next bytes, after ``receive_ready`` said
        there were none (under the caller's deadline scope)."""
        if self._pushback or (self._io is None and self._tls is None):
            return await self.receive_some(max_bytes)
        try:
            if self._io is not None:
                return await self._io.recv_waiting(max_bytes)
            assert self._tls is not None
            return await self._tls.receive_waiting(max_bytes)
        except OSError as exc:
            raise self._broken("receive", exc) from exc

    async def receive_prefix(self, parser: PrefixParser) -> None:
        """Feed ``parser`` exactly the bytes of its header, until it is done.

        A parser that takes none of what it is offered needs more to decide
        (``ClientHelloPeek`` never takes any: the TLS handshake reads the
        hello it looked at): the next offer waits until ``wanted()`` bytes,
        or at least one more, are there, and offers them all again. On a TCP
        socket that wait is ``SO_RCVLOWAT``, so a client that trickles
        bytes wakes the reader only when it has sent enough (a unix socket
        ignores it: there it looks every ``LOWAT_FALLBACK_POLL``).

        ``trio.BrokenResourceError`` if the client closes first; the parser's
        own error if the bytes are not its header."""
        sock = self._plain
        if sock is None:
            await self._receive_prefix_from_stream(parser)
            return
        offered = 0  # bytes offered to a parser that took none of them
        while not parser.done:
            wanted = parser.wanted()
            if offered:
                await _wait_for_bytes(sock, max(wanted, offered + 1))
            try:
                data = await sock.recv(max(wanted, offered + 1), socket.MSG_PEEK)
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
            if not data or (len(data) <= offered and peer_closed(sock)):
                raise trio.BrokenResourceError("closed before the end of the header")
            if len(data) <= offered:
                # woken without more: a unix socket (no SO_RCVLOWAT), or TCP under memory pressure
                await trio.sleep(LOWAT_FALLBACK_POLL)
                continue
            taken = parser.offer(data)
            offered = 0 if taken else len(data)
            while taken:  # the bytes are in the kernel's buffer: recv returns them at once
                try:
                    got = await sock.recv(taken)
                except OSError as exc:
                    raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
                if not got:
                    raise trio.BrokenResourceError("closed before the end of the header")
                taken -= len(got)

    async def _receive_prefix_from_stream(self, parser: PrefixParser) -> None:
        """``receive_prefix`` on a stream that cannot peek: what is read and
        not taken is kept, and handed to the next ``receive_some``."""
        pending, self._pushback = self._pushback, b""
        more = not pending
        try:
            while not parser.done:
                if more:
                    data = await self.stream.receive_some(max(parser.wanted() - len(pending), 1))
                    if not data:
                        raise trio.BrokenResourceError("closed before the end of the header")
                    pending += bytes(data)
                taken = parser.offer(pending)
                pending = pending[taken:]
                more = not taken or not pending
        finally:
            self._pushback = pending

    def tls_transport(self) -> trio.abc.Stream:
        """What a TLS handshake reads from and writes to: the stream itself,
        or (when ``receive_prefix`` kept bytes, a stream that cannot peek)
        this Downstream, which hands them over first."""
        return self if self._pushback else self.stream

    async def starts_with(self, prefix: bytes) -> bool:
        """Do the client's first bytes begin with ``prefix``? Decided as soon
        as they differ (one peek for almost every client), else once all of
        ``prefix`` is there; nothing is consumed. False at EOF.

        A client whose bytes so far are a strict start of ``prefix`` is peeked
        again every ``SNIFF_RETRY`` seconds (the socket stays readable, so a
        wait would spin): the caller bounds the whole under a deadline."""
        sock = self._plain
        while True:
            if sock is None:
                data = self._pushback
                if len(data) < len(prefix) and prefix.startswith(data):
                    more = await self.stream.receive_some(len(prefix) - len(data))
                    self._pushback = data + bytes(more)
                    if more:
                        continue
                return data.startswith(prefix)
            try:
                data = await sock.recv(len(prefix), socket.MSG_PEEK)
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
            if not data or not prefix.startswith(data):
                return False
            if len(data) == len(prefix):
                return True
            await trio.sleep(SNIFF_RETRY)

    async def send_eof(self) -> None:
        """Half-close where the stream can (a TCP FIN); elsewhere nothing."""
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            self._eof_sent = True
            await self.stream.send_eof()
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._closed = True
        await self.stream.aclose()

    async def linger(self, seconds: float, max_bytes: int) -> None:
        """Half-close and drain briefly so the client reads our response before
        any reset (nginx's lingering_close): closing with unread bytes from the
        client would send an RST that can destroy the response in flight."""
        source: trio.abc.ReceiveStream = self
        try:
            if isinstance(self.stream, trio.SSLStream):
                source = await self._tls_eof(seconds)
            else:
                await self.send_eof()
            with trio.move_on_after(seconds):
                drained = 0
                while drained < max_bytes:
                    data = await source.receive_some(65536)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _tls_eof(self, seconds: float) -> trio.abc.ReceiveStream:
        """TLS has no half-close: send our close_notify alert, then a TCP FIN;
        what the client still sends is drained from the socket below TLS (the
        returned stream). A client that reads until EOF (no Content-Length,
        Connection: close) so knows the response is whole."""
        assert isinstance(self.stream, trio.SSLStream)
        ssl_object: Any = getattr(self.stream, "_ssl_object", None)
        outgoing: Any = getattr(self.stream, "_outgoing", None)
        transport: trio.abc.Stream = self.stream.transport_stream
        if ssl_object is not None and outgoing is not None:
            try:
                ssl_object.unwrap()  # writes close_notify to the outgoing BIO
            except (ssl.SSLError, ValueError):
                pass  # it wants the peer's close_notify too: we do not wait for it
            alert = outgoing.read()
            if self._tls is not None and self._tls.delayed:  # (never sent: they go first)
                alert, self._tls.delayed = self._tls.delayed + alert, b""
            with trio.move_on_after(seconds):
                await transport.send_all(alert)
        self._eof_sent = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return transport

    def close_now(self) -> None:
        """Close without a task (the parker's): the socket goes at once."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()

    # -- files ---------------------------------------------------------------------------

    async def sendfile(self, fr: FileRange) -> None:
        """Send ``fr.length`` bytes of ``fr.file`` from ``fr.offset``.

        Raises ``trio.BrokenResourceError`` if the file shrank meanwhile."""
        sock = self._plain
        if sock is None or not hasattr(os, "sendfile"):
            await self._send_file_by_reads(fr)
            return
        in_fd, out_fd = fr.file.fileno(), sock.fileno()
        offset, remaining = fr.offset, fr.length
        while remaining:
            try:
                n = os.sendfile(out_fd, in_fd, offset, min(remaining, SENDFILE_CHUNK))
            except BlockingIOError:
                scope = trio.CancelScope(deadline=trio.current_time() + self.send_timeout)
                with scope:  # (a hand-made scope: cheaper than fail_after's generator)
                    await trio.lowlevel.wait_writable(sock)
                if scope.cancelled_caught:
                    raise trio.TooSlowError() from None
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"sendfile failed: {exc}") from exc
            if n == 0:
                raise trio.BrokenResourceError("file shrank while being sent")
            offset += n
            remaining -= n
            self.sent += n
            await trio.lowlevel.checkpoint()

    async def _send_file_by_reads(self, fr: FileRange) -> None:
        in_fd = fr.file.fileno()
        offset, remaining = fr.offset, fr.length
        while remaining:
            data = os.pread(in_fd, min(remaining, READ_CHUNK), offset)
            if not data:
                raise trio.BrokenResourceError("file shrank while being sent")
            await self.send_all(data)
            offset += len(data)
            remaining -= len(data)
