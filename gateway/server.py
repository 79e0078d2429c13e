"""``serve``: listeners, php-fpm supervisors, pools, connection tasks, shutdown.

Nurseries, outermost first:
1. ``system``: php-fpm supervisors and pool reapers; lives until everything
   else is done, so php-fpm stops last.
2. ``connections``: one task per client connection (``HttpConnection.run``).
3. ``accept``: ``trio.serve_listeners`` with ``handler_nursery=connections``.

Shutdown (SIGTERM/SIGINT, or ``shutdown`` set by a caller): cancel the accept
nursery and close the listening sockets at once (new connects are refused, as
with nginx; a worker process closes its inherited copies, its master its own),
tell connections (idle ones close at once, busy ones finish with ``Connection:
close``), give them ``graceful`` seconds, then cancel what is left; then close
pools and stop php-fpm. Every phase has a deadline.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
import shutil
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from .admin import AdminApp
from .app import App
from .config import Config
from .http_connection import ConnectionSettings, Handler, HttpConnection, Lifecycle
from .monitor import Monitor, PoolMonitor
from .parking import Parked, Parker
from .pool import Pool, make_connector
from .supervisor import PhpFpmSupervisor, make_runtime_dir

log = logging.getLogger("gateway.server")


def parse_listen(address: str) -> tuple[str, str | tuple[str, int]]:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``":8080"``, ``"8080"``, ``"unix:/path"``."""
    if address.startswith("unix:"):
        return "unix", address[5:]
    if address.isdigit():
        return "tcp", ("", int(address))
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {address!r} is not HOST:PORT, [V6]:PORT, :PORT or unix:/path")
    return "tcp", (host.strip("[]"), int(port))


async def open_listeners(addresses: list[str]) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = []
    try:
        for address in addresses:
            kind, where = parse_listen(address)
            if kind == "unix":
                assert isinstance(where, str)
                listeners.append(await _open_unix_listener(where))
            else:
                assert isinstance(where, tuple)
                host, port = where
                listeners += await trio.open_tcp_listeners(port, host=host or None, backlog=1024)
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners


async def _open_unix_listener(path: str) -> trio.SocketListener:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o666)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _addresses(stream: trio.SocketStream) -> tuple[tuple[str, int], tuple[str, int]]:
    sock = stream.socket
    if sock.family == socket.AF_UNIX:
        return ("unix:", 0), ("unix:", 0)
    peer = sock.getpeername()
    local = sock.getsockname()
    return (peer[0], peer[1]), (local[0], local[1])


def connection_settings(config: Config) -> ConnectionSettings:
    t, lim = config.timeouts, config.limits
    return ConnectionSettings(
        header_timeout=t.client_header,
        body_timeout=t.client_body,
        keepalive_timeout=t.keepalive,
        send_timeout=t.send,
        max_header_size=lim.max_header_size,
        max_uri_size=lim.max_uri_size,
        max_header_count=lim.max_header_count,
        max_body_size=lim.client_max_body_size,
        body_buffer_size=lim.body_buffer_size,
        body_min_rate=t.client_body_min_rate,
        keepalive_requests=lim.keepalive_requests,
        temp_dir=config.server.temp_dir or None,
        server_software=config.server.server_software.encode(),
        access_log_json=config.server.access_log_format == "json",
    )


@dataclass
class Running:
    """What a started server exposes to its caller (and to tests)."""

    listeners: list[trio.SocketListener]
    pools: dict[str, Pool]
    supervisors: dict[str, PhpFpmSupervisor]
    lifecycle: Lifecycle
    monitor: Monitor
    admin_listeners: list[trio.SocketListener] = field(default_factory=list)
    shutdown: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True)
class _Service:
    """Listeners and the handler that serves their connections."""

    listeners: list[trio.SocketListener]
    handler: Handler
    settings: ConnectionSettings
    lifecycle: Lifecycle
    max_connections: int = 10000
    max_connections_per_ip: int = 0


#: accept() errors that mean "out of a resource right now": log, wait, retry
#: (as trio.serve_listeners does). Never a crash.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY = 0.1
#: File descriptors kept free for php-fpm connections, temp files and logs.
FD_RESERVE = 256

_TOO_MANY_FROM_IP = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")


