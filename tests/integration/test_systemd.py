"""``Type=notify``: the gateway sends READY=1 to $NOTIFY_SOCKET once it serves
(``serve.notify``), as systemd would see it: a datagram socket of our own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import trio

from tests.helpers import HttpClient

from .conftest import DOCROOT, free_port
from .test_cli import stop


async def test_ready_is_sent_once_the_gateway_serves(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(path)
    port = free_port()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "serve", "--root", str(DOCROOT), "--listen", f"127.0.0.1:{port}",
         "--admin", "off", "--pool-size", "1", "--user", "root"],
        env={**os.environ, "NOTIFY_SOCKET": path}, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        with trio.fail_after(20):
            message = await sock.recv(4096)
        assert message.split(b"\n")[:2] == [b"READY=1", f"MAINPID={proc.pid}".encode()]
        client = await HttpClient.connect(port)  # ready means serving
        assert (await client.request("GET", "/hello.txt")).status == 200
        await client.aclose()
    finally:
        sock.close()
        assert proc.stderr is not None
        await stop(proc, proc.stderr)
