"""The TLS handshake of a connection task (``listen.tls_handshake``), over
memory streams: a silent client is cut at ``timeouts.tls_handshake`` (virtual
time), garbage instead of a ClientHello is one log line and no traceback, a
real client gets through and the request is marked https."""

from __future__ import annotations

import logging
import ssl

import pytest
import trio
import trio.testing
import trustme

from gateway.front.downstream import Downstream
from gateway.front.listen import Accepted, tls_handshake
from gateway.metrics import TlsStats
from gateway.tls.contexts import SiteTls, TlsSites
from gateway.tls.store import StateDir
from tests.helpers import client_hello


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


# -- TLS-ALPN-01: the ClientHello looked at first, when ACME validates that way --------------------


def _acme_sites(tmp_path, *, challenge: bool = True) -> tuple[TlsSites, trustme.CA]:
    from gateway.acme.messages import alpn_challenge_cert

    ordinary, ca = _sites(tmp_path)
    state = StateDir(str(tmp_path))
    if challenge:
        state.write(state.alpn_challenge("a.test"), alpn_challenge_cert("a.test", "tok.thumb"))
    tls = TlsSites.load([SiteTls("a", ["a.test"], default=True, cert=str(tmp_path / "a.crt"),
                                 key=str(tmp_path / "a.key"))], state, lambda s: None, acme_alpn=True)
    return tls, ca


async def _pair(transport: str) -> tuple[trio.abc.Stream, Downstream]:
    if transport == "memory":
        client_side, server_side = trio.testing.memory_stream_pair()
        return client_side, Downstream(server_side)
    listener, = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client_tcp = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    server_tcp = await listener.accept()
    await listener.aclose()
    return client_tcp, Downstream(server_tcp)


def _client(ca: trustme.CA | None, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca is None:  # the challenge certificate is self-signed: the CA checks it by hand
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ca.configure_trust(ctx)
    ctx.set_alpn_protocols(alpn)
    return ctx


def _acme_identifier(der: bytes) -> bytes | None:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    for ext in cert.extensions:
        if ext.oid.dotted_string == "1.3.6.1.5.5.7.1.31":
            assert ext.critical
            return ext.value.value  # type: ignore[no-any-return, attr-defined]
    return None


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_a_validating_ca_gets_the_challenge_certificate_and_a_close(tmp_path, transport, caplog):
    tls, _ = _acme_sites(tmp_path)
    stats = TlsStats()
    client_side, server_side = await _pair(transport)
    accepted = Accepted(server_side)
    accepted.peer = ("192.0.2.1", 1)
    client = trio.SSLStream(client_side, _client(None, ["acme-tls/1"]), server_hostname="a.test")
    with caplog.at_level(logging.INFO, "gateway.front.listen"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            with trio.fail_after(10):
                assert await tls_handshake(accepted, tls, 10.0, stats) is False  # served, and closed
    assert client.selected_alpn_protocol() == "acme-tls/1"
    der = client.getpeercert(binary_form=True)
    assert der is not None and _acme_identifier(der) is not None
    with trio.fail_after(10):  # closed: nothing else is said on it
        try:
            assert await client.receive_some(100) == b""
        except trio.BrokenResourceError:
            pass  # (closed without close_notify, as https_compatible streams are)
    assert stats.handshakes == 1 and sum(stats.failures.values()) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.front.listen"]
    assert lines == ["TLS-ALPN-01: challenge certificate for a.test shown to 192.0.2.1"]


@pytest.mark.parametrize("alpn", [["http/1.1"], ["acme-tls/1", "http/1.1"], []])
@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_every_other_client_gets_the_site_certificate_while_a_validation_is_under_way(
        tmp_path, transport, alpn):
    tls, ca = _acme_sites(tmp_path)
    stats = TlsStats()
    client_side, server_side = await _pair(transport)
    accepted = Accepted(server_side)
    client = trio.SSLStream(client_side, _client(ca, alpn), server_hostname="a.test")  # verifies: the site's
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        with trio.fail_after(10):
            assert await tls_handshake(accepted, tls, 10.0, stats) is True
    assert client.selected_alpn_protocol() == ("http/1.1" if alpn else None)
    await client.send_all(b"ping")
    assert await accepted.stream.receive_some(10) == b"ping"


async def test_acme_tls_1_for_a_name_with_no_validation_gets_the_site_certificate(tmp_path, caplog):
    tls, ca = _acme_sites(tmp_path, challenge=False)
    stats = TlsStats()
    client_side, server_side = await _pair("tcp")
    accepted = Accepted(server_side)
    client = trio.SSLStream(client_side, _client(ca, ["acme-tls/1"]), server_hostname="a.test")
    with caplog.at_level(logging.INFO, "gateway.front.listen"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            with trio.fail_after(10):
                assert await tls_handshake(accepted, tls, 10.0, stats) is True
    assert client.selected_alpn_protocol() is None  # the CA sees no acme-tls/1: its validation fails
    assert any("has no validation under way" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_a_hello_cut_short_is_timed_out_at_the_handshake_limit(tmp_path, autojump_clock, transport, caplog):
    """The look at the hello and the handshake share one limit."""
    tls, _ = _acme_sites(tmp_path)
    stats = TlsStats()
    client_side, server_side = await _pair(transport)
    await client_side.send_all(client_hello("a.test", ["acme-tls/1"])[:50])
    start = trio.current_time()
    with caplog.at_level(logging.INFO, "gateway.front.listen"):
        assert await tls_handshake(Accepted(server_side), tls, 10.0, stats) is False
    assert trio.current_time() - start == pytest.approx(10.0, abs=0.02)
    assert stats.failures == {"timeout": 1, "protocol": 0, "no_certificate": 0}
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.front.listen"]
    assert len(lines) == 1 and "no handshake within 10s" in lines[0]


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
                                  b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"])  # (a ServerHello)
async def test_garbage_goes_on_to_the_handshake_which_refuses_it(tmp_path, data, caplog):
    tls, _ = _acme_sites(tmp_path)
    stats = TlsStats()
    client_side, server_side = await _pair("tcp")
    await client_side.send_all(data)
    with caplog.at_level(logging.DEBUG), trio.fail_after(10):
        assert await tls_handshake(Accepted(server_side), tls, 10.0, stats) is False
    assert stats.failures["protocol"] == 1
    records = [r for r in caplog.records if r.name.startswith("gateway")]
    assert len(records) == 1 and "TLS handshake from" in records[0].getMessage() and records[0].exc_info is None


async def test_a_client_that_closes_mid_hello_is_one_handshake_failure(tmp_path):
    tls, _ = _acme_sites(tmp_path)
    stats = TlsStats()
    client_side, server_side = await _pair("tcp")
    await client_side.send_all(client_hello("a.test", ["acme-tls/1"])[:50])
    await client_side.aclose()
    with trio.fail_after(10):
        assert await tls_handshake(Accepted(server_side), tls, 10.0, stats) is False
    assert stats.failures["protocol"] == 1


async def test_without_tls_alpn_01_no_byte_is_looked_at_before_the_handshake(tmp_path, monkeypatch):
    tls, ca = _sites(tmp_path)
    assert not tls.acme_alpn

    async def no_peek(self, parser):
        raise AssertionError("peeked without acme_alpn")

    monkeypatch.setattr(Downstream, "receive_prefix", no_peek)
    client_side, server_side = await _pair("tcp")
    client = trio.SSLStream(client_side, _client(ca, ["acme-tls/1"]), server_hostname="a.test")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        with trio.fail_after(10):
            assert await tls_handshake(Accepted(server_side), tls, 10.0, TlsStats()) is True


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
