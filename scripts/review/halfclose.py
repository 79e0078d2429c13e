"""A client that sends its request and half-closes (shutdown(SHUT_WR), as
`nc -N` or `printf ... | nc -q0` do), or one that leaves while briefly queued.

Before the fix both got a "500 Internal Server Error" page and a traceback in
the error log ("unhandled error ... ClientGone"): run_php's client_left()
probe raises ClientGone, which the front end treated as a handler crash.
nginx 1.22 (measured, fastcgi_ignore_client_abort off): 499, connection
closed, nothing sent. After the fix: the same.

Usage: halfclose.py PORT [PATH]    (PATH default /sleep.php?s=0.5)
"""

import socket
import sys
import time

port = int(sys.argv[1])
path = sys.argv[2] if len(sys.argv) > 2 else "/sleep.php?s=0.5"
s = socket.create_connection(("127.0.0.1", port))
t = time.time()
s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
s.shutdown(socket.SHUT_WR)
data = b""
while chunk := s.recv(65536):
    data += chunk
first = data.split(b"\r\n", 1)[0].decode() if data else "closed, nothing sent"
print(f"{time.time() - t:.2f}s: {first}")
raise SystemExit(1 if data.startswith(b"HTTP/1.1 500") else 0)
