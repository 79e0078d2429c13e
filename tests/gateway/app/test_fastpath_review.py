"""Review of the fast path (``app.fastpath``) as an attacker and an operator:
each test is a request (or a sequence) the fast path must answer as the
full path does, or not at all."""

from __future__ import annotations

import dataclasses
import gc
import os
import tracemalloc

import trio
import trio.testing

from gateway.app.open_files import VALID
from gateway.app.site import App
from gateway.config import validate
from gateway.http.request import Request
from gateway.serve.process import pool_from_config
from tests.gateway.app.test_fastpath import Counted, compare, connect, make_app
from tests.helpers import FakeFpm, php_output

EXTRA = [
    (b"files.test", b"GET", b"/file.txt", [(b"accept-encoding", b"gzip"),
                                          (b"if-modified-since", b"Fri, 01 Jan 2100 00:00:00 GMT")]),
    (b"files.test", b"HEAD", b"/tiny.txt", [(b"accept-encoding", b"gzip")]),
    (b"files.test", b"GET", b"/file.txt", [(b"if-none-match", b"*")]),
    (b"files.test", b"GET", b"/file.txt", [(b"if-range", b'"x"')]),
    (b"files.test", b"GET", b"/file.txt", [(b"if-match", b'"x"')]),
    (b"files.test", b"GET", b"/file.txt", [(b"if-unmodified-since", b"Sat, 01 Jan 2000 00:00:00 GMT")]),
    (b"files.test", b"GET", b"/file.txt;x=1", []),
    (b"files.test", b"GET", b"/FILE.TXT", []),
    (b"files.test", b"GET", b"/dir/index.html", []),
    (b"files.test", b"GET", b"/%2e%2e%2ffile.txt", []),
    (b"files.test", b"GET", b"/dir%2f..%2ffile.txt", []),
    (b"files.test", b"GET", b"/file.txt%00", []),
    (b"files.test", b"GET", b"http://cached.test/file.txt", []),
    (b"cached.test", b"GET", b"http://files.test/", []),
    (b"cached.test", b"GET", b"/", [(b"authorization", b"Basic eDp5")]),
    (b"cached.test", b"GET", b"/", [(b"x-http-method-override", b"POST")]),
    (b"cached.test", b"GET", b"/", [(b"range", b"bytes=0-9")]),
    (b"cached.test", b"GET", b"/", [(b"if-none-match", b"*")]),
    (b"cached.test", b"HEAD", b"/", [(b"accept-encoding", b"gzip")]),
    (b"cached.test", b"GET", b"/index.php", []),
    (b"cached.test", b"GET", b"//", []),
    (b"cached.test", b"GET", b"/.", []),
]


async def test_more_requests_answered_as_the_full_path_answers(tmp_path, nursery, autojump_clock):
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    bad = []
    for host, method, target, extra in EXTRA:
        full, fast = await compare(app, handler, nursery, host, method, target, extra)
        if fast != full:
            bad.append((host, method, target, extra, full, fast))
    assert not bad, bad


