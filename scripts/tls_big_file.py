"""A big static file over TLS to a slow reader: the gateway's memory must stay
bounded (it reads the file in ``READ_CHUNK``s and waits for the client, never
buffering the file). One gateway process (``processes = 1``), the internal CA,
a sparse file; the client reads at ``--rate-mib`` MiB/s. Prints RSS before,
the peak while sending (sampled every 8 MiB received), and the rate."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rate-mib", type=float, default=64.0, help="the reader's speed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "www").mkdir()
        big = base / "www" / "big.bin"
        big.touch()
        os.truncate(big, args.mib * 1024 * 1024)
        port = free_port()
        (base / "conf").mkdir()
        (base / "conf" / "00.toml").write_text(
            f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port} tls"]\nprocesses = 1\naccess_log = "off"\n'
            f'[admin]\nlisten = "off"\n[acme]\nstate_dir = "{base / "state"}"\n'
            f'[sites.s]\nroot = "{base / "www"}"\n[sites.s.tls]\ninternal = true\n')
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(base / "conf")],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert proc.stderr is not None
        while b"listening on" not in (line := proc.stderr.readline()):
            assert line, "the gateway exited"
        try:
            ctx = ssl.create_default_context(cafile=str(base / "state" / "ca" / "root.pem"))
            with socket.create_connection(("127.0.0.1", port)) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                before = rss_kib(proc.pid)
                tls.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                got, peak, mark, start = 0, before, 0, time.monotonic()
                while True:
                    try:
                        chunk = tls.recv(256 * 1024)
                    except ssl.SSLEOFError:
                        break
                    if not chunk:
                        break
                    got += len(chunk)
                    if got - mark >= 8 * 1024 * 1024:
                        mark = got
                        peak = max(peak, rss_kib(proc.pid))
                        ahead = got / (args.rate_mib * 1024 * 1024) - (time.monotonic() - start)
                        if ahead > 0:
                            time.sleep(ahead)  # the slow reader
                took = time.monotonic() - start
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    mib = 1024 * 1024
    print(f"received {got / mib:.0f} MiB in {took:.1f}s ({got / mib / took:.0f} MiB/s); gateway RSS "
          f"{before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB while sending "
          f"(+{(peak - before) / 1024:.1f} MiB)")


if __name__ == "__main__":
    main()
