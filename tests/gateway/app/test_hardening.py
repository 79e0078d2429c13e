"""Hostile input end to end, in memory: a client -> HttpConnection -> App ->
pool -> FastCGI -> a php-fpm stand-in, on the autojump clock.

Each test asserts what a user sees: the status, that the connection (or the
next request on it) still works, that nothing leaked from one response into
another, and that nothing smuggled reached PHP.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import fastcgi
from gateway.app.site import App
from gateway.config import LimitsConfig, ServerConfig, validate
from gateway.front.h1 import ConnectionSettings, HttpConnection
from gateway.upstream.fastcgi import fastcgi_pool
from tests.helpers import FakeFpm, HttpClient, php_output, read_all


def make_app(tmp_path, fpm: FakeFpm, nursery, connector=None, **server):
    (tmp_path / "index.php").write_text("front controller")
    (tmp_path / "other").mkdir(exist_ok=True)
    (tmp_path / "other" / "index.php").write_text("other site")
    cfg = validate({"server": server, "backends": {"php": {"pool_size": 1}},
                    "sites": {"s": {"root": str(tmp_path), "php": "php", "server_names": ["example.com"]},
                              "o": {"root": str(tmp_path / "other"), "php": "php",
                                    "server_names": ["other.example"]}}})
    pool = fastcgi_pool("php", connector or fpm.connector(nursery), size=1, queue_depth=10, queue_timeout=5)
    return App(cfg, {"php": pool}), pool


async def raw_connection(app, nursery, settings=None) -> trio.abc.Stream:
    client, server = trio.testing.memory_stream_pair()
    conn = HttpConnection(server, app.handle, settings or ConnectionSettings.from_config(), client=("192.0.2.7", 40000),
                          server=("192.0.2.1", 80))
    nursery.start_soon(conn.run)
    return client


async def echo_uri(req):
    return [php_output(b"uri=" + req.params[b"REQUEST_URI"])]


async def test_php_header_with_a_control_byte_is_dropped_and_the_connection_goes_on(tmp_path, nursery,
                                                                                    autojump_clock, caplog):
    # <?php header('X-Echo: ' . $_GET['v']); with ?v=a%0bb used to kill the process
    async def script(req):
        v = req.params[b"QUERY_STRING"].split(b"=", 1)[1].replace(b"%0b", b"\x0b").replace(b"%0c", b"\x0c")
        return [php_output(b"page", headers=(b"X-Echo: " + v, b"X-Other: kept"))]

    app, pool = make_app(tmp_path, FakeFpm(script), nursery)
    c = HttpClient(await raw_connection(app, nursery))
    for q in ("a%0bb", "a%0cb", "plain"):
        r = await c.request("GET", "/?v=" + q, host="example.com")
        assert (r.status, r.body, r.header("x-other")) == (200, b"page", "kept")
        assert r.header("x-echo") == (None if q != "plain" else "plain")
    assert "X-Echo (control byte in its value)" in caplog.text
    assert "Traceback" not in caplog.text
    assert pool.busy == 0


@pytest.mark.parametrize("status", [b"100 Continue", b"101 Switching Protocols", b"103 Early Hints", b"199",
                                    b"600", b"0"])
async def test_php_interim_or_invalid_status_is_502(tmp_path, nursery, autojump_clock, status, caplog):
    async def script(req):
        if req.params[b"REQUEST_URI"] == b"/bad":
            return [php_output(b"x", status=status)]
        return [php_output(b"fine")]

    app, pool = make_app(tmp_path, FakeFpm(script), nursery)
    c = HttpClient(await raw_connection(app, nursery))
    r = await c.request("GET", "/bad", host="example.com")
    assert r.status == 502
    r = await c.request("GET", "/good", host="example.com")
    assert (r.status, r.body) == (200, b"fine")  # the same client connection goes on
    assert "not a final HTTP status" in caplog.text or "invalid Status" in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("length", [b"", b"-1", b"abc", b"10\r\nContent-Length: 11", b"99999999999999999999999"])
async def test_head_with_a_bad_php_content_length_is_answered(tmp_path, nursery, autojump_clock, length):
    async def script(req):
        return [b"Content-Type: text/html\r\nContent-Length: " + length + b"\r\n\r\n"]

    app, _ = make_app(tmp_path, FakeFpm(script), nursery)
    c = HttpClient(await raw_connection(app, nursery))
    r = await c.request("HEAD", "/", host="example.com")
    assert r.status == 200 and r.body == b""
    r = await c.request("GET", "/", host="example.com")
    assert (r.status, r.header("content-length")) == (200, "0")


async def test_head_keeps_a_valid_php_content_length(tmp_path, nursery, autojump_clock):
    async def script(req):
        return [b"Content-Type: text/html\r\nContent-Length: 1234\r\n\r\n"]

    app, _ = make_app(tmp_path, FakeFpm(script), nursery)
    c = HttpClient(await raw_connection(app, nursery))
    r = await c.request("HEAD", "/", host="example.com")
    assert (r.status, r.header("content-length")) == (200, "1234")


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"


@pytest.mark.parametrize("framing", [
    b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n",
    b"Content-Length: %d\r\nTransfer-Encoding: chunked \r\n",
    b"Content-Length: %d\r\nTransfer-Encoding:\tchunked\r\n",
    b"Content-Length: %d\r\nTransfer-Encoding: CHUNKED\r\n",
    b"Content-Length: %d\r\nTransfer-Encoding:\r\n chunked\r\n",
])
async def test_content_length_with_transfer_encoding_is_400_and_closes(tmp_path, nursery, autojump_clock, framing):
    fpm = FakeFpm(echo_uri)
    app, _ = make_app(tmp_path, fpm, nursery)
    stream = await raw_connection(app, nursery)
    body = b"0\r\n\r\n" + SMUGGLED
    await stream.send_all(b"POST /index.php HTTP/1.1\r\nHost: example.com\r\n" + framing % 5 + b"\r\n" + body)
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 400 ") and data.count(b"HTTP/1.1") == 1
    assert b"connection: close" in data.lower()
    assert fpm.requests_seen == []  # neither the POST nor the smuggled GET reached PHP


async def test_transfer_encoding_in_http_1_0_is_400(tmp_path, nursery, autojump_clock):
    fpm = FakeFpm(echo_uri)
    app, _ = make_app(tmp_path, fpm, nursery)
    stream = await raw_connection(app, nursery)
    await stream.send_all(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED)
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 400 ") and fpm.requests_seen == []


@pytest.mark.parametrize("host", [b"a b", b"x/../y", b"<script>", b"user@x", b"x:1:2", b"a\\b", b"example.com\\",
                                  b"..", b"x:999999"])
async def test_invalid_host_is_400_and_never_reaches_php(tmp_path, nursery, autojump_clock, host):
    fpm = FakeFpm(echo_uri)
    app, _ = make_app(tmp_path, fpm, nursery)
    stream = await raw_connection(app, nursery)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 400 ") and fpm.requests_seen == []


async def test_ipv6_host_server_name_for_a_site_without_names(tmp_path, nursery, autojump_clock):
    fpm = FakeFpm(echo_uri)
    (tmp_path / "index.php").write_text("x")
    cfg = validate({"backends": {"php": {"pool_size": 1}}, "sites": {"s": {"root": str(tmp_path), "php": "php"}}})
    pool = fastcgi_pool("php", fpm.connector(nursery), size=1, queue_depth=10, queue_timeout=5)
    c = HttpClient(await raw_connection(App(cfg, {"php": pool}), nursery))
    await c.request("GET", "/", host="[::1]:8080")
    assert fpm.requests_seen[0].params[b"SERVER_NAME"] == b"[::1]"


async def test_absolute_form_target_wins_over_host(tmp_path, nursery, autojump_clock):
    fpm = FakeFpm(echo_uri)
    app, _ = make_app(tmp_path, fpm, nursery)
    c = HttpClient(await raw_connection(app, nursery))
    r = await c.request("GET", "http://other.example/index.php?x=1", host="example.com")
    assert (r.status, r.body) == (200, b"uri=/index.php?x=1")
    p = fpm.requests_seen[0].params
    assert p[b"SCRIPT_FILENAME"] == str(tmp_path / "other" / "index.php").encode()  # the authority's site
    assert (p[b"HTTP_HOST"], p[b"SERVER_NAME"]) == (b"other.example", b"other.example")


async def test_stray_records_after_a_response_never_reach_the_next_client(tmp_path, nursery, autojump_clock):
    # A broken backend sends a complete response, then more STDOUT and another
    # END_REQUEST for the finished request, in the same write.
    sent = []

    async def connect():
        a, b = trio.testing.memory_stream_pair()

        async def serve():
            conn = fastcgi.Connection(fastcgi.SERVER)
            while True:
                while True:
                    event = conn.next_event()
                    if event is fastcgi.NEED_DATA:
                        conn.receive_data(await b.receive_some(65536))
                        continue
                    if isinstance(event, fastcgi.ConnectionClosed):
                        return
                    if isinstance(event, fastcgi.Stdin) and not event.data:
                        break
                sent.append(1)
                wire = conn.send(fastcgi.Stdout(php_output(b"response %d" % len(sent)))) + conn.send(fastcgi.Stdout())
                wire += conn.send(fastcgi.EndRequest(0))
                stray = fastcgi.Connection(fastcgi.SERVER)
                stray.receive_data(b"\x01\x01\x00\x01\x00\x08\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00")
                stray.next_event()
                wire += stray.send(fastcgi.Stdout(b"Status: 200\r\n\r\nLEAKED-FROM-EARLIER"))
                wire += stray.send(fastcgi.Stdout()) + stray.send(fastcgi.EndRequest(0))
                await b.send_all(wire)
                conn.start_next_cycle()

        nursery.start_soon(serve)
        return a

    app, pool = make_app(tmp_path, FakeFpm(echo_uri), nursery, connector=connect)
    c = HttpClient(await raw_connection(app, nursery))
    bodies = [(await c.request("GET", "/", host="example.com")).body for _ in range(3)]
    assert bodies == [b"response 1", b"response 2", b"response 3"]
    assert pool.busy == 0


async def test_a_full_temp_dir_fails_that_request_only(tmp_path, nursery, autojump_clock, caplog):
    fpm = FakeFpm(echo_uri)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    app, _ = make_app(tmp_path, fpm, nursery)
    settings = ConnectionSettings.from_config(ServerConfig(temp_dir=str(not_a_dir)),
                                              limits=LimitsConfig(body_buffer_size=10))
    c = HttpClient(await raw_connection(app, nursery, settings))
    r = await c.request("POST", "/", body=b"x" * 100, host="example.com")
    assert r.status == 507 and fpm.requests_seen == []
    c = HttpClient(await raw_connection(app, nursery, settings))
    r = await c.request("POST", "/", body=b"small", host="example.com")
    assert r.status == 200  # the server goes on
    assert "cannot buffer" in caplog.text and "Traceback" not in caplog.text


async def test_a_backend_failing_mid_stream_cuts_the_connection_with_one_log_line(tmp_path, nursery, autojump_clock,
                                                                                  caplog):
    async def script(req):
        return [php_output(b"start", headers=(b"X-Accel-Buffering: no",)), trio.sleep_forever]

    app, pool = make_app(tmp_path, FakeFpm(script), nursery)
    stream = await raw_connection(app, nursery)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    data = await read_all(stream)  # the head and the first chunk, then the connection is cut
    assert data.startswith(b"HTTP/1.1 200 ") and b"start" in data and not data.endswith(b"0\r\n\r\n")
    assert "PHP sent nothing for 60s" in caplog.text
    assert "Traceback" not in caplog.text
    assert pool.busy == 0


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs: a temp dir that fills up for real (ENOSPC), as root."""
    import subprocess

    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_the_write_that_does_not_fit_and_nothing_later(full_disk):
    from gateway.http.errors import SpoolWriteError
    from gateway.http.spool import Spool

    spool = Spool(1024, str(full_disk))
    spool.write(b"a" * 100 * 1024)
    with pytest.raises(SpoolWriteError, match="No space left"):
        spool.write(b"b" * 300 * 1024)
    spool.close()  # nothing buffered is left to fail on close


