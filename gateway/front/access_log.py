"""The access log: one line per request, nginx's combined format plus timings, or JSON.

Fields a client controls (request line, Referer, User-Agent) are escaped as
nginx escapes them (``escape=default``): ``"``, ``\\``, control bytes and bytes
from 0x7f up become ``\\xHH``, so a quote in a User-Agent cannot forge fields
and an ESC cannot reach a terminal. The JSON format escapes as JSON does.
``rt`` is the whole request, ``qw`` the wait for an upstream slot, ``php``
slot to the response's end; ``-`` where there was none.

``ua`` is the upstream address that answered (nginx's ``$upstream_addr``),
a comma list of every address tried when the request was passed on (a
connect error, a timeout), ``-`` where no upstream was asked (a static file,
a redirect); ``urt`` the seconds spent on each (``$upstream_response_time``,
``-`` for one whose response was cut). They come after ``id=``, so the
fields before them keep their places. JSON: ``upstream_addr`` and
``upstream_response_time`` as nginx writes them (``"a, b"``), or null.

``client`` is the real client (a trusted proxy's PROXY header or forwarded
header names it); ``peer``, the TCP peer (nginx's ``$realip_remote_addr``),
is the JSON field ``realip_remote_addr`` (always there), and ends a combined
line as ``peer=ADDR`` only when it differs from the client.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

from ..http.response import Response

access_log = logging.getLogger("gateway.access")

#: str.translate table: latin-1 code point -> nginx's \xHH
_ESCAPE = {b: f"\\x{b:02X}" for b in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}


def escape(value: bytes) -> str:
    """nginx's access-log escaping of a client-controlled field."""
    return value.decode("latin-1").translate(_ESCAPE)


def log_access(*, json_format: bool, client: str, method: bytes, target: bytes, http_version: bytes,
               headers: Sequence[tuple[bytes, bytes]], request_id: str, started: float, status: int,
               response: Response | None, request_line: bytes | None = None, peer: str | None = None) -> None:
    """Write one access-log line, if the access log is on. ``started``: ``time.monotonic()``.

    ``request_line``: for a head that never parsed (400, 408, 414, 431), the
    bytes of its first line as received, logged instead of method, target and
    version ("-" when nothing arrived), as nginx's ``$request``."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    hmap = dict(headers)
    size = response.bytes_sent if response is not None else 0
    timing = response.timing if response is not None else None
    qw = timing.queue_wait if timing is not None else None
    php = timing.upstream_time if timing is not None else None
    tried = timing.tried if timing is not None else []
    addrs = [addr for addr, _ in tried]
    times = ["-" if t is None else f"{t:.3f}" for _, t in tried]
    if request_line is not None:
        line = escape(request_line) if request_line else "-"
    else:
        line = f"{escape(method)} {escape(target)} HTTP/{escape(http_version)}"
    if json_format:
        access_log.info(json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "id": request_id, "remote_addr": client,
            "realip_remote_addr": peer or client,
            "method": method.decode("latin-1"), "uri": target.decode("latin-1"),
            "protocol": "HTTP/" + http_version.decode(), "status": status, "bytes": size,
            "referer": hmap.get(b"referer", b"").decode("latin-1"),
            "user_agent": hmap.get(b"user-agent", b"").decode("latin-1"),
            "request_time": round(time.monotonic() - started, 6),
            "queue_wait": None if qw is None else round(qw, 3), "php_time": None if php is None else round(php, 3),
            "upstream": response.upstream if response is not None else "",
            "upstream_addr": ", ".join(addrs) if addrs else None,
            "upstream_response_time": ", ".join(times) if times else None,
        }))
        return
    access_log.info(
        '%s - - [%s] "%s" %d %d "%s" "%s" rt=%.3f qw=%s php=%s id=%s ua=%s urt=%s%s',
        client, time.strftime("%d/%b/%Y:%H:%M:%S %z"), line, status, size,
        escape(hmap.get(b"referer", b"-")), escape(hmap.get(b"user-agent", b"-")),
        time.monotonic() - started, "-" if qw is None else f"{qw:.3f}", "-" if php is None else f"{php:.3f}",
        request_id, ",".join(addrs) or "-", ",".join(times) or "-", f" peer={peer}" if peer and peer != client else "",
    )
