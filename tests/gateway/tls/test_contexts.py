"""TLS contexts without sockets: SNI picks the site, the default site's
certificate for unknown names, ACME bundles picked up when they appear or
change, the internal CA's files and modes, ticket keys installed and read
back. The handshakes run between two in-memory ``ssl`` objects."""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from gateway.tls import contexts
from gateway.tls.contexts import SiteTls, TlsError, TlsSites
from gateway.tls.internal_ca import ensure_leaf
from gateway.tls.store import StateDir
from gateway.tls.ticket_keys import install_problem, new_keys


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, sni: str | None) -> tuple[ssl.SSLObject, str]:
    """One handshake in memory; (the server's SSLObject, the served leaf's first SAN)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    der = client.getpeercert(binary_form=True)
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return server, str(list(names)[0].value)


def _client(*cas: trustme.CA | str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    for ca in cas:
        if isinstance(ca, str):
            ctx.load_verify_locations(ca)
        else:
            ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def two_sites(tmp_path: Path) -> tuple[list[SiteTls], trustme.CA, StateDir]:
    ca = trustme.CA()
    files = {}
    for name in ("a.test", "*.wild.test"):
        cert = ca.issue_cert(name)
        base = tmp_path / name.replace("*", "_")
        cert.cert_chain_pems[0].write_to_path(str(base) + ".crt")
        cert.private_key_pem.write_to_path(str(base) + ".key")
        files[name] = (str(base) + ".crt", str(base) + ".key")
    sites = [SiteTls("a", ["a.test"], cert=files["a.test"][0], key=files["a.test"][1]),
             SiteTls("w", ["*.wild.test"], default=True, cert=files["*.wild.test"][0], key=files["*.wild.test"][1]),
             SiteTls("plain", ["plain.test"])]
    return sites, ca, StateDir(str(tmp_path / "state"))


def test_sni_picks_exact_then_wildcard_then_the_default_site(two_sites):
    sites, ca, state = two_sites
    tls = TlsSites.load(sites, state, lambda s: None)
    assert _handshake(tls.front, _client(ca), "a.test")[1] == "a.test"
    assert _handshake(tls.front, _client(ca), "x.wild.test")[1] == "*.wild.test"
    assert _handshake(tls.front, _client(ca), "unknown.test")[1] == "*.wild.test"  # the default site's
    assert _handshake(tls.front, _client(ca), None)[1] == "*.wild.test"


def test_an_unknown_name_without_a_default_certificate_is_an_alert(two_sites):
    sites, ca, state = two_sites
    sites = [sites[0], SiteTls("plain", ["plain.test"], default=True)]
    tls = TlsSites.load(sites, state, lambda s: None)
    assert _handshake(tls.front, _client(ca), "a.test")[1] == "a.test"
    with pytest.raises(ssl.SSLError, match="CALLBACK_FAILED"):  # the client gets unrecognized_name
        _handshake(tls.front, _client(ca), "plain.test")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion")
def test_policy_tls12_minimum_alpn_and_handshake_cpu(two_sites):
    sites, ca, state = two_sites
    cpu: list[float] = []
    tls = TlsSites.load(sites, state, cpu.append)
    old = _client(ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises(ssl.SSLError):
        _handshake(tls.front, old, "a.test")
    client = _client(ca)
    client.set_alpn_protocols(["h2", "http/1.1"])
    server, _ = _handshake(tls.front, client, "a.test")
    assert server.selected_alpn_protocol() == "h2"
    assert server.version() == "TLSv1.3"
    assert sum(cpu) > 0
    http1_only = TlsSites.load(sites, state, cpu.append, http2=False)  # [server] http2 = false
    client = _client(ca)
    client.set_alpn_protocols(["h2", "http/1.1"])
    server, _ = _handshake(http1_only.front, client, "a.test")
    assert server.selected_alpn_protocol() == "http/1.1"


def test_a_missing_certificate_file_is_one_line_naming_the_site(tmp_path):
    with pytest.raises(TlsError, match=r"^site a: cannot load the certificate .*nope.crt"):
        TlsSites.load([SiteTls("a", ["a.test"], cert=str(tmp_path / "nope.crt"), key=str(tmp_path / "nope.key"))],
                      StateDir(str(tmp_path)), lambda s: None)


def test_an_acme_bundle_is_used_as_soon_as_it_appears_and_reloaded_when_it_changes(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    ca = trustme.CA()
    now = [0.0]
    sites = [SiteTls("a", ["a.test"], default=True, acme=True)]
    tls = TlsSites.load(sites, state, lambda s: None)
    tls.clock = lambda: now[0]
    tls._checked = 0.0
    assert tls.select("a.test") is None  # no bundle yet: no certificate
    bundle = state.bundle("a.test")

    def write(serial_name: str) -> None:
        cert = ca.issue_cert("a.test", common_name=serial_name)
        state.write(bundle.path, cert.private_key_pem.bytes() + cert.cert_chain_pems[0].bytes())

    write("first")
    first = tls.select("a.test")  # the first certificate: looked for on each handshake while missing
    assert first is not None
    assert tls.select(None) is first  # (the default site's too)
    write("second")
    now[0] = contexts.RECHECK_SECONDS - 1
    assert tls.select("a.test") is first  # a replacement: looked at most every RECHECK_SECONDS
    now[0] = contexts.RECHECK_SECONDS + 1
    second = tls.select("a.test")
    assert second is not None and second is not first


def test_a_bundle_that_appears_broken_is_loaded_once_not_on_every_handshake(tmp_path, caplog):
    state = StateDir(str(tmp_path / "state"))
    tls = TlsSites.load([SiteTls("a", ["a.test"], default=True, acme=True)], state, lambda s: None)
    state.write(state.bundle("a.test").path, b"not a certificate")
    with caplog.at_level(logging.WARNING, "gateway.tls"):
        for _ in range(3):
            assert tls.select("a.test") is None
    assert len([r for r in caplog.records if "cannot load the certificate" in r.getMessage()]) == 1


def test_the_internal_ca_is_made_once_with_private_modes_and_reissues_for_new_names(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    bundle = ensure_leaf(state, ["x.test"])
    ca_cert, ca_key = state.ca_paths()
    assert stat.S_IMODE(os.stat(ca_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(bundle.path).st_mode) == 0o640
    first_ca = Path(ca_cert).read_bytes()
    stamp = bundle.stamp()
    assert ensure_leaf(state, ["x.test"]).stamp() == stamp  # fresh: kept
    ensure_leaf(state, ["x.test", "y.test"])
    assert Path(ca_cert).read_bytes() == first_ca  # the CA is made once
    tls = TlsSites.load([SiteTls("s", ["x.test", "y.test"], internal=True)], state, lambda s: None)
    assert _handshake(tls.front, _client(ca_cert), "y.test")[1] == "x.test"
    # quick mode's site has no names: localhost, 127.0.0.1 and ::1
    local = ensure_leaf(state, [])
    assert b"BEGIN CERTIFICATE" in Path(local.path).read_bytes()


def test_ticket_keys_are_installed_and_refused_when_wrong():
    ctx = contexts.server_context()
    assert install_problem(ctx, new_keys()) is None
    assert install_problem(ctx, b"short") is not None


def test_a_ticket_from_one_context_resumes_on_another_with_the_same_keys(two_sites):
    sites, ca, state = two_sites
    keys = new_keys()
    one = TlsSites.load(sites, state, lambda s: None, ticket_keys=keys)
    two = TlsSites.load(sites, state, lambda s: None, ticket_keys=keys)
    other = TlsSites.load(sites, state, lambda s: None, ticket_keys=new_keys())
    client = _client(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2  # the ticket arrives within the handshake
    first, _ = _handshake(one.front, client, "a.test")
    # the client's session: take it from a second client-side handshake's view
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = one.front.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_hostname="a.test")
    for _ in range(6):
        for side in (c, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    session = c.session
    assert session is not None

    def resumed(front: ssl.SSLContext) -> bool:
        s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        srv = front.wrap_bio(s_in, s_out, server_side=True)
        cli = client.wrap_bio(c_in, c_out, server_hostname="a.test", session=session)
        for _ in range(6):
            for side in (cli, srv):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        return srv.session_reused

    assert resumed(two.front)  # same keys: another process's context resumes it
    assert not resumed(other.front)  # other keys: a full handshake
    assert first is not None
