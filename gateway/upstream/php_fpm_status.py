"""php-fpm's own pages (ping, status) fetched over FastCGI with ``fastcgi/``.

One short-lived connection per call (keep_conn off), no pool: these are polled
once a second at most, and must work while the pool is saturated.
"""

from __future__ import annotations

import fastcgi

from .connect import make_connector


async def fastcgi_get(address: str, script: str, query: bytes = b"") -> tuple[bytes, bytes]:
    """One FastCGI GET (for php-fpm's ping and status pages) on ``unix:/path``,
    a bare socket path, or ``host:port``.

    Returns (CGI headers block, body). The caller bounds it with a cancel scope.
    """
    stream = await make_connector(address)()
    async with stream:
        conn = fastcgi.Connection(fastcgi.CLIENT)
        params = (
            (b"SCRIPT_NAME", script.encode()),
            (b"SCRIPT_FILENAME", script.encode()),
            (b"REQUEST_METHOD", b"GET"),
            (b"QUERY_STRING", query),
        )
        out = b"".join(conn.send(e) or b"" for e in (
            fastcgi.BeginRequest(keep_conn=False), fastcgi.Params(params), fastcgi.Stdin()))
        await stream.send_all(out)
        data = b""
        while True:
            event = conn.next_event()
            if event is fastcgi.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, fastcgi.Stdout):
                data += event.data
            elif isinstance(event, (fastcgi.EndRequest, fastcgi.ConnectionClosed)):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body
