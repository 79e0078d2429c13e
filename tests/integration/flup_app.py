"""A WSGI app served by flup's FastCGI server: an independent FastCGI
implementation for interop tests. Run as a subprocess (flup installs signal
handlers, which only work in a main thread):

    python flup_app.py SOCKET_PATH [multiplexed]
"""

import json
import sys

from flup.server.fcgi import WSGIServer


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    if environ.get("PATH_INFO", "").endswith("/big"):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"x" * 200_000]
    keys = ("REQUEST_METHOD", "SCRIPT_NAME", "QUERY_STRING", "CONTENT_LENGTH", "REQUEST_URI", "HTTP_X_TEST")
    out = {k: environ.get(k) for k in keys}
    out["body"] = body.decode("latin-1")
    start_response("201 Created", [("Content-Type", "application/json"), ("Set-Cookie", "a=1"),
                                   ("Set-Cookie", "b=2")])
    return [json.dumps(out).encode()]


if __name__ == "__main__":
    WSGIServer(app, bindAddress=sys.argv[1], multiplexed=len(sys.argv) > 2).run()
