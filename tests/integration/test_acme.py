"""ACME end to end against Pebble on loopback: the gateway's own listener
answers HTTP-01, the certificate lands in the state dir with its modes, its
chain verifies against Pebble's root, it is renewed before expiry, and a
restart reuses it without a new order. An unreachable CA is one log line and
a stored backoff."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509

from gateway.config import validate
from gateway.serve.process import Running, serve
from gateway.tls.store import StateDir
from tests.helpers import HttpClient

from .pebble import Pebble, free_ports, start_pebble, stop

NAMES = ["a.test", "www.a.test"]


def acme_config(tmp: Path, pebble: Pebble | None, *, directory: str = "", http_port: int = 0,
                tls_port: int = 0) -> dict[str, Any]:
    root = tmp / "site"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("hello\n")
    return {
        "server": {"listen": [f"127.0.0.1:{http_port or (pebble.http_port if pebble else 0)}",
                              f"127.0.0.1:{tls_port or (pebble.tls_port if pebble else 0)} tls"],
                   "access_log": "off", "runtime_dir": str(tmp / "run")},
        "admin": {"listen": "127.0.0.1:0"},
        "acme": {"directory": directory or (pebble.directory if pebble else ""), "email": "ops@a.test",
                 "ca_bundle": pebble.ca_bundle if pebble else "", "state_dir": str(tmp / "state")},
        "sites": {"a": {"root": str(root), "server_names": NAMES, "tls": {"acme": True}, "default": True}},
    }


@pytest.fixture
async def pebble(tmp_path: Path) -> AsyncIterator[Pebble]:
    p = await start_pebble(tmp_path / "pebble")
    yield p
    await stop(p)


@asynccontextmanager
async def gateway(config: dict[str, Any]) -> AsyncIterator[Running]:
    """The gateway serving ``config`` in this process; stopped (sockets closed) on exit."""
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(partial(serve, validate(config), handle_signals=False,
                                                       watchdog=False))
        try:
            yield running
        finally:
            running.shutdown.set()


async def admin_status(running: Running) -> dict[str, Any]:
    port = running.admin_listeners[0].socket.getsockname()[1]
    client = await HttpClient.connect(port)
    try:
        resp = await client.request("GET", "/status")
    finally:
        await client.aclose()
    result: dict[str, Any] = json.loads(resp.body)
    return result


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def bundle_certs(state: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((state / "certificates" / "a.test" / "bundle.pem").read_bytes())


def openssl_verify(tmp: Path, pebble: Pebble, certs: list[x509.Certificate]) -> str:
    """``openssl verify`` of the leaf against Pebble's root, with the chain as untrusted intermediates."""
    from cryptography.hazmat.primitives.serialization import Encoding

    (tmp / "root.pem").write_bytes(pebble.root_pem())
    (tmp / "leaf.pem").write_bytes(certs[0].public_bytes(Encoding.PEM))
    (tmp / "chain.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]))
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp / "root.pem"), "-untrusted",
                          str(tmp / "chain.pem"), str(tmp / "leaf.pem")], capture_output=True, text=True)
    return out.stdout + out.stderr


async def check_served(tmp: Path, pebble: Pebble, port: int) -> str:
    """The gateway's tls listener on ``port`` serves the issued certificate
    and its chain: curl trusting only Pebble's root gets the page for every
    name, and ``openssl s_client -verify_return_error`` verifies the chain
    served (leaf and intermediate) against that root. Returns s_client's output."""
    root = tmp / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    for name in NAMES:
        curl = await trio.run_process(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(root), "--resolve", f"{name}:{port}:127.0.0.1",
             f"https://{name}:{port}/"], capture_stdout=True, capture_stderr=True, check=False)
        assert (curl.returncode, curl.stdout) == (0, b"hello\n"), curl.stderr.decode()
    with trio.fail_after(20):
        s_client = await trio.run_process(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", NAMES[0], "-verify_return_error",
             "-verify_hostname", NAMES[0], "-CAfile", str(root), "-showcerts"],
            stdin=b"", capture_stdout=True, capture_stderr=True, check=False)
    out = s_client.stdout.decode(errors="replace") + s_client.stderr.decode(errors="replace")
    assert s_client.returncode == 0, out
    assert "Verify return code: 0 (ok)" in out, out
    served = x509.load_pem_x509_certificates(s_client.stdout)
    assert len(served) == 2, out  # the leaf, then the intermediate: the root is all a client needs
    root_cert = x509.load_pem_x509_certificate(root.read_bytes())
    assert served[1].issuer == root_cert.subject and served[0].issuer == served[1].subject
    return out


