"""Clients that leave during a long PHP run that produces no output (sleep,
a slow query): the run is abandoned (its FastCGI connection closed), the pool
slot freed ~1 s later, but PHP notices nothing until it writes, so the
php-fpm worker stays busy to the end. New requests then get that slot, open
a connection that waits in php-fpm's listen backlog, invisible to the queue
and to /status, and meet read_timeout.

Usage: abandoned_runs.py PORT POOL_SIZE [SECONDS]   (run it with read_timeout below SECONDS)
nginx 1.22 behaves the same (measured with fastcgi_read_timeout 3s: 504s).
"""

import socket
import sys
import threading
import time
import urllib.request

port, pool, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 6.0
leavers = []
for i in range(pool):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /sleep.php?s={seconds}&id=left{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    leavers.append(s)
time.sleep(0.2)
for s in leavers:
    s.close()
time.sleep(1.5)  # the pool has noticed and freed its slots
results = []


def fetch() -> None:
    t = time.time()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.php", timeout=seconds + 10) as r:
            results.append((r.status, round(time.time() - t, 2)))
    except urllib.error.HTTPError as exc:
        results.append((exc.code, round(time.time() - t, 2)))


threads = [threading.Thread(target=fetch) for _ in range(pool)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("hello.php after the leavers:", results)