class Client:
    """An accepted connection and what it holds (its max_connections slot, its
    per-IP count), released once, when it is finally closed: by its task, or
    by the parker if it expires there."""

    __slots__ = ("stream", "peer", "local", "_releases")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream  # a SocketStream when served; any stream in the accept loop's tests
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self._releases: list[Callable[[], None]] = []

    def on_close(self, release: Callable[[], None]) -> None:
        self._releases.append(release)

    def _release(self) -> None:
        releases, self._releases = self._releases, []
        for release in releases:
            release()

    def close(self) -> None:
        """Close now (the parker: no task waits on the socket)."""
        self._release()
        self.stream.socket.close()

    async def aclose(self) -> None:
        self._release()
        await trio.aclose_forcefully(self.stream)


ClientHandler = Callable[[Client], Awaitable[bool]]


async def serve_listener(listener: trio.SocketListener, handler: ClientHandler, nursery: trio.Nursery,
                         slots: trio.CapacityLimiter, parker: Parker | None = None) -> None:
    """Accept connections while fewer than ``slots.total_tokens`` are open.

    At the limit it stops calling accept(): new clients wait in the kernel's
    backlog while open connections keep being served. When one does wait there,
    the idle keep-alive connection parked longest in ``parker`` is closed to
    make room for it (as nginx reuses idle keep-alive connections when
    worker_connections run out); a connection mid-request is never closed for
    this. Resource errors from accept() (EMFILE, ENFILE, ENOMEM, ENOBUFS) are
    logged and retried after ``ACCEPT_RETRY_DELAY``; other errors propagate.

    Resource handling: each accepted connection's slot is released when it is
    closed (``Client.close``), after its handler returns, or later if the
    handler parked it (returned True).
    """
    while True:
        token = object()
        await _take_slot(listener, slots, token, parker)
        try:
            stream = await listener.accept()
        except OSError as exc:
            slots.release_on_behalf_of(token)
            if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                log.error("accept() failed: %s; retrying in %.1fs (raise the open-files limit or lower "
                          "max_connections)", exc, ACCEPT_RETRY_DELAY)
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            raise
        except BaseException:
            slots.release_on_behalf_of(token)
            raise
        client = Client(stream)
        client.on_close(partial(slots.release_on_behalf_of, token))
        nursery.start_soon(run_client, client, handler)


#: At most one "max_connections reached" warning per this many seconds.
ROOM_WARNING_INTERVAL = 60.0
_last_room_warning = -math.inf  # time.monotonic()


async def _take_slot(listener: trio.SocketListener, slots: trio.CapacityLimiter, token: object,
                     parker: Parker | None) -> None:
    """Take a slot for the next accept(); at the limit, make room for a client
    that waits in the backlog by closing the connection parked longest."""
    sock = getattr(listener, "socket", None)  # (tests' memory listeners have none)
    while True:
        try:
            slots.acquire_on_behalf_of_nowait(token)
            return
        except trio.WouldBlock:
            pass
        if parker is None or sock is None:
            await slots.acquire_on_behalf_of(token)
            return
        got = False
        async with trio.open_nursery() as nursery:

            async def acquire() -> None:
                nonlocal got
                await slots.acquire_on_behalf_of(token)
                got = True
                nursery.cancel_scope.cancel()

            async def make_room() -> None:
                while True:
                    await trio.lowlevel.wait_readable(sock)  # a client waits to be accepted
                    if parker.close_oldest():
                        break
                    await parker.wait_parked()  # nobody idle (all mid-request): until someone is
                _warn_room(slots.total_tokens)
                nursery.cancel_scope.cancel()  # its slot is free now: take it above

            nursery.start_soon(acquire)
            nursery.start_soon(make_room)
        if got:
            return


def _warn_room(limit: float) -> None:
    global _last_room_warning
    now = time.monotonic()
    if now - _last_room_warning >= ROOM_WARNING_INTERVAL:
        _last_room_warning = now
        log.warning("max_connections (%d) reached: closing idle keep-alive connections to admit new clients "
                    "(raise max_connections if this is frequent)", limit)


async def run_client(client: Client, handler: ClientHandler) -> None:
    parked = False
    try:
        parked = await handler(client)
    except Exception:  # a bug in one connection never ends the others (HttpConnection.run catches its own)
        log.exception("internal error on the connection from %s; closing it", client.peer[0])
    finally:
        if not parked:
            await client.aclose()


