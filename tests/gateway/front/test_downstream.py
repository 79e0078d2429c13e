"""``Downstream`` is a conforming trio stream over every transport it wraps.

trio's own stream conformance checks (``trio.testing.check_two_way_stream``,
``check_half_closeable_stream``) run against Downstream over memory streams,
over a socket pair (its raw-socket write path) and over TLS (``trio.SSLStream``
with a trustme CA): what the h11 loop, and later h2, rely on. Then the socket
tricks: sendfile with its fallback under TLS, the peer-closed probe, parking,
and the send progress deadline.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile

import pytest
import trio
import trio.testing
import trustme

from gateway.front.downstream import Downstream
from gateway.http.response import FileRange
from tests.helpers import client_hello


async def memory_pair() -> tuple[Downstream, Downstream]:
    a, b = trio.testing.memory_stream_pair()
    return Downstream(a), Downstream(b)


async def clogged_memory_pair() -> tuple[Downstream, Downstream]:
    a, b = trio.testing.lockstep_stream_pair()
    return Downstream(a), Downstream(b)


async def socket_pair() -> tuple[Downstream, Downstream]:
    a, b = trio.socket.socketpair()
    return Downstream(trio.SocketStream(a)), Downstream(trio.SocketStream(b))


CA = trustme.CA()
CERT = CA.issue_cert("gateway.test")


def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CERT.configure_cert(server)
    client = ssl.create_default_context()
    CA.configure_trust(client)
    return server, client


async def tls_pair() -> tuple[Downstream, trio.SSLStream[trio.SocketStream]]:
    """(our side: Downstream over SSLStream over a socket, the client's SSLStream)."""
    server_ctx, client_ctx = _contexts()
    a, b = trio.socket.socketpair()
    server = trio.SSLStream(trio.SocketStream(a), server_ctx, server_side=True)
    client = trio.SSLStream(trio.SocketStream(b), client_ctx, server_hostname="gateway.test")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return Downstream(server), client


async def tls_stream_pair() -> tuple[Downstream, trio.abc.Stream]:
    return await tls_pair()


async def test_conforms_over_memory_streams():
    await trio.testing.check_two_way_stream(memory_pair, clogged_memory_pair)


async def test_conforms_over_a_socket_pair():
    await trio.testing.check_half_closeable_stream(socket_pair, None)


async def test_conforms_over_tls():
    await trio.testing.check_two_way_stream(tls_stream_pair, None)


def _file(data: bytes):
    f = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the test
    f.write(data)
    f.flush()
    return f


@pytest.mark.parametrize("make", ["socket", "tls"])
async def test_sendfile_sends_the_range_plain_or_through_tls(make):
    data = os.urandom(600_000)
    if make == "socket":
        ours, theirs = await socket_pair()
    else:
        ours, theirs = await tls_pair()  # type: ignore[assignment]
    with _file(data) as f:
        got = bytearray()
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                while len(got) < 500_000:
                    got.extend(await theirs.receive_some(65536))

            nursery.start_soon(read)
            await ours.sendfile(FileRange(f, 100_000, 500_000, close_file=False))
    assert bytes(got) == data[100_000:600_000]


async def test_sendfile_of_a_file_that_shrank_is_a_broken_connection():
    ours, _theirs = await socket_pair()
    with _file(b"short") as f, pytest.raises(trio.BrokenResourceError):
        await ours.sendfile(FileRange(f, 0, 100, close_file=False))


async def test_peer_closed_probe():
    ours, theirs = await socket_pair()
    assert not ours.peer_closed()
    await theirs.aclose()
    assert ours.peer_closed()
    mem, _ = await memory_pair()
    assert not mem.peer_closed()  # no socket: never claims the client left


async def test_a_tls_connection_parks_only_with_nothing_buffered_above_the_socket():
    ours, client = await tls_pair()
    assert ours.fileno is not None and ours.tls
    assert ours.parkable()
    # reading a few bytes of a record leaves the rest decrypted above the socket
    await client.send_all(b"GET / HTTP/1.1\r\n\r\n")
    await ours.receive_some(5)
    assert not ours.parkable()  # the rest of the record waits in the SSLObject
    got = 5
    while got < 18:
        got += len(await ours.receive_some(65536))
    assert ours.parkable()


async def test_a_memory_stream_is_never_parked_or_watched():
    ours, _ = await memory_pair()
    assert ours.fileno is None and not ours.parkable()


async def test_send_timeout_is_a_progress_deadline(autojump_clock):
    ours, theirs = await clogged_memory_pair()
    ours.send_timeout = 5
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await ours.send_all(b"x" * 100)  # nobody reads
    assert trio.current_time() - t0 == pytest.approx(5)


async def test_a_slow_but_steady_reader_is_served(autojump_clock):
    ours, theirs = await clogged_memory_pair()
    ours.send_timeout = 5
    got = bytearray()

    async def slow_reader() -> None:
        while len(got) < 100_000:
            await trio.sleep(4)  # each piece read within the deadline; the whole takes far longer
            got.extend(await theirs.receive_some(65536))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_reader)
        await ours.send_all(b"y" * 100_000)
    assert len(got) == 100_000 and trio.current_time() > 5


