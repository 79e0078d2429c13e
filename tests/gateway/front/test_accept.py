"""The accept loop: connection limit and resource errors, with a fake listener
(a trio.abc.Listener over memory streams, after trio's own MemoryListener)."""

from __future__ import annotations

import errno

import trio
import trio.testing

from gateway.front.listen import ACCEPT_RETRY_DELAY, serve_listener


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[trio.abc.Stream](100)
        self.accept_hook = None
        self.accepted = 0

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self.send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        if self.accept_hook is not None:
            await self.accept_hook()
        stream = await self.receive.receive()
        self.accepted += 1
        return stream

    async def aclose(self) -> None:
        pass


async def test_at_the_limit_it_stops_accepting_and_keeps_serving(nursery, autojump_clock):
    listener = MemoryListener()
    served = []
    release = trio.Event()

    async def handler(client):
        served.append(client.stream)
        await release.wait()
        return False

    slots = trio.CapacityLimiter(2)
    nursery.start_soon(serve_listener, listener, handler, nursery, slots)
    for _ in range(3):
        await listener.connect()
    await trio.testing.wait_all_tasks_blocked()
    assert (listener.accepted, len(served)) == (2, 2)  # the third waits unaccepted
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert (listener.accepted, len(served)) == (3, 3)
    assert slots.borrowed_tokens == 1  # the loop holds one slot for the accept() it waits in


async def test_emfile_is_retried_not_fatal(nursery, autojump_clock, caplog):
    listener = MemoryListener()
    failures = 3

    async def emfile():
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")

    listener.accept_hook = emfile
    served = trio.Event()

    async def handler(client):
        served.set()
        return False

    nursery.start_soon(serve_listener, listener, handler, nursery, trio.CapacityLimiter(10))
    await listener.connect()
    t0 = trio.current_time()
    await served.wait()
    assert trio.current_time() - t0 >= 3 * ACCEPT_RETRY_DELAY
    assert caplog.text.count("Too many open files") == 3
