"""CGI/1.1 response heads from PHP (RFC 3875 6): the php-fpm transport's parser.

Pure functions, bytes in and bytes out. (The request side, ``build_params``,
is in ``app.cgi_params``: it needs the site's routing.)

Response side: ``CgiResponseHead`` collects PHP's STDOUT until the blank line
that ends the CGI header block (LF or CRLF lines, RFC 3875 6.2), bounded in
size, then ``parse_cgi_headers`` turns it into status and headers: ``Status:``
sets the status, ``Location`` without ``Status`` means 302 (6.2.3/6.2.4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADER_END = re.compile(rb"\r?\n\r?\n")


class CgiResponseError(Exception):
    """PHP's output is not a valid CGI response; the gateway answers 502."""


@dataclass(slots=True)
class CgiHead:
    """A validated CGI response head: every header in ``headers`` is safe to put
    on the wire as it is (name a token, value of field-value bytes). Not
    changed once made (not frozen only because a frozen dataclass costs
    ~1.5 us more to build, once per request).

    ``content_length`` is PHP's own Content-Length (never in ``headers``): the
    gateway frames a drained body by the bytes it has, and uses PHP's figure
    only where there is no body to count (HEAD, 304). ``dropped`` says what was
    left out, for one log line.
    """

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int | None = None
    dropped: tuple[str, ...] = ()


#: Response headers that describe PHP's hop to us, not ours to the client.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer",
                        b"proxy-connection"})

#: RFC 9110 5.1: field-name = token.
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: RFC 9110 5.5: field-value bytes are HTAB, SP, VCHAR and obs-text; anything
#: else (NUL, CR, LF, VT, FF, other controls, DEL) is refused. h11 raises on
#: several of them, so nothing of the kind may get past this module.
BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(rb"^(\d{3})(?:[ \t]+(.*))?$")
#: RFC 9110 8.6: Content-Length = 1*DIGIT; 19 digits is more than any file.
_CONTENT_LENGTH = re.compile(rb"^[0-9]{1,19}$")


def parse_cgi_headers(block: bytes) -> CgiHead:
    """Parse and validate a CGI header block (without the blank line that ends it).

    One function on purpose: one pass over the lines, each rule where it
    applies, so the whole validation of untrusted output reads in one place.

    Policy (RFC 3875 6.2 for the CGI part, RFC 9110 for what may reach a client):

    - ``Status``: three digits, 200-599. An interim status (1xx: 100, 101, 103...)
      cannot end a response and 0xx/6xx+ are not HTTP: the response is a 502.
      A reason phrase with bytes HTTP does not allow is replaced by the standard one.
    - A header whose value holds a control byte (NUL, CR, LF, VT, FF, DEL...) is
      dropped, whatever its name (``Location`` included): PHP apps put user input
      in headers, and one such header must not cost the page.
    - ``Content-Length``: digits only; several copies must agree. An invalid or
      conflicting one is dropped (the gateway counts the body itself).
    - Hop-by-hop headers (Connection, Transfer-Encoding...) are PHP's hop to us: dropped.
    - A line without a colon, an invalid header name or a folded line: 502.

    Raises:
        CgiResponseError: the block is not a CGI header block, or its Status is
            not a final HTTP status.
    """
    status = None
    reason = b""
    headers: list[tuple[bytes, bytes]] = []
    has_location = False
    lengths: set[bytes] = set()
    dropped: list[str] = []
    for raw in block.split(b"\n"):
        line = raw.removesuffix(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise CgiResponseError("PHP sent a folded header line")
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")
        if not colon or not _TOKEN.match(name):
            raise CgiResponseError(f"PHP sent an invalid header line {line[:80]!r}")
        value = value.strip(b" \t")
        lname = name.lower()
        if lname == b"status":
            m = _STATUS.match(value)
            if not m:
                raise CgiResponseError(f"PHP sent an invalid Status header {value[:40]!r}")
            status = int(m.group(1))
            if not 200 <= status <= 599:
                raise CgiResponseError(f"PHP sent Status {status}: not a final HTTP status (200-599)")
            reason = m.group(2) or b""
            if BAD_VALUE_BYTE.search(reason):
                dropped.append("the Status reason phrase (control byte)")
                reason = b""
            continue
        if BAD_VALUE_BYTE.search(value):
            dropped.append(f"{name.decode('latin-1')} (control byte in its value)")
            continue
        if lname in HOP_BY_HOP:
            continue
        if lname == b"content-length":
            if _CONTENT_LENGTH.match(value):
                lengths.add(value.lstrip(b"0") or b"0")
            else:
                dropped.append(f"Content-Length {value[:20]!r} (not a number)")
            continue
        if lname == b"location":
            has_location = True
        headers.append((name, value))
    if status is None:
        status = 302 if has_location else 200
    content_length = None
    if len(lengths) == 1:
        content_length = int(lengths.pop())
    elif lengths:
        dropped.append("Content-Length (copies disagree)")
    return CgiHead(status, reason, headers, content_length, tuple(dropped))


def wants_streaming(head: CgiHead) -> bool:
    """PHP asks for its output to go straight through: ``X-Accel-Buffering: no``
    (nginx's convention) or a ``text/event-stream`` (server-sent events)."""
    for name, value in head.headers:
        lname = name.lower()
        if lname == b"x-accel-buffering" and value.strip().lower() == b"no":
            return True
        if lname == b"content-type" and value.strip().lower().startswith(b"text/event-stream"):
            return True
    return False


#: Headers meant for the gateway, never passed to the client (nginx hides X-Accel-*).
GATEWAY_ONLY_HEADERS = frozenset({b"x-accel-buffering", b"x-accel-redirect", b"x-accel-limit-rate",
                                  b"x-accel-expires", b"x-accel-charset"})


class CgiResponseHead:
    """Accumulates STDOUT until the header block is complete.

    ``feed(data)`` returns ``None`` while more is needed, else the parsed head
    and whatever body bytes followed it in the same data.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[CgiHead, bytes] | None:
        if not self._buf:  # the common case, a whole head in PHP's first output: no copy into the buffer
            m = _HEADER_END.search(data)
            if m is not None:
                if m.start() > self.max_size:
                    raise CgiResponseError(f"PHP's response headers exceed {self.max_size} bytes")
                return parse_cgi_headers(data[: m.start()]), data[m.end() :]
        start = max(0, len(self._buf) - 3)
        self._buf += data
        m = _HEADER_END.search(self._buf, start)
        if m is None:
            if len(self._buf) > self.max_size:
                raise CgiResponseError(f"PHP's response headers exceed {self.max_size} bytes")
            return None
        if m.start() > self.max_size:
            raise CgiResponseError(f"PHP's response headers exceed {self.max_size} bytes")
        head = parse_cgi_headers(bytes(self._buf[: m.start()]))
        body = bytes(self._buf[m.end() :])
        self._buf.clear()
        return head, body
