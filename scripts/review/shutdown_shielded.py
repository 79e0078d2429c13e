"""SIGTERM while a PHP run is shielded by ignore_client_abort = true.

Start a gateway whose backend has ignore_client_abort = true (and a short
[timeouts] graceful), serving www/; then: shutdown_shielded.py PORT PID GRACEFUL
(PID: the gateway you started). It requests drip.php (30 s of output, a line
every 2 s: read_timeout never fires), sends SIGTERM 2 s later and measures
how long the gateway takes to exit.

Before the fix: until PHP ended (30 s for graceful = 5 s), the client then got
nothing. After: graceful plus php-fpm's stop.
"""

import os
import signal
import socket
import sys
import time

port, pid, graceful = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /drip.php?n=15&d=2 HTTP/1.1\r\nHost: x\r\n\r\n")
time.sleep(2)
t0 = time.time()
os.kill(pid, signal.SIGTERM)
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    if time.time() - t0 > 60:
        print("still running after 60 s")
        raise SystemExit(1)
    time.sleep(0.1)
took = time.time() - t0
print(f"exited {took:.1f}s after SIGTERM (graceful {graceful:g}s)")
raise SystemExit(0 if took < graceful + 3 else 1)
