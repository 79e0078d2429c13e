"""The HTTP/2 abuse limits that h2 leaves to its user: pure, bytes and times in, verdicts out.

``FrameScanner`` reads the client's byte stream *ahead of* h2, frame headers
only (9 bytes each; payloads are skipped by length, never copied), and keeps
the counts the limits need:

- **CONTINUATION flood** (CVE-2024-27316): h2 buffers a header block until
  its END_HEADERS and bounds it at 64 frames (``h2.frame_buffer.
  CONTINUATION_BACKLOG``), up to 64 x the frame size (1 MiB at our 16 KiB
  SETTINGS_MAX_FRAME_SIZE) decoded only at the end. We bound the block's
  *bytes* instead, at ``max_header_block`` (the decoded list is bounded by
  h2's MAX_HEADER_LIST_SIZE, which we set to ``limits.max_header_size``; an
  HPACK block is never much bigger than its decoded list), and count empty
  CONTINUATION frames too, so a trickle of them cannot run a header block
  forever within the byte bound.
- **Rapid reset** (CVE-2023-44487): every RST_STREAM the client sends is
  counted (``resets``); ``ResetBudget`` turns the count into a verdict over
  a time window.
- **SETTINGS/PING flood** (CVE-2019-9512, CVE-2019-9515): each PING or
  SETTINGS the client sends obliges us to send an ACK. ``acks_owed`` counts
  them since the caller last wrote everything out (``acks_sent``); the
  caller refuses a connection that owes more than a bound, as nghttp2 does
  (1000 queued control frames). The connection also stops reading while its
  writes are blocked, so a client that does not read cannot make us queue.

Everything here raises ``Flood`` with the GOAWAY reason; the caller sends
GOAWAY(ENHANCE_YOUR_CALM) and closes.
"""

from __future__ import annotations

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: frame types (RFC 9113 6)
_HEADERS, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _CONTINUATION = 0x1, 0x3, 0x4, 0x5, 0x6, 0x9
_END_HEADERS = 0x4
_ACK = 0x1

#: Most CONTINUATION frames in one header block (h2 allows 64).
MAX_CONTINUATIONS = 32


class Flood(Exception):
    """The client crossed a limit; ``str()`` is the log's reason, ``kind`` the metric's."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class FrameScanner:
    """Frame headers of a server connection's inbound bytes (after the preface)."""

    __slots__ = ("max_header_block", "_skip", "_head", "in_block", "block_bytes", "block_frames", "resets",
                 "acks_owed")

    def __init__(self, max_header_block: int, *, preface: bool = True) -> None:
        self.max_header_block = max_header_block
        self._skip = len(PREFACE) if preface else 0  # bytes still to pass over (preface, payloads)
        self._head = b""  # a frame header split between two reads
        #: inside a header block (HEADERS without END_HEADERS, then CONTINUATIONs)
        self.in_block = False
        self.block_bytes = 0
        self.block_frames = 0
        #: RST_STREAM frames received so far
        self.resets = 0
        #: PING and SETTINGS (non-ACK) frames received since ``acks_sent``
        self.acks_owed = 0

    def acks_sent(self) -> None:
        """Everything queued so far (the ACKs among it) has been written."""
        self.acks_owed = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Account for ``data``, the next bytes from the client.

        Raises:
            Flood: a header block over ``max_header_block`` bytes or
                ``MAX_CONTINUATIONS`` frames.
        """
        view = memoryview(data)
        n = len(view)
        i = 0
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            need = 9 - len(self._head)
            if n - i < need:
                self._head += bytes(view[i:])
                return
            head = self._head + bytes(view[i : i + need]) if self._head else bytes(view[i : i + 9])
            self._head = b""
            i += need
            self._frame(int.from_bytes(head[:3], "big"), head[3], head[4])

    def _frame(self, length: int, kind: int, flags: int) -> None:
        self._skip = length
        if kind in (_HEADERS, _PUSH_PROMISE) or (kind == _CONTINUATION and self.in_block):
            if kind == _CONTINUATION:
                self.block_bytes += length
                self.block_frames += 1
            else:
                self.in_block, self.block_bytes, self.block_frames = True, length, 0
            if self.block_bytes > self.max_header_block:
                raise Flood("header_flood", f"header block over {self.max_header_block} bytes "
                                            f"({self.block_frames} CONTINUATION frames)")
            if self.block_frames > MAX_CONTINUATIONS:
                raise Flood("header_flood", f"more than {MAX_CONTINUATIONS} CONTINUATION frames in one header block")
            if flags & _END_HEADERS:
                self.in_block = False
        elif kind == _RST_STREAM:
            self.resets += 1
        elif kind in (_PING, _SETTINGS) and not flags & _ACK:
            self.acks_owed += 1


class ResetBudget:
    """At most ``limit`` client resets per ``window`` seconds (nginx, after
    CVE-2023-44487, caps streams a connection may cancel the same way). A
    browser leaving a page cancels at most its open streams (``limit`` is
    twice max_concurrent_streams); an attacker resets thousands."""

    __slots__ = ("limit", "window", "_start", "_base", "_count")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._start = -window
        self._base = 0
        self._count = 0

    def over(self, total: int, now: float) -> bool:
        """``total``: resets received so far (``FrameScanner.resets``); True
        if those of the current window exceed ``limit``."""
        if now - self._start >= self.window:
            self._start, self._base = now, self._count
        self._count = total
        return total - self._base > self.limit
