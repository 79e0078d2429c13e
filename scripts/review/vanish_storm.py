"""Clients that vanish at random moments: queued, mid-PHP-run, mid-stream,
half-closed, reset (SO_LINGER 0), or that stop reading; against an event
stream, a slow script and a big response. Afterwards the pool must be whole:
run with the admin port and it checks /status (busy 0, nothing queued, no
open connection). Bounded: N clients, ~15 s.

Usage: vanish_storm.py PORT ADMIN_PORT [--clients 60]
"""

import argparse
import json
import random
import socket
import struct
import threading
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("admin", type=int)
ap.add_argument("--clients", type=int, default=60)
args = ap.parse_args()

PATHS = ["/sse.php?n=50&d=0.1", "/sleep.php?s=1.5", "/big.php?mb=8", "/hello.php", "/sse.php?n=3&d=0.1"]


def client(n: int) -> None:
    rnd = random.Random(n)
    path = rnd.choice(PATHS)
    how = rnd.choice(["close", "reset", "halfclose", "stop-reading", "read-all"])
    s = socket.create_connection(("127.0.0.1", args.port))
    method = "HEAD" if rnd.random() < 0.15 else "GET"
    s.sendall(f"{method} {path}&id=v{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(rnd.uniform(0, 2.5))
    if how == "reset":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    elif how == "halfclose":
        s.shutdown(socket.SHUT_WR)
        time.sleep(1.5)
        s.close()
    elif how == "stop-reading":
        time.sleep(3)
        s.close()
    elif how == "read-all":
        s.settimeout(15)
        try:
            while s.recv(1 << 20):
                pass
        except OSError:
            pass
        s.close()
    else:
        s.close()


def status() -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{args.admin}/status", timeout=5) as r:
        return json.load(r)


threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
for t in threads:
    t.start()
    time.sleep(0.02)
for t in threads:
    t.join()
deadline = time.time() + 15
while True:
    st = status()
    pool = st["pools"]["php"]
    conns = st["listener"]["connections"]
    whole = pool["busy"] == 0 and pool["queue_depth"] == 0 and conns["open"] == 0 and st["listener"]["in_flight"] == 0
    if whole or time.time() > deadline:
        break
    time.sleep(0.5)
print(f"busy {pool['busy']} queued {pool['queue_depth']} open {conns['open']} in_flight "
      f"{st['listener']['in_flight']} errors {pool['errors']}: {'whole' if whole else 'NOT WHOLE'}")
raise SystemExit(0 if whole else 1)