def raise_open_files_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (up to the hard limit);
    return the connections that fit below it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    fits = wanted if soft == resource.RLIM_INFINITY else min(wanted, max(16, soft - FD_RESERVE))
    if fits < wanted:
        log.warning("max_connections lowered from %d to %d: the open-files limit is %d", wanted, fits, soft)
    return fits


async def start_backend(config: Config, name: str, runtime_dir: str,
                        system: trio.Nursery) -> tuple[str, str, PhpFpmSupervisor | None]:
    """Backend ``name``'s FastCGI address and status address; a ``spawn``
    backend's php-fpm is started (and supervised) in ``system`` first."""
    backend = config.backends[name]
    if backend.address != "spawn":
        return backend.address, backend.status, None
    roots = [s.root for s in config.sites.values() if s.php == name]
    roots += [a for s in config.sites.values() if s.php == name for a in s.aliases.values()]
    sup = PhpFpmSupervisor(name, backend, runtime_dir, max_body_size=config.limits.client_max_body_size,
                           roots=roots)
    await system.start(sup.run)
    return sup.address, backend.status or "unix:" + sup.paths.status_socket, sup


@dataclass(frozen=True)
class Inherited:
    """What a worker process gets from its master (see ``workers.py``): the
    listen sockets, already bound, and the read end of a pipe whose EOF means
    the master is gone."""

    listen_fds: list[int]
    parent_fd: int | None = None


def inherited_listeners(fds: list[int]) -> list[trio.SocketListener]:
    return [trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd))) for fd in fds]


