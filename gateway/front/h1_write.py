"""Writing one HTTP/1.1 response with h11: head, body of any ``http.response`` type, end.

- ``bytes`` (and small files, and spools still in memory) go out with the head
  in one write: the common case costs one send(); a body of ``JOIN_BELOW`` or
  more in one sendmsg() of head, body and end, so it is not copied to join them
  (a spool's pieces as PHP sent them: a page is not joined either).
- A large ``FileRange`` or a spooled temp file goes with ``Downstream.sendfile``.
- A ``BodyStream`` is written chunk by chunk as it is produced, framed by h11
  (chunked for HTTP/1.1 without a Content-Length, close-delimited for 1.0).
  For HEAD, 204 and 304 it is not read at all: the head goes out and the
  caller's ``Response.aclose()`` abandons the upstream run (its connection is
  closed, the slot freed), as nginx finalizes the upstream of a header-only
  response. Draining it instead held the client's next request, and a PHP
  slot, for as long as the script ran: PHP sends no body for HEAD, so an
  event stream stayed silent until ``read_timeout`` cut the connection.

Our Date and Server go first; PHP's own Date or Server replaces ours, as under
nginx (one of each, RFC 9110). A failed write marks h11's side as failed, so
the connection is not reused.

On a kept-alive HTTP/1.1 exchange (the request HTTP/1.1 without ``Connection:
close``: h11 would add no framing and no Connection header of its own) a body
of known size (bytes, a spool in memory, a small file) goes out without h11's
send: ``plain_head`` makes the head h11 would, byte for byte, after checking
what h11 checks (field names and values by its grammar, one Content-Length
equal to the body's, no Transfer-Encoding, Connection or Host, a final
status); whatever it declines goes through h11 as before, and h11 is moved
past the response as for a ``Prepared`` answer. A differential test
(``tests/gateway/front/test_h1_plain_write.py``) holds the two ways to the
same bytes.

A handler's ``Prepared`` answer (``http.prepared``, kept-alive HTTP/1.1
only) goes out by ``write_prepared``: the same bytes, its header lines made
beforehand, head and body in one send; h11 is told a bodiless response of
the same status, so its state (the next cycle) is what ``write`` leaves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import trio

from ..http._h11 import h11
from ..http.prepared import Prepared
from ..http.response import FileRange, Response, http_date, reason_phrase
from ..http.spool import Spool
from .downstream import Downstream

#: Static files up to this size are read and sent with the head in one write.
SMALL_FILE = 64 * 1024
#: A body this big goes out in one ``sendmsg`` with its head instead of
#: joined to it (a copy of the body); a smaller one costs less joined.
JOIN_BELOW = 8 * 1024


class ResponseWriter:
    """Writes responses on one connection's h11 state and ``Downstream``."""

    def __init__(self, conn: h11.Connection, downstream: Downstream, server_software: bytes) -> None:
        self.conn = conn
        self.downstream = downstream
        self.server_software = server_software
        self._server_line = b"server: %s\r\n" % server_software
        #: our Server line passes ``_LINES`` (checked once, not in every head)
        self._server_ok = bool(_LINES.fullmatch(self._server_line)) and self._server_line.count(b"\n") == 1

    def head_bytes(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes, keep_alive: bool) -> bytes:
        ours = [(b"server", self.server_software), (b"date", http_date())]
        for name, _ in headers:
            if len(name) in (4, 6) and name.lower() in (b"date", b"server"):
                ours = [h for h in ours if h[0] != name.lower()]
        full = [*ours, *headers]
        if not keep_alive:
            full.append((b"connection", b"close"))
        reason = reason or reason_phrase(status)
        return self.conn.send(h11.Response(status_code=status, headers=full, reason=reason)) or b""

    async def send_all(self, data: bytes | None) -> None:
        if not data:
            return
        try:
            await self.downstream.write(data)
        except BaseException:
            self.conn.send_failed()
            raise

    async def _send_pieces(self, pieces: Sequence[bytes | bytearray]) -> None:
        try:
            await self.downstream.write_pieces(pieces)
        except BaseException:
            self.conn.send_failed()
            raise

    async def write_prepared(self, p: Prepared, resp: Response) -> None:
        """Send ``p`` on a kept-alive HTTP/1.1 connection; ``resp.bytes_sent`` as ``write`` counts it."""
        _tell_h11(self.conn, p.status)
        if p.ours:
            head = b"HTTP/1.1 %d %s\r\nserver: %s\r\ndate: %s\r\n%s\r\n" % (
                p.status, p.reason, self.server_software, http_date(), p.fields)
        else:  # its own Date or Server replaces ours (``head_bytes``)
            names = {n.lower() for n, _ in p.headers}
            ours = b"".join(b"%s: %s\r\n" % h for h in ((b"server", self.server_software), (b"date", http_date()))
                            if h[0] not in names)
            head = b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (p.status, p.reason, ours, p.fields)
        await self._send_answer(resp, head, p.body)

    async def write(self, resp: Response, *, head_only: bool, keep_alive: bool, plain: bool = False) -> None:
        """Send ``resp``; ``head_only`` for a HEAD request; ``plain``: the
        request is one h11 frames nothing for (``plain_head``): HTTP/1.1,
        no ``Connection: close``, not CONNECT.

        ``resp.bytes_sent``: what went out after the head (chunk framing
        included, as nginx's $body_bytes_sent), also when the write is cut."""
        body = resp.body
        headers = resp.headers
        if isinstance(body, bytes) and body and not any(n == b"content-length" for n, _ in headers):
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        if plain and keep_alive:
            answer = self._plain_answer(resp, headers, head_only)
            if answer is not None:
                await self._send_answer(resp, *answer)
                return
        head = self.head_bytes(resp.status, headers, resp.reason, keep_alive)
        start = self.downstream.sent + len(head)
        try:
            await self._write(resp, head, head_only=head_only)
        finally:
            resp.bytes_sent = max(0, self.downstream.sent - start)

    def _plain_answer(self, resp: Response, headers: list[tuple[bytes, bytes]],
                      head_only: bool) -> tuple[bytes, bytes, list[bytes | bytearray]] | None:
        """What ``write`` sends of a body of known size on a kept-alive HTTP/1.1
        exchange without h11's send (``_send_answer``'s head, data and pieces):
        the head made in one go (``plain_head``), h11 moved past it
        (``_tell_h11``). None, nothing done: a response ``plain_head``
        declines, or a body to stream or sendfile; ``write``'s h11 path sends it."""
        body = resp.body
        status = resp.status
        bare = head_only or status in (204, 304)
        if isinstance(body, bytes):
            size = len(body)
        elif isinstance(body, Spool) and body.in_memory:
            size = body.size
        elif isinstance(body, FileRange) and (bare or body.length <= SMALL_FILE):
            size = body.length
        else:
            return None
        head = self.plain_head(status, resp.reason, headers, None if bare else size)
        if head is None:
            return None
        data = b""
        pieces: list[bytes | bytearray] = []
        if not bare and size:
            if isinstance(body, bytes):
                data = body
            elif isinstance(body, Spool):
                if size >= JOIN_BELOW:  # a PHP page: the pieces PHP sent, not joined (no copy)
                    pieces = body.pieces()
                else:
                    data = body.getvalue()
            else:
                assert isinstance(body, FileRange)
                data = self._read_small(body)
        _tell_h11(self.conn, status)
        return head, data, pieces

    async def _send_answer(self, resp: Response, head: bytes, data: bytes,
                           pieces: Sequence[bytes | bytearray] = ()) -> None:
        """Send a head h11 was told of and its body (``data``, or ``pieces``
        when there are any) in one call: a body of ``JOIN_BELOW`` or more is
        not copied to join it (a page, a page-cache hit). ``resp.bytes_sent``
        as ``write`` counts it."""
        downstream = self.downstream
        start = downstream.sent + len(head)
        try:  # (``send_all`` and ``_send_pieces``' steps, inline: one frame less per response)
            if pieces:
                await downstream.write_pieces([head, *pieces])
            elif len(data) >= JOIN_BELOW:
                await downstream.write_pieces([head, data])
            else:
                await downstream.write(head + data)
        except BaseException:
            self.conn.send_failed()
            raise
        finally:
            resp.bytes_sent = max(0, downstream.sent - start)

    def plain_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                   body_size: int | None) -> bytes | None:
        """The head ``head_bytes`` makes on a kept-alive HTTP/1.1 exchange,
        byte for byte, made here in one go: our Server and Date first (unless
        the headers have their own), then ``headers`` as they are.
        ``body_size``: the bytes that follow (None: no body goes out).

        None where h11 would not send these headers as they are: a framing it
        adds or rewrites (no Content-Length, Transfer-Encoding, Connection,
        several Content-Lengths), a Host (it goes first), a Content-Length
        that is not ``body_size`` (h11 refuses the body), a field name or
        value it refuses (``_LINES``), a status it refuses."""
        if not 200 <= status < 1000:
            return None
        length = None
        date = server = True  # ours
        names = _PLAIN_NAMES
        for name, value in headers:
            lname = names.get(name)
            if lname is None:
                lname = _plain_name(name)
                if lname is None:
                    return None  # not a token
            if lname:
                if lname == b"content-length":
                    if length is not None or not value.isdigit() or len(value) > 20:
                        return None
                    length = value
                elif lname == b"date":
                    date = False
                elif lname == b"server":
                    server = False
                else:  # transfer-encoding, connection, host
                    return None
        if status not in (204, 304) and (length is None or (body_size is not None and int(length) != body_size)):
            return None
        fields = b"".join([b"%s: %s\r\n" % h for h in headers])
        # (only the given headers are matched: our Date is http_date's, our Server line was checked once)
        if not _LINES.fullmatch(fields) or fields.count(b"\n") != len(headers) or (server and not self._server_ok):
            return None
        if date:
            fields = b"date: %s\r\n%s" % (http_date(), fields)
        if server:
            fields = self._server_line + fields
        return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason or reason_phrase(status), fields)

    async def _write(self, resp: Response, head: bytes, *, head_only: bool) -> None:
        body = resp.body
        head_only = head_only or resp.status in (204, 304)
        if isinstance(body, Spool) and body.in_memory:
            if body.size >= JOIN_BELOW and not head_only:
                # a PHP page: its pieces as PHP sent them, in one sendmsg with the head (not joined: no copy)
                await self._send_spooled(head, body)
                return
            body = body.getvalue()
        elif isinstance(body, FileRange) and body.length <= SMALL_FILE:
            body = self._read_small(body) if not head_only else b""
        if isinstance(body, bytes) or head_only:
            # one write for head, body and end: the common case (a stream is
            # not read for a header-only response; Response.aclose ends it)
            if isinstance(body, bytes) and len(body) >= JOIN_BELOW and not head_only:
                # a big body is not copied to join it to its head: one sendmsg of the pieces
                pieces = [head, *(self.conn.send_with_data_passthrough(h11.Data(data=body)) or ())]
                pieces.append(self.conn.send(h11.EndOfMessage()) or b"")
                await self._send_pieces(pieces)
                return
            out = head
            if isinstance(body, bytes) and body and not head_only:
                out += self.conn.send(h11.Data(data=body)) or b""
            out += self.conn.send(h11.EndOfMessage()) or b""
            await self.send_all(out)
            return
        await self.send_all(head)
        if isinstance(body, (Spool, FileRange)):
            await self._write_file(FileRange(body.file, 0, body.size, close_file=False)
                                   if isinstance(body, Spool) else body)
        else:
            async for chunk in body:
                if chunk:
                    await self.send_all(self.conn.send(h11.Data(data=chunk)))
        await self.send_all(self.conn.send(h11.EndOfMessage()))

    async def _send_spooled(self, head: bytes, spool: Spool) -> None:
        """Head, the spool's pieces and the end in one ``write_pieces``: h11
        frames the body as one ``Data`` (it needs only its length) and hands
        it back untouched (``_Pieces``)."""
        out: list[bytes | bytearray] = [head]
        for piece in self.conn.send_with_data_passthrough(h11.Data(data=_Pieces(spool))) or ():  # type: ignore[arg-type]
            if isinstance(piece, _Pieces):
                out += piece.pieces
            else:
                out.append(piece)
        out.append(self.conn.send(h11.EndOfMessage()) or b"")
        await self._send_pieces(out)

    def _read_small(self, fr: FileRange) -> bytes:
        """A small file costs less read and sent with the head than sendfile'd."""
        data = os.pread(fr.file.fileno(), fr.length, fr.offset)
        if len(data) < fr.length:
            self.conn.send_failed()
            raise trio.BrokenResourceError("file shrank while being sent")
        return data

    async def _write_file(self, fr: FileRange) -> None:
        try:
            for piece in self.conn.send_with_data_passthrough(h11.Data(data=fr)) or []:  # type: ignore[arg-type]
                if isinstance(piece, FileRange):
                    await self.downstream.sendfile(piece)
                else:
                    await self.downstream.write(piece)
        except BaseException:
            self.conn.send_failed()
            raise


