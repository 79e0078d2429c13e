"""HTTPS with real clients (curl, ``openssl s_client``) against the real gateway:
TLS 1.2 and 1.3, SNI choosing between two sites, PHP told HTTPS=on, session
resumption (also across two worker processes), garbage instead of a
ClientHello, a replaced certificate picked up on HUP while a request is in
flight, quick mode's internal CA, and a big static file over TLS to a slow
reader with the gateway's memory bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509

from .conftest import DOCROOT, free_port, start_cli
from .test_cli import stop
from .test_signals import LogWatch


def _write_cert(ca: trustme.CA, name: str, directory: Path, common_name: str | None = None) -> tuple[Path, Path]:
    cert = ca.issue_cert(name, common_name=common_name or name)
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    return crt, key


def _conf(tmp_path: Path, port: int, tls_port: int, admin: int, ca: trustme.CA, *, processes: int = 1) -> Path:
    """Site a (PHP, a.test, cert + key files from ``ca``) and site b (static,
    b.test, the internal CA, the default site)."""
    conf = tmp_path / "conf.d"
    conf.mkdir()
    certs = tmp_path / "certs"
    certs.mkdir()
    crt, key = _write_cert(ca, "a.test", certs)
    static = tmp_path / "b"
    static.mkdir()
    (static / "hello.txt").write_text("site b\n")
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}", "127.0.0.1:{tls_port} tls"]\n'
        f'runtime_dir = "{tmp_path / "run"}"\naccess_log = "off"\nprocesses = {processes}\n'
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[acme]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[backends.php]\npool_size = 4\nphp_fpm.user = "root"\n'
        f'[sites.a]\nroot = "{DOCROOT}"\nphp = "php"\nserver_names = ["a.test"]\n'
        f'[sites.a.tls]\ncert = "{crt}"\nkey = "{key}"\n'
        f'[sites.b]\nroot = "{static}"\nserver_names = ["b.test"]\ndefault = true\n'
        f'[sites.b.tls]\ninternal = true\n'
    )
    return conf


async def _run(args: list[str], stdin: bytes = b"") -> str:
    result = await trio.run_process(args, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False)
    return (result.stdout + result.stderr).decode(errors="replace")


def _curl(name: str, port: int, cafile: Path | str, path: str, *extra: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "10", "--resolve", f"{name}:{port}:127.0.0.1", "--cacert", str(cafile),
            *extra, f"https://{name}:{port}{path}"]


def _s_client(port: int, name: str, cafile: Path | str, *extra: str) -> list[str]:
    return ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name, "-CAfile", str(cafile),
            *extra]


async def _metrics(admin: int) -> str:
    return await _run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{admin}/metrics"])


def _samples(text: str, family: str) -> dict[str, float]:
    """``family``'s samples: the label part (or "") -> value."""
    out = {}
    for line in text.splitlines():
        if line.startswith(family):
            head, _, value = line.rpartition(" ")
            out[head[len(family):]] = float(value)
    return out


