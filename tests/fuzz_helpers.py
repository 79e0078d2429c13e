"""Fuzz harness for the gateway, in process: random CGI responses from a fake
php-fpm and random request heads from a client, driven through the real
``HttpConnection`` + ``App`` (router) + ``Pool`` over trio memory streams, on a
mock clock that jumps ahead whenever every task waits (timeouts cost no real
time).

Two families of cases:

- *backend* cases (``gen_backend_case``): a client sends a few GET/HEAD requests
  one after the other; the fake backend (fastcgi's SERVER role parses the
  request; its answer is raw records, so it can misbehave at will) answers the
  focused request with a random CGI head, odd records, stray records after
  END_REQUEST, truncated records...
- *client* cases (``gen_client_case``): a client writes raw request bytes
  (CL/TE mixes, bad Host values, absolute-form targets, pipelined and smuggled
  requests, bad chunk sizes) to a well-behaved fake backend.

Every request carries a unique token (``TOKnnnnnnZ``) in its target; the fake
backend echoes the token of the request it answers in a header and the body.
``run_case`` returns the violated invariants:

- ``task-raised``: the connection task let an exception out;
- ``unparseable``: a response a strict h11 client cannot parse (or garbage
  after a response that announced ``Connection: close``);
- ``extra-response``: more responses than the client sent requests;
- ``bad-header-bytes``: a control byte or DEL in a header value or reason
  phrase that reached the client;
- ``leak``: a response that carries another request's token;
- ``smuggled``: the backend saw a request the client never framed as one
  (or one that had to be refused);
- ``pool-not-whole``: slots, waiters or connections left over;
- ``expected-status`` / ``not-closed``: the specific expectations (both CL and
  TE -> 400 and close; TE in HTTP/1.0 -> 400; invalid Host -> 400; backend
  Status outside 200-599 -> 502...);
- ``hang``: the case did not finish within a (virtual) hour.

``notes`` (not failures) record handled internal errors (a 500 from an
unhandled exception inside one request).
"""

from __future__ import annotations

import logging
import os
import random
import re
import struct
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import h11
import trio
import trio.testing

import fastcgi
from fastcgi import RecordType, encode_record
from gateway.app.site import App
from gateway.config import LimitsConfig, TimeoutsConfig, validate
from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.upstream.fastcgi import fastcgi_pool

# -- tokens -----------------------------------------------------------------------

TOKEN_RE = re.compile(rb"TOK[0-9]{6}Z")
#: In backend plans, replaced by the token of the request being answered.
PLACE = b"@@TOK@@"


def token(n: int) -> bytes:
    return b"TOK%06dZ" % n


#: Bytes that must never appear in a header value or reason phrase a client gets
#: (RFC 9110 5.5: field-value is VCHAR / obs-text / SP / HTAB).
_BAD_FIELD_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# -- configuration under test --------------------------------------------------

RESPONSE_HEADER_LIMIT = 8 * 1024
SETTINGS = ConnectionSettings.from_config(
    timeouts=TimeoutsConfig(client_header=10, client_body=10, keepalive=30, send=10),
    limits=LimitsConfig(max_header_size=8 * 1024, max_uri_size=2048, client_max_body_size=64 * 1024,
                        body_buffer_size=1024))
_docroot: str | None = None
_config = None


def _app_config():
    global _docroot, _config
    if _config is None:
        _docroot = tempfile.mkdtemp(prefix="gateway-fuzz-")
        with open(os.path.join(_docroot, "index.php"), "w") as f:
            f.write("front controller")
        _config = validate({
            "backends": {"php": {"pool_size": 1, "read_timeout": "30s",
                                 "max_response_header_size": RESPONSE_HEADER_LIMIT,
                                 "response_buffer_size": 4096}},
            "sites": {"s": {"root": _docroot, "php": "php", "server_names": ["example.com"], "default": True}},
        })
    return _config


# -- the fake backend ------------------------------------------------------------

# A plan is what the fake php-fpm does for one request, a list of steps:
#   ("out", data)             STDOUT record(s) (empty data: the stream's end record)
#   ("err", data)             STDERR record(s)
#   ("end", app, proto)       END_REQUEST with any protocolStatus byte (0-255)
#   ("rec", type, rid_delta, content)   any record
#   ("raw", data)             raw bytes (a truncated record, garbage)
#   ("flush",)                write what is pending (later steps arrive in another read)
#   ("sleep", seconds)        write what is pending, then wait
#   ("close",)                write what is pending, close the connection
# PLACE in any data is replaced by the request's token first.
Step = tuple
Plan = list[Step]


def good_plan(extra_head: bytes = b"") -> Plan:
    return [("out", b"Status: 200 OK\r\nContent-Type: text/plain\r\nX-Tok: " + PLACE + b"\r\n" + extra_head
             + b"\r\nbody " + PLACE + b"\n"), ("out", b""), ("end", 0, 0)]


