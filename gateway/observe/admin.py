"""The admin listener's handler: ``/status`` (JSON), ``/metrics`` (Prometheus
text) and ``/`` (what is here), GET and HEAD only; ``POST /cache/purge`` (the
page cache, ``app.cache``). Another method is 405, any other path 404; a
query string is ignored.

``POST /cache/purge`` takes one JSON object: ``{"url": "https://host/path"}``
(every variant of that page; a bare "/path": on every host), ``{"prefix":
"https://host/dir/"}``, ``{"tag": "NAME"}`` or ``{"all": true}``, and answers
``{"purged": N}``. In a master it goes to every worker process (each has its
own memory tier) and ``N`` is their sum; ``processes`` says how many answered.
The internal form ``{"purge": {...}}`` (a ``Purge``'s fields) is what a worker
sends its siblings for a PURGE or an ``X-Cache-Purge`` it saw (``serve.process``).

One router (``AdminRouter``) for every kind of process; what it shows comes
from two coroutines. A single gateway process answers from its own monitor
(``AdminApp``); the master of several worker processes asks each worker and
merges (``serve.master.MasterAdmin``).

It runs on its own listener (127.0.0.1:9180 by default), never the public one,
and touches no PHP pool, so it answers while every PHP worker is busy. Nothing
is cached (``Cache-Control: no-store``): each request reads the numbers anew.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..http._h11 import describe, h11
from ..http.cache_policy import Purge, purge_url
from ..http.request import Request
from ..http.response import Response, error_response
from .monitor import Monitor

GetStatus = Callable[[], Awaitable[dict[str, Any]]]
GetMetrics = Callable[[], Awaitable[str]]
#: A purge's JSON object in, ``{"purged": N, ...}`` out.
DoPurge = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
#: The most a purge request's body may hold.
MAX_PURGE_BODY = 64 * 1024
NO_CACHE = "no site has a page cache ([sites.X.cache] enabled = true)"


class NoCache(Exception):
    """Raised by a purge where there is no page cache to purge: a 404."""


class AdminStatus(ValueError):
    """An admin listener answered ``status`` (not 200)."""

    def __init__(self, path: str, status: int) -> None:
        super().__init__(f"{path}: status {status}")
        self.status = status

PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class AdminRouter:
    """Routes admin requests to ``status`` (the /status object) and ``metrics``
    (the /metrics text)."""

    def __init__(self, status: GetStatus, metrics: GetMetrics, purge: DoPurge | None = None) -> None:
        self._get_status = status
        self._get_metrics = metrics
        self._purge = purge

    async def handle(self, req: Request) -> Response:
        path = req.target.split(b"?", 1)[0]
        if path == b"/cache/purge":
            return await self._cache_purge(req)
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

    async def _cache_purge(self, req: Request) -> Response:
        if req.method != b"POST":
            return error_response(405, headers=[(b"allow", b"POST")])
        if self._purge is None:
            return _json(404, {"error": NO_CACHE})
        body = req.body
        if body is None or body.size > MAX_PURGE_BODY:
            return _json(400, {"error": 'send one JSON object: {"url": ...}, {"prefix": ...}, {"tag": ...} '
                                        'or {"all": true}'})
        try:
            obj = json.loads(b"".join(body.chunks()))
            parse_purge(obj)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        try:
            return _json(200, await self._purge(obj))
        except NoCache as exc:
            return _json(404, {"error": str(exc)})


def _json(status: int, obj: dict[str, Any]) -> Response:
    return Response(status, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")],
                    json.dumps(obj).encode() + b"\n")


def parse_purge(obj: Any) -> Purge:
    """A purge's JSON object (see the module docstring) as a ``Purge``.

    Raises:
        ValueError: not one of the forms, said in a sentence.
    """
    forms = ("url", "prefix", "tag", "all", "purge")
    if not isinstance(obj, dict) or len([k for k in forms if k in obj]) != 1 or set(obj) - set(forms):
        raise ValueError('send one of {"url": "https://host/path"}, {"prefix": "https://host/dir/"}, '
                         '{"tag": "NAME"} or {"all": true}')
    if obj.get("all") is True:
        return Purge(everything=True)
    if "purge" in obj:
        fields = obj["purge"]
        names = {f.name for f in dataclasses.fields(Purge)}
        if not isinstance(fields, dict) or set(fields) - names:
            raise ValueError(f"purge: an object with keys among {sorted(names)}")
        return Purge(**fields)
    for key in ("url", "prefix", "tag"):
        if isinstance(obj.get(key), str) and obj[key]:
            return Purge(tag=obj["tag"]) if key == "tag" else purge_url(obj[key], prefix=key == "prefix")
    raise ValueError(f"{next(k for k in forms if k in obj)}: a non-empty string (all: true)")


def purge_json(purge: Purge) -> dict[str, Any]:
    """The internal form of a purge, which ``parse_purge`` reads back."""
    return {"purge": {k: v for k, v in dataclasses.asdict(purge).items() if v not in (None, False)}}


async def admin_request(path: str, target: bytes, *, method: bytes = b"GET", body: bytes = b"",
                        max_body: int = 64 << 20) -> bytes:
    """``method target`` to the admin listener on unix socket ``path`` (a
    worker's), with h11's client role; the body of its 200 response.

    Raises ValueError for any other answer: another status, a response h11
    cannot parse or that ends early, a body over ``max_body`` bytes.
    """
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", "worker"), ("Connection", "close")]
    if method != b"GET":
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    request = h11.Request(method=method, target=target, headers=headers)
    stream = await trio.open_unix_socket(path)
    async with stream:
        data = (conn.send(request) or b"") + (conn.send(h11.Data(data=body)) or b"" if body else b"")
        await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
        status = 0
        answer = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    answer += event.data
                    if len(answer) > max_body:
                        raise ValueError(f"{path}: response body over {max_body} bytes")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        except h11.ProtocolError as exc:
            raise ValueError(f"{path}: bad response: {exc}") from None
    if status != 200:
        raise AdminStatus(path, status)
    return bytes(answer)


class AdminApp(AdminRouter):
    """One gateway process's admin: its monitor's /status and /metrics."""

    def __init__(self, monitor: Monitor, certificates: Callable[[], list[dict[str, Any]]] | None = None,
                 purge: Callable[[Purge], Awaitable[int]] | None = None) -> None:
        self.monitor = monitor
        #: the ACME certificates' state (``acme.manager``), in the process that obtains them
        self.certificates = certificates
        #: the page caches' purge (``App.purge``), when a site has one
        self.purge = purge
        super().__init__(self._status, self._metrics, self._cache_purge_here if purge is not None else None)

    async def _cache_purge_here(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.purge is not None
        return {"purged": await self.purge(parse_purge(obj))}

    async def _status(self) -> dict[str, Any]:
        status = self.monitor.status()
        status["http1_parser"] = describe()
        if self.certificates is not None:
            status["certificates"] = self.certificates()
        return status

    async def _metrics(self) -> str:
        return self.monitor.prometheus()
