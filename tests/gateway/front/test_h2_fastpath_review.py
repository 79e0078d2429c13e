"""Review of the HTTP/2 answers at hand (``Http2Connection._answer_ready``):
what an attacking client can make the reader do in one read.

The full path queues at most ``WRITE_CHUNK`` of a body per stream before it
waits for the sender (``h2.WRITE_CHUNK``: "bounds the memory of 128
streams"). At h2fast 1ef18ed an answer at hand was queued whole, for every
stream of the read (this test failed: 32 MiB queued at once for 128 x 256
KiB, 256 MiB per connection for 2 MiB page-cache hits, from a ~2 KiB write);
h2fast f1a1703 sends an answer over WRITE_CHUNK through a stream task, and
this test holds it there.
"""

from __future__ import annotations

import h2.connection
import trio
import trio.testing

from gateway.front import h2 as h2_front
from gateway.front.h2 import MAX_CONCURRENT_STREAMS, WRITE_CHUNK
from gateway.http.prepared import Prepared
from gateway.http.request import Request
from gateway.http.response import Response
from tests.gateway.front.test_h2 import SETTINGS, start

#: a page-cache entry may be up to ``max_entry_size`` (2 MiB by default) in memory
PAGE = b"p" * (256 * 1024)
HEADERS = [(b"content-type", b"text/html"), (b"content-length", b"%d" % len(PAGE))]


class CachedPage:
    """A handler whose every GET is a page-cache HIT of ``PAGE`` (as ``App.ready`` gives one)."""

    def __init__(self, *, fast: bool) -> None:
        self.fast = fast

    async def __call__(self, req: Request) -> Response:
        return Response(200, list(HEADERS), PAGE)

    def ready(self, req: Request) -> Prepared | None:
        if not self.fast:
            return None
        return Prepared(200, b"OK", list(HEADERS), b"".join(b"%s: %s\r\n" % h for h in HEADERS),
                        b"" if req.method == b"HEAD" else PAGE)


async def _most_queued_at_once(nursery, handler, monkeypatch) -> tuple[int, int]:
    """(the most response bytes the server held queued at once, bytes received):
    a client with its windows wide open sends MAX_CONCURRENT_STREAMS GETs in one write."""
    most = 0
    real = h2.connection.H2Connection.data_to_send

    def measured(self, amount=None):
        nonlocal most
        data = real(self, amount)
        most = max(most, len(data))
        return data

    monkeypatch.setattr(h2_front.h2.connection.H2Connection, "data_to_send", measured)
    c = await start(nursery, handler=handler, settings=SETTINGS, window=2**31 - 1)
    c.conn.increment_flow_control_window(2**31 - 1 - 65535)
    await c.flush()
    sids = [c.open("/", authority=b"cached.test") for _ in range(MAX_CONCURRENT_STREAMS)]
    await c.flush()
    with trio.fail_after(600):
        await c.until(lambda: all(s in c.ended for s in sids))
    got = sum(len(c.data[s]) for s in sids)
    return most, got


async def test_one_read_of_gets_queues_no_more_than_the_full_path_bounds(nursery, autojump_clock, monkeypatch):
    """128 GETs of a cached 256 KiB page in one read, windows wide open: the
    full path holds at most WRITE_CHUNK per stream queued (8 MiB for 128),
    and so must the answers at hand."""
    bound = MAX_CONCURRENT_STREAMS * WRITE_CHUNK + 64 * 1024  # (+ the HEADERS frames)
    most, got = await _most_queued_at_once(nursery, CachedPage(fast=False), monkeypatch)
    assert got == MAX_CONCURRENT_STREAMS * len(PAGE)
    assert most <= bound, ("the full path", most)
    most, got = await _most_queued_at_once(nursery, CachedPage(fast=True), monkeypatch)
    assert got == MAX_CONCURRENT_STREAMS * len(PAGE)
    assert most <= bound, f"answers at hand queued {most / 2**20:.0f} MiB at once (bound {bound / 2**20:.0f} MiB)"
