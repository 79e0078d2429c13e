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
that figure stays comparable on a busy machine where req/s does not.
``--reps`` runs all rows that many times in alternation and prints medians.

If the floor is below a target, no work on the gateway's own code can reach it
with trio + h11. ``--size`` changes the
response (e.g. 52000, a cached WordPress home page: the floor under the
"wordpress home cached" row, which nginx answers from its cache as a file)
and ``--connections`` wrk's connections (that row runs 16).

    scripts/floor [--processes N] [--duration 5] [--reps 1] [--size 1024] [--connections 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import Stack, free_port, port_open, wait_for
from bench import cpu_seconds, wrk

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


def start_floor(kind: str, processes: int) -> tuple[int, list[subprocess.Popen[bytes]]]:
    port = free_port()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    procs = [subprocess.Popen([sys.executable, __file__, "--serve", kind, "--fd", str(sock.fileno())],
                              pass_fds=[sock.fileno()]) for _ in range(processes)]
    sock.close()
    wait_for(lambda: port_open(port), what=kind)
    return port, procs


def stack_pid(stack: Stack, program: str) -> int:
    """The pid of the Stack's nginx (its master) or Caddy."""
    return next(proc.pid for proc in stack.procs if Path(str(proc.args[0])).name == program)


def measure(port: int, pids: list[int], path: str, args: argparse.Namespace) -> dict[str, float]:
    """A warm-up, then wrk as scripts/bench runs it; ``cpu_us``: the CPU time of
    ``pids`` and their children (all the server's processes) over the requests
    answered, as scripts/bench's gateway CPU column."""
    wrk(port, path, args.connections, 2, 10)
    cpu0 = sum(cpu_seconds(pid) for pid in pids)
    r = wrk(port, path, args.connections, args.duration, 10)
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
    r["cpu_us"] = cpu / r["requests"] * 1e6 if r["requests"] else float("nan")
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--reps", type=int, default=1, help="rounds of all rows, in alternation (medians; default 1)")
    p.add_argument("--size", type=int, default=1024, help="response body bytes (default 1024)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        sock = socket.socket(fileno=args.fd)
        if args.serve == "trio-echo":
            serve_echo(sock)
        else:
            serve_h11(sock, compiled=args.serve == "trio-h11c")
        return 0
    global BODY
    BODY = b"x" * args.size
    os.environ["FLOOR_SIZE"] = str(args.size)
    os.environ.setdefault("GATEWAY_H11", "h11")  # the gateway row on the default install's parser
    kinds = ["trio-echo", "trio-h11"] + (["trio-h11c"] if importlib.util.find_spec("h11_mypyc") else [])
    caddy = shutil.which("caddy") is not None
    root = Path(tempfile.mkdtemp(prefix="floor-"))
    root.chmod(0o755)
    (root / "body.txt").write_bytes(BODY)
    results: dict[str, list[dict[str, float]]] = {}
    with Stack(root, workers=2, processes=args.processes, caddy=caddy) as stack:
        servers = [("gateway", stack.gateway_port, stack.gateway_pid),
                   ("nginx", stack.nginx_port, stack_pid(stack, "nginx"))]
        if caddy:
            servers.append(("caddy", stack.caddy_port, stack_pid(stack, "caddy")))
        for _ in range(args.reps):
            for kind in kinds:
                port, procs = start_floor(kind, args.processes)
                try:
                    results.setdefault(kind, []).append(measure(port, [proc.pid for proc in procs], "/body.txt", args))
                finally:
                    for proc in procs:
                        proc.terminate()
                    for proc in procs:
                        proc.wait(10)
            for name, port, pid in servers:
                results.setdefault(name, []).append(measure(port, [pid], "/body.txt", args))
    shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}; {args.size}-byte responses, wrk {args.connections} connections, "
          f"{args.duration}s, medians of {args.reps}, {args.processes} processes each")
    print_table(results)
    return 0


def print_table(results: dict[str, list[dict[str, float]]]) -> None:
    """req/s, p99, the ratios to nginx and Caddy, and CPU µs per request (all the server's processes)."""
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    nginx = med("nginx", "rps")
    caddy = med("caddy", "rps") if "caddy" in results else float("nan")
    print(f"{'server':14} {'req/s':>9} {'p99 ms':>8} {'vs nginx':>8} {'vs Caddy':>8} {'CPU µs/req':>10}")
    for name in results:
        rps = med(name, "rps")
        print(f"{name:14} {rps:9.0f} {med(name, 'p99'):8.2f} {rps / nginx:8.2f} {rps / caddy:8.2f} "
              f"{med(name, 'cpu_us'):10.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
