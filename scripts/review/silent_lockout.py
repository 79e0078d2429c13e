"""Fill max_connections with connections that never send a byte, then try a
real request.

Before the fix the gateway paused accept() and only closed *parked keep-alive*
connections for room, so the newcomer waited until the silent ones hit
client_header_timeout (60 s by default): a cheap lock-out. nginx 1.22
(measured with worker_connections 50 and 60 silent connections) reuses
connections still waiting for their request and answers at once.

Usage: silent_lockout.py PORT MAX_CONNECTIONS
"""

import socket
import sys
import time

port, limit = int(sys.argv[1]), int(sys.argv[2])
silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(limit)]
time.sleep(0.5)
t = time.time()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /hello.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
s.settimeout(15)
try:
    data = s.recv(1000)
    first = data.split(b"\r\n")[0].decode() if data else "EOF"
    print(f"answered after {time.time() - t:.2f}s: {first}")
    ok = data.startswith(b"HTTP/1.1 200")
except TimeoutError:
    print("no answer within 15 s")
    ok = False
for x in silent:
    x.close()
raise SystemExit(0 if ok else 1)
