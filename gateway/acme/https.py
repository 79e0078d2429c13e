"""One HTTPS exchange with the ACME server: trio + h11 over ``trio.SSLStream``.

The thin IO layer under ``client``: a new connection per request (an order is
a dozen requests a few times a quarter; keeping connections buys nothing),
the server verified against the system CAs plus ``[acme] ca_bundle``, every
exchange bounded by ``timeout`` and the answer by ``messages.MAX_BODY``. A
network failure is an ``AcmeError`` with one sentence.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from ..http._h11 import h11
from .messages import MAX_BODY, AcmeError

USER_AGENT = "gateway-acme/0.1"


@dataclass(frozen=True)
class Answer:
    status: int
    #: header names lower case; a repeated header keeps its last value
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def tls_context(ca_bundle: str = "") -> ssl.SSLContext:
    """The system's CAs, plus ``ca_bundle`` (a test CA's PEM) when given."""
    ctx = ssl.create_default_context()
    if ca_bundle:
        try:
            ctx.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise AcmeError(f"[acme] ca_bundle {ca_bundle}: {exc}") from None
    return ctx


class HttpsTransport:
    """``await transport(method, url, body, content_type)`` -> ``Answer``."""

    def __init__(self, context: ssl.SSLContext, timeout: float = 30.0) -> None:
        self.context = context
        self.timeout = timeout

    async def __call__(self, method: str, url: str, body: bytes | None = None,
                       content_type: str = "application/jose+json") -> Answer:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise AcmeError(f"{url!r}: not an https URL")
        host, port = parts.hostname, parts.port or 443
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            with trio.fail_after(self.timeout):
                return await self._exchange(host, port, method, target, body, content_type)
        except trio.TooSlowError:
            raise AcmeError(f"{method} {url}: no answer within {self.timeout:g}s") from None
        except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
            raise AcmeError(f"{method} {url}: {exc.__cause__ or exc}") from None
        except h11.ProtocolError as exc:
            raise AcmeError(f"{method} {url}: not HTTP/1.1: {exc}") from None

    async def _exchange(self, host: str, port: int, method: str, target: str, body: bytes | None,
                        content_type: str) -> Answer:
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, self.context, server_hostname=host, https_compatible=True)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            headers = [("Host", host if port == 443 else f"{host}:{port}"), ("User-Agent", USER_AGENT),
                       ("Accept", "application/json, application/pem-certificate-chain"), ("Connection", "close")]
            if body is not None:
                headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
            out = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
            if body:
                out += conn.send(h11.Data(data=body)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(out)
            status = 0
            got: dict[str, str] = {}
            data = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    got = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in event.headers}
                elif isinstance(event, h11.Data):
                    data += event.data
                    if len(data) > MAX_BODY:
                        raise AcmeError(f"answer from {host} over {MAX_BODY} bytes")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        return Answer(status, got, bytes(data))