async def test_issuance_over_http01_then_a_restart_reuses_it(pebble: Pebble, tmp_path: Path) -> None:
    config = acme_config(tmp_path, pebble)
    state = tmp_path / "state"
    bundle = state / "certificates" / "a.test" / "bundle.pem"
    async with gateway(config) as running:
        manager = running.certificates
        assert manager is not None
        t0 = time.monotonic()
        with trio.fail_after(60):
            await manager.wait_for_attempts(1)
        took = time.monotonic() - t0
        assert manager.certificates[0].last_error == "", manager.certificates[0].last_error
        status = (await admin_status(running))["certificates"]
        await check_served(tmp_path, pebble, pebble.tls_port)  # at once: a first certificate needs no recheck
    # Pebble validated over the gateway's own plain listener (its httpPort is the gateway's)
    assert f"validate w/ HTTP: http://a.test:{pebble.http_port}/.well-known/acme-challenge/" in pebble.log()
    assert pebble.orders() == 1
    # the bundle: key, leaf for exactly our names, chain; modes as tls.store says
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o640
    assert bundle.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    certs = bundle_certs(state)
    assert len(certs) >= 2
    san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(NAMES)
    assert openssl_verify(tmp_path, pebble, certs).strip().endswith("leaf.pem: OK")
    account = StateDir(str(state)).acme_dir(pebble.directory)
    assert stat.S_IMODE(os.stat(os.path.join(account, "account.key")).st_mode) == 0o600
    assert read_json(Path(account, "account.json"))["url"].startswith("https://127.0.0.1:")
    meta = read_json(state / "certificates" / "a.test" / "meta.json")
    assert meta["names"] == NAMES and meta["failures"] == 0
    assert abs(meta["not_after"] - certs[0].not_valid_after_utc.timestamp()) < 1
    assert os.listdir(state / "acme" / "http-01") == []  # the key authorisation is gone after validation
    assert status[0]["names"] == NAMES and status[0]["last_error"] is None
    assert status[0]["not_after"].startswith(str(certs[0].not_valid_after_utc.year))
    print(f"issuance against Pebble (http-01) took {took:.2f}s")

    # a restart with the same names: the stored certificate is reused, nothing is ordered
    stamp = bundle.stat().st_mtime_ns
    async with gateway(config) as running:
        manager = running.certificates
        assert manager is not None
        assert manager.certificates[0].stored is not None
        assert manager.certificates[0].next_at > time.time() + 3600  # Pebble's default: 5 years
        status = (await admin_status(running))["certificates"]
        assert status[0]["next_attempt"] == status[0]["renew_at"]
        assert manager.attempts == 0 and manager.client is None
    assert pebble.orders() == 1 and bundle.stat().st_mtime_ns == stamp


