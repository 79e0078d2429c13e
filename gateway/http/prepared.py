"""A prepared answer: a response a handler can give at once, without awaiting anything.

A front end asks ``handler.ready(request)`` (``ReadyHandler``) before it runs
the handler's full, asynchronous path; ``None`` means "run it". What it gets
back is the exact response the full path would have sent, minus what the
front end adds itself (Date, Server, Connection): ``app.fastpath`` builds it
with the same functions the full path calls, and declines whatever it cannot
answer exactly. The contract, in the order a front end relies on it:

- **Complete**: status, reason phrase (never empty), headers with one
  Content-Length (but 204, 304), the body as ``bytes`` (empty for HEAD,
  204 and 304). No Date or
  Server header: the front end puts its own first, as for any response.
- **Counted**: whatever the answer counts (a page cache's HIT, compression
  stats) was counted by ``ready``; the front end counts the request and logs
  it as it does any other.
- **Protocol-neutral**: ``headers`` for any front end (HTTP/2 can use them
  as they are); ``fields`` is the same headers as HTTP/1.1 header lines,
  made once here so an HTTP/1.1 front end writes head and body with one
  ``%`` and one send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .request import Request
from .response import Response, reason_phrase


@dataclass(frozen=True, slots=True)
class Prepared:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    #: ``headers`` as HTTP/1.1 header lines ("name: value\r\n" each)
    fields: bytes
    body: bytes
    #: the front end's Date and Server go first (False: the headers hold
    #: their own Date or Server, which replaces the front end's)
    ours: bool = True


def prepare(resp: Response, *, head_only: bool) -> Prepared | None:
    """``resp`` (a bytes body) as a ``Prepared``; ``head_only``: the body
    stays out (HEAD; and for 204 and 304 it does anyway, as the HTTP/1.1
    writer leaves it out). None when its framing is not one Content-Length
    (a coded HEAD answer has none: h11 would say chunked, as for the GET)."""
    body = resp.body
    assert isinstance(body, bytes)
    headers = resp.headers
    if body and not any(n == b"content-length" for n, _ in headers):
        headers = [*headers, (b"content-length", b"%d" % len(body))]  # as the HTTP/1.1 writer adds it
    if resp.status not in (204, 304) and [n for n, _ in headers if n.lower() in _FRAMING] != [b"content-length"]:
        return None
    return Prepared(resp.status, resp.reason or reason_phrase(resp.status), headers,
                    b"".join([b"%s: %s\r\n" % h for h in headers]),
                    b"" if head_only or resp.status in (204, 304) else body,
                    not any(len(n) in (4, 6) and n.lower() in (b"date", b"server") for n, _ in headers))


_FRAMING = (b"content-length", b"transfer-encoding")


class ReadyHandler(Protocol):
    """A handler that can also answer some requests at once."""

    async def __call__(self, request: Request) -> Response: ...

    def ready(self, request: Request) -> Prepared | None:
        """The answer to ``request`` when it is ready now (see the module
        docstring), else None: the caller then awaits ``self(request)``."""
        ...
