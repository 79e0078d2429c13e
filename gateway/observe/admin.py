"""The admin listener's handler: ``/metrics`` (Prometheus text), ``/status`` (JSON).

It runs on its own listener (127.0.0.1:9180 by default), never the public one,
and touches no PHP pool, so it answers while every PHP worker is busy.
"""

from __future__ import annotations

import json

from ..http.request import Request
from ..http.response import Response, error_response
from .monitor import Monitor


class AdminApp:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    async def handle(self, req: Request) -> Response:
        path = req.target.split(b"?", 1)[0]
        if req.method not in (b"GET", b"HEAD"):
            return error_response(405, headers=[(b"allow", b"GET, HEAD")])
        if path == b"/metrics":
            body = self.monitor.prometheus().encode()
            return Response(200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                                  (b"cache-control", b"no-store")], body)
        if path == b"/status":
            body = json.dumps(self.monitor.status(), indent=2).encode() + b"\n"
            return Response(200, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body)
        if path == b"/":
            return Response(200, [(b"content-type", b"text/plain")], b"gateway admin: /status /metrics\n")
        return error_response(404)
