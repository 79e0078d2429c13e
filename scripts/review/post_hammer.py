"""Many concurrent large request bodies to PHP scripts that answer without
reading their input (noread.php) or read it (readin.php), mixed with GETs;
every response must be its own request's (echoed id) and no 5xx.

Usage: post_hammer.py PORT [--clients 16] [--requests 30]  (bounded: clients x requests)
Needs the docroot of scripts/review/www (noread.php, readin.php, hello.php).
"""

import argparse
import hashlib
import http.client
import os
import random
import threading
import time
from collections import Counter

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("--clients", type=int, default=16)
ap.add_argument("--requests", type=int, default=30)
ap.add_argument("--max-kib", type=int, default=2048)
ap.add_argument("--noread", default="/noread.php", help="the script that answers without reading its input")
args = ap.parse_args()

results: Counter[str] = Counter()
problems: list[str] = []
lock = threading.Lock()


def client(n: int) -> None:
    rnd = random.Random(n)
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
    for i in range(args.requests):
        rid = f"c{n}-r{i}-{rnd.randrange(1 << 30)}"
        kind = rnd.choice(["noread-put", "noread-post", "readin", "get"])
        size = rnd.randrange(65 * 1024, args.max_kib * 1024)
        body = os.urandom(size) if kind != "get" else None
        if kind == "get":
            method, path = "GET", f"{args.noread}?g={rid}"
        elif kind == "readin":
            method, path = "POST", "/readin.php"
        else:
            method, path = ("PUT" if kind == "noread-put" else "POST"), args.noread
        headers = {"X-Id": rid, "Content-Type": "application/octet-stream"}
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except Exception as exc:  # noqa: BLE001
            with lock:
                problems.append(f"{rid} {kind}: {exc!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
            continue
        text = data.decode(errors="replace")
        ok = resp.status == 200 and resp.getheader("X-Id") == rid and f"id={rid}" in text
        if ok and kind == "readin":
            ok = f"len={size} md5={hashlib.md5(body).hexdigest()}" in text
        with lock:
            results[f"{kind} {resp.status}"] += 1
            if not ok:
                problems.append(f"{rid} {kind} {size}: {resp.status} X-Id={resp.getheader('X-Id')} {text[:120]!r}")
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
    conn.close()


t0 = time.time()
threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"{sum(results.values())} responses in {time.time() - t0:.1f}s: {dict(results)}")
for p in problems[:30]:
    print("PROBLEM", p)
print("problems:", len(problems))
raise SystemExit(1 if problems else 0)
