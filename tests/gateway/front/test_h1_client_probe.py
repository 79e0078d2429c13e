"""``Request.client_left`` on HTTP/1.1 (``h1_cycle.client_probe``): one poll
object per connection gives ``Downstream.peer_closed``'s answer."""

from __future__ import annotations

import socket

import trio
import trio.testing

from gateway.front.downstream import Downstream
from gateway.front.h1_cycle import client_probe


async def _socket_pair() -> tuple[Downstream, socket.socket]:
    a, b = socket.socketpair()
    return Downstream(trio.SocketStream(trio.socket.from_stdlib_socket(a))), b


async def test_the_probe_answers_as_peer_closed_while_open_after_a_half_close_and_a_reset() -> None:
    ours, theirs = await _socket_pair()
    left = client_probe(ours)
    assert not left() and not ours.peer_closed()
    theirs.shutdown(socket.SHUT_WR)  # a client that half-closed after its request (nginx refuses it too)
    assert left() and ours.peer_closed()
    theirs.close()
    assert left() and ours.peer_closed()


async def test_the_probe_asked_again_and_again_sees_a_client_leave_later() -> None:
    ours, theirs = await _socket_pair()
    left = client_probe(ours)
    theirs.sendall(b"GET /next HTTP/1.1\r\n\r\n")  # a pipelined request is not a departure
    assert not left() and not left()
    theirs.close()
    assert left()


async def test_a_closed_connection_counts_as_gone() -> None:
    ours, _theirs = await _socket_pair()
    left = client_probe(ours)
    await ours.aclose()
    assert left()


async def test_no_socket_never_claims_the_client_left() -> None:
    a, b = trio.testing.memory_stream_pair()
    left = client_probe(Downstream(a))
    await b.aclose()
    assert not left()