async def test_curl_and_openssl_over_tls12_and_tls13_with_sni_and_php_sees_https(tmp_path):
    ca = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    port, tls_port, admin = free_port(), free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, port, tls_port, admin, ca))])
    internal_ca = tmp_path / "state" / "ca" / "root.pem"
    try:
        for version in ("--tlsv1.2 --tls-max 1.2", "--tlsv1.3"):
            out = await _run(_curl("a.test", tls_port, tmp_path / "ca.pem", "/server.php", *version.split(),
                                   "-w", "\n%{http_code} %{http_version} %{ssl_verify_result}"))
            body, _, tail = out.rpartition("\n")
            assert tail == "200 2 0", out  # curl asks for h2 by ALPN
            server = json.loads(body)["server"]
            assert server["HTTPS"] == "on" and server["REQUEST_SCHEME"] == "https"
            assert server["SERVER_PORT"] == str(tls_port) and server["SERVER_NAME"] == "a.test"
        # SNI: b.test gets site b's certificate (the internal CA's), and site b
        out = await _run(_curl("b.test", tls_port, internal_ca, "/hello.txt"))
        assert out == "site b\n"
        # the plain listener stays plain: PHP is told http
        plain = json.loads(await _run(["curl", "-sS", "-H", "Host: a.test", f"http://127.0.0.1:{port}/server.php"]))
        assert "HTTPS" not in plain["server"] and plain["server"]["REQUEST_SCHEME"] == "http"
        # an unknown name: the default site's (b's) certificate
        for name, subject in (("a.test", "CN = a.test"), ("b.test", "CN = b.test"), ("nobody.test", "CN = b.test")):
            out = await _run(_s_client(tls_port, name, tmp_path / "ca.pem", "-brief"), b"")
            peer = next(line for line in out.splitlines() if line.startswith("Peer certificate:"))
            assert peer.endswith(subject), out
        # TLS 1.2 and 1.3 by openssl, ALPN h2 (offered first), Mozilla intermediate refuses TLS 1.1
        for flag, protocol in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            out = await _run(_s_client(tls_port, "a.test", tmp_path / "ca.pem", flag, "-alpn", "h2,http/1.1"), b"")
            assert f"New, {protocol}" in out and "ALPN protocol: h2" in out, out
            assert "Verify return code: 0 (ok)" in out
        out = await _run(_s_client(tls_port, "a.test", tmp_path / "ca.pem", "-tls1_1"), b"")
        assert "Cipher is (NONE)" in out or "no protocols available" in out or "alert" in out, out
        # resumption: -reconnect connects 6 times with the first one's session (TLS 1.2: in the handshake)
        out = await _run(_s_client(tls_port, "a.test", tmp_path / "ca.pem", "-tls1_2", "-reconnect"), b"")
        assert out.count("\nReused, TLSv1.2") == 5, out
        # TLS 1.3: the ticket comes after the handshake, with the first response
        await _tls13_resumes(tls_port, tmp_path / "ca.pem", tmp_path / "sess", times=3)
        metrics = await _metrics(admin)
        assert _samples(metrics, "gateway_tls_handshakes_resumed_total")[""] >= 8
        assert _samples(metrics, "gateway_tls_handshake_cpu_seconds_total")[""] > 0
        assert _samples(metrics, "gateway_tls_handshake_failures_total")['{reason="protocol"}'] >= 1  # the TLS 1.1 try
    finally:
        log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log


async def _tls13_resumes(port: int, cafile: Path, sess: Path, times: int) -> list[str]:
    request = b"GET /hello.txt HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    first = await _run([*_s_client(port, "a.test", cafile, "-tls1_3", "-sess_out", str(sess), "-ign_eof")], request)
    assert "New, TLSv1.3" in first and await trio.Path(sess).exists(), first
    outs = []
    for _ in range(times):
        out = await _run([*_s_client(port, "a.test", cafile, "-tls1_3", "-sess_in", str(sess), "-ign_eof")], request)
        assert "Reused, TLSv1.3" in out, out
        outs.append(out)
    return outs


async def test_session_tickets_resume_across_two_worker_processes(tmp_path):
    ca = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    port, tls_port, admin = free_port(), free_port(), free_port()
    conf = _conf(tmp_path, port, tls_port, admin, ca, processes=2)
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    try:
        reused = {}
        with trio.fail_after(60):
            # until each worker process has resumed a session another one issued
            # (which process accepts a connection is the kernel's choice)
            while len(reused) < 2 or min(reused.values()) < 1:
                out = await _run(_s_client(tls_port, "a.test", tmp_path / "ca.pem", "-tls1_2", "-reconnect"), b"")
                assert out.count("\nReused, TLSv1.2") == 5, out
                await _tls13_resumes(tls_port, tmp_path / "ca.pem", tmp_path / "sess", times=2)
                reused = _samples(await _metrics(admin), "gateway_tls_handshakes_resumed_total")
        assert set(reused) == {'{worker="0"}', '{worker="1"}'}
    finally:
        log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log and "work within each process only" not in log


async def test_garbage_instead_of_a_client_hello_is_closed_with_one_log_line(tmp_path):
    ca = trustme.CA()
    port, tls_port, admin = free_port(), free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, port, tls_port, admin, ca))])
    try:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", tls_port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            rest = b""
            while chunk := await stream.receive_some(4096):  # the gateway closes it
                rest += chunk
            await stream.aclose()
        assert b"HTTP/1.1" not in rest
        metrics = await _metrics(admin)
        assert _samples(metrics, "gateway_tls_handshake_failures_total")['{reason="protocol"}'] == 1
    finally:
        log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "TLS handshake" in line]
    assert len(lines) == 1 and "INFO" in lines[0] and "(protocol)" in lines[0], log


def _served_cn(port: int, name: str) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls_sock:
        der = tls_sock.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value)


