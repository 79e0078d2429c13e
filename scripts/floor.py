"""The floor under any trio + h11 server on this machine: how fast can a
server built on our fixed choices answer at all, and at what CPU per request?

Three servers, each in N processes sharing one listen socket (as the gateway's
workers do), measured with the same wrk run as scripts/bench (64 connections):

- ``trio-echo``: trio only. Reads a request (up to the blank line, no parsing)
  and writes a fixed 1 KiB response: the cost of trio's scheduling and the
  socket calls alone.
- ``trio-h11``: the same with h11 parsing the request and writing the response
  head (the ``Server``, ``Date``, ``Content-Type``, ``Content-Length`` a real
  server sends): what HTTP/1.1 costs on top; ``trio-h11c`` with h11 compiled by
  mypyc (h11-mypyc, the opt-in [fast] extra; skipped where it is not installed).
- ``gateway``: the gateway serving a 1 KiB static file, on upstream h11 (GATEWAY_H11=h11).

and nginx and Caddy (where installed; scripts/bench's, from the same Stack)
serving the same file. Every row has its CPU µs per request: the CPU time of
all the server's processes (scripts/bench's ``cpu_seconds``: the process and
its children) over the requests wrk counted, measured after a 2 s warm-up;
that figure stays comparable on a busy machine where req/s does not. ``sys %``
is the kernel's share of it (socket calls, wake-ups, page faults: what no
Python-level change removes; the user/system split is sampled per tick).
``--reps`` runs all rows that many times in alternation and prints medians.

If the floor is below a target, no work on the gateway's own code can reach it
with trio + h11. ``--size`` changes the
response (e.g. 52000, a cached WordPress home page: the floor under the
"wordpress home cached" row, which nginx answers from its cache as a file)
and ``--connections`` wrk's connections (that row runs 16).

``--php`` and ``--page``: the floors under issue 19's PHP targets, on the
Stack scripts/bench runs (one php-fpm pool, pm = static, 4 workers; nginx,
the gateway and Caddy with ``--processes`` processes, their kept FastCGI
connections split between them; a drain until php-fpm is idle after each
row, as bench does). ``trio-h11-fcgi`` is the least any trio gateway does
for a PHP request: h11 parses the request; the CGI params that never change
are encoded once, the few that do (SCRIPT_FILENAME, REQUEST_URI, the
client's address, the headers...) per request with our ``fastcgi.encode_pairs``;
BEGIN_REQUEST, PARAMS and the empty STDIN go in one send over a kept-alive
FastCGI connection from a free list (at most 4 / processes per process: one
per concurrent request; when none is free the request parks in a FIFO and is
handed one); STDOUT is read until END_REQUEST, the CGI head split for Status
and Content-Type, and h11 writes the answer (Server, Date, Content-Type,
Content-Length). Socket calls are made first and wait only when they would
block (as the gateway's ``SockIO``; a PHP request waits for php-fpm, so it
yields at least once). No timeouts, routing, logging, or checks: the floor.
``trio-h11-fcgi-t``: the same with one ``trio.fail_after`` around each
request (what the least timeout costs); ``trio-h11-fcgi-s``: with trio's
socket methods (a yield to the scheduler per call, also one that does not
block: what the gateway's ``SockIO`` saves).

- ``--php``: hello.php (bench's), 64 connections: the floor under
  "hello.php c64 >= 0.9x Caddy, <= 150 µs of gateway CPU per request".
- ``--page``: path-cpu's ``wp.php`` (50 KB of HTML in 7 flushed pieces, 3 ms
  of PHP CPU before each: the records arrive one by one, at ~50-100 pages a
  second, as WordPress's do), 16 connections: the floor under "WordPress
  home <= 0.5 ms of gateway CPU per page", and whether the gateway's ~1 ms
  per page at that rate is its own code or trio waking an idle loop.

Without ``--static``, ``--php`` or ``--page`` the static rows run; with
several, one table each, from one Stack.

    scripts/floor [--static] [--php] [--page] [--processes N] [--duration 5] [--reps 1]
                  [--size 1024] [--connections 64] [--fpm-workers 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import Stack, free_port, port_open, wait_for
from bench import DOCROOT, drain, wrk
from path_cpu import WP_PAGE

from gateway.observe.monitor import children_of

SIZE = int(os.environ.get("FLOOR_SIZE", "1024"))  # the children learn --size from the parent this way
BODY = b"x" * SIZE
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: floor\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(SIZE).encode() + b"\r\n\r\n" + BODY)


def serve_echo(sock: socket.socket) -> None:
    import trio

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                _, _, buf = buf.partition(b"\r\n\r\n")
                await stream.send_all(RESPONSE)
        except trio.BrokenResourceError:
            pass

    async def main() -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        await trio.serve_listeners(handle, [listener])

    trio.run(main)


def serve_h11(sock: socket.socket, compiled: bool = False) -> None:
    import trio

    if compiled:
        import h11_mypyc as h11
    else:
        import h11

    from gateway.http.response import http_date

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Request):
                    while not isinstance(conn.next_event(), h11.EndOfMessage):
                        pass
                    out = conn.send(h11.Response(status_code=200, headers=[
                        (b"server", b"floor"), (b"date", http_date()), (b"content-type", b"text/plain"),
                        (b"content-length", str(SIZE).encode())]))
                    out += conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                    conn.start_next_cycle()
                    continue
                return
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            pass

    async def main() -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        await trio.serve_listeners(handle, [listener])

    trio.run(main)


#: (FastCGI) the 8-byte record header; BEGIN_REQUEST (responder, keep the connection); the empty
#: PARAMS and STDIN records that end the request
FCGI_HEADER = struct.Struct(">BBHHBx")
FCGI_BEGIN = FCGI_HEADER.pack(1, 1, 1, 8, 0) + b"\x00\x01\x01\x00\x00\x00\x00\x00"
FCGI_END_PARAMS_STDIN = FCGI_HEADER.pack(1, 4, 1, 0, 0) + FCGI_HEADER.pack(1, 5, 1, 0, 0)
#: the --serve trio-h11-fcgi-t variant's one deadline per request
REQUEST_TIMEOUT = 60.0


def serve_fcgi(sock: socket.socket, fpm: str, pool: int, root: bytes, kind: str) -> None:
    """The least a trio gateway does for a PHP request: h11 parses it, params
    (the constant ones encoded once) go over a kept-alive FastCGI connection
    from a free list of at most ``pool`` (a FIFO of parked tasks when none is
    free, handed a connection directly), STDOUT is read until END_REQUEST,
    the CGI head is split for Status and Content-Type, and h11 writes the
    answer. Socket calls are made first and wait (``wait_readable`` /
    ``wait_writable``) only when the kernel says they would block, as the
    gateway's ``SockIO`` does: a PHP request always waits for php-fpm, so it
    yields at least once. ``kind``: ``-t`` one ``fail_after`` around each
    request; ``-s`` trio's socket methods instead (a yield per call, also
    when it does not block)."""
    import collections

    import h11
    import outcome
    import trio

    from fastcgi import encode_pairs
    from gateway.http.response import http_date

    timeout, stock = kind.endswith("-t"), kind.endswith("-s")
    const = encode_pairs([
        (b"CONTENT_TYPE", b""), (b"CONTENT_LENGTH", b""), (b"DOCUMENT_ROOT", root), (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"REQUEST_SCHEME", b"http"), (b"GATEWAY_INTERFACE", b"CGI/1.1"), (b"SERVER_SOFTWARE", b"floor"),
        (b"REMOTE_USER", b""), (b"SERVER_ADDR", b"127.0.0.1"), (b"SERVER_PORT", str(sock.getsockname()[1]).encode()),
        (b"SERVER_NAME", b"localhost"), (b"REDIRECT_STATUS", b"200"), (b"PATH_INFO", b"")])
    Sock = tuple[socket.socket, trio.socket.SocketType]  # noqa: N806 (the stdlib socket, its trio wrapper)
    free: list[Sock] = []
    waiting: collections.deque[trio.lowlevel.Task] = collections.deque()
    opened = 0

    async def recv(s: Sock) -> bytes:
        if stock:
            return await s[1].recv(65536)
        while True:
            try:
                return s[0].recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(s[0])

    async def send_all(s: Sock, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if stock:
                view = view[await s[1].send(view):]
                continue
            try:
                view = view[s[0].send(view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(s[0])

    async def take() -> Sock:
        nonlocal opened
        if free:
            return free.pop()
        if opened < pool:
            opened += 1
            raw = socket.socket(socket.AF_UNIX)
            raw.connect(fpm)
            raw.setblocking(False)
            return raw, trio.socket.from_stdlib_socket(raw)
        waiting.append(trio.lowlevel.current_task())
        conn: Sock = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return conn

    def give(s: Sock) -> None:
        if waiting:
            trio.lowlevel.reschedule(waiting.popleft(), outcome.Value(s))
        else:
            free.append(s)

    async def php(req: h11.Request, remote: list[tuple[bytes, bytes]]) -> tuple[int, bytes, bytes]:
        path, _, query = req.target.partition(b"?")
        params = const + encode_pairs([
            (b"SCRIPT_FILENAME", root + path), (b"QUERY_STRING", query), (b"REQUEST_METHOD", req.method),
            (b"SCRIPT_NAME", path), (b"REQUEST_URI", req.target), (b"DOCUMENT_URI", path), *remote,
            *((b"HTTP_" + name.upper().replace(b"-", b"_"), value) for name, value in req.headers)])
        pad = -len(params) & 7
        stdout: list[bytes] = []
        s = await take()
        await send_all(s, b"".join((FCGI_BEGIN, FCGI_HEADER.pack(1, 4, 1, len(params), pad), params, bytes(pad),
                                    FCGI_END_PARAMS_STDIN)))
        buf, pos, done = b"", 0, False
        while not done:
            data = await recv(s)
            if not data:
                raise ConnectionError("php-fpm closed the connection")
            buf = buf[pos:] + data if pos < len(buf) else data
            pos = 0
            while len(buf) - pos >= 8:
                _, rtype, _, clen, plen = FCGI_HEADER.unpack_from(buf, pos)
                end = pos + 8 + clen + plen
                if end > len(buf):
                    break
                if rtype == 6:  # STDOUT
                    stdout.append(buf[pos + 8:pos + 8 + clen])
                elif rtype == 3:  # END_REQUEST
                    done = True
                pos = end
        give(s)
        head, _, body = b"".join(stdout).partition(b"\r\n\r\n")
        status, content_type = 200, b"text/html"
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"status":
                status = int(value.split()[0])
            elif name == b"content-type":
                content_type = value.strip()
        return status, content_type, body

    async def answer(s: Sock, conn: h11.Connection, req: h11.Request, remote: list[tuple[bytes, bytes]]) -> None:
        status, content_type, body = await php(req, remote)
        out = conn.send(h11.Response(status_code=status, headers=[
            (b"server", b"floor"), (b"date", http_date()), (b"content-type", content_type),
            (b"content-length", str(len(body)).encode())]))
        await send_all(s, out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))

    async def handle(s: Sock, peer: tuple[str, int]) -> None:
        conn = h11.Connection(h11.SERVER)
        remote = [(b"REMOTE_ADDR", peer[0].encode()), (b"REMOTE_PORT", str(peer[1]).encode())]
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await recv(s))
                    continue
                if isinstance(event, h11.Request):
                    while not isinstance(conn.next_event(), h11.EndOfMessage):
                        pass
                    if timeout:
                        with trio.fail_after(REQUEST_TIMEOUT):
                            await answer(s, conn, event, remote)
                    else:
                        await answer(s, conn, event, remote)
                    conn.start_next_cycle()
                    continue
                return
        except (OSError, h11.RemoteProtocolError):
            pass
        finally:
            s[0].close()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    raw, peer = sock.accept()
                except BlockingIOError:
                    continue
                raw.setblocking(False)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(handle, (raw, trio.socket.from_stdlib_socket(raw)), peer)

    trio.run(main)


def start_floor(kind: str, processes: int, extra: list[str]) -> tuple[int, list[subprocess.Popen[bytes]]]:
    port = free_port()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    procs = [subprocess.Popen([sys.executable, __file__, "--serve", kind, "--fd", str(sock.fileno()), *extra],
                              pass_fds=[sock.fileno()]) for _ in range(processes)]
    sock.close()
    wait_for(lambda: port_open(port), what=kind)
    return port, procs


def stack_pid(stack: Stack, program: str) -> int:
    """The pid of the Stack's nginx (its master) or Caddy."""
    return next(proc.pid for proc in stack.procs if Path(str(proc.args[0])).name == program)


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of ``pids`` and their children: scripts/bench's
    ``cpu_seconds``, split (the kernel's split is sampled at each tick; the sum is exact)."""
    user = system = 0
    for proc in [p for pid in pids for p in (pid, *children_of(pid))]:
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def measure(port: int, pids: list[int], path: str, connections: int, duration: int) -> dict[str, float]:
    """A warm-up, then wrk as scripts/bench runs it; ``cpu_us``: the CPU time of
    ``pids`` and their children (all the server's processes) over the requests
    answered, as scripts/bench's gateway CPU column; ``sys``: the kernel's share of it."""
    wrk(port, path, connections, 2, 10)
    user0, sys0 = cpu_times(pids)
    r = wrk(port, path, connections, duration, 10)
    user1, sys1 = cpu_times(pids)
    cpu = user1 + sys1 - user0 - sys0
    r["cpu_us"] = cpu / r["requests"] * 1e6 if r["requests"] else float("nan")
    r["sys"] = (sys1 - sys0) / cpu if cpu else float("nan")
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--reps", type=int, default=1, help="rounds of all rows, in alternation (medians; default 1)")
    p.add_argument("--size", type=int, default=1024, help="response body bytes (default 1024)")
    p.add_argument("--connections", type=int,
                   help="wrk connections (default 64; --page: 16)")
    p.add_argument("--static", action="store_true", help="the static rows (the default without --php, --page)")
    p.add_argument("--php", action="store_true", help="the hello.php rows")
    p.add_argument("--page", action="store_true", help="the 50 KB PHP page rows (WordPress's case)")
    p.add_argument("--fpm-workers", type=int, default=4, help="php-fpm's workers (default 4, as scripts/bench)")
    for hidden in ("--serve", "--fpm", "--root"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pool", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        sock = socket.socket(fileno=args.fd)
        if args.serve == "trio-echo":
            serve_echo(sock)
        elif args.serve.startswith("trio-h11-fcgi"):
            serve_fcgi(sock, args.fpm, args.pool, args.root.encode(), args.serve)
        else:
            serve_h11(sock, compiled=args.serve == "trio-h11c")
        return 0
    global BODY
    BODY = b"x" * args.size
    os.environ["FLOOR_SIZE"] = str(args.size)
    os.environ.setdefault("GATEWAY_H11", "h11")  # the gateway row on the default install's parser
    static_kinds = ["trio-echo", "trio-h11"] + (["trio-h11c"] if importlib.util.find_spec("h11_mypyc") else [])
    php_kinds = ["trio-h11-fcgi", "trio-h11-fcgi-t", "trio-h11-fcgi-s"]
    modes = ([("static", "/body.txt", args.connections or 64, static_kinds)]
             if args.static or not (args.php or args.page) else [])
    if args.php:
        modes.append(("hello.php", "/hello.php", args.connections or 64, php_kinds))
    if args.page:
        modes.append(("page", "/wp.php", args.connections or 16, php_kinds))
    caddy = shutil.which("caddy") is not None
    root = Path(tempfile.mkdtemp(prefix="floor-"))
    root.chmod(0o755)
    (root / "body.txt").write_bytes(BODY)
    (root / "hello.php").write_text(DOCROOT["hello.php"])
    (root / "wp.php").write_text(WP_PAGE)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with Stack(root, workers=args.fpm_workers, idle_timeout=1.0, processes=args.processes, caddy=caddy) as stack:
        status_socket = stack.fpm_socket.replace("php.sock", "status.sock")
        # the FastCGI floor's pool, split per process as the gateway's and nginx's keep-alive caches are
        fcgi = ["--fpm", stack.fpm_socket, "--pool", str(max(1, args.fpm_workers // args.processes)),
                "--root", str(root)]
        servers = [("gateway", stack.gateway_port, stack.gateway_pid),
                   ("nginx", stack.nginx_port, stack_pid(stack, "nginx"))]
        if caddy:
            servers.append(("caddy", stack.caddy_port, stack_pid(stack, "caddy")))
        for _ in range(args.reps):
            for mode, path, connections, kinds in modes:
                rows = results.setdefault(mode, {})
                for name, port, pid in [(kind, 0, 0) for kind in kinds] + servers:
                    procs = []
                    if not pid:  # a floor server, started for its row
                        port, procs = start_floor(name, args.processes, fcgi)
                    try:
                        r = measure(port, [proc.pid for proc in procs] or [pid], path, connections, args.duration)
                    finally:
                        for proc in procs:
                            proc.terminate()
                        for proc in procs:
                            proc.wait(10)
                    rows.setdefault(name, []).append(r)
                    print(f"  {mode:9} {name:16} {r['rps']:9.0f} req/s {r['cpu_us']:7.0f} µs/req "
                          f"errors {r['errors']:.0f}", file=sys.stderr, flush=True)
                    if mode != "static":  # kept-alive FastCGI connections closed, php-fpm idle: see bench.drain
                        drain(status_socket, 1.5)
    shutil.rmtree(root, ignore_errors=True)
    for mode, path, connections, _ in modes:
        what = (f"{args.size}-byte responses" if mode == "static"
                else f"{path} through php-fpm ({args.fpm_workers} workers)")
        print(f"\n{what}, wrk {connections} connections, {args.duration}s, medians of {args.reps}, "
              f"{args.processes} processes each; load average {os.getloadavg()[0]:.1f}")
        print_table(results[mode])
    return 0


def print_table(results: dict[str, list[dict[str, float]]]) -> None:
    """req/s, p99, the ratios to nginx and Caddy, and CPU µs per request (all the server's processes)."""
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    nginx = med("nginx", "rps")
    caddy = med("caddy", "rps") if "caddy" in results else float("nan")
    print(f"{'server':16} {'req/s':>9} {'p99 ms':>8} {'vs nginx':>8} {'vs Caddy':>8} {'CPU µs/req':>10} {'sys %':>5}")
    for name in results:
        rps = med(name, "rps")
        print(f"{name:16} {rps:9.0f} {med(name, 'p99'):8.2f} {rps / nginx:8.2f} {rps / caddy:8.2f} "
              f"{med(name, 'cpu_us'):10.0f} {100 * med(name, 'sys'):5.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
