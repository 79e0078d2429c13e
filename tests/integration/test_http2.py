"""HTTP/2 with real clients against the real gateway and a real php-fpm:
``curl --http2`` over TLS (ALPN h2), ``curl --http2-prior-knowledge`` on a
plain listener with ``http2_cleartext``, ``nghttp -ans`` loading a page and
its assets over one connection, a POST body, a large static file to a slow
reader; the attacks (rapid reset, CONTINUATION flood) from an h2 client:
GOAWAY, the server serves others, and PHP never ran the reset requests; and
headless Chromium loading the demo site over HTTPS + h2."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
import trio
import trustme
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from .conftest import DOCROOT, free_port, start_cli
from .test_cli import stop
from .test_tls import _metrics, _run, _samples, _write_cert

PAGE = """<!doctype html><html><head><link rel="stylesheet" href="/style.css">
<script src="/app.js"></script></head><body><img src="/logo.svg"><p>hello</p></body></html>
"""
#: PHP appends a line to ran.log for each run: the attacks' resets must never reach it.
APPEND = """<?php
file_put_contents(__DIR__ . '/ran.log', ($_GET['n'] ?? '-') . "\\n", FILE_APPEND | LOCK_EX);
echo "ran";
"""
SLEEP = """<?php usleep((int)($_GET['ms'] ?? 100) * 1000); echo "slept";"""


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(DOCROOT / "server.php", root / "server.php")
    shutil.copy(DOCROOT / "big.php", root / "big.php")
    (root / "index.html").write_text(PAGE)
    (root / "style.css").write_text("body { color: #333 }\n" * 50)
    (root / "app.js").write_text("console.log('hi');\n" * 50)
    (root / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>\n')
    (root / "append.php").write_text(APPEND)
    (root / "sleep.php").write_text(SLEEP)
    (root / "big.bin").write_bytes(bytes(range(256)) * (16 * 1024))  # 4 MiB
    return root


def _conf(tmp_path: Path, port: int, tls_port: int, admin: int, ca: trustme.CA) -> Path:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    certs = tmp_path / "certs"
    certs.mkdir()
    crt, key = _write_cert(ca, "a.test", certs)
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}", "127.0.0.1:{tls_port} tls"]\n'
        f'runtime_dir = "{tmp_path / "run"}"\naccess_log = "{tmp_path / "access.log"}"\nprocesses = 1\n'
        f'http2_cleartext = true\n'
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[acme]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[backends.php]\npool_size = 2\nphp_fpm.user = "root"\n'
        f'[sites.a]\nroot = "{_site(tmp_path)}"\nphp = "php"\nserver_names = ["a.test"]\ndefault = true\n'
        f'[sites.a.tls]\ncert = "{crt}"\nkey = "{key}"\n'
    )
    return conf


def _curl(port: int, cafile: Path, path: str, *extra: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "20", "--http2", "--resolve", f"a.test:{port}:127.0.0.1", "--cacert",
            str(cafile), *extra, f"https://a.test:{port}{path}"]


async def _gateway(tmp_path: Path) -> tuple[trio.Process, trio.abc.ReceiveStream, int, int, int, Path]:
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(ca.cert_pem.bytes())
    port, tls_port, admin = free_port(), free_port(), free_port()
    proc, stderr = await start_cli(["serve", "--config", str(_conf(tmp_path, port, tls_port, admin, ca))])
    return proc, stderr, port, tls_port, admin, cafile


async def test_curl_and_nghttp_over_h2_and_h2c(tmp_path):
    proc, stderr, port, tls_port, admin, cafile = await _gateway(tmp_path)
    try:
        # PHP over TLS + h2: PHP sees HTTP/2.0, HTTPS and the Host from :authority
        out = await _run(_curl(tls_port, cafile, "/server.php?x=1", "-b", "a=1; b=2",
                               "-w", "\n%{http_code} %{http_version}"))
        body, _, tail = out.rpartition("\n")
        assert tail == "200 2", out
        php = json.loads(body)
        assert php["server"]["SERVER_PROTOCOL"] == "HTTP/2.0" and php["server"]["HTTPS"] == "on"
        assert php["server"]["HTTP_HOST"] == f"a.test:{tls_port}" and php["get"] == {"x": "1"}
        assert php["cookies"] == {"a": "1", "b": "2"}
        # a POST body over several DATA frames
        upload = tmp_path / "upload.bin"
        upload.write_bytes(bytes(range(256)) * 1200)
        out = await _run(_curl(tls_port, cafile, "/server.php", "--data-binary", f"@{upload}",
                               "-H", "Content-Type: application/octet-stream"))
        php = json.loads(out)
        assert php["input_length"] == 307200
        assert php["input_md5"] == hashlib.md5(upload.read_bytes()).hexdigest()
        # HEAD
        out = await _run(_curl(tls_port, cafile, "/style.css", "-I"))
        assert out.startswith("HTTP/2 200") and "content-length: 1050" in out, out
        # a large static file to a slow reader (2 MiB/s): whole, in order
        got = tmp_path / "got.bin"
        out = await _run(_curl(tls_port, cafile, "/big.bin", "--limit-rate", "2M", "-o", str(got),
                               "-w", "%{http_code} %{http_version} %{size_download}"))
        assert out == "200 2 4194304", out
        assert got.read_bytes() == (tmp_path / "www" / "big.bin").read_bytes()
        # a PHP response larger than the memory buffer (spooled to a temp file first)
        out = await _run(_curl(tls_port, cafile, "/big.php?mb=3", "-o", str(got),
                               "-w", "%{http_code} %{http_version} %{size_download}"))
        assert out == "200 2 3145728", out
        assert got.read_bytes() == b"0123456789abcdef" * 65536 * 3
        # h2c with prior knowledge on the plain listener; HTTP/1.1 still served there
        out = await _run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-w", " %{http_version}",
                          f"http://127.0.0.1:{port}/sleep.php?ms=1"])
        assert out == "slept 2", out
        out = await _run(["curl", "-sS", "--max-time", "10", "-w", " %{http_version}",
                          f"http://127.0.0.1:{port}/sleep.php?ms=1"])
        assert out == "slept 1.1", out
        # nghttp: the page and its assets (-a) over one connection
        out = await _run(["nghttp", "-ans", "-t", "20", f"https://127.0.0.1:{tls_port}/index.html"])
        for path in ("/index.html", "/style.css", "/app.js", "/logo.svg"):
            assert re.search(rf"\s200\s.*{re.escape(path)}\s*$", out, re.M), out
        out = await _run(["nghttp", "-ans", "-t", "20", f"http://127.0.0.1:{port}/index.html"])
        assert re.search(r"\s200\s.*/style\.css\s*$", out, re.M), out
        # a client that keeps no HPACK table (SETTINGS_HEADER_TABLE_SIZE 0): nghttp2 wants the
        # size update at the start of our next header block (RFC 7541 4.2), or it fails the connection
        out = await _run(["nghttp", "-ans", "-c", "0", "-t", "20", f"https://127.0.0.1:{tls_port}/index.html",
                          f"https://127.0.0.1:{tls_port}/server.php"])
        for path in ("/index.html", "/style.css", "/app.js", "/logo.svg", "/server.php"):
            assert re.search(rf"\s200\s.*{re.escape(path)}\s*$", out, re.M), out
        metrics = await _metrics(admin)
        assert _samples(metrics, "gateway_http2_connections_total")[""] >= 8
        assert _samples(metrics, "gateway_http2_streams_total")[""] >= 12
    finally:
        log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log, log
    access = (tmp_path / "access.log").read_text()
    assert '"GET /server.php?x=1 HTTP/2.0" 200' in access and '"GET /sleep.php?ms=1 HTTP/1.1" 200' in access


class _H2:
    """An h2 client (prior knowledge) on a TCP stream, for the attacks."""

    def __init__(self, stream: trio.abc.Stream, window: int | None = None) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, port: int, window: int | None = None) -> _H2:
        self = cls(await trio.open_tcp_stream("127.0.0.1", port), window)
        await self.flush()
        return self

    async def flush(self) -> None:
        await self.stream.send_all(self.conn.data_to_send())

    def headers(self, path: str | bytes) -> list[tuple[bytes, bytes]]:
        raw = path if isinstance(path, bytes) else path.encode()
        return [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", raw)]

    async def read_until(self, done) -> None:
        with trio.fail_after(20):
            while not done():
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                self._buffer += data
                events = []
                while len(self._buffer) >= 9:  # frame by frame: see the GOAWAY case below
                    end = 9 + int.from_bytes(self._buffer[:3], "big")
                    if len(self._buffer) < end:
                        break
                    frame, self._buffer = bytes(self._buffer[:end]), self._buffer[end:]
                    try:
                        events += self.conn.receive_data(frame)
                    except h2.exceptions.ProtocolError:
                        return
                    if events and isinstance(events[-1], h2.events.ConnectionTerminated):
                        # h2 as a client stops at any GOAWAY; curl and browsers go
                        # on reading the streams up to last_stream_id (RFC 9113 6.8)
                        self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
                for event in events:
                    if isinstance(event, h2.events.ResponseReceived):
                        self.heads[event.stream_id] = dict(event.headers)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self.goaway = event
                    elif isinstance(event, h2.events.DataReceived):
                        self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self.ended.add(event.stream_id)
                await self.stream.send_all(self.conn.data_to_send())


async def test_rapid_reset_continuation_and_ping_floods_get_goaway_and_php_never_runs_them(tmp_path):
    proc, stderr, port, tls_port, admin, cafile = await _gateway(tmp_path)
    ran = tmp_path / "www" / "ran.log"
    try:
        async with trio.open_nursery() as nursery:
            # both PHP workers busy for 3 s: the attack's requests could only queue
            busy = await _H2.connect(port)
            slow = [busy.conn.get_next_available_stream_id() for _ in range(1)]
            busy.conn.send_headers(slow[0], busy.headers("/sleep.php?ms=3000"), end_stream=True)
            s2 = busy.conn.get_next_available_stream_id()
            busy.conn.send_headers(s2, busy.headers("/sleep.php?ms=3000"), end_stream=True)
            await busy.flush()
            nursery.start_soon(busy.read_until, lambda: {slow[0], s2} <= busy.ended)
            for _ in range(200):  # until both workers run them (polling the gateway's own count)
                if _samples(await _metrics(admin), "gateway_pool_busy").get('{pool="php"}') == 2:
                    break
                await trio.sleep(0.05)
            else:
                pytest.fail("the gateway never reached that state: the test would prove nothing")

            # rapid reset: HEADERS + RST_STREAM, over and over
            attacker = await _H2.connect(port)
            for i in range(1000):
                sid = attacker.conn.get_next_available_stream_id()
                attacker.conn.send_headers(sid, attacker.headers(f"/append.php?n={i}"), end_stream=True)
                attacker.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                if i % 50 == 49:
                    try:
                        await attacker.flush()
                    except trio.BrokenResourceError:
                        break
            await attacker.read_until(lambda: attacker.goaway is not None)
            assert attacker.goaway is not None
            assert attacker.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM

            # CONTINUATION flood: a header block that never ends
            flood = await _H2.connect(port)
            block = flood.conn.encoder.encode(flood.headers("/append.php?n=flood"))
            raw = HeadersFrame(1, data=block).serialize()
            for _ in range(200):
                raw += ContinuationFrame(1, data=b"\x00" * 4096).serialize()
            try:
                await flood.stream.send_all(raw)
            except trio.BrokenResourceError:
                pass
            await flood.read_until(lambda: flood.goaway is not None)
            assert flood.goaway is not None
            assert flood.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM

            # PING and SETTINGS floods: more ACKs owed than allowed, in one burst
            for frame in (PingFrame(0, opaque_data=b"flooding").serialize(), SettingsFrame(0).serialize()):
                ping = await _H2.connect(port)
                try:
                    await ping.stream.send_all(frame * 5000)  # a read of 64 KiB holds over 3000
                except trio.BrokenResourceError:
                    pass
                await ping.read_until(lambda ping=ping: ping.goaway is not None)
                assert ping.goaway is not None
                assert ping.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM

            # others are still served, PHP included
            other = await _H2.connect(port)
            sid = other.conn.get_next_available_stream_id()
            other.conn.send_headers(sid, other.headers("/append.php?n=legit"), end_stream=True)
            await other.flush()
            await other.read_until(lambda: sid in other.ended)
            assert other.bodies[sid] == b"ran"
        assert busy.bodies[slow[0]] == b"slept"
        assert ran.read_text() == "legit\n"  # not one of the attack's requests ran
        metrics = await _metrics(admin)
        refused = _samples(metrics, "gateway_http2_refused_total")
        assert refused['{reason="rapid_reset"}'] == 1 and refused['{reason="header_flood"}'] == 1
        assert refused['{reason="control_flood"}'] == 2
    finally:
        log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log, log
    assert "rapid reset" in log and "header block" in log


async def test_a_path_with_a_space_or_raw_utf8_is_a_400_and_php_never_sees_it(tmp_path):
    """h11 refuses these in a request line; over h2 the same rule holds, per stream."""
    proc, stderr, port, tls_port, admin, cafile = await _gateway(tmp_path)
    ran = tmp_path / "www" / "ran.log"
    try:
        c = await _H2.connect(port)
        bad = []
        for path in (b"/append.php?n=a b", b"/append.php?n=caf\xc3\xa9", b"/dir with space/"):
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, c.headers(path), end_stream=True)
            bad.append(sid)
        ok = c.conn.get_next_available_stream_id()
        c.conn.send_headers(ok, c.headers("/append.php?n=ok"), end_stream=True)
        await c.flush()
        await c.read_until(lambda: {*bad, ok} <= c.ended)
        assert [c.heads[sid][b":status"] for sid in bad] == [b"400"] * 3
        assert c.bodies[ok] == b"ran" and c.goaway is None  # the connection served the others
        assert ran.read_text() == "ok\n"
    finally:
        log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log, log
    assert log.count("invalid request target") == 3, log


async def test_sigterm_sends_goaway_and_the_stream_in_flight_finishes(tmp_path):
    proc, stderr, port, tls_port, admin, cafile = await _gateway(tmp_path)
    stopped = False
    try:
        c = await _H2.connect(port)
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, c.headers("/sleep.php?ms=1500"), end_stream=True)
        await c.flush()
        for _ in range(200):  # until PHP runs it (polling the gateway's own count)
            if _samples(await _metrics(admin), "gateway_requests_in_flight").get("") == 1:
                break
            await trio.sleep(0.05)
        else:
            pytest.fail("the gateway never reached that state: the test would prove nothing")
        proc.send_signal(signal.SIGTERM)
        await c.read_until(lambda: sid in c.ended)
        assert c.goaway is not None and c.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert c.goaway.last_stream_id == sid
        assert c.bodies[sid] == b"slept"
        log = (await stop(proc, stderr, sigterm=False)).decode()
        stopped = True
    finally:
        if not stopped:
            log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log, log
    assert '"GET /sleep.php?ms=1500 HTTP/2.0" 200' in (tmp_path / "access.log").read_text()


async def test_a_reader_that_opens_no_window_holds_no_php_worker(tmp_path):
    proc, stderr, port, tls_port, admin, cafile = await _gateway(tmp_path)
    try:
        c = await _H2.connect(port, window=0)  # no DATA may come until the client says so
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, c.headers("/big.php?mb=3"), end_stream=True)
        await c.flush()
        await c.read_until(lambda: sid in c.heads)  # HEADERS are not flow-controlled
        for _ in range(200):  # PHP finished, and its worker is free, while the client has 0 bytes
            metrics = await _metrics(admin)
            if _samples(metrics, "gateway_pool_responses_total").get('{pool="php"}') == 1:
                break
            await trio.sleep(0.05)
        else:
            pytest.fail("the gateway never reached that state: the test would prove nothing")
        assert _samples(metrics, "gateway_pool_busy")['{pool="php"}'] == 0
        assert c.bodies.get(sid, b"") == b""
        # the client opens its window: the spooled response arrives whole
        c.conn.increment_flow_control_window(8 << 20, stream_id=sid)
        c.conn.increment_flow_control_window(8 << 20)
        await c.flush()
        await c.read_until(lambda: sid in c.ended)
        assert len(c.bodies[sid]) == 3 << 20
    finally:
        log = (await stop(proc, stderr)).decode()
    assert "Traceback" not in log, log


async def test_headless_chromium_loads_the_demo_site_over_https_and_h2(tmp_path):
    """A real browser (Debian's chromium-headless-shell): the demo site's PHP
    page and its stylesheet arrive over HTTP/2 (the access log says so), the
    page renders what PHP wrote, and a screenshot is taken."""
    ca = trustme.CA()
    port, tls_port = free_port(), free_port()
    conf = tmp_path / "conf.d"
    conf.mkdir()
    crt, key = _write_cert(ca, "127.0.0.1", tmp_path)
    demo = Path(__file__).parents[2] / "demo"
    (conf / "00.toml").write_text(
        f'[server]\nuser = "root"\nlisten = ["127.0.0.1:{port}", "127.0.0.1:{tls_port} tls"]\n'
        f'runtime_dir = "{tmp_path / "run"}"\naccess_log = "{tmp_path / "access.log"}"\nprocesses = 1\n'
        f'[admin]\nlisten = "off"\n[acme]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[backends.php]\npool_size = 2\nphp_fpm.user = "root"\n'
        f'[sites.demo]\nroot = "{demo}"\nphp = "php"\nserver_names = ["127.0.0.1"]\ndefault = true\n'
        f'[sites.demo.tls]\ncert = "{crt}"\nkey = "{key}"\n')
    proc, stderr = await start_cli(["serve", "--config", str(conf)])
    chromium = ["chromium-headless-shell", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
                "--window-size=800,600"]
    url = f"https://127.0.0.1:{tls_port}/"
    try:
        with trio.fail_after(60):
            dom = await _run([*chromium, "--dump-dom", url])
            shot = tmp_path / "demo.png"
            await _run([*chromium, f"--screenshot={shot}", url])
    finally:
        log = (await stop(proc, stderr)).decode()
    assert "Hello from PHP" in dom and "through php-fpm worker pid" in dom, dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000
    access = (tmp_path / "access.log").read_text()
    for request in ('"GET / HTTP/2.0" 200', '"GET /style.css HTTP/2.0" 200'):
        assert access.count(request) == 2, access  # one per chromium run
    assert "HTTP/1.1" not in access and "Traceback" not in log, log