def request(host: bytes, target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(b"GET", target, b"1.1", [(b"host", host), *(headers or [])], ("192.0.2.7", 40000),
                   ("192.0.2.1", 80), None, "t", host=host)


async def test_a_symlink_swapped_in_never_leads_out_of_the_root(tmp_path, nursery, autojump_clock):
    """symlinks = "within_root": a file replaced by a link that leaves the
    root must never be served, not even within the validity window (nginx's
    open_file_cache re-checks disable_symlinks whenever it opens the file
    again). The route of a second target was trusted longer than the
    file's entry: the file was read again, through the link, for a route
    made when it was a regular file."""
    app, root = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    c = await connect(handler, nursery)
    host = [(b"host", b"strict.test")]
    (root / "swap.txt").write_bytes(b"inside the root")
    assert (await c.exchange(b"GET", b"/swap.txt", host)).endswith(b"inside the root")
    await trio.sleep(VALID / 2)
    assert (await c.exchange(b"GET", b"/swap.txt?v=2", host)).endswith(b"inside the root")
    (root / "swap.txt").unlink()
    os.symlink(tmp_path / "outside.txt", root / "swap.txt")
    await trio.sleep(VALID / 2 + 0.01)  # the file's entry is due for a check; that target's route is not
    raw = await c.exchange(b"GET", b"/swap.txt?v=2", host)
    assert b"outside the root" not in raw
    full = await (await connect(app.handle, nursery)).exchange(b"GET", b"/swap.txt?v=2", host)
    assert full.startswith(b"HTTP/1.1 403 ")


async def test_a_file_read_through_a_link_for_another_site_is_not_served_within_the_root(
        tmp_path, nursery, autojump_clock):
    """Two sites on one root, one following symlinks, one not: what the
    first read through a link (kept per path) is not the second's to
    serve, whether its route was made before the link appeared or after
    the link was replaced by a file."""
    app, root = make_app(tmp_path, nursery, [])
    c = await connect(Counted(app), nursery)
    strict, follow = [(b"host", b"strict.test")], [(b"host", b"files.test")]
    (root / "swap.txt").write_bytes(b"inside the root")
    assert (await c.exchange(b"GET", b"/swap.txt", strict)).endswith(b"inside the root")
    await trio.sleep(VALID / 2)
    assert (await c.exchange(b"GET", b"/swap.txt?v=2", strict)).endswith(b"inside the root")
    (root / "swap.txt").unlink()
    os.symlink(tmp_path / "outside.txt", root / "swap.txt")
    await trio.sleep(VALID / 2 + 0.01)
    assert (await c.exchange(b"GET", b"/swap.txt", follow)).endswith(b"outside the root")  # read again
    assert b"outside the root" not in await c.exchange(b"GET", b"/swap.txt?v=2", strict)
    # and the other way: read through the link, then the link replaced by a file of the root
    os.symlink(tmp_path / "outside.txt", root / "link2.txt")
    assert (await c.exchange(b"GET", b"/link2.txt", follow)).endswith(b"outside the root")
    (root / "link2.txt").unlink()
    (root / "link2.txt").write_bytes(b"inside the root")
    raw = await c.exchange(b"GET", b"/link2.txt", strict)
    full = await (await connect(app.handle, nursery)).exchange(b"GET", b"/link2.txt", strict)
    assert full.endswith(b"inside the root") and raw.endswith(b"inside the root"), raw

def _held(run) -> int:
    """Bytes still allocated after ``run()`` (garbage collected), as tracemalloc counts them."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


async def test_distinct_long_hosts_do_not_grow_the_route_cache(tmp_path, nursery, autojump_clock):
    """A flood of requests with long random Host names (the default site
    answers them) must cost no more than the route cache's stated bound
    for targets (ROUTE_TARGET_MAX bytes an entry): a Host may be up to
    max_header_size (32 KiB), and each was kept in the key."""
    app, _ = make_app(tmp_path, nursery, [])
    answered = []  # (each request's Host made as it arrives, and gone with it unless kept)
    held = _held(lambda: answered.extend(
        app.ready(request(b"h%04d." % i + b"a" * 8000 + b".test", b"/tiny.txt")) is not None for i in range(300)))
    assert all(answered)
    assert held < 300 * 2048, held  # ~2.4 MB when each long Host is kept


async def test_distinct_accept_encodings_do_not_grow_the_file_answers(tmp_path, nursery, autojump_clock):
    """Each file keeps up to 16 answers by Accept-Encoding, uncounted in the
    file cache's byte bound: with long distinct values (up to the head size
    limit) the kept keys are the attacker's bytes, 16 per file."""
    app, root = make_app(tmp_path, nursery, [])
    for i in range(20):
        (root / f"f{i}.txt").write_bytes(b"small file %d\n" % i * 40)

    def flood() -> None:
        for i in range(20):
            for j in range(15):  # (with the plain gzip one: 16 a file; each header made as it arrives)
                accept = b"gzip, x-%02d-" % j + b"y" * 8000
                answered.append(app.ready(request(b"files.test", b"/f%d.txt" % i, [(b"accept-encoding", accept)])))

    for i in range(20):  # the files read and their gzip variants made beforehand
        app.ready(request(b"files.test", b"/f%d.txt" % i, [(b"accept-encoding", b"gzip")]))
    answered: list[object] = []
    held = _held(flood)
    assert all(answered)
    assert held < 1024 * 1024, held  # ~2.4 MB of Accept-Encoding values when kept