# -- receive_prefix with a parser that only looks (the ClientHello for TLS-ALPN-01) ---------------


class CountingPeek:
    """``ClientHelloPeek``, counting the offers it gets and the reader's looks (``wanted``)."""

    def __init__(self) -> None:
        from gateway.tls.client_hello import ClientHelloPeek

        self.peek = ClientHelloPeek()
        self.offers = 0
        self.looks = 0

    @property
    def done(self) -> bool:
        return self.peek.done

    def wanted(self) -> int:
        self.looks += 1
        return self.peek.wanted()

    def offer(self, data: bytes) -> int:
        self.offers += 1
        return self.peek.offer(data)


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """(ours, theirs) over loopback TCP (SO_RCVLOWAT is TCP's), the client's without Nagle."""
    listener, = await trio.open_tcp_listeners(0, host="127.0.0.1")
    theirs = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    ours = await listener.accept()
    await listener.aclose()
    return ours, theirs


async def test_a_trickled_hello_wakes_the_peek_a_few_times_and_stays_in_the_kernel() -> None:
    import socket

    hello = client_hello("a.test", ["acme-tls/1"])
    ours, theirs = await tcp_pair()
    stream, peek = Downstream(ours), CountingPeek()
    async with trio.open_nursery() as nursery:

        async def trickle() -> None:
            for i in range(len(hello)):  # one segment per byte (TCP_NODELAY)
                await theirs.send_all(hello[i:i + 1])
                await trio.lowlevel.checkpoint()

        nursery.start_soon(trickle)
        with trio.fail_after(10):
            await stream.receive_prefix(peek)
    assert peek.peek.hello is not None and peek.peek.hello.server_name == "a.test"
    # not one look per byte: SO_RCVLOWAT held epoll back until the record header, then the record
    assert peek.offers <= 5, peek.offers
    assert ours.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1  # as it was, for h11 and TLS
    assert await ours.socket.recv(len(hello) + 1, socket.MSG_PEEK) == hello  # all of it left for the handshake
    assert stream.tls_transport() is ours


async def test_a_peek_at_a_hello_cut_by_a_close_is_broken() -> None:
    hello = client_hello("a.test", ["acme-tls/1"])
    ours, theirs = await tcp_pair()
    await theirs.send_all(hello[:100])
    await theirs.send_eof()
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await Downstream(ours).receive_prefix(CountingPeek())


async def test_on_a_unix_socket_a_partial_hello_is_looked_at_every_poll_not_in_a_busy_loop(autojump_clock) -> None:
    """A unix socket ignores SO_RCVLOWAT: the peek looks again every
    LOWAT_FALLBACK_POLL (virtual time here) until the rest comes."""
    from gateway.front.downstream import LOWAT_FALLBACK_POLL

    hello = client_hello("a.test", ["acme-tls/1"])
    a, b = trio.socket.socketpair()
    stream, peek = Downstream(trio.SocketStream(a)), CountingPeek()
    await b.send(hello[:100])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.receive_prefix, peek)
        await trio.sleep(1.0)
        assert 1.0 / LOWAT_FALLBACK_POLL / 2 <= peek.looks <= 1.0 / LOWAT_FALLBACK_POLL + 5
        assert peek.offers == 1  # offered again only when there is more
        await b.send(hello[100:])
    assert peek.peek.hello is not None


async def test_a_peek_over_a_memory_stream_hands_the_bytes_to_the_handshake() -> None:
    hello = client_hello("a.test", ["acme-tls/1"])
    a, b = trio.testing.memory_stream_pair()
    stream = Downstream(a)
    for piece in (hello[:3], hello[3:200], hello[200:]):
        await b.send_all(piece)
        await trio.testing.wait_all_tasks_blocked()
    await b.send_all(b"more")
    peek = CountingPeek()
    await stream.receive_prefix(peek)
    assert peek.peek.hello is not None
    transport = stream.tls_transport()
    assert transport is stream  # it hands over what the peek read first
    got = b""
    while len(got) < len(hello) + 4:
        got += await transport.receive_some(65536)
    assert got == hello + b"more"