#: Header names ``plain_head`` looks at (lower case).
_PLAIN_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host", b"date", b"server"})
#: h11's field-name (a token) and header lines (``h11._abnf``: field-name ": "
#: field-value CRLF; a value is no NUL and no whitespace but SP and HTAB
#: inside it), written without h11's nested repeat, which backtracks at
#: every space.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_LINES = re.compile(rb"(?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+: "
                    rb"(?:[^\x00\s](?:[^\x00\r\n\x0b\x0c]*[^\x00\s])?)?\r\n)*")

#: A field name ``plain_head`` has seen -> its lower case if it is one of
#: ``_PLAIN_SPECIAL``, else b""; names that are not tokens are not kept.
#: Bounded (names come from PHP and proxied backends): cleared when full.
_PLAIN_NAMES: dict[bytes, bytes] = {}
MAX_PLAIN_NAMES = 1024


def _plain_name(name: bytes) -> bytes | None:
    """``name``'s entry in ``_PLAIN_NAMES`` (made and kept), None if it is not a token."""
    if not _TOKEN.fullmatch(name):
        return None
    lname = name.lower()
    kind = lname if lname in _PLAIN_SPECIAL else b""
    if len(_PLAIN_NAMES) >= MAX_PLAIN_NAMES:
        _PLAIN_NAMES.clear()
    _PLAIN_NAMES[name] = kind
    return kind


