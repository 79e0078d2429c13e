"""A small real HTTP/1.1 application server for proxy tests: the standard
library's threaded ``http.server`` with keep-alive, counting the connections
it accepts (so a test can show the gateway reuses them).

Paths:
    /echo...      JSON: method, target, headers, body length, connection number
    /chunked      a chunked response (three pieces)
    /big?n=N      N bytes of b"x", with a Content-Length
    /sse          text/event-stream: one event, then waits for ``release`` (set
                  by the test), then a second event and the end
    POST /upload  JSON: the body's length and sha256, its framing headers
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class App(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str = "app", host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), Handler)
        self.name = name
        self.connections = 0
        self.requests = 0
        self._numbers = itertools.count(1)
        self.lock = threading.Lock()
        #: set by a test to let /sse send its second event
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> App:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: App

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.number = next(self.server._numbers)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if not size:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        with self.server.lock:
            self.server.requests += 1
        url = urlsplit(self.path)
        if url.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"one ", b"two ", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/big":
            n = int(parse_qs(url.query)["n"][0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"x" * 65536
            while n:
                self.wfile.write(block[: min(n, len(block))])
                n -= min(n, len(block))
            return
        if url.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"data: first\n\n")
            self.wfile.flush()
            self.server.release.wait(20)
            self.wfile.write(b"data: second\n\n")
            self.close_connection = True
            return
        self._echo(b"")

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        with self.server.lock:
            self.server.requests += 1
        body = self._body()
        if urlsplit(self.path).path == "/upload":
            self._send(200, json.dumps({
                "length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                "content_length": self.headers.get("Content-Length"),
                "transfer_encoding": self.headers.get("Transfer-Encoding"),
            }).encode())
            return
        self._echo(body)

    def _echo(self, body: bytes) -> None:
        self._send(200, json.dumps({
            "app": self.server.name, "method": self.command, "target": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()], "body_length": len(body),
            "connection": self.number,
        }).encode())
