"""The fast path (``App.ready``, answered in the HTTP/1.1 connection cycle)
against the full path (``App.handle``): a corpus of requests goes to both,
over the real connection code in memory, and the bytes that come back must
be the same (but Date, and Expires, both per second). The fast path must
also have answered the requests it is for, so this cannot pass by
declining everything."""

from __future__ import annotations

import logging
import os
import re

import trio
import trio.testing

from gateway.app.open_files import VALID
from gateway.app.site import App
from gateway.config import validate
from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.http._h11 import h11
from gateway.http.cache_policy import purge_url
from gateway.serve.process import pool_from_config
from tests.helpers import FakeFpm, php_output

PAGE = b"<p>a cached page</p>" * 100


class Counted:
    """The App as the front end's handler, counting ``ready``'s answers."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.answered = 0
        self.asked = 0

    async def __call__(self, req):
        return await self.app.handle(req)

    def ready(self, req):
        self.asked += 1
        answer = self.app.ready(req)
        self.answered += answer is not None
        return answer


def make_app(tmp_path, nursery, runs, numbered=False):
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "assets").mkdir()
    (root / "file.txt").write_bytes(b"hello file\n" * 100)
    (root / "tiny.txt").write_bytes(b"hi")
    (root / "empty.txt").write_bytes(b"")
    (root / "assets" / "app.js").write_bytes(b"console.log(1);\n" * 100)
    (root / "img.png").write_bytes(bytes(range(256)) * 8)
    (root / "big.bin").write_bytes(b"b" * (70 * 1024))
    (root / "dir" / "index.html").write_bytes(b"<h1>index</h1>")
    (root / ".env").write_bytes(b"SECRET=1")
    (root / "index.php").write_text("<?php")
    (root / "hello.php").write_text("<?php")
    (root / "a file.txt").write_bytes(b"spaced")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside the root")
    os.symlink(outside, root / "link.txt")
    os.symlink(outside, root / "strict-link.txt")

    async def script(req):
        runs.append(req)
        return [php_output(PAGE + b"%d" % len(runs) if numbered else PAGE, headers=(b"Cache-Control: max-age=600",))]

    fpm = FakeFpm(script)
    cfg = validate({
        "backends": {"php": {"pool_size": 4}},
        "sites": {
            "files": {"root": str(root), "php": "php", "server_names": ["files.test"], "default": True,
                      "static_max_age": "1h", "headers": [{"add": {"X-Frame-Options": "DENY"}},
                                                          {"paths": ["/assets/"], "set": {"X-Assets": "1"}}]},
            "cached": {"root": str(root), "php": "php", "server_names": ["cached.test"],
                       "cache": {"enabled": True}},
            "strict": {"root": str(root), "php": "php", "server_names": ["strict.test"], "symlinks": "within_root"},
            "guarded": {"root": str(root), "php": "php", "server_names": ["guarded.test"],
                        "access": [{"paths": ["/"], "deny": ["192.0.2.0/24"]}]},
        }})
    pools = {"php": pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)}
    app = App(cfg, pools)
    nursery.start_soon(app.run)
    return app, root


class RawClient:
    """One connection: requests made by h11's client, responses kept as the bytes that came."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def exchange(self, method: bytes, target: bytes, headers) -> bytes:
        await self.stream.send_all(self.conn.send(h11.Request(method=method, target=target, headers=headers))
                                   + self.conn.send(h11.EndOfMessage()))
        raw = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(65536)
                raw += data
                self.conn.receive_data(data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return raw


async def connect(handler, nursery) -> RawClient:
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, handler, ConnectionSettings.from_config(), client=("192.0.2.7", 40000),
                          server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    return RawClient(client)


def normal(raw: bytes) -> bytes:
    return re.sub(rb"(?im)^(date|expires): [^\r]*\r$", rb"\1: (per second)\r", raw)


#: (host, method, target, extra headers), each sent to both paths
CORPUS = [
    (b"files.test", b"GET", b"/file.txt", []),
    (b"files.test", b"HEAD", b"/file.txt", []),
    (b"files.test", b"GET", b"/tiny.txt", []),
    (b"files.test", b"GET", b"/empty.txt", []),
    (b"files.test", b"GET", b"/img.png", [(b"accept-encoding", b"gzip, br")]),
    (b"files.test", b"GET", b"/assets/app.js", []),
    (b"files.test", b"GET", b"/assets/app.js", [(b"accept-encoding", b"gzip")]),
    (b"files.test", b"GET", b"/file.txt", [(b"accept-encoding", b"gzip")]),
    (b"files.test", b"GET", b"/file.txt", [(b"accept-encoding", b"gzip, deflate, br")]),
    (b"files.test", b"HEAD", b"/file.txt", [(b"accept-encoding", b"br")]),
    (b"files.test", b"GET", b"/tiny.txt", [(b"accept-encoding", b"gzip")]),
    (b"files.test", b"GET", b"/file.txt", [(b"accept-encoding", b"identity")]),
    (b"files.test", b"GET", b"/file.txt", [(b"accept-encoding", b"br;q=0, gzip;q=0")]),
    (b"files.test", b"GET", b"/file.txt?x=1&y=%20", []),
    (b"files.test", b"GET", b"/%66ile.txt", []),
    (b"files.test", b"GET", b"/a%20file.txt", []),
    (b"files.test", b"GET", b"//file.txt", []),
    (b"files.test", b"GET", b"/dir/../file.txt", []),
    (b"files.test", b"GET", b"/./file.txt", []),
    (b"files.test", b"GET", b"/%2e%2e/outside.txt", []),
    (b"files.test", b"GET", b"/bad%zz", []),
    (b"files.test", b"GET", b"/dir", []),
    (b"files.test", b"GET", b"/dir/", []),
    (b"files.test", b"GET", b"/.env", []),
    (b"files.test", b"GET", b"/missing.txt", []),
    (b"files.test", b"GET", b"/big.bin", []),
    (b"files.test", b"GET", b"/file.txt", [(b"range", b"bytes=0-9")]),
    (b"files.test", b"GET", b"/file.txt", [(b"if-none-match", b'"nope"')]),
    (b"files.test", b"GET", b"/file.txt", [(b"if-modified-since", b"Sat, 01 Jan 2000 00:00:00 GMT")]),
    (b"files.test", b"GET", b"/file.txt", [(b"if-modified-since", b"Fri, 01 Jan 2100 00:00:00 GMT")]),
    (b"files.test", b"POST", b"/file.txt", []),
    (b"files.test", b"OPTIONS", b"/file.txt", []),
    (b"files.test", b"GET", b"/link.txt", []),
    (b"FILES.test.", b"GET", b"/file.txt", []),
    (b"files.test:8080", b"GET", b"/file.txt", []),
    (b"unknown.test", b"GET", b"/file.txt", []),
    (b"a b", b"GET", b"/file.txt", []),
    (b"strict.test", b"GET", b"/strict-link.txt", []),
    (b"strict.test", b"GET", b"/file.txt", []),
    (b"guarded.test", b"GET", b"/file.txt", []),
    (b"files.test", b"GET", b"/hello.php", []),
    (b"cached.test", b"GET", b"/", []),
    (b"cached.test", b"HEAD", b"/", []),
    (b"cached.test", b"GET", b"/?utm_source=news", []),
    (b"cached.test", b"GET", b"/?b=2&a=1", []),
    (b"cached.test", b"GET", b"/", [(b"accept-encoding", b"gzip")]),
    (b"cached.test", b"GET", b"/", [(b"accept-encoding", b"br, gzip")]),
    (b"cached.test", b"GET", b"/", [(b"cookie", b"wordpress_logged_in_abc=1")]),
    (b"cached.test", b"GET", b"/", [(b"cookie", b"theme=dark")]),
    (b"cached.test", b"GET", b"/wp-admin/", []),
    (b"cached.test", b"GET", b"/%77p-admin/", []),
    (b"cached.test:81", b"GET", b"/", []),
    (b"cached.test", b"GET", b"/file.txt", []),
]


async def compare(app, handler, nursery, host, method, target, extra) -> tuple[bytes, bytes]:
    """The response of the full path, then of the fast one (after one request that warms both)."""
    headers = [(b"host", host), *extra]
    warm = await connect(app, nursery)
    await warm.exchange(method, target, headers)  # a MISS stored, a variant made, a file kept
    full = await (await connect(app.handle, nursery)).exchange(method, target, headers)
    fast = await (await connect(handler, nursery)).exchange(method, target, headers)
    return normal(full), normal(fast)


async def test_the_fast_path_sends_what_the_full_path_sends(tmp_path, nursery, autojump_clock):
    runs = []
    app, root = make_app(tmp_path, nursery, runs)
    handler = Counted(app)
    for host, method, target, extra in CORPUS:
        full, fast = await compare(app, handler, nursery, host, method, target, extra)
        assert fast == full, (host, method, target, extra)
    # what it is for, it answered: the static files and the hits it can serve exactly
    print("answered", handler.answered, "of", handler.asked)
    assert handler.answered >= 25, (handler.answered, handler.asked)
    assert app.cache_stats.requests["HIT"] >= 7


async def test_counted_as_the_full_path_counts(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    stats = app.compressor.stats
    gz = [(b"host", b"files.test"), (b"accept-encoding", b"gzip")]
    for h in (app.handle, handler, handler):  # the first fast one compresses, the next has it kept
        before = (stats.responses.get("gzip", 0), app.cache_stats.requests["HIT"])
        c = await connect(h, nursery)
        await c.exchange(b"GET", b"/file.txt", gz)
        await c.exchange(b"GET", b"/", [(b"host", b"cached.test")])
        after = (stats.responses.get("gzip", 0), app.cache_stats.requests["HIT"])
        assert (after[0] - before[0], after[1] - before[1]) == (1, 0 if h == app.handle else 1)
    assert handler.answered == 4


async def test_a_hit_after_a_purge_or_a_second_is_made_anew(tmp_path, nursery, autojump_clock):
    runs = []
    app, _ = make_app(tmp_path, nursery, runs, numbered=True)
    handler = Counted(app)
    c = await connect(handler, nursery)
    host = [(b"host", b"cached.test")]
    bodies = [(await c.exchange(b"GET", b"/", host)).rsplit(b"</p>", 1)[1] for _ in range(3)]
    assert bodies == [b"1", b"1", b"1"] and handler.answered == 2 and app.cache_stats.requests["HIT"] == 2
    await app.purge(purge_url("http://cached.test/"))
    full_path = await connect(app.handle, nursery)
    assert b"x-cache: MISS" in await full_path.exchange(b"GET", b"/", host)  # PHP's second run, stored
    full = normal(await full_path.exchange(b"GET", b"/", host))
    for _ in range(2):  # the new entry's hit, not the purged one's kept answer
        fast = normal(await c.exchange(b"GET", b"/", host))
        assert fast == full and fast.endswith(b"</p>2")
    await trio.sleep(2)
    later = await c.exchange(b"GET", b"/", host)
    assert b"age: 2\r\n" in later
    assert normal(await (await connect(app.handle, nursery)).exchange(b"GET", b"/", host)) == normal(later)


async def test_a_changed_or_deleted_file_is_seen_within_the_validity_window(tmp_path, nursery, autojump_clock):
    app, root = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    c = await connect(handler, nursery)
    headers = [(b"host", b"files.test")]
    before = await c.exchange(b"GET", b"/tiny.txt", headers)
    (root / "tiny.txt").write_bytes(b"changed")
    assert (await c.exchange(b"GET", b"/tiny.txt", headers)).endswith(b"\r\n\r\nhi")  # still trusted
    await trio.sleep(VALID)
    for _ in range(2):  # the first one reads it again, the next one has it kept
        full, fast = await compare(app, handler, nursery, b"files.test", b"GET", b"/tiny.txt", [])
        assert fast == full and fast.endswith(b"\r\n\r\nchanged") and normal(before) != fast
    (root / "tiny.txt").unlink()
    await trio.sleep(VALID)
    full, fast = await compare(app, handler, nursery, b"files.test", b"GET", b"/tiny.txt", [])
    assert fast == full and fast.endswith(PAGE)  # gone: try_files' front controller answers


async def test_fast_answers_keep_the_connection_and_its_pipeline(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, handler, ConnectionSettings.from_config(), client=("192.0.2.7", 40000),
                          server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    one = b"GET /tiny.txt HTTP/1.1\r\nHost: files.test\r\n\r\n"
    php = b"GET /hello.php HTTP/1.1\r\nHost: files.test\r\n\r\n"
    await client.send_all(one + one + php + one)  # pipelined: fast, fast, full, fast
    raw = b""
    while raw.count(b"HTTP/1.1 200 OK") < 4:
        raw += await client.receive_some(65536)
    assert raw.count(b"\r\n\r\nhi") == 3 and PAGE in raw
    assert handler.answered == 3
    stats = conn.listener_state.stats
    assert (stats.requests, stats.in_flight) == (4, 0)
    # Connection: close and HTTP/1.0 are answered by the full path (which says close)
    await client.send_all(b"GET /tiny.txt HTTP/1.1\r\nHost: files.test\r\nConnection: keep-alive, Close\r\n\r\n")
    last = b""
    while not last.endswith(b"hi"):
        last += await client.receive_some(65536)
    assert b"\r\nconnection: close\r\n" in last.lower() and handler.answered == 3


async def test_a_fast_answer_is_in_the_access_log(tmp_path, nursery, autojump_clock, caplog):
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    c = await connect(handler, nursery)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await c.exchange(b"GET", b"/tiny.txt", [(b"host", b"files.test"), (b"user-agent", b"probe/1")])
        await c.exchange(b"HEAD", b"/tiny.txt", [(b"host", b"files.test")])
    assert handler.answered == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 2
    assert '"GET /tiny.txt HTTP/1.1" 200 2 "-" "probe/1"' in lines[0]
    assert '"HEAD /tiny.txt HTTP/1.1" 200 0 ' in lines[1]


async def test_a_bug_in_ready_is_that_requests_and_the_full_path_answers(tmp_path, nursery, autojump_clock, caplog):
    app, _ = make_app(tmp_path, nursery, [])

    def boom(req):
        raise RuntimeError("a bug")

    app.fastpath.ready = boom
    c = await connect(app, nursery)
    raw = await c.exchange(b"GET", b"/tiny.txt", [(b"host", b"files.test")])
    assert raw.startswith(b"HTTP/1.1 200 OK") and raw.endswith(b"\r\n\r\nhi")
    assert any("fast path failed" in r.getMessage() for r in caplog.records)