async def test_a_short_lived_certificate_is_renewed_before_it_expires(tmp_path: Path) -> None:
    pebble = await start_pebble(tmp_path / "pebble", validity=12)  # renewal due after 8 s
    try:
        async with gateway(acme_config(tmp_path, pebble)) as running:
            manager = running.certificates
            assert manager is not None
            with trio.fail_after(60):
                await manager.wait_for_attempts(1)
            first = bundle_certs(tmp_path / "state")[0]
            lifetime = (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds()
            assert lifetime <= 13
            with trio.fail_after(60):
                await manager.wait_for_attempts(2)
            renewed_at = time.time()
            second = bundle_certs(tmp_path / "state")[0]
            assert manager.certificates[0].last_error == ""
        assert second.serial_number != first.serial_number
        assert renewed_at < first.not_valid_after_utc.timestamp()  # before it expired
        assert renewed_at >= first.not_valid_before_utc.timestamp() + lifetime * 2 / 3 - 1  # not before it was due
        assert pebble.orders() == 2
    finally:
        await stop(pebble)


async def test_an_unreachable_ca_is_one_log_line_and_a_stored_backoff(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    closed, = free_ports(1)
    config = acme_config(tmp_path, None, directory=f"https://127.0.0.1:{closed}/dir")
    caplog.set_level(logging.INFO, logger="gateway.acme")
    async with gateway(config) as running:
        manager = running.certificates
        assert manager is not None
        with trio.fail_after(30):
            await manager.wait_for_attempts(1)
        status = (await admin_status(running))["certificates"][0]
    lines = [r for r in caplog.records if r.name.startswith("gateway.acme") and r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "no certificate for a.test, www.a.test" in lines[0].getMessage()
    assert "attempt 1, next in 60s" in lines[0].getMessage()
    meta = read_json(tmp_path / "state" / "certificates" / "a.test" / "meta.json")
    assert meta["failures"] == 1 and meta["retry_at"] > time.time() + 50 and meta["last_error"]
    assert status["failures"] == 1 and "127.0.0.1" in status["last_error"]
    # a restart keeps the backoff: no attempt before retry_at
    async with gateway(config) as running:
        assert running.certificates is not None
        assert running.certificates.certificates[0].next_at == meta["retry_at"]
        assert running.certificates.attempts == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
async def test_the_master_obtains_and_its_worker_processes_answer_the_challenge(
        pebble: Pebble, tmp_path: Path, challenge: str) -> None:
    """``processes = 2`` started as root: the master (root) orders, the workers
    (www-data) answer the CA from the files it writes (HTTP-01 on the plain
    listener, TLS-ALPN-01 on the tls one), and can read the bundle."""
    import grp
    import pwd
    import shutil
    import tempfile

    from .conftest import DOCROOT, free_port, start_cli
    from .test_cli import stop as stop_gateway

    www = pwd.getpwnam("www-data")
    shared = Path(tempfile.mkdtemp(prefix="gw-acme-"))  # tmp_path is root's alone; the workers read the state dir
    os.chmod(shared, 0o755)
    state = shared / "state"
    conf = tmp_path / "conf.d"
    conf.mkdir()
    admin = free_port()
    (conf / "00.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{pebble.http_port}", "127.0.0.1:{pebble.tls_port} tls"]\n'
        f'processes = 2\naccess_log = "off"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[acme]\ndirectory = "{pebble.directory}"\nca_bundle = "{pebble.ca_bundle}"\nstate_dir = "{state}"\n'
        f'challenge = "{challenge}"\n'
        f'[sites.a]\nroot = "{DOCROOT}"\nserver_names = {json.dumps(NAMES)}\n[sites.a.tls]\nacme = true\n')
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    log = b""

    async def log_says(line: bytes) -> None:
        nonlocal log
        with trio.fail_after(60):
            while line not in log:
                chunk = await stderr.receive_some(4096)
                assert chunk, log.decode()
                log += chunk

    try:
        await log_says(b"ACME: certificate for a.test, www.a.test obtained")
        # a reload adding a site: the master's task orders its certificate (and only it)
        (conf / "10-b.toml").write_text(f'[sites.b]\nroot = "{DOCROOT}"\nserver_names = ["b.test"]\n'
                                        '[sites.b.tls]\nacme = true\n')
        proc.send_signal(signal.SIGHUP)
        await log_says(b"ACME: certificate for b.test obtained")
        client = await HttpClient.connect(admin)
        status = json.loads((await client.request("GET", "/status")).body)
        await client.aclose()
    finally:
        log += await stop_gateway(proc, stderr)
    try:
        assert proc.returncode == 0, log.decode()
        assert [c["names"] for c in status["certificates"]] == [NAMES, ["b.test"]]
        assert all(c["last_error"] is None for c in status["certificates"])
        assert pebble.orders() == 2
        assert b"Traceback" not in log
        if challenge == "tls-alpn-01":  # a worker (www-data) read the master's challenge certificate
            assert b"TLS-ALPN-01: challenge certificate for www.a.test shown to 127.0.0.1" in log, log.decode()
        bundle = state / "certificates" / "a.test" / "bundle.pem"
        st = bundle.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, grp.getgrgid(st.st_gid).gr_name) == (0o640, 0, "www-data")
        assert stat.S_IMODE((state / "certificates").stat().st_mode) == 0o750
        # a worker's user reads it (through the group), others cannot
        as_www = await trio.run_process(["runuser", "-u", "www-data", "--", "head", "-c", "27", str(bundle)],
                                        capture_stdout=True, capture_stderr=True)
        assert as_www.stdout == b"-----BEGIN PRIVATE KEY-----", as_www.stderr
        as_nobody = await trio.run_process(["runuser", "-u", "nobody", "--", "head", "-c", "27", str(bundle)],
                                           capture_stdout=True, capture_stderr=True, check=False)
        assert as_nobody.returncode != 0
        assert www.pw_uid != 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)


async def test_tls_alpn_01_answered_by_the_gateway_tls_listener_then_the_certificate_is_served(
        pebble: Pebble, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``challenge = "tls-alpn-01"`` with a tls listener only (no plain one):
    Pebble's tlsPort is the gateway's tls listener, which shows it the
    challenge certificate for each name; then that listener serves the issued
    certificate, which verifies."""
    config = acme_config(tmp_path, pebble)
    config["acme"]["challenge"] = "tls-alpn-01"
    config["server"]["listen"] = [f"127.0.0.1:{pebble.tls_port} tls"]
    caplog.set_level(logging.INFO, logger="gateway")
    async with gateway(config) as running:
        manager = running.certificates
        assert manager is not None
        t0 = time.monotonic()
        with trio.fail_after(60):
            await manager.wait_for_attempts(1)
        took = time.monotonic() - t0
        assert manager.certificates[0].last_error == "", manager.certificates[0].last_error
        await check_served(tmp_path, pebble, pebble.tls_port)
    shown = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TLS-ALPN-01:")]
    # (Pebble's VA connects more than once per name)
    assert set(shown) == {f"TLS-ALPN-01: challenge certificate for {n} shown to 127.0.0.1" for n in NAMES}
    assert pebble.orders() == 1
    assert os.listdir(tmp_path / "state" / "acme" / "tls-alpn-01") == []  # cleaned up
    assert sorted(bundle_certs(tmp_path / "state")[0].extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)) == sorted(NAMES)
    problems = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name.startswith(("gateway.acme", "gateway.front"))]
    assert problems == []
    print(f"issuance against Pebble (tls-alpn-01) took {took:.2f}s")