async def test_hits_do_not_keep_entries_the_page_cache_dropped(tmp_path, nursery, autojump_clock):
    """The page cache holds at most max_size bytes; its evicted (or purged)
    entries must be freed, not kept alive by the fast path's answers."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "index.php").write_text("<?php")
    runs = []

    async def script(req):
        runs.append(None)
        return [php_output(b"%06d" % len(runs) + b"p" * 50_000, headers=(b"Cache-Control: max-age=600",))]

    fpm = FakeFpm(script)
    cfg = validate({"backends": {"php": {"pool_size": 2}},
                    "sites": {"c": {"root": str(root), "php": "php", "server_names": ["c.test"],
                                    "cache": {"enabled": True, "max_size": 300_000, "max_entry_size": 100_000}}}})
    pools = {"php": pool_from_config("php", fpm.connector(nursery), cfg.backends["php"], cfg.limits)}
    app = App(cfg, pools)
    nursery.start_soon(app.run)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40):  # each page stored (a MISS), then a HIT answered at once
            target = b"/?page=%d" % i
            await app.handle(request(b"c.test", target))
            assert app.ready(request(b"c.test", target)) is not None
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert app.cache_stats.evictions > 30
    assert held < 300_000 + 500_000, held  # ~2 MB: every page the cache dropped, kept by the hits


async def test_the_last_request_of_a_connection_says_close(tmp_path, nursery, autojump_clock):
    from gateway.front.h1 import ConnectionSettings, HttpConnection
    app, _ = make_app(tmp_path, nursery, [])
    handler = Counted(app)
    client, server = trio.testing.memory_stream_pair()
    settings = dataclasses.replace(ConnectionSettings.from_config(), keepalive_requests=2)
    conn = HttpConnection(server, handler, settings, client=("192.0.2.7", 40000), server=("192.0.2.1", 80))
    done = trio.Event()

    async def run() -> None:
        await conn.run()
        done.set()

    nursery.start_soon(run)
    one = b"GET /tiny.txt HTTP/1.1\r\nHost: files.test\r\n\r\n"
    await client.send_all(one * 3)
    raw = b""
    with trio.fail_after(5):
        while data := await client.receive_some(65536):  # until the gateway closes the connection
            raw += data
    assert raw.count(b"HTTP/1.1 200 OK") == 2 and raw.lower().count(b"connection: close") == 1
    assert handler.answered == 1


async def test_a_slow_reader_of_a_fast_answer_is_cut_by_the_send_timeout(tmp_path, nursery, autojump_clock):
    from gateway.front.h1 import ConnectionSettings, HttpConnection
    app, root = make_app(tmp_path, nursery, [])
    (root / "big.txt").write_bytes(b"x" * 60_000)
    handler = Counted(app)
    client, server = trio.testing.lockstep_stream_pair()
    settings = dataclasses.replace(ConnectionSettings.from_config(), send_timeout=5.0)
    conn = HttpConnection(server, handler, settings, client=("192.0.2.7", 40000), server=("192.0.2.1", 80))
    start = trio.current_time()
    with trio.fail_after(30):
        async with trio.open_nursery() as n:  # (until the gateway gives the connection up)
            n.start_soon(conn.run)
            await client.send_all(b"GET /big.txt HTTP/1.1\r\nHost: files.test\r\n\r\n")
            await client.receive_some(100)  # the first bytes, then never another read
    assert handler.answered == 1 and trio.current_time() - start < 10


async def test_a_php_script_swapped_for_a_link_out_of_the_root_is_refused_at_once(tmp_path, nursery, autojump_clock):
    """The full path takes the route ``ready`` found for a PHP script
    (``FastPath.routed``), trusted for VALID; under symlinks = "within_root"
    it routes again: a script replaced by a link that leaves the root is
    refused at once, never run."""
    runs = []
    app, root = make_app(tmp_path, nursery, runs)
    c = await connect(Counted(app), nursery)
    host = [(b"host", b"strict.test")]
    (root / "swap.php").write_text("<?php")
    assert (await c.exchange(b"GET", b"/swap.php", host)).startswith(b"HTTP/1.1 200 ")
    assert len(runs) == 1
    await trio.sleep(VALID / 2)
    (root / "swap.php").unlink()
    (tmp_path / "outside.php").write_text("<?php")
    os.symlink(tmp_path / "outside.php", root / "swap.php")
    assert (await c.exchange(b"GET", b"/swap.php", host)).startswith(b"HTTP/1.1 403 ")
    assert len(runs) == 1


async def test_the_route_ready_found_is_only_for_the_request_it_routed(tmp_path, nursery, autojump_clock):
    """``ready`` declined a PHP script; another request handled next is routed on its own."""
    runs = []
    app, _ = make_app(tmp_path, nursery, runs)
    php = request(b"files.test", b"/hello.php")
    assert app.ready(php) is None
    other = request(b"files.test", b"/file.txt")
    resp = await app.handle(other)
    assert resp.status == 200 and not runs and (b"content-type", b"text/plain") in resp.headers
    resp.close()
    resp = await app.handle(php)  # its route, once
    assert resp.status == 200 and len(runs) == 1
    resp.close()