@pytest.mark.parametrize("processes", [1, 2])
async def test_hup_picks_up_a_replaced_certificate_while_a_request_is_in_flight(tmp_path, processes):
    ca = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    port, tls_port, admin = free_port(), free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, port, tls_port, admin, ca,
                                                                   processes=processes))])
    watch = LogWatch(stderr)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            assert await trio.to_thread.run_sync(_served_cn, tls_port, "a.test") == "a.test"
            slow: list[str] = []

            async def in_flight() -> None:
                slow.append(await _run(_curl("a.test", tls_port, tmp_path / "ca.pem", "/slow.php?ms=2500",
                                             "-w", " %{http_code}")))

            nursery.start_soon(in_flight)
            with trio.fail_after(10):  # until the slow request is in (polling the admin listener)
                while sum(_samples(await _metrics(admin), "gateway_requests_in_flight").values()) < 1:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            # a new certificate (another common name) in the same files, then HUP
            _write_cert(ca, "a.test", tmp_path / "certs", common_name="renewed.a.test")
            proc.send_signal(signal.SIGHUP)
            with trio.fail_after(20):
                while (await trio.to_thread.run_sync(_served_cn, tls_port, "a.test")) != "renewed.a.test":
                    await watch.changed()  # the reload logs as it goes; look again then
            with trio.fail_after(20):
                while not slow:
                    await watch.changed()
            assert slow[0].startswith("slept 2500") and slow[0].endswith(" 200"), slow
            nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await proc.wait()
    assert "Traceback" not in watch.text


async def test_quick_mode_prints_the_internal_ca_and_curl_trusts_it(tmp_path):
    port, tls_port = free_port(), free_port()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "serve", "--root", str(DOCROOT), "--listen", f"127.0.0.1:{port}",
         "--tls-listen", f"127.0.0.1:{tls_port}",
         "--admin", "off", "--user", "root", "--processes", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    watch = LogWatch(proc.stderr)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            await watch.wait_for(f"listening on https://127.0.0.1:{tls_port}")
            line = next(line for line in watch.text.splitlines() if "internal CA:" in line)
            ca_file = line.split("internal CA: ", 1)[1].strip()
            assert os.path.isabs(ca_file) and await trio.Path(ca_file).exists()
            out = await _run(["curl", "-sS", "--max-time", "10", "--cacert", ca_file,
                              f"https://localhost:{tls_port}/hello.txt"])
            assert out == (DOCROOT / "hello.txt").read_text()
            out = await _run(["curl", "-sS", "--max-time", "10", "--cacert", ca_file,
                              f"https://127.0.0.1:{tls_port}/server.php"])
            assert json.loads(out)["server"]["HTTPS"] == "on"
            nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await proc.wait()
    assert "Traceback" not in watch.text


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_big_file_over_tls_to_a_slow_reader_keeps_memory_bounded(tmp_path):
    ca = trustme.CA()
    port, tls_port, admin = free_port(), free_port(), free_port()
    conf = _conf(tmp_path, port, tls_port, admin, ca)
    size = 96 * 1024 * 1024
    os.truncate(_touch(tmp_path / "b" / "big.bin"), size)  # sparse: no disk, the same bytes to send
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    try:
        before = _rss_kib(proc.pid)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "state" / "ca" / "root.pem"))
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", tls_port), ctx, server_hostname="b.test")
        await stream.do_handshake()
        before = _rss_kib(proc.pid)
        await stream.send_all(b"GET /big.bin HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        got, peak = 0, before
        with trio.fail_after(120):
            while chunk := await stream.receive_some(64 * 1024):
                got += len(chunk)
                if got % (4 * 1024 * 1024) < 64 * 1024:
                    peak = max(peak, _rss_kib(proc.pid))
                    await trio.sleep(0.05)  # a slow reader: the gateway must wait, not buffer
        await trio.aclose_forcefully(stream)
        assert got > size  # the head, then every byte of the body, and a close_notify (no error)
        assert peak - before < 32 * 1024, (before, peak)  # KiB: far less than the file
    finally:
        await stop(proc, stderr)


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_certificate_that_does_not_load_refuses_the_reload(tmp_path, processes):
    ca = trustme.CA()
    port, tls_port, admin = free_port(), free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, port, tls_port, admin, ca,
                                                                   processes=processes))])
    watch = LogWatch(stderr)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            await trio.Path(tmp_path / "certs" / "a.test.key").write_text("not a key\n")
            proc.send_signal(signal.SIGHUP)
            await watch.wait_for("reload refused")
            assert await trio.to_thread.run_sync(_served_cn, tls_port, "a.test") == "a.test"  # still serving
            nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await proc.wait()
    line = next(line for line in watch.text.splitlines() if "reload refused" in line)
    assert "site a: cannot load the certificate" in line and "a.test.key" in line, line
    assert "Traceback" not in watch.text


