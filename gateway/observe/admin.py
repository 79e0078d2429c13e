"""The admin listener's handler: ``/status`` (JSON), ``/metrics`` (Prometheus
text) and ``/`` (what is here); GET and HEAD only (anything else is 405, any
other path 404; a query string is ignored).

One router (``AdminRouter``) for every kind of process; what it shows comes
from two coroutines. A single gateway process answers from its own monitor
(``AdminApp``); the master of several worker processes asks each worker and
merges (``serve.master.MasterAdmin``).

It runs on its own listener (127.0.0.1:9180 by default), never the public one,
and touches no PHP pool, so it answers while every PHP worker is busy. Nothing
is cached (``Cache-Control: no-store``): each request reads the numbers anew.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..http._h11 import describe
from ..http.request import Request
from ..http.response import Response, error_response
from .monitor import Monitor

GetStatus = Callable[[], Awaitable[dict[str, Any]]]
GetMetrics = Callable[[], Awaitable[str]]

PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class AdminRouter:
    """Routes admin requests to ``status`` (the /status object) and ``metrics``
    (the /metrics text)."""

    def __init__(self, status: GetStatus, metrics: GetMetrics) -> None:
        self._get_status = status
        self._get_metrics = metrics

    async def handle(self, req: Request) -> Response:
        path = req.target.split(b"?", 1)[0]
        if req.method not in (b"GET", b"HEAD"):
            return error_response(405, headers=[(b"allow", b"GET, HEAD")])
        if path == b"/metrics":
            body = (await self._get_metrics()).encode()
            return Response(200, [(b"content-type", PROMETHEUS_TYPE), (b"cache-control", b"no-store")], body)
        if path == b"/status":
            body = json.dumps(await self._get_status(), indent=2).encode() + b"\n"
            return Response(200, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body)
        if path == b"/":
            return Response(200, [(b"content-type", b"text/plain")], b"gateway admin: /status /metrics\n")
        return error_response(404)


class AdminApp(AdminRouter):
    """One gateway process's admin: its monitor's /status and /metrics."""

    def __init__(self, monitor: Monitor, certificates: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.monitor = monitor
        #: the ACME certificates' state (``acme.manager``), in the process that obtains them
        self.certificates = certificates
        super().__init__(self._status, self._metrics)

    async def _status(self) -> dict[str, Any]:
        status = self.monitor.status()
        status["http1_parser"] = describe()
        if self.certificates is not None:
            status["certificates"] = self.certificates()
        return status

    async def _metrics(self) -> str:
        return self.monitor.prometheus()
