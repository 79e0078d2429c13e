"""A small closed-loop HTTP/1.1 load generator on trio + h11, for scripts/.

Each of ``concurrency`` clients keeps one connection alive and sends the next
request as soon as the previous answer is in, until ``seconds`` have passed;
with ``new_connections`` each request gets a connection of its own
(``Connection: close``), so over https every request costs a full TLS
handshake (no session is resumed). https URLs are not verified: the target is
this machine's own test server. Loopback only: anything but 127.0.0.0/8, ::1
or localhost is refused.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import trio


def loopback_target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname or "127.0.0.1"
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise SystemExit(f"refusing {url}: load is only sent to 127.0.0.1, ::1 or localhost") from None
    return host, parts.port or default_port, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def client_context() -> ssl.SSLContext:
    """TLS for load against our own loopback test server: no verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _client(host: str, port: int, target: str, deadline: float, stats: LoadStats,
                  request_timeout: float, tls: ssl.SSLContext | None, new_connections: bool,
                  extra_headers: tuple[tuple[str, str], ...] = ()) -> None:
    stream: trio.abc.Stream | None = None
    conn = None
    headers = [("Host", f"{host}:{port}")] + ([("Connection", "close")] if new_connections else []) \
        + list(extra_headers)
    while time.monotonic() < deadline:
        try:
            stats.sent += 1
            t0 = time.monotonic()
            with trio.fail_after(request_timeout):
                if stream is None:
                    stream = await trio.open_tcp_stream(host, port)
                    if tls is not None:
                        stream = trio.SSLStream(stream, tls, server_hostname=host, https_compatible=True)
                    conn = h11.Connection(h11.CLIENT)
                assert conn is not None
                await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=headers)))
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
                   request_timeout: float = 30.0, new_connections: bool = False,
                   headers: tuple[tuple[str, str], ...] = ()) -> None:
    host, port, target = loopback_target(url)
    tls = client_context() if url.startswith("https://") else None
    concurrency = max(1, min(concurrency, 5000))
    seconds = max(0.0, min(seconds, 600.0))
    deadline = time.monotonic() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(_client, host, port, target, deadline, stats, request_timeout, tls, new_connections,
                               headers)