async def test_php_output_larger_than_the_free_temp_space_is_507_not_a_cut_200(tmp_path, nursery, autojump_clock,
                                                                                full_disk, caplog):
    async def script(req):
        return [php_output(b"x" * 400 * 1024)]  # more than the 256 KiB tmpfs holds

    fpm = FakeFpm(script)
    (tmp_path / "index.php").write_text("x")
    cfg = validate({"server": {"temp_dir": str(full_disk)},
                    "backends": {"php": {"pool_size": 1, "response_buffer_size": "16k"}},
                    "sites": {"s": {"root": str(tmp_path), "php": "php"}}})
    pool = fastcgi_pool("php", fpm.connector(nursery), size=1, queue_depth=10, queue_timeout=5)
    c = HttpClient(await raw_connection(App(cfg, {"php": pool}), nursery))
    r = await c.request("GET", "/")
    assert r.status == 507
    assert "cannot buffer" in caplog.text and "Traceback" not in caplog.text
    assert pool.busy == 0


async def test_php_date_and_server_headers_replace_the_gateways(tmp_path, nursery, autojump_clock):
    async def script(req):
        return [php_output(b"x", headers=(b"Date: Mon, 01 Jan 1990 00:00:00 GMT", b"Server: php-app"))]

    app, _ = make_app(tmp_path, FakeFpm(script), nursery)
    c = HttpClient(await raw_connection(app, nursery))
    r = await c.request("GET", "/", host="example.com")
    assert [v for n, v in r.header_list if n.lower() == b"date"] == [b"Mon, 01 Jan 1990 00:00:00 GMT"]
    assert [v for n, v in r.header_list if n.lower() == b"server"] == [b"php-app"]


def test_php_stderr_control_bytes_are_escaped_in_the_log(caplog):
    from gateway.upstream.fastcgi import _log_stderr

    _log_stderr("r1", b"PHP Warning: \x1b[31mred\x1b[0m\tok\n", final=True)
    assert "PHP Warning: \\x1b[31mred\\x1b[0m\tok" in caplog.text and "\x1b" not in caplog.text
