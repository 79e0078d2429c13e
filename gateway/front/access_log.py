"""The access log: one line per request, nginx's combined format plus timings, or JSON.

Fields a client controls (request line, Referer, User-Agent) are written as
they came; the escaping policy is the daemon issue's (nginx writes ``\\x22``).
``rt`` is the whole request, ``qw`` the wait for an upstream slot, ``php``
slot to the response's end; ``-`` where there was none.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

from ..http.response import Response

access_log = logging.getLogger("gateway.access")


def log_access(*, json_format: bool, client: str, method: bytes, target: bytes, http_version: bytes,
               headers: Sequence[tuple[bytes, bytes]], request_id: str, started: float, status: int,
               response: Response | None) -> None:
    """Write one access-log line, if the access log is on. ``started``: ``time.monotonic()``."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    hmap = dict(headers)
    size = response.bytes_sent if response is not None else 0
    timing = response.timing if response is not None else None
    qw = timing.queue_wait if timing is not None else None
    php = timing.upstream_time if timing is not None else None
    if json_format:
        access_log.info(json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "id": request_id, "remote_addr": client,
            "method": method.decode("latin-1"), "uri": target.decode("latin-1"),
            "protocol": "HTTP/" + http_version.decode(), "status": status, "bytes": size,
            "referer": hmap.get(b"referer", b"").decode("latin-1"),
            "user_agent": hmap.get(b"user-agent", b"").decode("latin-1"),
            "request_time": round(time.monotonic() - started, 6),
            "queue_wait": None if qw is None else round(qw, 3), "php_time": None if php is None else round(php, 3),
            "upstream": response.upstream if response is not None else "",
        }))
        return
    access_log.info(
        '%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s" rt=%.3f qw=%s php=%s id=%s',
        client, time.strftime("%d/%b/%Y:%H:%M:%S %z"), method.decode("latin-1"),
        target.decode("latin-1"), http_version.decode(), status, size,
        hmap.get(b"referer", b"-").decode("latin-1"), hmap.get(b"user-agent", b"-").decode("latin-1"),
        time.monotonic() - started, "-" if qw is None else f"{qw:.3f}", "-" if php is None else f"{php:.3f}",
        request_id,
    )
