"""Review of ``fastcgi.take_record`` (records read as tuples) through the whole
exchange: malformed records from a php-fpm stand-in that writes raw bytes,
split as a hostile or broken backend splits them. Each gives what main
before the change gave (the outcome table was taken from 2ffd484): a
response or the same error class and status, the slot free, the connection
closed unless the exchange ended cleanly."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from gateway.config import BackendConfig
from gateway.http.errors import GatewayError
from gateway.upstream.exchange import run_php
from gateway.upstream.fastcgi import PhpSettings, fastcgi_pool

SETTINGS = PhpSettings.from_config(BackendConfig(read_timeout=30, max_response_header_size=4096,
                                                response_buffer_size=1024))
PARAMS = [(b"SCRIPT_FILENAME", b"/srv/index.php"), (b"REQUEST_METHOD", b"GET")]
STDOUT, STDERR, END, UNKNOWN = 6, 7, 3, 11


def rec(rtype: int, content: bytes = b"", rid: int = 1, pad: int | None = None, version: int = 1,
        clen: int | None = None) -> bytes:
    n = len(content) if clen is None else clen
    p = (-len(content) & 7) if pad is None else pad
    return struct.pack(">BBHHBx", version, rtype, rid, n, p) + content + bytes(p)


def end(rid: int = 1, app: int = 0, proto: int = 0, body: bytes | None = None) -> bytes:
    return rec(END, struct.pack(">IB3x", app, proto) if body is None else body, rid)


OK = rec(STDOUT, b"Content-Type: text/plain\r\n\r\nhello") + rec(STDOUT) + end()

#: name -> (raw bytes php sends, how to split them, what main gave: status or the error's class name and status)
CASES: dict[str, tuple[bytes, str, str]] = {
    "ok": (OK, "whole", "200 hello"),
    "ok-bytewise": (OK, "bytes", "200 hello"),
    "padding-across-reads": (rec(STDOUT, b"Content-Type: text/plain\r\n\r\nhello", pad=7) + rec(STDOUT) + end(),
                             "at:45", "200 hello"),
    "max-padding": (rec(STDOUT, b"Status: 201\r\n\r\nx", pad=255) + rec(STDOUT, pad=255) + end(), "bytes", "201 x"),
    "bad-version": (rec(STDOUT, b"Status: 200\r\n\r\nx", version=2) + end(), "whole", "UpstreamProtocolError 502"),
    "bad-version-later": (rec(STDOUT, b"Status: 200\r\n\r\nx") + rec(STDOUT, version=0) + end(), "whole",
                          "UpstreamProtocolError 502"),
    "huge-length-then-eof": (struct.pack(">BBHHBx", 1, STDOUT, 1, 65535, 0) + b"x" * 100, "whole",
                             "UpstreamProtocolError 502"),
    "unknown-type": (rec(50, b"????") + OK, "whole", "UpstreamProtocolError 502"),
    "unknown-type-answer": (rec(UNKNOWN, b"\x32" + bytes(7), rid=0) + OK, "whole", "200 hello"),
    "end-for-another-id": (rec(STDOUT, b"Status: 200\r\n\r\nx") + rec(STDOUT) + end(rid=2), "whole",
                           "UpstreamProtocolError 502"),
    "stdout-for-another-id": (rec(STDOUT, b"Status: 200\r\n\r\nx", rid=9) + rec(STDOUT) + end(), "whole",
                              "UpstreamProtocolError 502"),
    "end-too-short": (rec(STDOUT, b"Status: 200\r\n\r\nx") + rec(STDOUT) + end(body=b"\x00\x00"), "whole",
                      "UpstreamProtocolError 502"),
    "stdout-after-end-of-stream": (rec(STDOUT, b"Status: 200\r\n\r\nx") + rec(STDOUT) + rec(STDOUT, b"more") + end(),
                                   "whole", "200 xmore"),  # (main's leniency, kept)
    "no-end-request": (rec(STDOUT, b"Status: 200\r\n\r\nx") + rec(STDOUT), "whole", "UpstreamProtocolError 502"),
    "stderr-only": (rec(STDERR, b"PHP Fatal") + rec(STDERR) + end(app=255), "bytes", "UpstreamProtocolError 502"),
    "management-record": (rec(10, bytes(8), rid=0) + OK, "whole", "200 hello"),
    "length-over-content": (struct.pack(">BBHHBx", 1, STDOUT, 1, 40, 0) + b"Status: 200\r\n\r\nx", "whole",
                            "UpstreamProtocolError 502"),
}


async def _outcome(nursery, raw: bytes, split: str) -> str:
    async def connect():
        client, server = trio.testing.memory_stream_pair()

        async def serve():
            got = b""
            while rec(5, rid=1) not in got:  # the request's empty STDIN: it is all there
                got += await server.receive_some(65536)
            if split == "whole":
                await server.send_all(raw)
            elif split == "bytes":
                for i in range(len(raw)):
                    await server.send_all(raw[i : i + 1])
                    await trio.sleep(0.001)
            else:
                at = int(split.split(":")[1])
                await server.send_all(raw[:at])
                await trio.sleep(0.01)
                await server.send_all(raw[at:])
            await trio.sleep(1)
            await server.aclose()

        nursery.start_soon(serve)
        return client

    pool = fastcgi_pool("php", connect, size=1, queue_depth=1, queue_timeout=5)
    try:
        result = await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
    except GatewayError as exc:
        outcome = f"{type(exc).__name__} {exc.status}"
    else:
        outcome = f"{result.head.status} {result.body.getvalue().decode()}"
        result.body.close()
    await trio.testing.wait_all_tasks_blocked()
    assert pool.busy == 0 and pool.limiter.borrowed_tokens == 0 and pool.waiting == 0, pool
    return outcome


@pytest.mark.parametrize("name", list(CASES))
async def test_malformed_records_give_what_main_gave(nursery, autojump_clock, name):
    raw, split, want = CASES[name]
    assert await _outcome(nursery, raw, split) == want


# -- SlotQueue: a release and the waiter's queue deadline at the same instant --------------------


@pytest.mark.parametrize("php_seconds", [9.999, 10, 10.001])
async def test_a_slot_freed_as_the_queue_timeout_fires_is_neither_leaked_nor_lost(nursery, autojump_clock,
                                                                                  php_seconds):
    from gateway.http.errors import QueueTimeout
    from tests.helpers import FakeFpm, php_output

    async def script(req):
        await trio.sleep(php_seconds)
        return [php_output(b"done")]

    pool = fastcgi_pool("php", FakeFpm(script).connector(nursery), size=1, queue_depth=5, queue_timeout=10)
    outcomes: list[str] = []

    async def one():
        try:
            result = await run_php(pool, PARAMS, None, SETTINGS, request_id="t")
        except QueueTimeout:
            outcomes.append("504")
        else:
            outcomes.append(result.body.getvalue().decode())
            result.body.close()

    async with trio.open_nursery() as n:
        n.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            n.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
    assert len(outcomes) == 4 and "done" in outcomes and set(outcomes) <= {"done", "504"}, outcomes
    assert pool.busy == 0 and pool.limiter.borrowed_tokens == 0 and pool.waiting == 0, pool
    result = await run_php(pool, PARAMS, None, SETTINGS, request_id="t")  # the pool still serves
    assert result.body.getvalue() == b"done"
    result.body.close()
