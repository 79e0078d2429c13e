"""flup's FastCGI server as a second, independent backend implementation."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio

HERE = Path(__file__).parent


@pytest.fixture
async def flup_socket(tmp_path):
    sock = tmp_path / "flup.sock"
    proc = await trio.lowlevel.open_process([sys.executable, str(HERE / "flup_app.py"), str(sock)])
    try:
        with trio.fail_after(10):
            # flup gives no readiness event but its socket file; poll for it, bounded
            while not sock.exists():  # noqa: ASYNC110
                assert proc.returncode is None, "flup exited at start-up"
                await trio.sleep(0.02)
        yield str(sock)
    finally:
        proc.kill()  # SIGTERM would make flup wait for our kept-alive connections
        await proc.wait()


async def test_requests_through_flup(start_gateway, tmp_path, flup_socket):
    root = tmp_path / "www"
    root.mkdir()
    (root / "app.php").write_text("flup ignores the script")
    gw = await start_gateway(root, backend={"address": f"unix:{flup_socket}", "pool_size": 2})
    client = await gw.client()
    r = await client.request("POST", "/app.php?q=1", body=b"hello", headers=[("X-Test", "yes")])
    assert r.status == 201
    data = json.loads(r.body)
    assert data == {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "/app.php", "QUERY_STRING": "q=1",
                    "CONTENT_LENGTH": "5", "REQUEST_URI": "/app.php?q=1", "HTTP_X_TEST": "yes", "body": "hello"}
    assert [v for n, v in r.header_list if n == b"set-cookie"] == [b"a=1", b"b=2"]
    big = await client.request("GET", "/app.php/big")
    assert big.body == b"x" * 200_000
    # a body bigger than one FastCGI record travels as several STDIN records
    payload = os.urandom(200_000).hex().encode()
    r = await client.request("POST", "/app.php", body=payload)
    assert json.loads(r.body)["body"].encode() == payload