@dataclass
class FuzzFpm:
    """php-fpm stand-in: fastcgi's SERVER role reads each request; the answer
    is the plan for its token (``plans``), raw records, else ``good_plan()``."""

    plans: dict[bytes, Plan] = field(default_factory=dict)
    seen: list[bytes | None] = field(default_factory=list)  # token per request read (None: no token)
    stdin: list[bytes] = field(default_factory=list)
    connections: int = 0
    live: int = 0

    def connector(self, nursery: trio.Nursery):
        async def connect() -> trio.abc.Stream:
            client, server = trio.testing.memory_stream_pair()
            self.connections += 1
            self.live += 1
            nursery.start_soon(self._serve, server)
            return client

        return connect

    async def _serve(self, stream: trio.abc.Stream) -> None:
        inbox = bytearray()  # bytes of the next request that arrived while we were answering
        try:
            while True:
                conn = fastcgi.Connection(fastcgi.SERVER)  # a fresh one per request: our answers are raw
                if inbox:
                    conn.receive_data(bytes(inbox))
                    inbox.clear()
                params: dict[bytes, bytes] = {}
                stdin = b""
                rid = 1
                while True:
                    event = conn.next_event()
                    if event is fastcgi.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(event, fastcgi.ConnectionClosed):
                        return
                    if isinstance(event, fastcgi.BeginRequest):
                        rid = event.request_id
                    elif isinstance(event, fastcgi.Params):
                        params = dict(event.params)
                    elif isinstance(event, fastcgi.Stdin):
                        if not event.data:
                            break
                        stdin += event.data
                m = TOKEN_RE.search(params.get(b"REQUEST_URI", b""))
                tok = m.group() if m else None
                first_time = tok not in self.seen
                self.seen.append(tok)
                self.stdin.append(stdin)
                plan = self.plans.get(tok) if (tok is not None and first_time) else None
                if plan is None:
                    plan = good_plan()
                if not await self._play(stream, plan, rid, tok or b"NOTOKEN", inbox):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, fastcgi.RemoteProtocolError):
            pass
        finally:
            self.live -= 1
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _play(stream: trio.abc.Stream, plan: Plan, rid: int, tok: bytes, inbox: bytearray) -> bool:
        """Send one answer; False if the connection is to be closed (or the gateway closed it)."""
        pending = bytearray()

        def sub(data: bytes) -> bytes:
            return data.replace(PLACE, tok)

        async def flush() -> None:
            if pending:
                await stream.send_all(bytes(pending))
                pending.clear()

        for step in plan:
            kind = step[0]
            if kind in ("out", "err"):
                rtype = RecordType.STDOUT if kind == "out" else RecordType.STDERR
                data = sub(step[1])
                if not data:
                    pending += encode_record(rtype, rid)
                for i in range(0, len(data), fastcgi.MAX_CONTENT):
                    pending += encode_record(rtype, rid, data[i:i + fastcgi.MAX_CONTENT])
            elif kind == "end":
                pending += encode_record(RecordType.END_REQUEST, rid, struct.pack(">IB3x", step[1], step[2]))
            elif kind == "rec":
                pending += encode_record(step[1], (rid + step[2]) & 0xFFFF, sub(step[3]))
            elif kind == "raw":
                pending += sub(step[1])
            elif kind == "flush":
                await flush()
            elif kind == "sleep":
                await flush()
                with trio.move_on_after(step[1]):  # a sleep that notices the gateway closing us
                    data = await stream.receive_some(65536)
                    if not data:
                        return False
                    inbox += data
            elif kind == "close":
                await flush()
                return False
            else:
                raise ValueError(step)
        await flush()
        return True


# -- cases ----------------------------------------------------------------------


@dataclass
class Framed:
    """One request as the client frames it."""

    method: bytes
    token: bytes
    expect: frozenset[int] | None = None  # allowed statuses (None: policy, no expectation)
    must_close: bool = False  # the connection must end after its response
    reachable: bool = True  # may reach the backend


@dataclass
class ClientCase:
    klass: str
    chunks: list[bytes]
    framed: list[Framed]

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def example(self) -> str:
        return f"client sends {self.data!r}"

    def size(self) -> int:
        return len(self.data)


@dataclass
class BackendRequest:
    method: bytes
    token: bytes
    new_connection: bool = False
    expect: frozenset[int] | None = None


@dataclass
class BackendCase:
    klass: str
    requests: list[BackendRequest]
    plans: dict[bytes, Plan]
    focus: bytes  # the token whose answer is the point of the case

    def example(self) -> str:
        req = next(r for r in self.requests if r.token == self.focus)
        plan = self.plans.get(self.focus, good_plan())
        others = [r.method.decode() for r in self.requests if r.token != self.focus]
        return f"{req.method.decode()} request answered with {_plan_repr(plan)}" + (
            f" (then {', '.join(others)} on the same pool connection)" if others else "")

    def size(self) -> int:
        return sum(len(s[1]) if len(s) > 1 and isinstance(s[1], bytes) else 8
                   for s in self.plans.get(self.focus, [])) + 50 * len(self.requests)


def _short(data: bytes, limit: int = 300) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}...({len(data)} bytes)"


def _plan_repr(plan: Plan) -> str:
    parts = []
    for step in plan:
        kind = step[0]
        if kind in ("out", "err"):
            parts.append(f"{'STDOUT' if kind == 'out' else 'STDERR'}({_short(step[1])})")
        elif kind == "end":
            parts.append(f"END_REQUEST(app={step[1]}, proto={step[2]})")
        elif kind == "rec":
            parts.append(f"RECORD(type={step[1]}, rid+{step[2]}, {_short(step[3])})")
        else:
            parts.append(f"{kind}{step[1:]!r}" if len(step) > 1 else kind)
    return " ".join(parts)


# -- running a case -------------------------------------------------------------


@dataclass
class Outcome:
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    statuses: list[int | None] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return sorted({v.split(":", 1)[0] for v in self.violations})


