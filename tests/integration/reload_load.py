"""Constant load while the gateway reloads: the measurement behind "zero failed
requests during a reload" (tests/integration/test_signals.py runs it for a few
seconds, ``scripts/reload-soak`` for as long as asked).

``clients`` closed-loop clients on 127.0.0.1 alternate a PHP page and a static
file. Half open a new connection per request (``Connection: close``): for them
any error is the server's. Half keep one connection alive and, like every HTTP
client (RFC 9112 9.3.1: browsers, curl, httpx), resend a request once on a new
connection when a *reused* connection closes before any byte of the answer:
an idle kept-alive connection may be closed by the server at any moment (a
reload's old worker closes its idle ones at once) and the client cannot tell.
Those resends are counted (``stale_retries``), never hidden. Everything else
is a failure: a connect error, a reset or EOF on a new connection or after
part of an answer, a status other than 200.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import h11
import trio

TARGETS = ("/pid.php", "/hello.txt")


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    stale_retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: Server header -> responses carrying it
    servers: Counter[str] = field(default_factory=Counter)
    #: the Server header of the last response each client got
    last_server: dict[int, str] = field(default_factory=dict)


class _Stale(Exception):
    """A reused connection closed before any byte of the answer."""


async def _exchange(stream: trio.SocketStream, conn: h11.Connection, target: str, *, close: bool,
                    reused: bool) -> tuple[int, str]:
    headers = [("Host", "localhost")] + ([("Connection", "close")] if close else [])
    got_any = False
    try:
        await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=headers)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        status, server = 0, ""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data and not got_any and reused:
                    raise _Stale()
                got_any = got_any or bool(data)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                server = dict(event.headers).get(b"server", b"").decode()
            elif isinstance(event, h11.EndOfMessage):
                return status, server
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("connection closed mid-response")
    except (trio.BrokenResourceError, ConnectionResetError) as exc:
        if reused and not got_any:
            raise _Stale() from exc
        raise


async def _client(index: int, port: int, stop: trio.Event, result: LoadResult) -> None:
    keep_alive = index % 2 == 1
    stream: trio.SocketStream | None = None
    conn = h11.Connection(h11.CLIENT)
    served_on_stream = 0
    n = 0
    while not stop.is_set():
        target = TARGETS[n % len(TARGETS)]
        n += 1
        try:
            with trio.fail_after(15):
                for attempt in (1, 2):
                    if stream is None:
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                        conn = h11.Connection(h11.CLIENT)
                        served_on_stream = 0
                    try:
                        status, server = await _exchange(stream, conn, target, close=not keep_alive,
                                                         reused=served_on_stream > 0)
                    except _Stale:
                        await stream.aclose()
                        stream = None
                        if attempt == 2:
                            raise
                        result.stale_retries += 1
                        continue
                    break
        except Exception as exc:  # noqa: BLE001 - every failure counts, by kind
            result.failed += 1
            result.errors[type(exc).__name__] += 1
            if stream is not None:
                await stream.aclose()
                stream = None
            continue
        assert stream is not None
        served_on_stream += 1
        if status == 200:
            result.ok += 1
            result.servers[server] += 1
            result.last_server[index] = server
        else:
            result.failed += 1
            result.errors[f"status {status}"] += 1
        if not keep_alive or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            await stream.aclose()
            stream = None
        else:
            conn.start_next_cycle()
    if stream is not None:
        await stream.aclose()


async def run_load(port: int, stop: trio.Event, clients: int = 50) -> LoadResult:
    """Run the load until ``stop`` is set; see the module's docstring."""
    result = LoadResult()
    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(_client, i, port, stop, result)
    return result
