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
    print(f"issuance against Pebble took {took:.2f}s")

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
async def test_the_master_obtains_and_its_worker_processes_answer_http01(pebble: Pebble, tmp_path: Path) -> None:
    """``processes = 2`` started as root: the master (root) orders, the workers
    (www-data) answer the CA from the files it writes, and can read the bundle."""
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


class _Replay(trio.abc.Stream):
    """A stream that first gives back bytes already read from ``inner``."""

    def __init__(self, prefix: bytes, inner: trio.abc.Stream) -> None:
        self.prefix, self.inner = prefix, inner

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.prefix:
            out, self.prefix = self.prefix, b""
            return out
        return bytes(await self.inner.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_tls_alpn_01_validates_with_the_challenge_certificate(pebble: Pebble, tmp_path: Path) -> None:
    """The TLS-ALPN-01 solver and the ClientHello reading, validated by Pebble
    through a stand-in for the TLS listener (not on this branch yet): it reads
    the hello (``parse_client_hello``), takes ``challenge_context`` when the
    client offers acme-tls/1, and hands both to the handshake."""
    import ssl

    import trustme

    from gateway.tls.acme_alpn import challenge_context
    from gateway.tls.client_hello import parse_client_hello

    state = StateDir(str(tmp_path / "state"))
    ordinary = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert(*NAMES).configure_cert(ordinary)
    chosen: list[tuple[str | None, tuple[str, ...], bool]] = []

    async def responder(stream: trio.SocketStream) -> None:
        data = b""
        with trio.move_on_after(10):
            hello = None
            while hello is None:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
                hello = parse_client_hello(data)
            ctx = challenge_context(state, hello)
            chosen.append((hello.server_name, hello.alpn, ctx is not None))
            tls = trio.SSLStream(_Replay(data, stream), ctx or ordinary, server_side=True)
            try:
                await tls.do_handshake()
                await tls.aclose()
            except trio.BrokenResourceError:
                pass

    config = acme_config(tmp_path, pebble)
    config["acme"]["challenge"] = "tls-alpn-01"
    config["server"]["listen"] = ["127.0.0.1:0", "127.0.0.1:0 tls"]
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(pebble.tls_port, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, responder, listeners)
        async with gateway(config) as running:
            manager = running.certificates
            assert manager is not None
            with trio.fail_after(60):
                await manager.wait_for_attempts(1)
            assert manager.certificates[0].last_error == "", manager.certificates[0].last_error
        nursery.cancel_scope.cancel()
    # Pebble connected for each name offering acme-tls/1 only, and got the challenge certificate
    assert {(name, alpn, challenge) for name, alpn, challenge in chosen} == {
        (n, ("acme-tls/1",), True) for n in NAMES}
    assert os.listdir(tmp_path / "state" / "acme" / "tls-alpn-01") == []  # cleaned up
    assert sorted(bundle_certs(tmp_path / "state")[0].extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)) == sorted(NAMES)