# -- the plain socket's calls without a yield per call (``_util.SockIO``) ---------------------------


@pytest.fixture
def fresh_budget():
    """The fairness budget (per socket: a fresh pair starts at zero)."""
    from gateway import _util

    return _util.FAIR_OPS


@contextlib.contextmanager
def no_yield():
    """The block never gave the scheduler a turn (a cancellation check is not one)."""
    task = trio.lowlevel.current_task()
    before = task._schedule_points
    yield
    assert task._schedule_points == before, "the block yielded to the scheduler"


async def test_a_write_the_kernel_takes_at_once_does_not_yield(fresh_budget):
    ours, theirs = await socket_pair()
    with no_yield():
        await ours.write(b"hello")
    assert await theirs.receive_some(10) == b"hello" and ours.sent == 5


async def test_a_connection_that_never_waits_still_yields_once_per_budget(fresh_budget):
    ours, theirs = await socket_pair()
    task = trio.lowlevel.current_task()
    for _ in range(3):
        for _ in range(fresh_budget - 1):
            with no_yield():
                await ours.write(b"x")
        before = task._schedule_points
        await ours.write(b"x")  # the budget ran out: the scheduler gets a turn
        assert task._schedule_points == before + 1
    assert len(await theirs.receive_some(1000)) == 3 * fresh_budget


async def test_receive_ready_reads_what_is_there_and_says_when_it_would_wait(fresh_budget):
    ours, theirs = await socket_pair()
    assert await ours.receive_ready(100) is None
    await theirs.send_all(b"GET / HTTP/1.1\r\n\r\n")
    with no_yield():
        assert await ours.receive_ready(100) == b"GET / HTTP/1.1\r\n\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(theirs.send_all, b"more")
        assert await ours.receive_waiting(100) == b"more"
    await theirs.send_eof()
    assert await ours.receive_ready(100) == b""


async def test_a_cancelled_task_is_cancelled_at_a_ready_call_too(fresh_budget):
    ours, theirs = await socket_pair()
    await theirs.send_all(b"data")
    with trio.CancelScope() as scope:
        scope.cancel()
        await ours.receive_ready(100)
    assert scope.cancelled_caught
    with trio.CancelScope() as scope:
        scope.cancel()
        await ours.write(b"x")
    assert scope.cancelled_caught and ours.sent == 0


async def test_over_a_socket_the_send_timeout_is_a_progress_deadline(autojump_clock):
    ours, theirs = await socket_pair()
    ours.send_timeout = 5
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await ours.write(b"x" * 10_000_000)  # nobody reads: the kernel's buffers fill, then 5 s
    assert trio.current_time() - t0 == pytest.approx(5)


async def test_over_a_socket_a_slow_but_steady_reader_is_served(autojump_clock):
    ours, theirs = await socket_pair()
    ours.send_timeout = 5
    size = 4_000_000  # far more than the socket pair's buffers hold
    got = 0

    async def slow_reader() -> None:
        nonlocal got
        while got < size:
            await trio.sleep(4)  # each read within the deadline; the whole takes far longer
            got += len(await theirs.receive_some(1_000_000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_reader)
        await ours.write(b"y" * size)
    assert got == size and trio.current_time() > 5


async def test_a_write_on_a_closed_connection_is_closed_not_a_crash():
    ours, theirs = await socket_pair()
    await theirs.aclose()
    with pytest.raises(trio.BrokenResourceError):  # (EPIPE: the peer is gone)
        await ours.write(b"x" * 100_000)
    await ours.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await ours.write(b"x")


async def test_pieces_go_out_whole_and_in_order_through_partial_sends(autojump_clock):
    ours, theirs = await socket_pair()
    ours.send_timeout = 5
    pieces = [b"head\r\n\r\n", bytes(range(256)) * 12_000, b"", b"tail"]  # ~3 MB: many partial sendmsg()s
    got = bytearray()

    async def slow_reader() -> None:
        while len(got) < sum(map(len, pieces)):
            await trio.sleep(4)
            got.extend(await theirs.receive_some(1_000_000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_reader)
        await ours.write_pieces(pieces)
    assert got == b"".join(pieces) and ours.sent == len(got)


async def test_pieces_to_a_reader_that_stopped_are_cut_after_the_send_timeout(autojump_clock):
    ours, theirs = await socket_pair()
    ours.send_timeout = 5
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await ours.write_pieces([b"head", b"x" * 10_000_000])
    assert trio.current_time() - t0 == pytest.approx(5)