def _where(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/gateway/" in f.filename]
    if not frames:
        frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" at {os.path.basename(f.filename)}:{f.lineno} ({f.name})"


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "unhandled error" in msg or "error while streaming" in msg:
            exc = record.exc_info[1] if record.exc_info else None
            what = f"{type(exc).__name__}: {str(exc)[:120]}{_where(exc)}" if exc else msg
            self.messages.append(f"internal error ({'streaming' if 'streaming' in msg else '500'}): {what}")


def run_case(case: ClientCase | BackendCase) -> Outcome:
    """Run one case to the end on its own trio loop and mock clock."""
    outcome = Outcome()
    handler = _ErrorLog()
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    try:
        trio.run(_run_case, case, outcome, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logger.removeHandler(handler)
    outcome.notes += handler.messages
    return outcome


class _Conn:
    """One client connection to a fresh HttpConnection task."""

    def __init__(self, app: App, nursery: trio.Nursery, outcome: Outcome) -> None:
        self.stream, server = trio.testing.memory_stream_pair()
        self.done = trio.Event()
        self.outcome = outcome
        self.http = HttpConnection(server, app.handle, SETTINGS, client=("192.0.2.7", 40000),
                                   server=("192.0.2.1", 80))
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        try:
            await self.http.run()
        except trio.Cancelled:
            raise
        except BaseException as exc:  # the invariant under test: nothing escapes
            self.outcome.violations.append(
                f"task-raised: {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:160]}{_where(exc)}")
        finally:
            self.done.set()


async def _run_case(case: ClientCase | BackendCase, outcome: Outcome) -> None:
    fpm = FuzzFpm(dict(case.plans) if isinstance(case, BackendCase) else {})
    async with trio.open_nursery() as nursery:
        pool = fastcgi_pool("php", fpm.connector(nursery), size=1, queue_depth=10, queue_timeout=60, idle_timeout=1000)
        app = App(_app_config(), {"php": pool})
        conns: list[_Conn] = []
        with trio.move_on_after(3600) as guard:
            if isinstance(case, BackendCase):
                await _drive_backend_case(case, app, nursery, outcome, conns, fpm)
            else:
                await _drive_client_case(case, app, nursery, outcome, conns, fpm)
            for c in conns:
                await trio.aclose_forcefully(c.stream)
                await c.done.wait()
        if guard.cancelled_caught:
            outcome.violations.append("hang: the case did not finish within an hour of (virtual) time")
        await trio.testing.wait_all_tasks_blocked()
        if pool.busy or pool.waiting or pool.limiter.borrowed_tokens or pool.open_connections != pool.idle:
            outcome.violations.append(f"pool-not-whole: {pool!r}, open connections {pool.open_connections}")
        await pool.aclose()
        await trio.testing.wait_all_tasks_blocked()
        if pool.open_connections or fpm.live:
            outcome.violations.append(f"pool-not-whole: after aclose, {pool.open_connections} open in the pool, "
                                      f"{fpm.live} at the backend")
        nursery.cancel_scope.cancel()


def _check_response(outcome: Outcome, resp: h11.Response, body: bytes, tok: bytes, i: int) -> None:
    for name, value in [(b"(reason)", bytes(resp.reason)), *resp.headers]:
        if _BAD_FIELD_BYTES.search(bytes(value)):
            outcome.violations.append(f"bad-header-bytes: response {i} {bytes(name)!r}: {bytes(value)[:80]!r}")
    everything = b" ".join(bytes(v) for _, v in resp.headers) + body
    foreign = {t for t in TOKEN_RE.findall(everything) if t != tok}
    if foreign:
        outcome.violations.append(f"leak: response {i} (for {tok.decode()}) carries "
                                  f"{b','.join(sorted(foreign)).decode()}")


@dataclass
class Got:
    resp: h11.Response
    body: bytes
    aborted: bool = False  # cut inside the body after a complete head (a streamed response's error)


async def _no_more() -> bytes:
    return b""


async def _read_response(h: h11.Connection, method: bytes, receive=_no_more) -> Got | str | None:
    """The next response to ``method`` from a strict h11 client: a ``Got``, None
    when the connection closed cleanly before any byte of it, or the parse error."""
    if h.our_state is h11.DONE and h.their_state is h11.DONE:
        h.start_next_cycle()
    if h.our_state is not h11.IDLE:
        return None  # the previous response closed the connection
    h.send(h11.Request(method=method, target="/", headers=[("Host", "example.com")]))
    h.send(h11.EndOfMessage())
    resp = None
    body = b""
    while True:
        if resp is None and h.trailing_data == (b"", True):
            return None  # EOF, and not one byte of a response
        try:
            event = h.next_event()
        except h11.RemoteProtocolError as exc:
            if resp is not None and "complete message body" in str(exc):
                return Got(resp, body, aborted=True)
            return f"{exc}"
        if event is h11.NEED_DATA:
            try:
                data = await receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            h.receive_data(bytes(data))
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None if resp is None else "connection closed inside a response"
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            resp = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert resp is not None
            return Got(resp, body)


def _record(outcome: Outcome, got: Got, tok: bytes, i: int, what: str) -> None:
    outcome.statuses.append(got.resp.status_code)
    _check_response(outcome, got.resp, got.body, tok, i)
    if got.aborted:
        outcome.notes.append(f"aborted: response {i} to {what} was cut inside its body (status "
                             f"{got.resp.status_code}, an error after the head was sent)")


async def _drive_backend_case(case: BackendCase, app: App, nursery: trio.Nursery, outcome: Outcome,
                              conns: list[_Conn], fpm: FuzzFpm) -> None:
    conn: _Conn | None = None
    h = h11.Connection(h11.CLIENT)
    for i, r in enumerate(case.requests):
        if conn is None or r.new_connection:
            if conn is not None:
                await trio.aclose_forcefully(conn.stream)
            conn = _Conn(app, nursery, outcome)
            conns.append(conn)
            h = h11.Connection(h11.CLIENT)
        target = b"/?t=" + r.token
        try:
            await conn.stream.send_all(b"%s %s HTTP/1.1\r\nHost: example.com\r\n\r\n" % (r.method, target))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        got = await _read_response(h, r.method, partial(conn.stream.receive_some, 65536))
        if isinstance(got, str):
            outcome.violations.append(f"unparseable: response {i} to {r.method.decode()}: {got}")
            outcome.statuses.append(None)
            conn = None
            continue
        if got is None:
            outcome.statuses.append(None)
            if r.expect is not None:
                outcome.violations.append(f"expected-status: {r.method.decode()} {r.token.decode()} expected "
                                          f"{sorted(r.expect)}, got a close without a response")
            conn = None
            continue
        _record(outcome, got, r.token, i, r.method.decode())
        # (a response cut inside its body had its error after the head: no status can say it)
        if r.expect is not None and got.resp.status_code not in r.expect and not got.aborted:
            outcome.violations.append(f"expected-status: {r.method.decode()} {r.token.decode()} expected "
                                      f"{sorted(r.expect)}, got {got.resp.status_code}")
        if got.aborted:
            conn = None
        elif h.their_state is h11.MUST_CLOSE:
            # nothing may follow a Connection: close response
            rest = b""
            with trio.move_on_after(120):
                try:
                    while chunk := await conn.stream.receive_some(65536):
                        rest += chunk
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if rest or h.trailing_data[0]:
                outcome.violations.append(f"unparseable: bytes after a Connection: close response: "
                                          f"{(h.trailing_data[0] + rest)[:80]!r}")
            conn = None
    allowed = {r.token for r in case.requests}
    for t in fpm.seen:
        if t not in allowed:
            outcome.violations.append(f"smuggled: backend saw a request with token {t!r}")


async def _drive_client_case(case: ClientCase, app: App, nursery: trio.Nursery, outcome: Outcome,
                             conns: list[_Conn], fpm: FuzzFpm) -> None:
    conn = _Conn(app, nursery, outcome)
    conns.append(conn)

    async def send() -> None:
        try:
            for chunk in case.chunks:
                await conn.stream.send_all(chunk)
                await trio.sleep(0.01)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    nursery.start_soon(send)
    data = b""
    try:
        while chunk := await conn.stream.receive_some(65536):
            data += chunk
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    h = h11.Connection(h11.CLIENT)
    h.receive_data(data)
    h.receive_data(b"")
    closed_after: int | None = None
    for i, fr in enumerate(case.framed):
        got = await _read_response(h, fr.method)
        if isinstance(got, str):
            outcome.violations.append(f"unparseable: response {i} to {fr.method.decode()}: {got}")
            outcome.statuses.append(None)
            break
        if got is None:
            outcome.statuses.append(None)
            if fr.expect is not None and closed_after is None:
                outcome.violations.append(f"expected-status: request {i} expected {sorted(fr.expect)}, "
                                          "got a close without a response")
            closed_after = i if closed_after is None else closed_after
            continue
        _record(outcome, got, fr.token, i, fr.method.decode())
        status = got.resp.status_code
        if fr.expect is not None and status not in fr.expect and not got.aborted:
            outcome.violations.append(f"expected-status: request {i} expected {sorted(fr.expect)}, got {status}")
        if got.aborted:
            break
        if fr.must_close and (h.their_state is not h11.MUST_CLOSE or h.trailing_data[0]):
            outcome.violations.append(f"not-closed: request {i} must end the connection "
                                      f"(status {status}, no Connection: close or more bytes follow)")
            break
    else:
        if h.their_state is h11.DONE and h.trailing_data[0]:
            outcome.violations.append(f"extra-response: bytes after the last framed request's response: "
                                      f"{h.trailing_data[0][:80]!r}")
        elif h.their_state is h11.MUST_CLOSE and h.trailing_data[0]:
            outcome.violations.append(f"unparseable: bytes after a Connection: close response: "
                                      f"{h.trailing_data[0][:80]!r}")
    framed = {fr.token: i for i, fr in enumerate(case.framed)}
    allowed = {fr.token for fr in case.framed if fr.reachable}
    for t in fpm.seen:
        if t in allowed:
            continue
        if t in framed:
            outcome.violations.append(f"refused-reached-backend: request {framed[t]} ({t.decode()}), which must be "
                                      "refused (or follows one that closes the connection), reached the backend")
        else:
            outcome.violations.append(f"smuggled: backend saw {t.decode() if t else 'a request without a token'}, "
                                      f"which the client never framed as a request")
    if len(fpm.seen) > len(case.framed):
        outcome.violations.append(f"smuggled: backend saw {len(fpm.seen)} requests, client framed "
                                  f"{len(case.framed)}")


# -- generators: backend answers ----------------------------------------------------

#: ``_pick``'s round-robin index for the case being generated (None: random)
_sweep: list[int | None] = [None]


def _pick(rng: random.Random, seq):
    """A class's main variant: round-robin over the cases of a batch, so that even a
    short run covers every variant; the rest of a case stays random."""
    i = _sweep[0]
    return seq[i % len(seq)] if i is not None else rng.choice(seq)


_CTL = bytes(range(1, 9)) + bytes(range(0x0E, 0x20))
BYTE_CLASSES: dict[str, bytes] = {
    "nul": b"\x00", "ctl": _CTL, "vt-ff": b"\x0b\x0c", "del": b"\x7f",
    "obs-text": bytes(range(0x80, 0x100)), "cr": b"\r", "lf": b"\n",
}


def _with_byte(rng: random.Random, base: bytes, pool: bytes) -> bytes:
    b = bytes([rng.choice(pool)])
    pos = rng.choice(["start", "mid", "end", "mid"])
    if pos == "start":
        return b + base
    if pos == "end":
        return base + b
    k = rng.randrange(1, max(2, len(base)))
    return base[:k] + b + base[k:]


def _split_out(rng: random.Random, data: bytes) -> Plan:
    """STDOUT ``data`` as one or several records, maybe across several reads."""
    if len(data) < 2 or rng.random() < 0.6:
        return [("out", data)]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
    steps: Plan = []
    prev = 0
    for c in [*cuts, len(data)]:
        steps.append(("out", data[prev:c]))
        if rng.random() < 0.3:
            steps.append(("flush",))
        prev = c
    return steps


def _head(lines: list[bytes], rng: random.Random, eol: bytes = b"\r\n") -> bytes:
    return b"".join(line + eol for line in lines) + eol


def _benign_lines(rng: random.Random) -> list[bytes]:
    lines = [b"Content-Type: text/html; charset=UTF-8", b"X-Tok: " + PLACE]
    if rng.random() < 0.3:
        lines.append(b"Set-Cookie: a=1; path=/")
    if rng.random() < 0.3:
        lines.append(b"Cache-Control: no-cache")
    rng.shuffle(lines)
    return lines


def _body(rng: random.Random) -> bytes:
    n = rng.choice([0, 5, 100, 5000, 9000])
    return b"body " + PLACE + b" " + b"x" * n


def _maybe_stream(rng: random.Random, lines: list[bytes]) -> list[bytes]:
    """Sometimes ask for the streaming path (X-Accel-Buffering / event-stream)."""
    r = rng.random()
    if r < 0.15:
        return [*lines, b"X-Accel-Buffering: no"]
    if r < 0.25:
        return [*lines, b"Content-Type: text/event-stream"]
    return lines


def _answer(rng: random.Random, head: bytes, body: bytes | None = None, end: Plan | None = None) -> Plan:
    out = head + (_body(rng) if body is None else body)
    steps = _split_out(rng, out)
    if rng.random() < 0.2:
        steps.insert(0, ("err", b"PHP Notice: noise\n"))
    return [*steps, ("out", b""), *(end if end is not None else [("end", 0, 0)])]


STATUS_1XX = [b"100", b"101", b"103", b"199", b"100 Continue", b"101 Switching Protocols", b"103 Early Hints"]
STATUS_OUT_OF_RANGE = [b"0", b"000", b"099", b"600", b"999", b"600 Weird", b"999 X", b"1000", b"-200", b"2000"]
STATUS_GARBAGE = [b"abc", b"", b"2OO", b"200abc", b"20", b"2 00", b"200\x00", b"\x00200", b"OK 200", b"+200"]
STATUS_REASON_CTL = [b"200 OK\x0b", b"200 O\x01K", b"200 OK\x7f", b"200 OK\rX-Injected: 1", b"404 \x00",
                     b"200 \x1b[31mred"]
CONTENT_LENGTHS = [b"", b"-1", b"-5", b"abc", b"5, 6", b"5,5", b"99999999999999999999999", b"1e3", b"0x10",
                   b" 7 ", b"+5", b"5 5", b"4294967296", b"0", b"3"]


def _status_class(rng: random.Random, statuses: list[bytes], expect: frozenset[int] | None):
    status = _pick(rng, statuses)
    lines = _maybe_stream(rng, [b"Status: " + status, *_benign_lines(rng)])
    return _answer(rng, _head(lines, rng)), expect


def _bk_status_1xx(rng):
    return _status_class(rng, STATUS_1XX, frozenset({502}))


def _bk_status_out_of_range(rng):
    return _status_class(rng, STATUS_OUT_OF_RANGE, frozenset({502}))


def _bk_status_garbage(rng):
    return _status_class(rng, STATUS_GARBAGE, frozenset({502}))


def _bk_status_reason_ctl(rng):
    return _status_class(rng, STATUS_REASON_CTL, None)


def _bk_status_duplicate(rng):
    lines = [b"Status: " + rng.choice([b"200", b"404", b"302"]), b"Status: " + rng.choice([b"500", b"600", b"abc"]),
             *_benign_lines(rng)]
    return _answer(rng, _head(lines, rng)), None


def _header_value_class(name: str):
    def gen(rng):
        value = _with_byte(rng, b"val" + PLACE + b"ue", BYTE_CLASSES[name])
        hname = rng.choice([b"X-Fuzz", b"Content-Type", b"Set-Cookie", b"Location", b"X-Tok"])
        lines = _maybe_stream(rng, [*_benign_lines(rng), hname + b": " + value])
        return _answer(rng, _head(lines, rng)), None

    return gen


def _bk_header_name_bytes(rng):
    cls = _pick(rng, [*BYTE_CLASSES.values(), b" ()<>@,;\\\"/[]?={}"])
    name = _with_byte(rng, b"X-Fuzz", cls)
    lines = _maybe_stream(rng, [*_benign_lines(rng), name + b": v"])
    return _answer(rng, _head(lines, rng)), None


def _bk_content_length(rng):
    lines = _benign_lines(rng)
    lines.append(b"Content-Length: " + _pick(rng, CONTENT_LENGTHS))
    for _ in range(rng.randint(0, 2)):
        lines.append(b"Content-Length: " + rng.choice(CONTENT_LENGTHS))
    rng.shuffle(lines)
    return _answer(rng, _head(_maybe_stream(rng, lines), rng)), None


def _bk_location(rng):
    loc = rng.choice([b"http://example.com/next", b"/next", b"//evil.example/", b"next"])
    if rng.random() < 0.8:
        loc = _with_byte(rng, loc, _pick(rng, [b"\r", b"\x00", b"\x0b", b"\x01", b"\x7f", b"\x80"]))
    lines = [b"Location: " + loc, *_benign_lines(rng)]
    if rng.random() < 0.5:
        lines.insert(0, b"Status: " + rng.choice([b"301", b"302", b"200", b"201"]))
    return _answer(rng, _head(_maybe_stream(rng, lines), rng), body=rng.choice([b"", b"moved " + PLACE])), None


def _bk_hop_by_hop(rng):
    extra = rng.sample([b"Transfer-Encoding: chunked", b"transfer-encoding: gzip, chunked",
                        b"Transfer-Encoding : chunked", b"Connection: close", b"Connection: keep-alive, Upgrade",
                        b"Upgrade: h2c", b"Keep-Alive: timeout=5", b"TE: trailers", b"Trailer: X-T",
                        b"Proxy-Connection: close", b"Content-Length: 3"], rng.randint(1, 3))
    lines = _maybe_stream(rng, [*_benign_lines(rng), *extra])
    return _answer(rng, _head(lines, rng)), None


def _bk_missing_blank_line(rng):
    lines = [b"Status: 200", *_benign_lines(rng)]
    head = b"".join(line + b"\r\n" for line in lines)
    return _answer(rng, head, body=rng.choice([b"", b"body " + PLACE])), frozenset({502})


def _bk_huge_head(rng):
    kind = rng.choice(["many", "one"])
    lines = _benign_lines(rng)
    if kind == "many":
        lines += [b"X-H%d: %s" % (i, b"v" * 100) for i in range(RESPONSE_HEADER_LIMIT // 100 + 5)]
    else:
        lines.append(b"X-Big: " + b"v" * (RESPONSE_HEADER_LIMIT + rng.randint(1, 5000)))
    return _answer(rng, _head(lines, rng)), frozenset({502})


def _bk_line_endings(rng):
    lines = [b"Status: 200 OK", *_benign_lines(rng)]
    eol = rng.choice([b"\n", b"\r", b"\n\r", b"\r\r\n"])
    if eol == b"\n":  # LF-only is valid CGI: mix it
        head = b"".join(line + rng.choice([b"\n", b"\r\n"]) for line in lines) + rng.choice([b"\n", b"\r\n"])
    else:
        head = b"".join(line + eol for line in lines) + eol + b"\r\n\r\n"
    return _answer(rng, head), None


def _bk_split_records(rng):
    lines = [b"Status: 200 OK", *_benign_lines(rng)]
    out = _head(lines, rng) + _body(rng)
    cuts = sorted(set(rng.sample(range(1, len(out)), min(len(out) - 1, rng.randint(2, 12)))))
    steps: Plan = []
    prev = 0
    for c in [*cuts, len(out)]:
        steps += [("out", out[prev:c]), ("flush",)]
        prev = c
    return [*steps, ("out", b""), ("end", 0, 0)], frozenset({200})


STRAYS: list[Plan] = [
    [("out", b"Content-Type: text/plain\r\n\r\nstray " + PLACE)],
    [("out", b"Status: 200\r\nX-Stray: " + PLACE + b"\r\n\r\nstray " + PLACE), ("out", b""), ("end", 0, 0)],
    [("end", 0, 0)],
    [("err", b"late stderr " + PLACE + b"\n")],
    [("raw", b"garbage " + PLACE)],
    # A record for another request id. Not rid+1: the gateway numbers a connection's
    # requests 1, 2, 3..., and a record sent ahead for the *next* id is a backend
    # forging the next response, which no check can tell from a real one on a
    # memory stream (on a socket, checkout drops a connection that is readable).
    [("rec", RecordType.STDOUT, 7, b"X: y\r\n\r\nother id " + PLACE)],
    [("rec", 99, 0, b"unknown type")],
    [("out", b"")],
]


def _bk_stray_after_end(rng):
    stray = _pick(rng, STRAYS)
    when = rng.choice([[], [("flush",)], [("sleep", 0.5)]])
    plan = [*good_plan(), *when, *stray]
    return plan, None


def _bk_end_request_odd(rng):
    kind = _pick(rng, ["proto", "app", "short", "proto", "no-stdout-end", "version"])
    head_lines = _maybe_stream(rng, [b"Status: 200", *_benign_lines(rng)])
    lines = _head(head_lines, rng)
    # a streamed response's head is out before its end: no status can report the error then
    streamed = head_lines[-1] in (b"X-Accel-Buffering: no", b"Content-Type: text/event-stream")
    if kind == "proto":
        proto = rng.choice([1, 2, 3, 4, 7, 255])
        return _answer(rng, lines, end=[("end", 0, proto)]), None if streamed else frozenset({502, 503})
    if kind == "app":
        return _answer(rng, lines, end=[("end", rng.choice([1, 255, 2**31, 2**32 - 1]), 0)]), None
    if kind == "short":
        n = rng.randint(0, 7)
        return _answer(rng, lines, end=[("rec", RecordType.END_REQUEST, 0, b"\0" * n)]), \
            None if streamed else frozenset({502})
    if kind == "version":
        rec = bytearray(encode_record(RecordType.END_REQUEST, 1, b"\0" * 8))
        rec[0] = rng.choice([0, 2, 255])
        return _answer(rng, lines, end=[("raw", bytes(rec))]), None if streamed else frozenset({502})
    # END_REQUEST without the empty STDOUT record that ends the stream
    steps = _split_out(rng, lines + _body(rng))
    return [*steps, ("end", 0, 0)], None


def _bk_truncated(rng):
    lines = _head([b"Status: 200", *_benign_lines(rng)], rng)
    rec = encode_record(RecordType.STDOUT, 1, lines + b"body " + PLACE)
    cut = rng.randrange(1, len(rec))
    tail = rng.choice([[("close",)], [("sleep", 100)], [("close",)]])
    early = rng.random() < 0.5
    plan: Plan = [("raw", rec[:cut]), *tail] if early else \
        [("out", lines + b"partial " + PLACE), ("raw", encode_record(RecordType.STDOUT, 1, b"more")[:5]), *tail]
    return plan, frozenset({502, 504})


def _bk_no_end_request(rng):
    lines = _head([b"Status: 200", *_benign_lines(rng)], rng)
    return _answer(rng, lines, end=[("close",)]), frozenset({502})


def _bk_empty_answer(rng):
    plan = rng.choice([[("out", b""), ("end", 0, 0)], [("end", 0, 0)], [("close",)],
                       [("out", b"\r\n"), ("out", b""), ("end", 0, 0)]])
    return plan, None


BACKEND_CLASSES: dict[str, Callable[[random.Random], tuple[Plan, frozenset[int] | None]]] = {
    "status-1xx": _bk_status_1xx,
    "status-out-of-range": _bk_status_out_of_range,
    "status-garbage": _bk_status_garbage,
    "status-reason-ctl": _bk_status_reason_ctl,
    "status-duplicate": _bk_status_duplicate,
    **{f"header-value-{name}": _header_value_class(name) for name in BYTE_CLASSES},
    "header-name-bytes": _bk_header_name_bytes,
    "content-length": _bk_content_length,
    "location": _bk_location,
    "hop-by-hop": _bk_hop_by_hop,
    "missing-blank-line": _bk_missing_blank_line,
    "huge-head": _bk_huge_head,
    "line-endings": _bk_line_endings,
    "split-records": _bk_split_records,
    "stray-after-end": _bk_stray_after_end,
    "end-request-odd": _bk_end_request_odd,
    "truncated-record": _bk_truncated,
    "no-end-request": _bk_no_end_request,
    "empty-answer": _bk_empty_answer,
}


def gen_backend_case(rng: random.Random, klass: str | None = None) -> BackendCase:
    klass = klass or rng.choice(list(BACKEND_CLASSES))
    n = rng.randint(2, 4)
    base = rng.randrange(10**5, 9 * 10**5)
    requests = [BackendRequest(rng.choice([b"GET", b"GET", b"HEAD"]), token(base + i),
                               new_connection=rng.random() < 0.3) for i in range(n)]
    focus_i = rng.randrange(0, n - 1)  # at least one request after the focused one (leaks show there)
    plan, expect = BACKEND_CLASSES[klass](rng)
    requests[focus_i].expect = expect
    return BackendCase(klass, requests, {requests[focus_i].token: plan}, requests[focus_i].token)


# -- generators: client requests ------------------------------------------------------


def _req(method: bytes, tok: bytes, *, host: bytes | None = b"example.com", version: bytes = b"1.1",
         headers: list[bytes] = (), body: bytes = b"", target: bytes | None = None) -> bytes:
    target = target if target is not None else b"/?t=" + tok
    lines = [b"%s %s HTTP/%s" % (method, target, version)]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += headers
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


class _Toks:
    def __init__(self, rng: random.Random) -> None:
        self.n = rng.randrange(10**5, 9 * 10**5)

    def __call__(self) -> bytes:
        self.n += 1
        return token(self.n)


def _smuggled(toks: _Toks, rng: random.Random) -> bytes:
    return _req(rng.choice([b"GET", b"POST", b"DELETE"]), toks(), headers=[b"X-Smuggled: 1"])


TE_VALUES = [b"chunked", b"chunked ", b" chunked", b"\tchunked", b"CHUNKED", b"Chunked", b"chunked\t",
             b"gzip, chunked", b"identity, chunked", b"chunked, identity", b"xchunked", b"chunked;q=1",
             b"identity", b"gzip"]


def _te_header(rng: random.Random, value: bytes, fold: bool = True) -> list[bytes]:
    name = rng.choice([b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING"])
    if fold and rng.random() < 0.2:  # obs-fold
        return [name + b":", rng.choice([b" ", b"\t"]) + value.strip(b" \t")]
    return [name + b":" + rng.choice([b" ", b"", b"\t"]) + value]


def _cl_te(rng: random.Random, toks: _Toks, te_first: bool, te_value: bytes | None = None) -> tuple[bytes, Framed]:
    tok = toks()
    smug = _smuggled(toks, rng)
    te_value = te_value or _pick(rng, TE_VALUES)
    if rng.random() < 0.5:
        body = b"0\r\n\r\n" + smug  # CL covers the smuggled request; TE ends before it
        cl = len(body)
    else:
        # TE.CL: the chunk holds it; a short CL ends before it
        body = b"%x\r\n" % len(smug) + smug + b"\r\n0\r\n\r\n"
        cl = rng.choice([4, 3, 0])
    cl_h = [b"Content-Length: %d" % cl]
    te_h = _te_header(rng, te_value)
    headers = te_h + cl_h if te_first else cl_h + te_h
    # "chunked" with CL is the desync: 400 (nginx too). Another coding is refused
    # as h11 and nginx refuse it alone: 501 ("not implemented").
    expect = frozenset({400}) if te_value.strip(b" \t").lower() == b"chunked" else frozenset({400, 501})
    return _req(b"POST", tok, headers=headers, body=body), Framed(b"POST", tok, expect, must_close=True,
                                                                     reachable=False)


def _cl_body_request(rng: random.Random, toks: _Toks) -> tuple[bytes, Framed]:
    tok = toks()
    body = rng.choice([b"a=1", b"", _smuggled(toks, rng)])  # a request inside a body is just body
    return _req(b"POST", tok, headers=[b"Content-Length: %d" % len(body), b"Content-Type: text/plain"],
                body=body), Framed(b"POST", tok, frozenset({200}))


def _get(rng: random.Random, toks: _Toks, expect: frozenset[int] | None = frozenset({200})) -> tuple[bytes, Framed]:
    tok = toks()
    method = rng.choice([b"GET", b"HEAD"])
    return _req(method, tok), Framed(method, tok, expect)


def _wrap(rng: random.Random, toks: _Toks, main: tuple[bytes, Framed], behind: bool = True) -> list[tuple]:
    """The main request, maybe after a valid one, with a valid one pipelined behind."""
    items = []
    if rng.random() < 0.3:
        items.append(_get(rng, toks))
    items.append(main)
    if behind:
        items.append(_get(rng, toks, expect=None))
    return items


def _cl_cl_te(rng, toks):
    return _wrap(rng, toks, _cl_te(rng, toks, te_first=False))


def _cl_te_first(rng, toks):
    return _wrap(rng, toks, _cl_te(rng, toks, te_first=True))


def _cl_http10_te(rng, toks):
    tok = toks()
    smug = _smuggled(toks, rng)
    body = b"%x\r\n" % 3 + b"abc\r\n0\r\n\r\n" + (smug if rng.random() < 0.5 else b"")
    te_value = rng.choice([b"chunked", b"chunked", b"gzip, chunked"])
    headers = _te_header(rng, te_value)
    if rng.random() < 0.3:
        headers.append(b"Connection: keep-alive")
    expect = frozenset({400}) if te_value == b"chunked" else frozenset({400, 501})
    main = (_req(b"POST", tok, version=b"1.0", headers=headers, body=body),
            Framed(b"POST", tok, expect, must_close=True, reachable=False))
    return _wrap(rng, toks, main)


def _cl_te_only_odd(rng, toks):
    tok = toks()
    value = _pick(rng, [b"gzip", b"identity", b"chunked, identity", b"xchunked", b"gzip, chunked, gzip",
                        b"chunked, chunked", b"\x0bchunked", b"chunked\x00"])
    body = b"0\r\n\r\n" + _smuggled(toks, rng)
    main = (_req(b"POST", tok, headers=_te_header(rng, value, fold=False), body=body),
            Framed(b"POST", tok, frozenset({400, 501}), must_close=True, reachable=False))
    return _wrap(rng, toks, main)


def _cl_dup_cl_same(rng, toks):
    tok = toks()
    body = b"hello"
    hs = rng.choice([[b"Content-Length: 5", b"Content-Length: 5"], [b"Content-Length: 5, 5"],
                     [b"Content-Length: 5", b"content-length:5"]])
    return _wrap(rng, toks, (_req(b"POST", tok, headers=hs, body=body), Framed(b"POST", tok)))


def _cl_dup_cl_conflict(rng, toks):
    tok = toks()
    smug = _smuggled(toks, rng)
    hs = rng.choice([[b"Content-Length: 5", b"Content-Length: %d" % (5 + len(smug))],
                     [b"Content-Length: 5, %d" % (5 + len(smug))],
                     [b"Content-Length: %d" % (5 + len(smug)), b"Content-Length: 5"]])
    main = (_req(b"POST", tok, headers=hs, body=b"hello" + smug),
            Framed(b"POST", tok, frozenset({400}), must_close=True, reachable=False))
    return _wrap(rng, toks, main)


def _cl_bad_cl(rng, toks):
    tok = toks()
    v = _pick(rng, [b"-1", b"abc", b"+5", b"5 5", b"0x5", b"5.0", b"", b"99999999999999999999", b"1e2",
                    b"\x0b5", b"5\x00"])
    body = b"hello" + _smuggled(toks, rng)
    main = (_req(b"POST", tok, headers=[b"Content-Length: " + v], body=body),
            Framed(b"POST", tok, frozenset({400, 413}), must_close=True, reachable=False))
    return _wrap(rng, toks, main)


BAD_HOSTS = [b"a b", b"x/../y", b"<script>", b"user@x", b"x:1:2", b"a\\b", b"\\\\evil", b"x:abc",
             b"example.com/", b"exa mple.com:80", b"x?y", b"x#y", b"[::1", b"::1", b"[::1]x", b"a\x01b",
             b"\x80host", b"\"x\"", b"x%00y"]
GOOD_HOSTS = [b"[::1]:8080", b"example.com:80", b"EXAMPLE.COM", b"example.com.", b"127.0.0.1:8080", b"[::1]",
              b"a-b.example", b"xn--bcher-kva.example"]


def _cl_bad_host(rng, toks):
    tok = toks()
    host = _pick(rng, BAD_HOSTS)
    kind = rng.random()
    if kind < 0.15:  # two Host headers
        main = (_req(b"GET", tok, headers=[b"Host: other.example"]),
                Framed(b"GET", tok, frozenset({400}), reachable=False))
    else:
        method = rng.choice([b"GET", b"HEAD", b"POST"])
        hs = [b"Content-Length: 0"] if method == b"POST" else []
        main = (_req(method, tok, host=host, headers=hs), Framed(method, tok, frozenset({400}), reachable=False))
    return _wrap(rng, toks, main)


def _cl_good_host(rng, toks):
    tok = toks()
    return _wrap(rng, toks, (_req(b"GET", tok, host=_pick(rng, GOOD_HOSTS)), Framed(b"GET", tok, frozenset({200}))))


def _cl_absolute_form(rng, toks):
    tok = toks()
    target = _pick(rng, [b"http://example.com/?t=", b"http://other.example/?t=", b"https://example.com:443/?t=",
                         b"HTTP://EXAMPLE.COM/?t=", b"http://user@example.com/?t=", b"http://x:1:2/?t=",
                         b"http://[::1]:8080/?t=", b"http://a\\b/?t=", b"http://example.com?t=",
                         b"ftp://example.com/?t=", b"//example.com/?t="]) + tok
    host = rng.choice([b"example.com", b"other.example", b"a b", None])
    return _wrap(rng, toks, (_req(b"GET", tok, host=host, target=target), Framed(b"GET", tok)))


def _cl_pipeline_behind_body(rng, toks):
    items = [_cl_body_request(rng, toks) for _ in range(rng.randint(1, 2))]
    items.append(_get(rng, toks))
    if rng.random() < 0.5:
        tok = toks()
        body = b"3\r\nabc\r\n0\r\n\r\n"
        items.append((_req(b"POST", tok, headers=[b"Transfer-Encoding: chunked"], body=body),
                      Framed(b"POST", tok, frozenset({200}))))
        items.append(_get(rng, toks))
    return items


BAD_CHUNK_SIZES = [b"zz", b"-1", b"0x5", b"fffffffffffffffffffff", b" 5", b"+5", b"5\x00", b"", b"5 5", b"\x0b5",
                   b"5\x0b", b"5_0"]
#: questionable but not a bad size: policy (invariants only)
ODD_CHUNK_SIZES = [b"5;ext", b"5;a=b", b"05", b"5 ;x", b"0000005", b"5 ", b"5\t", b"5;\x01"]


def _cl_bad_chunk(rng, toks):
    tok = toks()
    smug = _smuggled(toks, rng)
    kind = rng.random()
    if kind < 0.6:
        size = _pick(rng, BAD_CHUNK_SIZES)
        body = size + b"\r\nhello\r\n0\r\n\r\n" + smug
        framed = Framed(b"POST", tok, frozenset({400}), must_close=True, reachable=False)
    elif kind < 0.8:
        size = rng.choice(ODD_CHUNK_SIZES)
        body = size + b"\r\nhello\r\n0\r\n\r\n"
        framed = Framed(b"POST", tok)
    else:  # framing errors after a valid size
        body = rng.choice([b"5\r\nhelloXX0\r\n\r\n", b"5\nhello\n0\n\n", b"3\r\nhello\r\n0\r\n\r\n",
                           b"5\r\nhello\r\n0\r\nX-Trailer\r\n\r\n"]) + smug
        framed = Framed(b"POST", tok, None, must_close=False, reachable=True)
    main = (_req(b"POST", tok, headers=[b"Transfer-Encoding: chunked"], body=body), framed)
    return _wrap(rng, toks, main, behind=framed.reachable)


def _cl_header_bytes(rng, toks):
    tok = toks()
    # not a lone LF: h11 reads it as a line end, so the client's framing would be another one
    cls = _pick(rng, [v for k, v in BYTE_CLASSES.items() if k != "lf"])
    value = _with_byte(rng, b"value", cls)
    return _wrap(rng, toks, (_req(b"GET", tok, headers=[b"X-Fuzz: " + value]), Framed(b"GET", tok)))


CLIENT_CLASSES: dict[str, Callable[[random.Random, _Toks], list[tuple[bytes, Framed]]]] = {
    "cl-then-te": _cl_cl_te,
    "te-then-cl": _cl_te_first,
    "http10-te": _cl_http10_te,
    "te-unsupported": _cl_te_only_odd,
    "dup-cl-same": _cl_dup_cl_same,
    "dup-cl-conflict": _cl_dup_cl_conflict,
    "bad-cl": _cl_bad_cl,
    "bad-host": _cl_bad_host,
    "good-host": _cl_good_host,
    "absolute-form": _cl_absolute_form,
    "pipeline-behind-body": _cl_pipeline_behind_body,
    "bad-chunk": _cl_bad_chunk,
    "request-header-bytes": _cl_header_bytes,
}


def gen_client_case(rng: random.Random, klass: str | None = None) -> ClientCase:
    klass = klass or rng.choice(list(CLIENT_CLASSES))
    toks = _Toks(rng)
    items = CLIENT_CLASSES[klass](rng, toks)
    framed = [f for _, f in items]
    # nothing after a request that must close the connection may be served
    closed = False
    for f in framed:
        if closed:
            f.reachable = False
            f.expect = None
        if f.must_close:
            closed = True
    data = b"".join(d for d, _ in items)
    chunks = [data]
    if rng.random() < 0.4 and len(data) > 2:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return ClientCase(klass, chunks, framed)


# -- a batch ---------------------------------------------------------------------------


@dataclass
class ClassReport:
    cases: int = 0
    failures: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    smallest: tuple[int, str, list[str]] | None = None  # (size, example, violations)
    notes: dict[str, int] = field(default_factory=dict)


def run_batch(family: str, klass: str, cases: int, seed: int,
              deadline: float | None = None) -> ClassReport:
    """Run ``cases`` cases of one class (a fixed seed: the same cases every time)."""
    import time

    rng = random.Random(f"{family}:{klass}:{seed}")
    gen = gen_backend_case if family == "backend" else gen_client_case
    report = ClassReport()
    start = rng.randrange(1000)
    for k in range(cases):
        if deadline is not None and time.monotonic() > deadline:
            break
        _sweep[0] = start + k
        try:
            case = gen(rng, klass)
        finally:
            _sweep[0] = None
        out = run_case(case)
        report.cases += 1
        for n in out.notes:
            key = re.sub(r"b'.*", "", n)[:140]
            report.notes[key] = report.notes.get(key, 0) + 1
        if not out.violations:
            continue
        report.failures += 1
        for v in out.violations:
            key = _category_key(v)
            report.categories[key] = report.categories.get(key, 0) + 1
        if report.smallest is None or case.size() < report.smallest[0]:
            report.smallest = (case.size(), case.example(), out.violations)
    return report


def _category_key(violation: str) -> str:
    """A violation without its per-case details (tokens, byte strings)."""
    v = re.sub(r"TOK[0-9]{6}Z", "TOK", violation)
    v = re.sub(r"b'.*?'|b\".*?\"", "b'...'", v)
    v = re.sub(r"(response|request) \d+", r"\1 N", v)
    return v[:200]


def merge(into: ClassReport, more: ClassReport) -> None:
    into.cases += more.cases
    into.failures += more.failures
    for key, n in more.categories.items():
        into.categories[key] = into.categories.get(key, 0) + n
    for key, n in more.notes.items():
        into.notes[key] = into.notes.get(key, 0) + n
    if more.smallest is not None and (into.smallest is None or more.smallest[0] < into.smallest[0]):
        into.smallest = more.smallest


def format_report(family: str, klass: str, report: ClassReport) -> str:
    lines = [f"{family}/{klass}: {report.failures}/{report.cases} cases failed"]
    for key, n in sorted(report.categories.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {n:4d} x {key}")
    if report.smallest is not None:
        lines.append(f"  smallest failing case: {report.smallest[1]}")
        for v in report.smallest[2][:6]:
            lines.append(f"      -> {v}")
    for key, n in report.notes.items():
        lines.append(f"  note ({n}x): {key}")
    return "\n".join(lines)
