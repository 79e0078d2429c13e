"""The gateway in front of a real php-fpm that it spawned: what a user checks with curl."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import uuid

import pytest
import trio
import trio.testing

from gateway.observe.monitor import children_of
from tests.helpers import HttpClient


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


async def test_get_with_query_string(gw):
    r = await gw.get("/server.php?a=1&b=two")
    data = json.loads(r.body)
    assert r.status == 200 and r.header("content-type") == "application/json"
    assert data["get"] == {"a": "1", "b": "two"}
    s = data["server"]
    assert s["REQUEST_URI"] == "/server.php?a=1&b=two" and s["QUERY_STRING"] == "a=1&b=two"
    assert s["SCRIPT_NAME"] == "/server.php" and s["REQUEST_METHOD"] == "GET"
    assert s["REMOTE_ADDR"] == "127.0.0.1" and s["SERVER_PORT"] == str(gw.port)


async def test_pretty_permalink_reaches_the_front_controller(gw):
    r = await gw.get("/2024/01/hello-world/?replytocom=5")
    assert r.body == b"front:/index.php uri:/2024/01/hello-world/?replytocom=5 qs:replytocom=5"


async def test_post_form(gw):
    r = await gw.get("/server.php", method="POST", body=b"name=caf%C3%A9&n=2",
                     headers=[("Content-Type", "application/x-www-form-urlencoded")])
    data = json.loads(r.body)
    assert data["post"] == {"name": "café", "n": "2"}
    assert data["server"]["CONTENT_LENGTH"] == "18"


async def test_head_sends_headers_only(gw):
    get = await gw.get("/server.php")
    head = await gw.get("/server.php", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("content-type") == get.header("content-type")


async def test_multipart_upload(gw):
    payload = os.urandom(300_000)
    ctype, body = multipart({"title": "x"}, {"file": ("photo.jpg", payload)})
    r = await gw.get("/server.php", method="POST", body=body, headers=[("Content-Type", ctype)])
    data = json.loads(r.body)
    assert data["post"] == {"title": "x"}
    assert data["files"]["file"] == {"name": "photo.jpg", "size": len(payload),
                                     "md5": hashlib.md5(payload).hexdigest()}


async def test_chunked_upload_gets_a_content_length(gw):
    chunks = [os.urandom(70_000) for _ in range(5)]
    r = await gw.get("/server.php", method="PUT", body=chunks, headers=[("Content-Type", "application/octet-stream")])
    data = json.loads(r.body)
    whole = b"".join(chunks)
    assert data["server"]["CONTENT_LENGTH"] == str(len(whole))
    assert data["input_md5"] == hashlib.md5(whole).hexdigest()


async def test_cookies_both_ways(gw):
    r = await gw.get("/cookies.php", headers=[("Cookie", "a=1"), ("Cookie", "b=2")])
    assert json.loads(r.body) == {"a": "1", "b": "2"}
    cookies = [v for n, v in r.header_list if n == b"set-cookie"]
    assert cookies == [b"first=one", b"second=two; path=/; HttpOnly"]


async def test_redirects(gw):
    r = await gw.get("/redirect.php")
    assert (r.status, r.header("location")) == (302, "http://example.com/elsewhere")
    r = await gw.get("/redirect.php?status=301")
    assert (r.status, r.header("location")) == (301, "/target")


async def test_custom_status_and_headers(gw):
    r = await gw.get("/status.php?code=404")
    assert (r.status, r.header("x-custom"), r.body) == (404, "yes", b"custom status")


async def test_php_fatal_error_is_a_500_and_the_gateway_carries_on(gw):
    r = await gw.get("/fatal.php")
    assert r.status == 500
    assert b"Traceback" not in r.body
    assert (await gw.get("/pid.php")).status == 200


async def test_ten_megabyte_response_arrives_intact(gw):
    r = await gw.get("/big.php?mb=10")
    block = b"0123456789abcdef" * 65536
    assert r.status == 200 and len(r.body) == 10 * len(block)
    assert hashlib.md5(r.body).hexdigest() == hashlib.md5(block * 10).hexdigest()


async def test_keep_alive_reuses_the_same_php_fpm_worker(start_gateway):
    gw = await start_gateway(backend={"pool_size": 1})
    client = await gw.client()
    pids = {(await client.request("GET", "/pid.php")).body for _ in range(5)}
    assert len(pids) == 1
    assert gw.pool.stats.connects == 1


async def test_pool_of_two_runs_at_most_two_and_answers_all_ten(start_gateway, tmp_path):
    gw = await start_gateway(backend={"pool_size": 2})
    log = tmp_path / "overlap.log"
    statuses = []

    async def one():
        statuses.append((await gw.get(f"/slow.php?ms=200&log={log}")).status)

    async with trio.open_nursery() as n:
        for _ in range(10):
            n.start_soon(one)
    assert statuses == [200] * 10
    running = peak = 0
    events = sorted((float(t), kind) for kind, _, t in (line.split() for line in log.read_text().splitlines()))
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2
    assert gw.pool.stats.max_waiting >= 7


async def test_full_queue_is_503_with_retry_after(start_gateway):
    gw = await start_gateway(backend={"pool_size": 1, "queue_depth": 1})
    results = []

    async def one():
        r = await gw.get("/slow.php?ms=500")
        results.append((r.status, r.header("retry-after")))

    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(one)
    assert sorted(results) == [(200, None), (200, None), (503, "1")]


async def test_pm_max_requests_recycling_loses_no_request(start_gateway):
    # php-fpm recycles each worker after 2 requests and closes the kept-alive
    # connection; the gateway notices (pending EOF) or retries once.
    gw = await start_gateway(backend={"pool_size": 1, "php_fpm": {"max_requests": 2}})
    client = await gw.client()
    responses = [await client.request("GET", "/pid.php") for _ in range(6)]
    assert [r.status for r in responses] == [200] * 6
    assert len({r.body for r in responses}) == 3


async def test_uploads_never_run_php_and_dotfiles_are_refused(gw):
    assert (await gw.get("/uploads/evil.php")).status == 403
    assert (await gw.get("/uploads/evil.php/x.php")).status == 403
    assert (await gw.get("/hello.txt/x.php")).status == 404
    assert (await gw.get("/.env")).status == 403
    r = await gw.get("/index.php%0a")
    assert r.status == 400


async def test_path_info(gw):
    r = await gw.get("/server.php/a/b?x=1")
    s = json.loads(r.body)["server"]
    assert (s["SCRIPT_NAME"], s["PATH_INFO"], s["DOCUMENT_URI"]) == ("/server.php", "/a/b", "/server.php/a/b")
    assert s["SCRIPT_FILENAME"].endswith("/docroot/server.php")


async def test_client_cannot_inject_php_value(gw):
    r = await gw.get("/server.php", headers=[("PHP_VALUE", "auto_prepend_file=/etc/passwd"), ("Proxy", "http://x")])
    s = json.loads(r.body)["server"]
    assert "PHP_VALUE" not in s and "HTTP_PHP_VALUE" not in s and "HTTP_PROXY" not in s


async def test_php_fpm_killed_mid_load_gives_502_then_recovers(start_gateway):
    gw = await start_gateway(backend={"pool_size": 2})
    sup = gw.supervisor
    statuses = []
    started = trio.Event()

    async def slow():
        c = await gw.client()
        started.set()
        statuses.append((await c.request("GET", "/slow.php?ms=3000")).status)

    async with trio.open_nursery() as n:
        n.start_soon(slow)
        n.start_soon(slow)
        await started.wait()
        with trio.fail_after(10):
            while gw.pool.busy < 2:
                await gw.pool.changed()
        master = sup.process.pid
        victims = [master, *children_of(master)]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
    assert statuses == [502, 502]
    with trio.fail_after(20):
        await sup.wait_for_start(2)
    r = await gw.get("/pid.php")
    assert r.status == 200 and int(r.body) not in victims


async def test_static_files_with_ranges_and_conditional_get(gw):
    r = await gw.get("/hello.txt")
    assert (r.status, r.body, r.header("content-type")) == (200, b"static text\n", "text/plain")
    etag = r.header("etag")
    assert (await gw.get("/hello.txt", headers=[("If-None-Match", etag)])).status == 304
    part = await gw.get("/hello.txt", headers=[("Range", "bytes=7-10")])
    assert (part.status, part.body, part.header("content-range")) == (206, b"text", "bytes 7-10/12")
    assert (await gw.get("/hello.txt", headers=[("Range", "bytes=50-")])).status == 416
    assert (await gw.get("/sub/")).body == b"sub index"
    r = await gw.get("/sub")
    assert r.status == 301 and r.header("location") == "http://localhost/sub/"


async def test_large_static_file_via_sendfile(start_gateway, tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(5 * 1024 * 1024 + 123)
    (root / "blob.bin").write_bytes(data)
    gw = await start_gateway(root)
    r = await gw.get("/blob.bin")
    assert r.status == 200 and r.body == data


async def test_stderr_goes_to_the_error_log(gw, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        r = await gw.get("/stderr.php")
    assert r.body == b"logged"
    assert "a line for the error log from stderr.php" in caplog.text


async def test_ipv6_and_unix_listeners(start_gateway, tmp_path):
    sock = str(tmp_path / "gw.sock")
    gw = await start_gateway(server={"listen": ["127.0.0.1:0", "[::1]:0", f"unix:{sock}"]})
    v6 = next(lst for lst in gw.running.listeners if lst.socket.family.name == "AF_INET6")
    c6 = await HttpClient.connect(v6.socket.getsockname()[1], host="::1")
    r = await c6.request("GET", "/server.php")
    assert json.loads(r.body)["server"]["REMOTE_ADDR"] == "::1"
    cu = HttpClient(await trio.open_unix_socket(sock))
    r = await cu.request("GET", "/pid.php")
    assert r.status == 200


async def test_uploads_larger_than_php_ini_defaults_are_accepted(gw):
    # php.ini defaults upload_max_filesize=2M and post_max_size=8M; the spawned
    # pool raises both to client_max_body_size so WordPress media uploads work.
    payload = os.urandom(9 * 1024 * 1024)
    ctype, body = multipart({}, {"file": ("big.jpg", payload)})
    r = await gw.get("/server.php", method="POST", body=body, headers=[("Content-Type", ctype)])
    assert json.loads(r.body)["files"]["file"]["md5"] == hashlib.md5(payload).hexdigest()


@pytest.mark.parametrize("first_ms", [
    300,  # shorter than LONG_WAIT: no watcher; the quitter is caught as it leaves the queue
    2500,  # longer: the watcher takes the quitter out of the queue while the first still runs
])
async def test_client_that_leaves_the_queue_never_costs_a_php_worker(start_gateway, tmp_path, first_ms):
    gw = await start_gateway(backend={"pool_size": 1})
    log = tmp_path / "runs.log"
    first = await gw.client()
    async with trio.open_nursery() as n:
        n.start_soon(first.request, "GET", f"/slow.php?ms={first_ms}&log={log}&who=first")
        with trio.fail_after(10):
            while gw.pool.busy < 1:
                await gw.pool.changed()
        quitter = await gw.client()
        await quitter.stream.send_all(
            f"GET /slow.php?ms=10&log={log}&who=quitter HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        with trio.fail_after(10):
            while gw.pool.waiting < 1:
                await gw.pool.changed()
        await quitter.aclose()
        with trio.fail_after(10):
            while gw.pool.waiting:
                await gw.pool.changed()
        if first_ms > 1000:
            assert gw.pool.busy == 1  # out of the queue before the first request ended
    assert gw.pool.stats.client_gone_in_queue == 1
    # php-fpm ran the first request only
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "end"]
    assert (await gw.get("/pid.php")).status == 200


async def test_php_fpm_answers_get_values_through_the_sans_io_library(gw):
    import fastcgi

    stream = await trio.open_unix_socket(gw.supervisor.paths.socket)
    conn = fastcgi.Connection(fastcgi.CLIENT)
    names = (fastcgi.FCGI_MAX_CONNS, fastcgi.FCGI_MAX_REQS, fastcgi.FCGI_MPXS_CONNS)
    await stream.send_all(conn.send(fastcgi.GetValues(names)))
    with trio.fail_after(5):
        while (event := conn.next_event()) is fastcgi.NEED_DATA:
            conn.receive_data(await stream.receive_some(4096))
    await stream.aclose()
    assert isinstance(event, fastcgi.GetValuesResult)
    assert dict(event.values)[fastcgi.FCGI_MPXS_CONNS] == b"0"


async def test_spawned_php_fpm_outlives_idle_worker_threads(gw):
    # Regression: with PR_SET_PDEATHSIG, php-fpm got SIGTERM when the trio
    # worker thread that forked it idled out, 10 s after start. This waits
    # out that thread lifetime on purpose.
    master = gw.supervisor.process.pid
    await trio.sleep(11)
    assert gw.supervisor.process.pid == master and gw.supervisor.restarts == 0
    assert (await gw.get("/pid.php")).status == 200


async def test_server_timing_and_json_access_log(start_gateway, caplog):
    import logging

    gw = await start_gateway(server={"server_timing": True, "access_log_format": "json"})
    logger = logging.getLogger("gateway.access")
    logger.disabled = False
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        r = await gw.get("/slow.php?ms=50")
        # the access log line is written once the response is sent; let the server get there
        await trio.testing.wait_all_tasks_blocked()
    timing = r.header("server-timing")
    assert timing.startswith("queue;dur=") and ", php;dur=" in timing
    assert float(timing.split("php;dur=")[1]) >= 50
    entry = json.loads(next(rec.getMessage() for rec in caplog.records if rec.name == "gateway.access"))
    assert entry["uri"] == "/slow.php?ms=50" and entry["status"] == 200
    assert entry["php_time"] >= 0.05 and entry["queue_wait"] is not None


async def test_server_sent_events_arrive_one_by_one(gw, tmp_path):
    client = await gw.client()
    await client.stream.send_all(f"GET /sse.php?dir={tmp_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = b""
    with trio.fail_after(20):
        for i in range(3):
            while f"data: event {i}\n\n".encode() not in got:
                got += await client.stream.receive_some(65536)
            # PHP cannot have written event i+1: it waits for go-i, created only now
            assert f"event {i + 1}".encode() not in got
            (tmp_path / f"go-{i}").touch()
    assert b"content-type: text/event-stream" in got.lower()
    await client.aclose()


async def test_connections_per_ip_limit_and_max_connections(start_gateway):
    gw = await start_gateway(limits={"max_connections_per_ip": 2})
    a, b = await gw.client(), await gw.client()
    assert (await a.request("GET", "/hello.txt")).status == 200
    assert (await b.request("GET", "/hello.txt")).status == 200
    third = await gw.client()
    r = await third.read_response()
    assert (r.status, r.header("retry-after")) == (503, "1")
    await a.aclose()
    with trio.fail_after(5):
        while gw.running.listener_state.stats.open_connections > 1:  # noqa: ASYNC110 - poll, bounded
            await trio.sleep(0.01)
    fourth = await gw.client()
    assert (await fourth.request("GET", "/hello.txt")).status == 200


async def test_spawned_pools_buffer_php_output_in_64k_pieces_unless_told_otherwise(start_gateway):
    gw = await start_gateway()
    assert (await gw.get("/ini.php?name=output_buffering")).body == b"65536"
    gw2 = await start_gateway(backend={"php_fpm": {"php_admin_values": {"output_buffering": "4096"}}})
    assert (await gw2.get("/ini.php?name=output_buffering")).body == b"4096"


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_killed_php_fpm_master_takes_its_workers_along_before_the_restart(start_gateway):
    gw = await start_gateway(backend={"pool_size": 3})
    sup = gw.supervisor
    master = sup.process.pid
    old_workers = children_of(master)
    assert len(old_workers) >= 3 and (await gw.get("/pid.php")).status == 200
    os.kill(master, signal.SIGKILL)  # the master alone: its workers are orphaned
    with trio.fail_after(20):
        await sup.wait_for_start(2)
    assert [pid for pid in old_workers if _running(pid)] == []
    new_master = sup.process.pid
    assert new_master != master
    r = await gw.get("/pid.php")
    assert r.status == 200 and int(r.body) in children_of(new_master)


@pytest.mark.parametrize(("method", "status", "runs"), [
    ("GET", 200, ["GET", "GET"]),  # idempotent: retried once on a fresh connection
    ("POST", 502, ["POST"]),  # may have run: never run twice (nginx never retries a POST once sent)
])
async def test_a_worker_dying_on_a_reused_connection(start_gateway, tmp_path, method, status, runs):
    gw = await start_gateway(backend={"pool_size": 1})
    c = await gw.client()
    assert (await c.request("GET", "/pid.php")).status == 200  # the pool's one connection, kept
    marker = tmp_path / f"died-{method}"
    r = await c.request(method, f"/die_once.php?marker={marker}", body=b"x=1" if method == "POST" else None)
    assert r.status == status
    assert (tmp_path / f"died-{method}.log").read_text().split() == runs


async def test_shutdown_ends_an_ignore_client_abort_run_after_graceful(tmp_path):
    # the run is shielded from its client, not from SIGTERM: the process must
    # stop after timeouts.graceful (it stayed until PHP ended: 30 s for 5 s)
    from functools import partial

    from gateway.config import validate
    from gateway.serve.process import serve
    from tests.integration.conftest import DOCROOT, gateway_config

    cfg = validate({**gateway_config(DOCROOT, backend={"ignore_client_abort": True},
                                     runtime_dir=str(tmp_path / "run")),
                    "timeouts": {"graceful": "1s"}})
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(partial(serve, cfg, handle_signals=False))
            port = running.listeners[0].socket.getsockname()[1]
            client = await HttpClient.connect(port)
            await client.stream.send_all(b"GET /slow.php?ms=15000 HTTP/1.1\r\nHost: x\r\n\r\n")
            while not running.pools["php"].busy:
                await running.pools["php"].changed()
            t0 = trio.current_time()
            running.shutdown.set()
        assert trio.current_time() - t0 < 5  # graceful (1 s) and php-fpm's stop, not PHP's 15 s
        await client.aclose()
