"""A ``proxy_protocol`` listener and real client addresses, in process over loopback sockets.

The listener runs as ``serve`` runs it (``serve_until_shutdown``), with a
handler that answers with the request's client as it sees it. Clients that
are not the trusted proxy bind 127.0.0.5 (the whole 127/8 is loopback)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from gateway.config import LimitsConfig, ServerConfig, TimeoutsConfig
from gateway.config.addresses import parse_listen
from gateway.front.downstream import Downstream
from gateway.front.h1 import ConnectionSettings, ListenerState
from gateway.front.listen import Service, open_listeners, serve_until_shutdown
from gateway.front.proxy_protocol import ProxyHeaderReader, ProxyInfo
from gateway.http.request import Request
from gateway.http.response import Response
from gateway.tls.contexts import SiteTls, TlsSites
from gateway.tls.store import StateDir
from tests.gateway.front.test_proxy_protocol import V1_TCP4, V2_TCP4, V2_TCP6, v2
from tests.helpers import HttpClient

UNTRUSTED = "127.0.0.5"
HANDSHAKE_TIMEOUT = 5.0


async def read_all(stream: trio.SocketStream) -> bytes:
    """What arrives before the connection is closed (a reset, for unread bytes, counts as a close)."""
    out = b""
    try:
        while data := await stream.receive_some(65536):
            out += data
    except trio.BrokenResourceError:
        pass
    return out


async def whoami(req: Request) -> Response:
    body = json.dumps({"client": list(req.client), "server": list(req.server), "https": req.https})
    return Response(200, [(b"content-type", b"application/json")], body.encode())


Connect = Callable[..., Awaitable[trio.SocketStream]]


async def _serve(nursery: trio.Nursery, listen: str, *, per_ip: int = 0, log_json: bool = False,
                 tls: TlsSites | None = None, **server: object) -> Connect:
    settings = ConnectionSettings.from_config(
        ServerConfig(access_log_format="json" if log_json else "combined", **server),  # type: ignore[arg-type]
        TimeoutsConfig(tls_handshake=HANDSHAKE_TIMEOUT), LimitsConfig())
    listeners = await open_listeners([listen.split()[0]])
    where = listeners[0].socket.getsockname()
    state = ListenerState()
    service = Service(listeners, whoami, settings, state, 100, per_ip, [parse_listen(listen)], tls)
    shutdown = trio.Event()
    started = trio.Event()
    nursery.start_soon(lambda: serve_until_shutdown(shutdown, state, [service], 1.0, on_started=started.set))
    await started.wait()

    async def connect(source: str = "127.0.0.1") -> trio.SocketStream:
        if isinstance(where, str):
            return await trio.open_unix_socket(where)
        sock = trio.socket.socket()
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", where[1]))
        return trio.SocketStream(sock)

    return connect


@pytest.fixture
async def pp(nursery: trio.Nursery) -> Connect:
    return await _serve(nursery, "127.0.0.1:0 proxy_protocol", trusted_proxies=["127.0.0.1"])


async def ask(stream: trio.SocketStream, prefix: bytes = b"", headers: list[tuple[str, str]] | None = None) -> dict:
    if prefix:
        await stream.send_all(prefix)
    r = await HttpClient(stream).request("GET", "/", headers=headers)
    assert r.status == 200
    return json.loads(r.body)


async def test_proxy_v1_and_v2_name_the_client(pp: Connect) -> None:
    assert (await ask(await pp(), V1_TCP4))["client"] == ["192.168.0.1", 56324]
    assert (await ask(await pp(), V2_TCP4))["client"] == ["203.0.113.7", 56324]
    answer = await ask(await pp(), V2_TCP6)
    assert answer["client"] == ["2001:db8::1", 4711] and answer["server"] == ["::1", 8443]


async def test_the_header_arriving_in_pieces_is_read_and_the_request_after_it_untouched(pp: Connect) -> None:
    stream = await pp()
    for piece in (V2_TCP4[:3], V2_TCP4[3:15], V2_TCP4[15:17], V2_TCP4[17:]):
        await stream.send_all(piece)
        await trio.testing.wait_all_tasks_blocked()
    c = HttpClient(stream)
    first = await c.request("GET", "/")
    second = await c.request("GET", "/again")  # keep-alive: the client stays the header's
    assert json.loads(first.body)["client"] == json.loads(second.body)["client"] == ["203.0.113.7", 56324]


async def test_local_keeps_the_peer(pp: Connect) -> None:
    answer = await ask(await pp(), v2(command=0, family=0, transport=0))
    assert answer["client"][0] == "127.0.0.1"


async def test_a_header_from_an_untrusted_peer_gets_the_connection_closed(pp: Connect, caplog) -> None:
    stream = await pp(UNTRUSTED)
    with caplog.at_level(logging.INFO):
        try:
            await stream.send_all(V1_TCP4 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        except trio.BrokenResourceError:
            pass
        assert await read_all(stream) == b""  # closed, not a byte of an answer
    lines = [r for r in caplog.records if r.name.startswith("gateway")]
    assert [r.getMessage() for r in lines] == [
        f"closing connection from {UNTRUSTED}:{stream.socket.getsockname()[1]} on a proxy_protocol listener: "
        "not in trusted_proxies"]
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a client that speaks HTTP straight to it
    b"PROXY TCP4 1.2.3.4 nonsense\r\n",
    b"PROXY " + b"A" * 300,
    v2(length=60000),
])
async def test_a_malformed_header_is_one_line_and_a_closed_connection(pp: Connect, caplog, data: bytes) -> None:
    stream = await pp()
    with caplog.at_level(logging.INFO):
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        assert await read_all(stream) == b""
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("gateway")]
    assert len(lines) == 1 and "bad PROXY protocol header" in lines[0], lines
    assert not any(r.exc_info for r in caplog.records)


async def test_a_client_that_sends_nothing_is_closed_after_the_timeout(pp: Connect, autojump_clock, caplog) -> None:
    stream = await pp()
    start = trio.current_time()
    with caplog.at_level(logging.INFO):
        assert await read_all(stream) == b""
    assert trio.current_time() - start == pytest.approx(HANDSHAKE_TIMEOUT, abs=0.01)
    assert any("no complete PROXY protocol header within 5s" in r.getMessage() for r in caplog.records)


async def test_half_a_header_is_closed_after_the_timeout_too(pp: Connect, autojump_clock) -> None:
    stream = await pp()
    start = trio.current_time()
    await stream.send_all(V2_TCP4[:20])
    assert await read_all(stream) == b""
    assert trio.current_time() - start == pytest.approx(HANDSHAKE_TIMEOUT, abs=0.01)


async def test_max_connections_per_ip_counts_the_real_client(nursery: trio.Nursery) -> None:
    connect = await _serve(nursery, "127.0.0.1:0 proxy_protocol", per_ip=1, trusted_proxies=["127.0.0.1"])
    held = await connect()
    await held.send_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 1000 80\r\n")
    await trio.testing.wait_all_tasks_blocked()
    # another client through the same proxy: served
    assert (await ask(await connect(), b"PROXY TCP4 203.0.113.8 10.0.0.1 1000 80\r\n"))["client"][0] == "203.0.113.8"
    # the same client again: over its limit
    again = await connect()
    await again.send_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 1001 80\r\n")
    assert (await read_all(again)).startswith(b"HTTP/1.1 503")


async def test_forwarded_headers_from_a_trusted_peer_name_the_client(nursery: trio.Nursery) -> None:
    connect = await _serve(nursery, "127.0.0.1:0", trusted_proxies=["127.0.0.1"])
    answer = await ask(await connect(), headers=[("X-Forwarded-For", "203.0.113.7, 127.0.0.1"),
                                                 ("X-Forwarded-Proto", "https")])
    assert answer["client"] == ["203.0.113.7", 0] and answer["https"] is True


async def test_forwarded_headers_from_an_untrusted_peer_change_nothing(nursery: trio.Nursery) -> None:
    connect = await _serve(nursery, "127.0.0.1:0", trusted_proxies=["127.0.0.1"])
    stream = await connect(UNTRUSTED)
    answer = await ask(stream, headers=[("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")])
    assert answer["client"] == [UNTRUSTED, stream.socket.getsockname()[1]] and answer["https"] is False


async def test_proxy_then_forwarded_header_walks_on_from_the_proxy_protocol_client(nursery: trio.Nursery) -> None:
    # a CDN (10.1.2.3, trusted) -> a TCP balancer (127.0.0.1) with PROXY -> the gateway
    connect = await _serve(nursery, "127.0.0.1:0 proxy_protocol", trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    answer = await ask(await connect(), b"PROXY TCP4 10.1.2.3 10.0.0.1 1000 80\r\n",
                       headers=[("X-Forwarded-For", "203.0.113.7")])
    assert answer["client"] == ["203.0.113.7", 0]


@pytest.mark.parametrize("log_json", [False, True])
async def test_the_access_log_shows_the_client_and_the_peer(nursery: trio.Nursery, caplog, log_json: bool) -> None:
    connect = await _serve(nursery, "127.0.0.1:0 proxy_protocol", log_json=log_json, trusted_proxies=["127.0.0.1"])
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await ask(await connect(), V2_TCP4)
        await ask(await connect(), v2(command=0, family=0, transport=0))  # LOCAL: client and peer are one
        await trio.testing.wait_all_tasks_blocked()  # the line is written once the response is out
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 2
    if log_json:
        first, second = map(json.loads, lines)
        assert (first["remote_addr"], first["realip_remote_addr"]) == ("203.0.113.7", "127.0.0.1")
        assert (second["remote_addr"], second["realip_remote_addr"]) == ("127.0.0.1", "127.0.0.1")
    else:
        assert lines[0].startswith("203.0.113.7 - - [") and lines[0].endswith(" peer=127.0.0.1")
        assert lines[1].startswith("127.0.0.1 - - [") and "peer=" not in lines[1]


@pytest.mark.parametrize(("trusted", "served"), [(["unix:"], True), (["127.0.0.1"], False)])
async def test_a_unix_socket_listener_trusts_unix_peers_only_when_told(nursery: trio.Nursery, tmp_path,
                                                                      trusted: list[str], served: bool) -> None:
    connect = await _serve(nursery, f"unix:{tmp_path}/gw.sock proxy_protocol", trusted_proxies=trusted)
    stream = await connect()
    if served:
        assert (await ask(stream, V2_TCP4))["client"] == ["203.0.113.7", 56324]
    else:
        try:
            await stream.send_all(V2_TCP4)
        except trio.BrokenResourceError:
            pass  # closed already
        assert await read_all(stream) == b""


# -- Downstream.receive_prefix: exactly the header's bytes -----------------------------------------


@pytest.mark.parametrize("transport", ["socket", "memory"])
async def test_receive_prefix_takes_exactly_the_header(transport: str) -> None:
    if transport == "socket":
        a, b = trio.socket.socketpair()
        ours, theirs = Downstream(trio.SocketStream(a)), trio.SocketStream(b)
    else:
        m, n = trio.testing.memory_stream_pair()
        ours, theirs = Downstream(m), n  # type: ignore[assignment]
    await theirs.send_all(b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\n")
    reader = ProxyHeaderReader()
    await ours.receive_prefix(reader)
    assert reader.result == ProxyInfo(1)
    if transport == "socket":
        # still in the kernel, where epoll (the parker) and a TLS handshake see it
        assert ours.parkable() and await a.recv(100, socket.MSG_PEEK) == b"GET / HTTP/1.1\r\n"
    assert await ours.receive_some(100) == b"GET / HTTP/1.1\r\n"


async def test_receive_prefix_reports_a_close_before_the_end() -> None:
    a, b = trio.socket.socketpair()
    ours, theirs = Downstream(trio.SocketStream(a)), trio.SocketStream(b)
    await theirs.send_all(b"PROXY TCP4 1.2")
    await theirs.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await ours.receive_prefix(ProxyHeaderReader())


# -- PROXY protocol, then TLS with TLS-ALPN-01: two looks at the same connection ------------------


async def test_behind_a_proxy_a_tls_listener_answers_tls_alpn_01_and_serves_clients(nursery: trio.Nursery,
                                                                                    tmp_path) -> None:
    """``tls proxy_protocol`` with ACME validating by TLS-ALPN-01: the PROXY
    header is taken, then the ClientHello after it is looked at in place; the
    CA (offering acme-tls/1 alone) gets the challenge certificate, a browser
    the site's certificate and its request served with the header's client."""
    import ssl

    import trustme

    from gateway.acme.messages import alpn_challenge_cert

    ca = trustme.CA()
    cert = ca.issue_cert("a.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "a.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "a.key"))
    state = StateDir(str(tmp_path))
    state.write(state.alpn_challenge("a.test"), alpn_challenge_cert("a.test", "tok.thumb"))
    tls = TlsSites.load([SiteTls("a", ["a.test"], default=True, cert=str(tmp_path / "a.crt"),
                                 key=str(tmp_path / "a.key"))], state, lambda s: None, acme_alpn=True)
    connect = await _serve(nursery, "127.0.0.1:0 tls proxy_protocol", tls=tls, trusted_proxies=["127.0.0.1"])

    validator = ssl.create_default_context()
    validator.check_hostname, validator.verify_mode = False, ssl.CERT_NONE
    validator.set_alpn_protocols(["acme-tls/1"])
    raw = await connect()
    await raw.send_all(V2_TCP4)
    stream = trio.SSLStream(raw, validator, server_hostname="a.test")
    with trio.fail_after(10):
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == "acme-tls/1"
        try:  # closed after the handshake
            assert await stream.receive_some(100) == b""
        except trio.BrokenResourceError:
            pass  # (without close_notify)

    browser = ssl.create_default_context()
    ca.configure_trust(browser)
    browser.set_alpn_protocols(["acme-tls/1", "http/1.1"])
    raw = await connect()
    await raw.send_all(V2_TCP4)
    stream = trio.SSLStream(raw, browser, server_hostname="a.test")
    with trio.fail_after(10):
        answer = await ask(stream)  # type: ignore[arg-type]
    assert stream.selected_alpn_protocol() == "http/1.1"
    assert answer["client"] == ["203.0.113.7", 56324] and answer["https"] is True
