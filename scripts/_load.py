"""A small closed-loop HTTP/1.1 load generator on trio + h11, for scripts/.

Each of ``concurrency`` clients keeps one connection alive and sends the next
request as soon as the previous answer is in, until ``seconds`` have passed.
Loopback only: anything but 127.0.0.0/8, ::1 or localhost is refused.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import trio


def loopback_target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    host = parts.hostname or "127.0.0.1"
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise SystemExit(f"refusing {url}: load is only sent to 127.0.0.1, ::1 or localhost") from None
    return host, parts.port or 80, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _client(host: str, port: int, target: str, deadline: float, stats: LoadStats,
                  request_timeout: float) -> None:
    stream = None
    conn = None
    while time.monotonic() < deadline:
        try:
            if stream is None:
                stream = await trio.open_tcp_stream(host, port)
                conn = h11.Connection(h11.CLIENT)
            assert conn is not None
            stats.sent += 1
            t0 = time.monotonic()
            with trio.fail_after(request_timeout):
                await stream.send_all(conn.send(h11.Request(method="GET", target=target,
                                                            headers=[("Host", f"{host}:{port}")])))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                status = 0
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
            stats.latencies.append(time.monotonic() - t0)
            if 200 <= status < 400:
                stats.ok += 1
            else:
                stats.error(str(status))
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                await stream.aclose()
                stream = None
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError) as exc:
            stats.error(type(exc).__name__)
            if stream is not None:
                await trio.aclose_forcefully(stream)
            stream = None
            await trio.sleep(0.05)
    if stream is not None:
        await trio.aclose_forcefully(stream)


async def run_load(url: str, *, concurrency: int, seconds: float, stats: LoadStats,
                   request_timeout: float = 30.0) -> None:
    host, port, target = loopback_target(url)
    concurrency = max(1, min(concurrency, 5000))
    seconds = max(0.0, min(seconds, 600.0))
    deadline = time.monotonic() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(_client, host, port, target, deadline, stats, request_timeout)
