"""The reverse-proxy handler: a ``Request`` to an HTTP backend and its ``Response`` back.

What ``site.App`` calls for a ``ProxyPass`` route (a site's ``proxy``, or a
``routes`` prefix). The request goes upstream with its target unchanged and
its headers rewritten by ``http.forwarding`` (hop-by-hop out; X-Forwarded-*,
Forwarded, Via; Host passed or ``upstream_host``), its body the one the front
end already read; ``upstream.exchange.run_http`` queues it, sends it and
drains the response (or streams it, by the backend's choice or the site's
``unbuffered`` prefixes).

Upgrades (WebSocket, any ``Upgrade``; ``http.upgrade``): a request that asks
for one goes upstream with ``Upgrade`` and ``Connection: upgrade``; the
backend's ``101`` comes back as a ``Response`` carrying the tunnel
(``upstream.exchange.UpstreamTunnel``), which the front end drives. Any other
answer is an ordinary response.

Errors are the PHP path's: one log line naming the request and the cause,
the gateway's page with the status of the error's class (502 connect failure
or bad head, 504 timeout, 503 queue full), counted on the backend's pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import BackendConfig, ServerConfig
from ..http.errors import GatewayError
from ..http.forwarding import forward_request_headers
from ..http.realip import TrustedProxies
from ..http.request import IDEMPOTENT_METHODS, Request
from ..http.response import Body, Response
from ..http.spool import Spool
from ..http.upgrade import requested_upgrade
from ..upstream import cgi
from ..upstream.exchange import UpstreamBody, UpstreamResponse, run_http
from ..upstream.http1 import HttpConn, HttpSettings, UpstreamRequest
from ..upstream.pool import Pool
from . import accel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProxyBackend:
    """One HTTP backend as the handler uses it."""

    pool: Pool[HttpConn]
    settings: HttpSettings
    #: Host sent instead of the client's (b"": the client's)
    upstream_host: bytes
    #: Host sent for a client that gave none (HTTP/1.0): the first address
    default_host: bytes

    @classmethod
    def from_config(cls, pool: Pool[HttpConn], backend: BackendConfig,
                    server: ServerConfig | None = None) -> ProxyBackend:
        first = backend.upstreams()[0].where
        default = str(first).encode() if first.kind == "tcp" else b"localhost"
        return cls(pool, HttpSettings.from_config(backend, server), backend.upstream_host.encode(), default)


class Proxy:
    """Sends requests to the HTTP backends named in ``backends``."""

    def __init__(self, backends: dict[str, ProxyBackend], *, trusted: TrustedProxies, via: bytes,
                 error: Callable[[int, list[tuple[bytes, bytes]] | None], Response]) -> None:
        self.backends = backends
        self.trusted = trusted
        self.via = via
        self.error = error

    def upstream_request(self, req: Request, backend: ProxyBackend) -> UpstreamRequest:
        """What goes to ``backend`` for ``req`` (pure)."""
        peer = (req.peer or req.client)[0]
        upgrade = requested_upgrade(req.http_version, req.headers) or b""
        headers = forward_request_headers(req.headers, peer=peer, peer_trusted=bool(self.trusted)
                                          and self.trusted.trusts(peer), https=req.https,
                                          upstream_host=backend.upstream_host, default_host=backend.default_host,
                                          via=self.via, upgrade=upgrade)
        return UpstreamRequest(req.method, req.target, headers, req.body, upgrade)

    async def handle(self, req: Request, name: str, *, force_stream: bool = False) -> Response:
        backend = self.backends.get(name)
        if backend is None:
            log.error("[%s] backend %s has no pool", req.request_id, name)
            return self.error(502, None)
        pool = backend.pool
        try:
            result = await run_http(pool, self.upstream_request(req, backend), backend.settings,
                                    request_id=req.request_id, retry_safe=req.method in IDEMPOTENT_METHODS,
                                    client_left=req.client_left, force_stream=force_stream,
                                    key=req.client[0].encode() if pool.balance == "ip_hash" else None)
        except GatewayError as exc:
            return exchange_failed(req, pool, exc, self.error)
        return response(req, result)


def exchange_failed(req: Request, pool: Pool[Any], exc: GatewayError,
                    error: Callable[[int, list[tuple[bytes, bytes]] | None], Response]) -> Response:
    """The answer to an exchange with ``pool``'s backend (PHP or HTTP) that
    failed with ``exc`` (502/503/504): counted on the pool, one log line, the
    error page, attributed to the pool."""
    pool.record_error(exc.status)
    log.error("[%s] %s %s -> %d: %s", req.request_id, req.method.decode(), req.target.decode("latin-1"),
              exc.status, exc)
    resp = error(exc.status, list(exc.headers))
    resp.upstream = pool.name
    resp.timing = exc.timing  # where it went, if anywhere (the access log's upstream address)
    return resp


#: The backend's response headers the gateway sets itself (nginx does not pass
#: them either, unless proxy_pass_header): its Server and Date go out instead.
NOT_PASSED = frozenset({b"server", b"date", b"x-pad"}) | cgi.GATEWAY_ONLY_HEADERS - accel.FOLLOWED


def response(req: Request, result: UpstreamResponse) -> Response:
    """The client's response from the backend's: framed by what was drained
    (HEAD and 304 keep the backend's Content-Length); X-Accel-*, Server and
    Date kept back (``NOT_PASSED``), but X-Accel-Redirect and X-Sendfile
    stay for ``App`` to follow (``accel``)."""
    head = result.head
    headers = [(n, v) for n, v in head.headers if n.lower() not in NOT_PASSED]
    if result.tunnel is not None:  # a 101: no body, the front end pumps the tunnel
        if isinstance(result.body, Spool):
            result.body.close()
        return Response(101, headers, b"", reason=head.reason, upstream=result.upstream, timing=result.timing,
                        tunnel=result.tunnel)
    body = frame_body(req, result, headers)
    return Response(head.status, headers, body, reason=head.reason, upstream=result.upstream, timing=result.timing,
                    from_upstream=True)


def frame_body(req: Request, result: UpstreamResponse, headers: list[tuple[bytes, bytes]]) -> Body:
    """The body a backend's (PHP's or an HTTP server's) answer sends on, its
    Content-Length appended to ``headers``: a streamed body as it is (chunked
    to an HTTP/1.1 client, close-delimited to 1.0); none for HEAD, 1xx, 204
    and 304 (the spool closed), with the backend's own Content-Length saying
    what a GET would get (never on a 204, RFC 9110 8.6); else the drained
    spool, framed by its real size."""
    head = result.head
    if isinstance(result.body, UpstreamBody):
        return result.body
    if req.method == b"HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        length = head.content_length if head.content_length is not None else result.body.size or None
        if length is not None and head.status != 204:
            headers.append((b"content-length", b"%d" % length))
        result.body.close()
        return b""
    headers.append((b"content-length", b"%d" % result.body.size))
    return result.body
