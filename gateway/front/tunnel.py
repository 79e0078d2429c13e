"""A switched connection (WebSocket, any ``Upgrade``): the 101, then bytes both ways.

The handler returned a ``Response`` with status 101 and a ``Tunnel`` (the
backend's switched connection, ``http.response``); ``switch`` sends the 101
head on the client's h11 connection and ``pump`` moves bytes between the
client and the backend until one of them ends. Nothing here knows the
protocol inside (WebSocket frames, pings, the close handshake are the two
ends' business).

Policy (nginx's upgraded-connection handling, ``ngx_http_upstream_upgrade``):

- Order: what the client sent past its request (h11's trailing data) goes to
  the backend first; what the backend sent past its 101 goes to the client
  first.
- Back-pressure: one task per direction reads at most ``BUFFER`` bytes and
  writes them all before it reads again, so a slow reader slows its sender
  and the gateway holds at most one buffer per direction.
- Idle timeout (``[timeouts] tunnel_idle``, nginx's ``proxy_read_timeout``,
  60 s): one deadline for both directions, re-armed whenever a byte moves
  either way; when it passes, both connections are closed. A client that
  does not read is also cut by ``[timeouts] send`` (``Downstream``). A
  WebSocket application that must stay open while silent sends pings more
  often than this (browsers do not; servers usually do).
- End: when either side closes (or resets) its connection, the other one is
  closed too once what was read has been written (nginx closes both; a
  half-close is not carried through).
- Shutdown and reload: a tunnel is an open request; it is cut at the
  graceful deadline (``[timeouts] graceful``) like any other, not waited
  for.
- The backend connection is closed at the end (``Tunnel.aclose``), never
  reused; the client connection is closed too: no request follows a switch.

The tunnel is counted (``ListenerStats.tunnels``: open now, and in all; it
is also a request in flight, its connection in the ``writing`` state) and
logged as one access-log line at its end: status 101, the bytes sent to the
client after the 101 head, and the tunnel's whole time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from ..http._h11 import h11
from ..http.response import Response, Tunnel, http_date
from ..metrics import TunnelStats

log = logging.getLogger(__name__)

#: Bytes read from one side at once (and so at most held per direction).
BUFFER = 65536


@dataclass(slots=True)
class TunnelEnd:
    """How a tunnel ended: which side ended it and why, bytes each way."""

    reason: str
    to_client: int = 0
    to_backend: int = 0


class _Pump:
    """The two directions' shared state: the idle deadline and the counts."""

    def __init__(self, idle_timeout: float, end: TunnelEnd) -> None:
        self.idle_timeout = idle_timeout
        self.scope = trio.CancelScope(deadline=trio.current_time() + idle_timeout)
        self.end = end
        self.ended = False

    def progress(self) -> None:
        self.scope.deadline = trio.current_time() + self.idle_timeout

    def finish(self, reason: str) -> None:
        """The first side to end names the reason; the other direction stops."""
        if not self.ended:
            self.ended = True
            self.end.reason = reason
        self.scope.cancel()

    async def copy(self, source: trio.abc.ReceiveStream, sink: trio.abc.SendStream, prefix: bytes,
                   to_client: bool) -> None:
        who, other = ("backend", "client") if to_client else ("client", "backend")
        data: bytes | bytearray = prefix
        reading = False
        try:
            while True:
                if data:
                    await sink.send_all(data)
                    if to_client:
                        self.end.to_client += len(data)
                    else:
                        self.end.to_backend += len(data)
                    self.progress()
                reading = True
                data = await source.receive_some(BUFFER)
                reading = False
                if not data:
                    self.finish(f"closed by the {who}")
                    return
                self.progress()
        except trio.TooSlowError:
            self.finish(f"the {other} did not read for the send timeout")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # a failed read is the source's doing, a failed write the sink's
            self.finish(f"the {who if reading else other}'s connection broke ({exc.__class__.__name__})")


async def pump(client: trio.abc.Stream, tunnel: Tunnel, *, client_prefix: bytes, idle_timeout: float,
               end: TunnelEnd | None = None) -> TunnelEnd:
    """Move bytes between ``client`` and ``tunnel.stream`` until one side
    ends or nothing moves for ``idle_timeout`` seconds (the module's policy).
    Closes neither stream: the caller does. ``end`` (returned): counted into
    as bytes move, so a caller that is cancelled meanwhile still has the counts."""
    state = _Pump(idle_timeout, end or TunnelEnd(""))
    with state.scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.copy, tunnel.stream, client, tunnel.prefix, True)
            nursery.start_soon(state.copy, client, tunnel.stream, client_prefix, False)
    if not state.ended:
        state.end.reason = f"idle for {idle_timeout:g}s (timeouts.tunnel_idle)"
    return state.end


async def switch(conn: h11.Connection, client: trio.abc.Stream, response: Response, *, server_software: bytes,
                 idle_timeout: float, stats: TunnelStats, request_id: str) -> TunnelEnd | None:
    """Send ``response`` (a 101 with a tunnel) on the client's connection and
    pump the tunnel until it ends; ``response.bytes_sent`` counts what went to
    the client after the head. The caller closes both connections
    (``Response.aclose`` closes the backend's).

    Returns None, having sent nothing, when the client's request did not ask
    for the switch (a handler's bug): the connection is then unusable (h11's
    ERROR), the caller closes it.
    """
    tunnel = response.tunnel
    assert tunnel is not None
    ours = [(b"server", server_software), (b"date", http_date())]
    try:
        head = conn.send(h11.InformationalResponse(status_code=101, headers=[*ours, *response.headers],
                                                   reason=response.reason or b"Switching Protocols")) or b""
    except h11.LocalProtocolError as exc:
        log.error("[%s] cannot switch protocols: %s", request_id, exc)
        return None
    client_prefix = bytes(conn.trailing_data[0])
    end = TunnelEnd("cut by shutdown")
    stats.open += 1
    stats.total += 1
    try:
        await client.send_all(head)
        await pump(client, tunnel, client_prefix=client_prefix, idle_timeout=idle_timeout, end=end)
    finally:
        stats.open -= 1
        response.bytes_sent = end.to_client
        log.log(logging.DEBUG if end.reason.startswith("closed by") else logging.INFO,
                "[%s] tunnel ended: %s (%d bytes to the client, %d to the backend)", request_id, end.reason,
                end.to_client, end.to_backend)
    return end