async def serve(config: Config, *, handle_signals: bool = True, inherited: Inherited | None = None,
                task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the gateway in this process until SIGTERM/SIGINT (or ``Running.shutdown``
    is set). ``inherited``: serve a master's sockets as one of its workers.

    Reports a ``Running`` through ``task_status`` once listening.
    """
    runtime_dir, remove_runtime = make_runtime_dir(config.server.runtime_dir)
    lifecycle = Lifecycle()
    try:
        async with trio.open_nursery() as system:
            supervisors: dict[str, PhpFpmSupervisor] = {}
            pools: dict[str, Pool] = {}
            pool_monitors: list[PoolMonitor] = []
            for name, backend in config.backends.items():
                address, status_address, sup = await start_backend(config, name, runtime_dir, system)
                if sup is not None:
                    supervisors[name] = sup
                pool = Pool(name, make_connector(address), size=backend.workers,
                            queue_depth=backend.queue_limit(config.limits.max_connections),
                            queue_timeout=backend.queue_timeout, connect_timeout=backend.connect_timeout,
                            idle_timeout=backend.idle_timeout)
                pools[name] = pool
                pool_monitors.append(PoolMonitor(pool, sup, status_address, backend.status_path))
                system.start_soon(pool.run_reaper)
            monitor = Monitor(lifecycle.stats, pool_monitors)
            system.start_soon(monitor.run)
            app = App(config, pools)
            settings = connection_settings(config)
            listeners = (inherited_listeners(inherited.listen_fds) if inherited is not None
                         else await open_listeners(config.server.listen))
            max_conns = raise_open_files_limit(config.limits.max_connections)
            services = [_Service(listeners, app.handle, settings, lifecycle, max_conns,
                                 config.limits.max_connections_per_ip)]
            running = Running(listeners, pools, supervisors, lifecycle, monitor)
            if config.admin.listen != "off":
                running.admin_listeners = await open_listeners([config.admin.listen])
                services.append(_Service(running.admin_listeners, AdminApp(monitor).handle,
                                         ConnectionSettings(keepalive_timeout=5.0, header_timeout=10.0),
                                         Lifecycle(), max_connections=64))
            if inherited is None:
                for listener in listeners:
                    log.info("listening on %s", listener.socket.getsockname() or "unix socket")
                for listener in running.admin_listeners:
                    log.info("admin (/status, /metrics) on %s", listener.socket.getsockname())
            else:
                log.debug("worker process %d serving", os.getpid())
            await serve_until_shutdown(running.shutdown, lifecycle, services, config.timeouts.graceful,
                                       handle_signals=handle_signals,
                                       parent_fd=inherited.parent_fd if inherited else None,
                                       on_started=lambda: task_status.started(running))
            for pool in pools.values():
                await pool.aclose()
            system.cancel_scope.cancel()
    finally:
        owned = [config.admin.listen] + (config.server.listen if inherited is None else [])
        for path in _unix_paths(owned):
            try:
                os.unlink(path)
            except OSError:
                pass
        if remove_runtime:
            shutil.rmtree(runtime_dir, ignore_errors=True)


def _unix_paths(addresses: list[str]) -> list[str]:
    return [a[5:] for a in addresses if a.startswith("unix:")]


def _connection_handler(service: _Service, connections: trio.Nursery) -> ClientHandler:
    by_ip: dict[str, int] = {}
    per_ip = service.max_connections_per_ip
    lifecycle = service.lifecycle

    def leave(ip: str) -> None:
        by_ip[ip] -= 1
        if not by_ip[ip]:
            del by_ip[ip]

    async def serve_http(client: Client, served: int = 0) -> bool:
        def resume(parked: Parked) -> None:
            connections.start_soon(run_client, client, partial(serve_http, served=parked.served))

        def park(served: int, deadline: float) -> bool:
            parker = lifecycle.parker
            return parker is not None and parker.park(Parked(client.stream, served, deadline, resume, client.close))

        return await HttpConnection(client.stream, service.handler, service.settings, client=client.peer,
                                    server=client.local, lifecycle=lifecycle, served=served, park=park).run()

    async def handle(client: Client) -> bool:
        stream = client.stream
        if stream.socket.family in (socket.AF_INET, socket.AF_INET6):
            try:
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            client.peer, client.local = _addresses(stream)
        except OSError:
            return False
        ip = client.peer[0]
        if per_ip and by_ip.get(ip, 0) >= per_ip:
            with trio.move_on_after(1.0):
                try:
                    await stream.send_all(_TOO_MANY_FROM_IP)
                except trio.BrokenResourceError:
                    pass
            return False
        by_ip[ip] = by_ip.get(ip, 0) + 1
        client.on_close(partial(leave, ip))
        return await serve_http(client)

    return handle


async def serve_until_shutdown(shutdown: trio.Event, lifecycle: Lifecycle, services: list[_Service], graceful: float,
                               *, handle_signals: bool, on_started: Callable[[], None],
                               parent_fd: int | None = None) -> None:
    """Accept and serve ``services`` until ``shutdown`` is set (or a signal, or the
    master's pipe closes); then close the listeners at once and let connections
    finish within ``graceful`` seconds."""
    async with trio.open_nursery() as connections:
        for service in services:
            service.lifecycle.watchers = connections
            service.lifecycle.parker = Parker(service.lifecycle.stats)
            connections.start_soon(service.lifecycle.parker.run)
        async with trio.open_nursery() as accept:
            for service in services:
                handler = _connection_handler(service, connections)
                slots = trio.CapacityLimiter(service.max_connections)
                for listener in service.listeners:
                    accept.start_soon(serve_listener, listener, handler, connections, slots,
                                      service.lifecycle.parker)
            if handle_signals:
                accept.start_soon(_watch_signals, shutdown)
            if parent_fd is not None:
                accept.start_soon(_watch_parent, parent_fd, shutdown)
            on_started()
            await shutdown.wait()
            accept.cancel_scope.cancel()
        # Close the listening sockets now, as nginx does: a new client is refused at
        # once instead of waiting in the backlog until we exit (and then reset).
        for service in services:
            for listener in service.listeners:
                await trio.aclose_forcefully(listener)
        log.info("shutting down: listeners closed; %d open connections get %.0fs to finish",
                 lifecycle.open_connections, graceful)
        for service in services:
            service.lifecycle.begin_shutdown()
        connections.cancel_scope.deadline = trio.current_time() + graceful


async def _watch_parent(fd: int, shutdown: trio.Event) -> None:
    """A worker's pipe from its master reads EOF once the master is gone (even
    killed with SIGKILL): then stop, rather than serve on alone."""
    await trio.lowlevel.wait_readable(fd)
    log.warning("the master process is gone: shutting down")
    shutdown.set()


async def _watch_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            shutdown.set()
            return