async def test_plain_http_is_redirected_to_https_where_hsts_is_sent(tmp_path):
    """``redirect_to_https`` with an HSTS header, through curl over real TLS: a
    plain GET and a POST get 308 to the TLS port, curl -L lands on the HTTPS
    page (PHP told HTTPS=on) carrying the HSTS header; a trusted proxy that says
    it spoke HTTPS is not redirected."""
    ca = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    port, tls_port, admin = free_port(), free_port(), free_port()
    conf = _conf(tmp_path, port, tls_port, admin, ca)
    text = (conf / "00.toml").read_text()
    text = text.replace('server_names = ["a.test"]\n',
                        'server_names = ["a.test"]\nredirect_to_https = true\n'
                        '[sites.a.headers]\nStrict-Transport-Security = "max-age=31536000; includeSubDomains"\n', 1)
    text = text.replace('processes = 1\n', 'processes = 1\ntrusted_proxies = ["127.0.0.1"]\n', 1)
    (conf / "00.toml").write_text(text)
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    try:
        plain = f"http://a.test:{port}"
        resolve = ["--resolve", f"a.test:{port}:127.0.0.1", "--resolve", f"a.test:{tls_port}:127.0.0.1"]
        out = await _run(["curl", "-sS", "--max-time", "10", *resolve, "-o", "/dev/null",
                          "-w", "%{http_code} %{redirect_url}", f"{plain}/server.php?x=1"])
        assert out == f"308 https://a.test:{tls_port}/server.php?x=1", out
        out = await _run(["curl", "-sS", "--max-time", "10", *resolve, "-o", "/dev/null", "-d", "a=1",
                          "-w", "%{http_code} %{redirect_url}", f"{plain}/form.php"])
        assert out == f"308 https://a.test:{tls_port}/form.php", out
        # following it: the HTTPS page, HSTS on it, PHP sees HTTPS
        out = await _run(["curl", "-sS", "--max-time", "10", *resolve, "--cacert", str(tmp_path / "ca.pem"),
                          "-L", "-D", "-", f"{plain}/server.php"])
        heads, _, body = out.rpartition("\r\n\r\n")
        final = heads.rsplit("\r\n\r\n", 1)[-1].lower()
        assert final.startswith("http/2 200") and "strict-transport-security: max-age=31536000; includesubdomains" \
            in final, out
        assert json.loads(body)["server"]["HTTPS"] == "on"
        # a trusted proxy (127.0.0.1) that terminated TLS: served, not redirected
        out = await _run(["curl", "-sS", "--max-time", "10", *resolve, "-H", "X-Forwarded-Proto: https",
                          f"{plain}/server.php"])
        assert json.loads(out)["server"]["HTTPS"] == "on"
    finally:
        log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log


async def test_a_key_update_from_openssl_keeps_the_connection_working_both_ways(tmp_path):
    """TLS 1.3 KeyUpdate (``openssl s_client``: ``k`` renews the client's
    keys, ``K`` also asks the gateway to renew its own) in the middle of a
    kept-alive connection: the next request is read and answered."""
    ca = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    port, tls_port, admin = free_port(), free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, port, tls_port, admin, ca))])
    internal_ca = tmp_path / "state" / "ca" / "root.pem"
    client = await trio.lowlevel.open_process(_s_client(tls_port, "b.test", internal_ca, "-tls1_3", "-crlf"),
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT)
    assert client.stdin is not None and client.stdout is not None
    out = b""

    async def until(text: bytes, count: int) -> None:
        nonlocal out
        assert client.stdout is not None
        with trio.move_on_after(10):
            while out.count(text) < count:
                chunk = await client.stdout.receive_some(65536)
                if not chunk:
                    break
                out += chunk
        if out.count(text) < count:
            pytest.fail(f"no {count}x {text!r} from openssl s_client:\n{out.decode(errors='replace')}")

    try:
        await until(b"Verify return code: 0 (ok)", 1)
        answers = 0
        for command in (b"k", b"K", b"k"):
            await client.stdin.send_all(b"GET /hello.txt HTTP/1.1\nHost: b.test\n\n")
            answers += 1
            await until(b"site b\n", answers)
            await client.stdin.send_all(command + b"\n")  # (a line of its own: a command, not data)
            await until(b"KEYUPDATE", answers)
        await client.stdin.send_all(b"GET /hello.txt HTTP/1.1\nHost: b.test\nConnection: close\n\n")
        await until(b"site b\n", answers + 1)
    finally:
        client.kill()
        await client.wait()
        log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log
