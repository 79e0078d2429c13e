"""A real WebSocket server for the Upgrade tests: the ``websockets`` library's,
run as a subprocess (``python -m tests.integration.ws_app``). It prints its
port on the first line, then serves until terminated.

Paths:
    /echo     every message (text or binary) sent back as it came; pings are
              answered by the library
    /bye      sends "bye", then closes with code 4000 (the backend ends the tunnel)
    /silent   sends nothing and reads until the client closes (an idle tunnel)

No pings of its own (``ping_interval=None``): an idle tunnel stays idle. No
size limit and no compression: a 1 MiB message goes as 1 MiB.
"""

from __future__ import annotations

import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve


def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else "/"
    try:
        if path == "/bye":
            ws.send("bye")
            ws.close(4000, "the backend says bye")
            return
        for message in ws:
            if path == "/echo":
                ws.send(message)
    except ConnectionClosed:
        pass


def main() -> None:
    with serve(handler, "127.0.0.1", 0, ping_interval=None, max_size=None, compression=None) as server:
        print(server.socket.getsockname()[1], flush=True)
        server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
