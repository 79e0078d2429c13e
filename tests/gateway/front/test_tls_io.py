"""``TlsIO``: a TLS connection's records read and written without ``SSLStream``'s calls.

Over a real socket pair and a real TLS client (trio's ``SSLStream``, a trustme
CA): the connection is driven by ``TlsIO`` once the handshake is done; bytes
that are there are read without a yield; session tickets, close_notify and an
EOF without it behave as under ``SSLStream``; a TLS error or a cut send breaks
the connection for good; the send timeout is a progress deadline; a reader and
a writer at once keep the records whole and in order (trio's own conformance
checks over TLS are in test_downstream).
"""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
import trustme

from gateway._util import FAIR_OPS
from gateway.front.downstream import Downstream

CA = trustme.CA()
CERT = CA.issue_cert("gateway.test")


def _contexts(version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.options |= ssl.OP_NO_RENEGOTIATION  # as our contexts (tls.contexts)
    CERT.configure_cert(server)
    client = ssl.create_default_context()
    client.maximum_version = version
    CA.configure_trust(client)
    return server, client


async def tls_pair(version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3, session: ssl.SSLSession | None = None,
                   contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None = None
                   ) -> tuple[Downstream, trio.SSLStream[trio.SocketStream]]:
    """(ours: Downstream over an https_compatible SSLStream, as the gateway's; the client)."""
    server_ctx, client_ctx = contexts or _contexts(version)
    a, b = trio.socket.socketpair()
    server = trio.SSLStream(trio.SocketStream(a), server_ctx, server_side=True, https_compatible=True)
    client = trio.SSLStream(trio.SocketStream(b), client_ctx, server_hostname="gateway.test", https_compatible=True)
    if session is not None:
        client._ssl_object.session = session  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return Downstream(server, send_timeout=5), client


async def _receive_until(ours: Downstream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = await ours.receive_some(65536)
        assert data, "EOF before all the bytes"
        got += data
    return bytes(got)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_request_and_its_answer_go_through_tls_io(version):
    ours, client = await tls_pair(version)
    assert ours._tls is not None  # (the fast path, not SSLStream's calls)
    await client.send_all(b"GET / HTTP/1.1\r\n\r\n")
    with trio.fail_after(5):
        got = await ours.receive_ready(65536) or await ours.receive_waiting(65536)
    assert got == b"GET / HTTP/1.1\r\n\r\n"
    await ours.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
    assert ours.sent == 40
    assert await client.receive_some(100) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"


def _yields() -> int:
    """How often this task has yielded to the scheduler (trio's count)."""
    return trio.lowlevel.current_task()._schedule_points  # type: ignore[attr-defined,no-any-return]


async def test_bytes_that_are_there_are_read_and_answered_without_a_yield():
    ours, client = await tls_pair()
    await client.send_all(b"ping")
    await trio.testing.wait_all_tasks_blocked()
    before = _yields()
    assert await ours.receive_ready(65536) == b"ping"
    await ours.write(b"pong")
    assert await ours.receive_ready(65536) is None  # nothing more: would wait
    assert _yields() == before
    assert await client.receive_some(10) == b"pong"


async def test_reads_that_never_wait_still_yield_once_per_fairness_budget():
    ours, client = await tls_pair()
    for _ in range(FAIR_OPS + 1):
        await client.send_all(b"x")
    await trio.testing.wait_all_tasks_blocked()
    assert ours._tls is not None
    ours._tls.io.streak = 0
    before = _yields()
    got = b""
    while len(got) < FAIR_OPS:
        got += await ours.receive_ready(1) or b""
    assert _yields() == before + 1  # (the budget's one yield)


async def test_tls13_session_tickets_reach_the_client_and_resume():
    contexts = _contexts()
    ours, client = await tls_pair(contexts=contexts)
    await ours.write(b"answer")  # the tickets the handshake held back go first
    assert await client.receive_some(100) == b"answer"
    session = client._ssl_object.session  # type: ignore[attr-defined]
    assert session is not None and session.has_ticket
    again, client2 = await tls_pair(session=session, contexts=contexts)
    assert client2._ssl_object.session_reused  # type: ignore[attr-defined]
    assert again.stream.session_reused  # type: ignore[attr-defined]


async def test_close_notify_before_any_answer_reads_as_a_clean_eof():
    # the session tickets never sent go before the close_notify: the client can decrypt it
    ours, client = await tls_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.linger, 1.0, 1000)
            assert await client.receive_some(100) == b""
            await client.aclose()


@pytest.mark.parametrize("how", ["close_notify", "tcp_close"])
async def test_the_client_closing_reads_as_eof(how):
    ours, client = await tls_pair()
    await client.send_all(b"last")
    if how == "close_notify":
        with pytest.raises(ssl.SSLWantReadError):  # (it would wait for ours: only close_notify goes)
            client._ssl_object.unwrap()  # type: ignore[attr-defined]
        await client.transport_stream.send_all(client._outgoing.read())  # type: ignore[attr-defined]
    await client.transport_stream.aclose()
    with trio.fail_after(5):
        assert await _receive_until(ours, 4) == b"last"
        assert await ours.receive_some(100) == b""


async def test_garbage_instead_of_a_record_breaks_the_connection_for_good():
    ours, client = await tls_pair()
    await client.transport_stream.send_all(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a record no key made
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await ours.receive_some(100)
    with pytest.raises(trio.BrokenResourceError):
        await ours.write(b"answer")
    with pytest.raises(trio.BrokenResourceError):
        await ours.stream.send_all(b"answer")  # (the SSLStream is marked broken too)


async def test_the_send_timeout_is_a_progress_deadline_and_a_cut_send_breaks(autojump_clock):
    ours, _client = await tls_pair()
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await ours.write(b"x" * 10_000_000)  # nobody reads: the kernel's buffers fill, then 5 s
    assert trio.current_time() - t0 == pytest.approx(5)
    with pytest.raises(trio.BrokenResourceError):  # a record may be half out: nothing may follow
        await ours.write(b"more")


async def test_a_slow_but_steady_reader_is_served(autojump_clock):
    ours, client = await tls_pair()
    size = 3_000_000
    got = bytearray()

    async def slow_reader() -> None:
        while len(got) < size:
            await trio.sleep(4)  # each read within the 5 s deadline; the whole takes far longer
            goal = min(size, len(got) + 300_000)
            while len(got) < goal:  # (a TLS read is a record at most)
                got.extend(await client.receive_some(1_000_000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_reader)
        await ours.write(b"y" * size)
    assert len(got) == size and trio.current_time() > 5


async def test_a_reader_and_a_writer_at_once_keep_the_records_whole():
    # h2 and tunnels read and write from two tasks; the client checks every record's MAC
    ours, client = await tls_pair()
    size = 256 * 8_000
    up = bytes(range(256)) * (size // 256)
    down = bytes(reversed(range(256))) * (size // 256)
    got_up = bytearray()
    got_down = bytearray()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def ours_reads() -> None:
                got_up.extend(await _receive_until(ours, size))

            async def client_reads() -> None:
                while len(got_down) < size:
                    got_down.extend(await client.receive_some(65536))

            nursery.start_soon(ours_reads)
            nursery.start_soon(client_reads)
            nursery.start_soon(client.send_all, up)
            for i in range(0, size, 100_000):
                await ours.send_all(down[i : i + 100_000])
    assert bytes(got_up) == up and bytes(got_down) == down


async def test_a_stream_it_cannot_drive_keeps_sslstream_calls():
    # over a memory stream there is no socket to call first: SSLStream's methods serve it
    server_ctx, client_ctx = _contexts()
    a, b = trio.testing.memory_stream_pair()
    server = trio.SSLStream(a, server_ctx, server_side=True, https_compatible=True)
    client = trio.SSLStream(b, client_ctx, server_hostname="gateway.test", https_compatible=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    ours = Downstream(server)
    assert ours._tls is None and ours.tls
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"ping")
        assert await ours.receive_some(10) == b"ping"


async def test_a_read_whose_answer_the_client_never_reads_breaks_and_is_not_a_send_timeout(autojump_clock):
    # What a read queues (a KeyUpdate's answer to a client asking for one, in
    # a flood) is sent by the reader when no writer is sending; a client that
    # never reads cuts that send. receive_some then raises what SSLStream's
    # does for a failed transport (BrokenResourceError), not the writer's
    # TooSlowError, which h2's reader does not expect (an "internal error"
    # traceback per such client, seen against the gateway with a KeyUpdate flood).
    ours, client = await tls_pair()
    assert ours._tls is not None
    await client.send_all(b"GET / HTTP/1.1\r\n\r\n")
    ours._tls.ssl.write(b"k" * 10_000_000)  # (queued by a read: more than the kernel's buffers take)
    t0 = trio.current_time()
    with pytest.raises(trio.BrokenResourceError):
        await ours.receive_some(65536)
    assert trio.current_time() - t0 == pytest.approx(5)  # (the send timeout still cut it)
    with pytest.raises(trio.BrokenResourceError):
        await ours.receive_some(65536)