#: What h11 is told of a ``Prepared`` answer (by status): a response with no
#: body, which leaves its state where the real one would.
_STAND_INS: dict[int, h11.Response] = {}
_END = h11.EndOfMessage()


def _tell_h11(conn: h11.Connection, status: int) -> None:
    """Move h11 past a ``status`` response with no body, without making its bytes.

    Its state machine step (``_process_event``, in upstream h11 and in
    h11-mypyc alike) is what ``send`` runs after building the event's
    bytes, which we would throw away: ~5 us a request saved on a ~30 us
    path. Where it is missing, the public ``send`` does the same, dearer."""
    process = getattr(conn, "_process_event", None)
    if process is not None:
        process(conn.our_role, _stand_in(status))
        process(conn.our_role, _END)
    else:
        conn.send(_stand_in(status))
        conn.send(_END)


def _stand_in(status: int) -> h11.Response:
    event = _STAND_INS.get(status)
    if event is None:
        event = _STAND_INS[status] = h11.Response(status_code=status, headers=[(b"content-length", b"0")])
    return event


class _Pieces:
    """An in-memory spool's pieces as one h11 ``Data`` payload: h11's writers
    take its ``len`` for the framing and pass the object through."""

    __slots__ = ("pieces", "size")

    def __init__(self, spool: Spool) -> None:
        self.pieces = spool.pieces()
        self.size = spool.size

    def __len__(self) -> int:
        return self.size
