"""HEAD on an event stream (sse.php, X-Accel-Buffering: no), then a second
request on the same keep-alive connection.

Before the fix the gateway read the stream to its end for HEAD; PHP sends no
body for HEAD, so nothing came until the script ended: the second request
waited that long (a PHP slot held meanwhile), and a script longer than
read_timeout ended in "504 after the head was sent" and a reset connection.
nginx 1.22 (measured): the second response at once; the upstream is
finalized after the header (PHP aborts at its next flush).

Usage: head_stream.py PORT [SECONDS]   (the stream's length, default 6)
"""

import socket
import sys
import time

port = int(sys.argv[1])
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
s = socket.create_connection(("127.0.0.1", port))
s.settimeout(seconds + 5)
t = time.time()
s.sendall(f"HEAD /sse.php?n={int(seconds / 0.2)}&d=0.2&id=head HTTP/1.1\r\nHost: x\r\n\r\n".encode())
head = s.recv(65536)
status_line = head.split(b"\r\n", 1)[0].decode()
print(f"HEAD answered after {time.time() - t:.2f}s: {status_line}")
s.sendall(b"GET /hello.php HTTP/1.1\r\nHost: x\r\n\r\n")
try:
    data = s.recv(65536)
    took = time.time() - t
    status_line = data.split(b"\r\n", 1)[0].decode() if data else "EOF"
    print(f"next request answered after {took:.2f}s: {status_line}")
    ok = data.startswith(b"HTTP/1.1 200") and took < 1
except OSError as exc:
    print(f"next request: {exc!r} after {time.time() - t:.2f}s")
    ok = False
raise SystemExit(0 if ok else 1)
