"""``TlsIO``: a client's TLS records read and written without ``trio.SSLStream``'s per-call machinery.

The handshake stays ``trio.SSLStream``'s (``listen.tls_handshake``: its
timeout, alerts, ALPN, session tickets, failure accounting). Once it is
done, ``Downstream`` moves the connection's data through this class, which
drives the same ``ssl.SSLObject`` and memory BIOs directly, over the same
socket, the way ``_util.SockIO`` drives a plain one: the syscall and the
SSLObject call come first; only a read or write the kernel cannot serve now
waits (``wait_readable``/``wait_writable``, under the caller's cancel scope,
made only then); ``_util.FAIR_OPS`` calls in a row that did not wait yield
once. trio's ``SSLStream`` takes a lock, loops through ``_retry`` and yields
to the scheduler on every call, also when nothing waits: a 1 KiB static file
over kept-alive HTTPS cost 185 µs of gateway CPU through its calls and 137
through these (97 over plain HTTP; ``scripts/path-cpu --tls``).

Policy kept from ``SSLStream``:

- TLS 1.3 session tickets, which trio's handshake holds back (OpenSSL
  writes them as the handshake ends; trio sends them before the first
  bytes it sends after it), are taken over and sent the same way:
  before the first bytes sent (``delayed``).
- After every SSLObject call, what it queued (records, a KeyUpdate's answer,
  session tickets, alerts) is sent. One task sends at a time (``flush``): a
  reader whose read queued bytes while a writer is sending leaves them to
  that writer, which sends the BIO empty before it returns; a writer that
  finds a send under way waits for it, then sends what is left. Records go
  out whole and in order. A reader's send is under the send timeout too
  (a client that floods KeyUpdate requests and never reads is cut); a
  read it cuts raises ``trio.BrokenResourceError``, as ``SSLStream``'s
  reads do, never the writer's ``trio.TooSlowError``.
- A client's EOF without close_notify reads as EOF (b"") on an
  ``https_compatible`` stream (the gateway's; on another it is broken),
  and so does its close_notify; any TLS error, and any failed or cut send (a record may be
  half out), marks the connection broken: every later call raises
  ``trio.BrokenResourceError`` (also the SSLStream's own, which is marked
  broken too).
- Renegotiation is refused by our contexts (``OP_NO_RENEGOTIATION``), so a
  write never needs a read; if one did, the connection is broken.

Closing stays the SSLStream's (``aclose``: the transport is closed) and
``Downstream._tls_eof``'s (close_notify, then FIN).
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from .._util import SockIO


def _is_eof(exc: BaseException) -> bool:
    """A TLS read that met the TCP EOF without a close_notify (as trio judges it)."""
    return isinstance(exc, ssl.SSLEOFError) or "UNEXPECTED_EOF_WHILE_READING" in str(getattr(exc, "strerror", ""))


class TlsIO:
    """Reads and writes of an ``SSLStream`` whose handshake is done, over a
    non-blocking socket (``of``: None where that is not what it is).

    Raises ``trio.BrokenResourceError`` where ``SSLStream`` would (a TLS
    error, a failed send, a send cut short by cancellation); ``OSError`` of
    the socket's own calls is raised as it is (the caller maps it)."""

    __slots__ = ("stream", "ssl", "incoming", "outgoing", "io", "send_timeout", "ragged_eof", "delayed", "flushing",
                 "flushed", "broken")

    #: What one read from the socket asks for (records of a pipelined burst in one call).
    RECV_SIZE = 65536

    def __init__(self, stream: trio.SSLStream[trio.abc.Stream], ssl_object: ssl.SSLObject,
                 incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, io: SockIO, send_timeout: float) -> None:
        self.stream = stream
        self.ssl = ssl_object
        self.incoming = incoming
        self.outgoing = outgoing
        self.io = io
        #: seconds a send may wait for the socket without progress (the last ``send``'s)
        self.send_timeout = send_timeout
        #: an EOF without close_notify reads as EOF (the stream's ``https_compatible``), else it breaks
        self.ragged_eof = bool(getattr(stream, "_https_compatible", False))
        #: records the handshake wrote that go before any other (session tickets)
        delayed: Any = getattr(stream, "_delayed_outgoing", None)
        self.delayed: bytes = delayed if isinstance(delayed, bytes) else b""
        stream._delayed_outgoing = None  # (ours now: trio's calls must not send them again)
        #: a task is sending what the SSLObject queued
        self.flushing = False
        #: set when that send ends (made only when another task waits for it)
        self.flushed: trio.Event | None = None
        self.broken = False

    @classmethod
    def of(cls, stream: trio.abc.Stream, send_timeout: float) -> TlsIO | None:
        if not isinstance(stream, trio.SSLStream) or not isinstance(stream.transport_stream, trio.SocketStream):
            return None
        handshook: Any = getattr(stream, "_handshook", None)
        ssl_object = getattr(stream, "_ssl_object", None)
        incoming = getattr(stream, "_incoming", None)
        outgoing = getattr(stream, "_outgoing", None)
        io = SockIO.of(stream.transport_stream.socket)
        if (io is None or not getattr(handshook, "done", False) or not isinstance(ssl_object, ssl.SSLObject)
                or not isinstance(incoming, ssl.MemoryBIO) or not isinstance(outgoing, ssl.MemoryBIO)):
            return None
        return cls(stream, ssl_object, incoming, outgoing, io, send_timeout)

    def _break(self, why: str, cause: BaseException | None = None) -> trio.BrokenResourceError:
        self.broken = True
        state: Any = getattr(self.stream, "_state", None)
        if state is not None:  # (trio's enum: its own calls refuse the stream too)
            self.stream._state = type(state).BROKEN
        error = trio.BrokenResourceError(why)
        error.__cause__ = cause
        return error

    def _check(self) -> None:
        if self.broken:
            raise trio.BrokenResourceError("the TLS connection is broken")

    # -- reading -------------------------------------------------------------------------

    def _read(self, max_bytes: int) -> bytes | None:
        """Decrypted bytes there now (b"": EOF), None: the SSLObject needs more records."""
        try:
            return self.ssl.read(max_bytes)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLError as exc:
            if _is_eof(exc) and self.ragged_eof:  # (https_compatible: a cut without close_notify is EOF)
                self._break("EOF without close_notify", exc)
                return b""
            raise self._break(f"TLS error: {exc}", exc) from exc

    async def receive_ready(self, max_bytes: int) -> bytes | None:
        """What the client sent that is there now, decrypted (b"": EOF), or
        None if a read would wait. No yield to the scheduler unless the
        fairness budget is used up."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check()
        # Nothing above the socket (the usual case: the last request was read
        # whole): the socket first, not a read that would only say it wants more.
        if not self.incoming.pending and not self.ssl.pending() and not self._fill():
            return None
        while True:
            data = self._read(max_bytes)
            if self.outgoing.pending and not self.broken:  # (as trio: no alert after a failed read)
                try:
                    await self.flush(wait=False)
                except trio.TooSlowError as exc:  # (a read fails as SSLStream's does: its readers expect no timeout)
                    raise trio.BrokenResourceError("the client did not read what a read queued (send timeout)") \
                        from exc
            if data is not None:
                await self.io.fair_tick()
                return data
            if not self._fill():
                return None

    def _fill(self) -> bool:
        """Records from the socket into the SSLObject's BIO (or the socket's
        EOF); False: none were there (a read would wait)."""
        try:
            raw = self.io.raw.recv(self.RECV_SIZE)
        except BlockingIOError:
            return False
        if raw:
            self.incoming.write(raw)
        else:
            self.incoming.write_eof()
        return True

    async def receive_waiting(self, max_bytes: int) -> bytes:
        """Wait until there is something to read, then read it (after
        ``receive_ready`` said it would wait), under the caller's deadline."""
        self.io.streak = 0
        while True:
            await trio.lowlevel.wait_readable(self.io.sock)
            data = await self.receive_ready(max_bytes)
            if data is not None:
                return data

    # -- writing -------------------------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview, progress_timeout: float) -> None:
        """Encrypt ``data`` and send it all; a wait for the socket is cut
        (``trio.TooSlowError``) after ``progress_timeout`` seconds without progress."""
        self.send_timeout = progress_timeout
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check()
        try:
            self.ssl.write(data)
        except ssl.SSLError as exc:  # (also SSLWantReadError: no renegotiation here)
            raise self._break(f"TLS error: {exc}", exc) from exc
        await self.flush(wait=True)
        await self.io.fair_tick()

    async def flush(self, *, wait: bool) -> None:
        """Send what the SSLObject queued. If another task is sending: a
        reader (``wait=False``) leaves it to that task, a writer waits for
        it and sends what is left."""
        while self.flushing:
            if not wait:
                return
            if self.flushed is None:
                self.flushed = trio.Event()
            await self.flushed.wait()
            self._check()  # (that send failed: what this writer queued went with it, or never will)
        self.flushing = True
        try:
            while self.outgoing.pending:
                data = self.outgoing.read()
                if self.delayed:
                    data, self.delayed = self.delayed + data, b""
                await self._send_raw(memoryview(data))
        except BaseException as exc:  # (records taken from the BIO may be half out: nothing can follow them)
            self._break(f"send failed: {exc!r}", exc)
            raise
        finally:
            self.flushing = False
            flushed, self.flushed = self.flushed, None
            if flushed is not None:
                flushed.set()

    async def _send_raw(self, view: memoryview) -> None:
        io = self.io
        timeout = self.send_timeout
        while view:
            sent = io.send_ready(view)
            if sent:
                view = view[sent:]
                continue
            await io.wait_writable_for(timeout)
