"""The TLS handshake of a connection task (``listen.tls_handshake``), over
memory streams: a silent client is cut at ``timeouts.tls_handshake`` (virtual
time), garbage instead of a ClientHello is one log line and no traceback, a
real client gets through and the request is marked https."""

from __future__ import annotations

import logging
import ssl

import trio
import trio.testing
import trustme

from gateway.front.downstream import Downstream
from gateway.front.listen import Accepted, tls_handshake
from gateway.metrics import TlsStats
from gateway.tls.contexts import SiteTls, TlsSites
from gateway.tls.store import StateDir


def _sites(tmp_path) -> tuple[TlsSites, trustme.CA]:
    ca = trustme.CA()
    cert = ca.issue_cert("a.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "a.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "a.key"))
    sites = [SiteTls("a", ["a.test"], default=True, cert=str(tmp_path / "a.crt"), key=str(tmp_path / "a.key"))]
    stats = TlsStats()
    return TlsSites.load(sites, StateDir(str(tmp_path)), stats.add_cpu), ca


async def test_a_silent_client_is_cut_at_the_handshake_timeout(tmp_path, autojump_clock, caplog):
    tls, _ = _sites(tmp_path)
    stats = TlsStats()
    client_side, server_side = trio.testing.memory_stream_pair()
    accepted = Accepted(Downstream(server_side))
    start = trio.current_time()
    with caplog.at_level(logging.INFO, "gateway.front.listen"):
        assert await tls_handshake(accepted, tls, 10.0, stats) is False
    assert trio.current_time() - start == 10.0
    assert stats.failures == {"timeout": 1, "protocol": 0, "no_certificate": 0}
    assert stats.handshakes == 0
    lines = [r for r in caplog.records if r.name == "gateway.front.listen"]
    assert len(lines) == 1 and "no handshake within 10s" in lines[0].getMessage() and lines[0].exc_info is None


async def test_garbage_instead_of_a_client_hello_is_one_line_no_traceback(tmp_path, autojump_clock, caplog):
    tls, _ = _sites(tmp_path)
    stats = TlsStats()
    client_side, server_side = trio.testing.memory_stream_pair()
    accepted = Accepted(Downstream(server_side))
    await client_side.send_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    with caplog.at_level(logging.DEBUG):
        assert await tls_handshake(accepted, tls, 10.0, stats) is False
    assert stats.failures["protocol"] == 1
    records = [r for r in caplog.records if r.name.startswith("gateway")]
    assert len(records) == 1 and records[0].levelno == logging.INFO and records[0].exc_info is None
    assert "TLS handshake from" in records[0].getMessage()


async def test_a_real_client_completes_and_the_stream_is_tls(tmp_path):
    tls, ca = _sites(tmp_path)
    stats = TlsStats()
    client_side, server_side = trio.testing.memory_stream_pair()
    accepted = Accepted(Downstream(server_side))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client = trio.SSLStream(client_side, client_ctx, server_hostname="a.test")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        assert await tls_handshake(accepted, tls, 10.0, stats) is True
    assert accepted.stream.tls
    assert stats.handshakes == 1 and stats.resumed == 0
    await client.send_all(b"ping")
    assert await accepted.stream.receive_some(10) == b"ping"


async def test_a_name_without_a_certificate_is_counted_as_no_certificate(tmp_path, caplog):
    tls, ca = _sites(tmp_path)
    only_a = TlsSites.load([SiteTls("a", ["a.test"], cert=str(tmp_path / "a.crt"),
                                                     key=str(tmp_path / "a.key")),
                            SiteTls("plain", ["plain.test"], default=True)],
                           StateDir(str(tmp_path)), lambda s: None)
    stats = TlsStats()
    client_side, server_side = trio.testing.memory_stream_pair()
    accepted = Accepted(Downstream(server_side))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client = trio.SSLStream(client_side, client_ctx, server_hostname="plain.test")

    errors: list[str] = []

    async def client_handshake() -> None:
        try:
            await client.do_handshake()
        except trio.BrokenResourceError as exc:
            errors.append(str(exc.__cause__))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_handshake)
        assert await tls_handshake(accepted, only_a, 10.0, stats) is False
        await trio.aclose_forcefully(accepted.stream)
    assert stats.failures["no_certificate"] == 1
    assert len(errors) == 1 and "UNRECOGNIZED_NAME" in errors[0]  # the client is told why


async def _alpn(tls: TlsSites, ca: trustme.CA, offered: list[str]) -> str | None:
    client_side, server_side = trio.testing.memory_stream_pair()
    accepted = Accepted(Downstream(server_side))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.set_alpn_protocols(offered)
    client = trio.SSLStream(client_side, client_ctx, server_hostname="a.test")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        assert await tls_handshake(accepted, tls, 10.0, TlsStats()) is True
    return accepted.stream.alpn


async def test_alpn_picks_h2_unless_http2_is_off(tmp_path):
    tls, ca = _sites(tmp_path)
    assert await _alpn(tls, ca, ["h2", "http/1.1"]) == "h2"
    assert await _alpn(tls, ca, ["http/1.1"]) == "http/1.1"
    assert await _alpn(tls, ca, []) is None  # no ALPN at all: HTTP/1.1
    off = TlsSites.load([SiteTls("a", ["a.test"], default=True, cert=str(tmp_path / "a.crt"),
                                 key=str(tmp_path / "a.key"))], StateDir(str(tmp_path)), lambda s: None, http2=False)
    assert await _alpn(off, ca, ["h2", "http/1.1"]) == "http/1.1"
