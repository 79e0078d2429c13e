"""Clients that read a little of a big response and stop: a static file
(big.bin, sendfile) and a PHP response past the temp-file limit (big.php,
passed through at the client's pace). After the send timeout the gateway cuts
them; compare what each client received with the access log's size.

Before the fix both logged 0 bytes (a file counted only when complete, a
stream only per whole chunk); a buffered response the client never got
logged its full size. nginx logs $body_bytes_sent: what went out.

Usage: bytes_logged.py PORT SEND_TIMEOUT   (in www/: dd if=/dev/urandom of=big.bin bs=1M count=50)
"""

import socket
import sys
import threading
import time

port, send_timeout = int(sys.argv[1]), float(sys.argv[2])


def stall(path: str) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = len(s.recv(65536))
    time.sleep(send_timeout + 2)  # stop reading: the gateway cuts us after send_timeout
    s.settimeout(2)
    try:
        while data := s.recv(1 << 20):
            got += len(data)
    except OSError:
        pass
    print(f"{path}: received {got} bytes in all (head included); see the access log's size")


threads = [threading.Thread(target=stall, args=(p,)) for p in ("/big.bin", "/big.php?mb=40")]
for t in threads:
    t.start()
for t in threads:
    t.join()
