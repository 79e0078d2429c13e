"""Listeners and the accept loop: from a listening socket to a connection task.

``open_listeners`` binds what ``[server] listen`` names (one address parser,
``config.addresses``); for a master's ``reuseport`` entries it sets
SO_REUSEPORT once the address is bound, and ``clone_listeners`` opens the
further sockets of the group (one per worker process, ``serve.master``).
``serve_until_shutdown`` runs the accept loops and the connection tasks of
one process, under two limits: ``max_connections`` (at the
limit accept() pauses, and the idle keep-alive connection parked longest is
closed to admit a waiting client, as nginx reuses idle connections) and
``max_connections_per_ip`` (503 and close). Shutdown closes the listeners at
once, then gives open connections ``graceful`` seconds.

On a listener flagged ``proxy_protocol``, ``read_proxy_header`` runs first
(before any TLS handshake): a peer not in ``trusted_proxies`` is closed at
once, and the header (``proxy_protocol``) must arrive within
``timeouts.tls_handshake``. The client it names is the connection's client
from then on: REMOTE_ADDR, ``max_connections_per_ip``, the access log (which
also shows the TCP peer). Each failure is one log line and a closed connection.

On a ``tls`` listener ``tls_handshake`` runs next; when ACME validates by
TLS-ALPN-01 it first looks at the ClientHello in place (``Downstream.
receive_prefix`` with ``tls.client_hello.ClientHelloPeek``) to show a
validating CA the challenge certificate. Otherwise no byte is looked at
before the handshake.

After a ``tls`` listener's handshake, the protocol ALPN chose picks the loop:
``h2`` (``front.h2``) or HTTP/1.1 (``front.h1``). On a plain listener with
``[server] http2_cleartext``, the first bytes are peeked (one recv with
MSG_PEEK, nothing consumed): HTTP/2's preface goes to ``h2``, anything else
to ``h1``. Without it, nothing is peeked: HTTP/1.1 pays nothing for HTTP/2.

``ListenerClients`` (one per listener) serves its connections and owns the
ones it parks (``front.parking``): a plain connection is parked as its fd
alone (its socket objects are let go and built again when it speaks); a TLS
one, or one whose addresses came from a PROXY header, is kept whole.

Nurseries: ``connections`` (one task per client, the parker, the in-flight watcher)
outlives ``accept`` (one task per listener, and the caller's watchers).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
import socket
import ssl
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from ..config.addresses import ListenSpec, parse_listen
from ..metrics import TlsStats
from ..tls.acme_alpn import challenge_context, wants_challenge
from ..tls.client_hello import ClientHelloPeek
from ..tls.contexts import TlsSites, describe, failure_reason
from .downstream import Downstream, send_tls_alert
from .h1 import ConnectionSettings, Handler, HttpConnection, ListenerState
from .h2 import Http2Connection
from .h2_limits import PREFACE
from .liveness import InFlightWatcher
from .parking import Parked, Parker
from .proxy_protocol import ProxyHeaderError, ProxyHeaderReader

log = logging.getLogger(__name__)


class ListenError(OSError):
    """An address could not be bound; ``str()`` names it: "cannot listen on
    127.0.0.1:8080: Address already in use"."""

    def __init__(self, address: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.address = address

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.strerror}"


#: Each listen socket's backlog.
BACKLOG = 1024


async def open_listeners(addresses: list[str], *, reuseport: bool = False) -> list[trio.SocketListener]:
    """Bind every address, or none: ``ListenError`` names the one that failed
    (callers bind before starting php-fpm, so a port in use costs nothing).
    ``reuseport``: TCP sockets get SO_REUSEPORT once bound, so that
    ``clone_listeners`` can open more on their address (the address itself is
    bound without it: a port some other socket holds, with SO_REUSEPORT or
    not, is refused as in use, never shared)."""
    listeners: list[trio.SocketListener] = []
    try:
        for address in addresses:
            where = parse_listen(address).where
            try:
                if where.kind == "unix":
                    listeners.append(await _open_unix_listener(where.path))
                else:
                    opened = await trio.open_tcp_listeners(where.port, host=where.host or None, backlog=BACKLOG)
                    listeners += opened
                    if reuseport:
                        for listener in opened:
                            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            except OSError as exc:
                raise ListenError(address, exc) from exc
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners


def reuses_port(listeners: list[trio.SocketListener]) -> bool:
    """Were ``listeners`` opened with ``reuseport`` (may they be cloned)?"""
    return bool(listeners) and all(
        listener.socket.family != socket.AF_UNIX
        and listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for listener in listeners)


async def clone_listeners(listeners: list[trio.SocketListener]) -> list[trio.SocketListener]:
    """One more listen socket on the address of each of ``listeners`` (opened
    with ``reuseport``), in the same SO_REUSEPORT group: the kernel spreads
    new connections over the group's sockets. ``ListenError`` if one cannot be
    bound (nothing opened here stays open)."""
    out: list[trio.socket.SocketType] = []
    try:
        for listener in listeners:
            family = listener.socket.family
            address = listener.socket.getsockname()
            sock = trio.socket.socket(family, socket.SOCK_STREAM)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                await sock.bind(address)
                sock.listen(BACKLOG)
            except OSError as exc:
                raise ListenError(listener_url(listener), exc) from exc
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return [trio.SocketListener(sock) for sock in out]


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


def listener_url(listener: trio.SocketListener, tls: bool = False) -> str:
    """What a start-up log line shows: ``http://127.0.0.1:8080``,
    ``https://[::1]:8443`` (``tls``) or ``unix:/run/gateway.sock``."""
    sock = listener.socket
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}" + (" (tls)" if tls else "")
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _addresses(stream: Downstream) -> tuple[tuple[str, int], tuple[str, int]]:
    if stream.family == socket.AF_UNIX:
        return ("unix:", 0), ("unix:", 0)
    peer = stream.getpeername()
    local = stream.getsockname()
    return (peer[0], peer[1]), (local[0], local[1])


#: A listener with no flags (the admin listener, tests).
PLAIN = ListenSpec("", parse_listen("0").where)


@dataclass(frozen=True)
class Service:
    """Listeners and the handler that serves their connections. ``specs``:
    each listener's ``[server] listen`` entry (its flags: ``tls``,
    ``proxy_protocol``), in the order of ``listeners``; empty: all plain."""

    listeners: list[trio.SocketListener]
    handler: Handler
    settings: ConnectionSettings
    listener_state: ListenerState
    max_connections: int = 10000
    max_connections_per_ip: int = 0
    specs: list[ListenSpec] = field(default_factory=list)
    #: the certificates of ``tls`` listeners (None: the service has none)
    tls: TlsSites | None = None

    def spec(self, index: int) -> ListenSpec:
        return self.specs[index] if self.specs else PLAIN


#: accept() errors that mean "out of a resource right now": log, wait, retry
#: (as trio.serve_listeners does). Never a crash.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY = 0.1
#: File descriptors kept free for php-fpm connections, temp files and logs.
FD_RESERVE = 256

_TOO_MANY_FROM_IP = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")


class Accepted:
    """An accepted connection and what it holds (its max_connections slot, its
    per-IP count), released once, when it is finally closed: by its task, or
    by the parker if it expires there."""

    __slots__ = ("stream", "peer", "local", "tcp_peer", "ip", "token", "_slots", "_by_ip")

    def __init__(self, stream: Downstream, slots: trio.CapacityLimiter | None = None,
                 token: object = None) -> None:
        self.stream = stream
        #: the client: the TCP peer, or whom its PROXY protocol header names
        self.peer: tuple[str, int] = _NO_ADDRESS
        self.local: tuple[str, int] = _NO_ADDRESS
        #: the TCP peer (the proxy, when a PROXY header named the client)
        self.tcp_peer: tuple[str, int] = _NO_ADDRESS
        #: the address counted in ``max_connections_per_ip`` ("": not counted)
        self.ip = ""
        #: what holds its place in ``slots``
        self.token = token
        self._slots = slots
        self._by_ip: dict[str, int] | None = None

    def count_ip(self, by_ip: dict[str, int], ip: str, *, again: bool = False) -> None:
        """Count this connection in ``by_ip`` under ``ip`` until it is closed
        (``again``: it is counted already, by the parked record it was)."""
        self.ip = ip = sys.intern(ip)  # (one string per address, however many connections)
        if not again:
            by_ip[ip] = by_ip.get(ip, 0) + 1
        self._by_ip = by_ip

    def holds_slot_of(self, slots: trio.CapacityLimiter | None) -> bool:
        return self._slots is slots

    def let_go(self) -> None:
        """What this holds has passed to another owner: release nothing."""
        self._slots = self._by_ip = None

    def _release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release_on_behalf_of(self.token)
        by_ip, self._by_ip = self._by_ip, None
        if by_ip is not None:
            _leave(by_ip, self.ip)

    def close(self) -> None:
        """Close now (the parker: no task waits on the socket)."""
        self._release()
        self.stream.close_now()

    async def aclose(self) -> None:
        self._release()
        await trio.aclose_forcefully(self.stream)


_NO_ADDRESS = ("", 0)


def _leave(by_ip: dict[str, int], ip: str) -> None:
    by_ip[ip] -= 1
    if not by_ip[ip]:
        del by_ip[ip]


ClientHandler = Callable[[Accepted], Awaitable[bool]]


async def serve_listener(listener: trio.abc.Listener[trio.abc.Stream], handler: ClientHandler, nursery: trio.Nursery,
                         slots: trio.CapacityLimiter, parker: Parker | None = None,
                         send_timeout: float = 60.0, listener_state: ListenerState | None = None) -> None:
    """Accept connections while fewer than ``slots.total_tokens`` are open.

    At the limit it stops calling accept(): new clients wait in the kernel's
    backlog while open connections keep being served. When one does wait there,
    an idle connection is closed to make room for it, as nginx reuses
    connections that wait for a request when worker_connections run out: first
    one silent since its accept for ``SILENT_RECLAIM_AFTER`` (``listener_state``),
    else the keep-alive one parked longest (``parker``). A connection
    mid-request is never closed for this. Resource errors from accept() (EMFILE, ENFILE, ENOMEM, ENOBUFS) are
    logged and retried after ``ACCEPT_RETRY_DELAY``; other errors propagate.

    Resource handling: each accepted connection's slot is released when it is
    closed (``Accepted.close``), after its handler returns, or later if the
    handler parked it (returned True).
    """
    while True:
        token = object()
        await _take_slot(listener, slots, token, parker, listener_state)
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
        client = Accepted(Downstream(stream, send_timeout), slots, token)
        nursery.start_soon(run_client, client, handler)


#: At most one "max_connections reached" warning per this many seconds.
ROOM_WARNING_INTERVAL = 60.0
_last_room_warning = -math.inf  # time.monotonic()


async def _take_slot(listener: trio.abc.Listener[trio.abc.Stream], slots: trio.CapacityLimiter, token: object,
                     parker: Parker | None, listener_state: ListenerState | None) -> None:
    """Take a slot for the next accept(); at the limit, make room for a client
    that waits in the backlog by closing an idle connection."""
    sock = getattr(listener, "socket", None)  # (tests' memory listeners have none)
    while True:
        try:
            slots.acquire_on_behalf_of_nowait(token)
            return
        except trio.WouldBlock:
            pass
        if parker is None or listener_state is None or sock is None:
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
                    # each releases the closed connection's slot at once
                    if listener_state.reclaim_silent() or parker.close_oldest():
                        break
                    # nobody to close yet: until one is parked, or waits silent long enough
                    with trio.move_on_at(listener_state.next_silent_reclaim()):
                        await listener_state.wait_idle()
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


async def run_client(client: Accepted, handler: ClientHandler) -> None:
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


def inherited_listeners(fds: list[int]) -> list[trio.SocketListener]:
    return [trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd))) for fd in fds]


async def read_proxy_header(client: Accepted, settings: ConnectionSettings) -> bool:
    """The PROXY protocol step of a ``proxy_protocol`` listener, before
    anything else is read: False (logged once) if the connection is to be
    closed; else True, and ``client.peer``/``client.local`` are the addresses
    the header names (unchanged for LOCAL and UNKNOWN). Exactly the header's
    bytes are consumed; what follows is the next layer's."""
    peer = client.tcp_peer
    where = (f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}") if peer[1] else peer[0]
    if not settings.real_ip.trusted.trusts(peer[0]):
        log.warning("closing connection from %s on a proxy_protocol listener: not in trusted_proxies", where)
        return False
    reader = ProxyHeaderReader()
    with trio.move_on_after(settings.proxy_header_timeout) as scope:
        try:
            await client.stream.receive_prefix(reader)
        except ProxyHeaderError as exc:
            log.warning("closing connection from %s: bad PROXY protocol header: %s", where, exc)
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("connection from %s closed before its PROXY protocol header was complete", where)
            return False
    if scope.cancelled_caught:
        log.info("closing connection from %s: no complete PROXY protocol header within %gs (timeouts.tls_handshake)",
                 where, settings.proxy_header_timeout)
        return False
    info = reader.result
    if info is not None and info.source is not None and info.destination is not None:
        client.peer, client.local = info.source, info.destination
    return True


class ParkedClient(Parked):
    """A parked connection of a listener (``ListenerClients``): with what
    releases it (its slot's token, its counted address) and, when its socket
    objects are kept (TLS, PROXY protocol: state that cannot be built again),
    the connection; else only the fd is kept."""

    __slots__ = ("token", "ip", "held")

    def __init__(self, fd: int, served: int, deadline: float, owner: ListenerClients, token: object, ip: str,
                 held: Accepted | None) -> None:
        super().__init__(fd, served, deadline, owner)
        self.token = token
        self.ip = ip
        self.held = held


class ListenerClients:
    """How connections accepted on one listener (with ``spec``) are served, and
    the owner of those it parks (``front.parking``): one object per listener,
    shared by its connections. ``by_ip``: the service's open connections per
    client address (counted only under ``max_connections_per_ip``)."""

    def __init__(self, service: Service, connections: trio.Nursery, spec: ListenSpec, by_ip: dict[str, int],
                 slots: trio.CapacityLimiter | None = None, family: int = socket.AF_INET) -> None:
        self.service = service
        self.connections = connections
        self.spec = spec
        self.by_ip = by_ip
        self.slots = slots
        self.family = family
        #: plain connections are parked as their fd alone (a TLS session, or the
        #: addresses a PROXY header gave, cannot be read from the socket again)
        self.detach = not spec.tls and not spec.proxy_protocol

    async def handle(self, client: Accepted) -> bool:
        service, spec = self.service, self.spec
        stream = client.stream
        stream.set_nodelay()
        try:
            client.peer, client.local = _addresses(stream)
        except OSError:
            return False
        client.tcp_peer = client.peer
        if spec.proxy_protocol and not await read_proxy_header(client, service.settings):
            return False
        per_ip = service.max_connections_per_ip
        if per_ip:
            ip = client.peer[0]
            if self.by_ip.get(ip, 0) >= per_ip:
                with trio.move_on_after(1.0):
                    try:
                        await stream.send_all(_TOO_MANY_FROM_IP)
                    except trio.BrokenResourceError:
                        pass
                return False
            client.count_ip(self.by_ip, ip)
        if spec.tls:
            if not await tls_handshake(client, service.tls, service.settings.handshake_timeout,
                                       service.listener_state.stats.tls):
                return False
            if client.stream.alpn == "h2":
                return await self.serve_h2(client)
        elif service.settings.http2_cleartext:
            opens_h2 = await _opens_with_preface(client, service.settings.header_timeout)
            if opens_h2 is None:
                return False
            if opens_h2:
                return await self.serve_h2(client)
        return await self.serve_http(client)

    async def serve_http(self, client: Accepted, served: int = 0) -> bool:
        service = self.service
        return await HttpConnection(client.stream, service.handler, service.settings, client=client.peer,
                                    server=client.local, listener_state=service.listener_state, served=served,
                                    hand_over=partial(self.park, client), reclaim=client.close,
                                    peer=client.tcp_peer).run()

    async def serve_h2(self, client: Accepted) -> bool:
        service = self.service
        await Http2Connection(client.stream, service.handler, service.settings, client=client.peer,
                              server=client.local, listener_state=service.listener_state, peer=client.tcp_peer,
                              reclaim=client.close).run()
        return False

    # -- parking (``front.parking``'s owner) ----------------------------------------------

    def park(self, client: Accepted, served: int, deadline: float) -> bool:
        """Hand ``client``, idle after ``served`` requests, to the parker until
        ``deadline``; False: it cannot be (the caller keeps it)."""
        parker = self.service.listener_state.parker
        stream = client.stream
        fd = stream.fileno
        if parker is None or fd is None:
            return False
        raw = stream.stream.socket if self.detach and isinstance(stream.stream, trio.SocketStream) else None
        if raw is not None and not client.holds_slot_of(self.slots):
            raw = None  # (accepted elsewhere: its slot is not ours to release)
        parked = ParkedClient(fd, served, deadline, self, client.token, client.ip, None if raw else client)
        if not parker.park(parked):
            return False
        if raw is not None:
            # the connection lives on as its fd alone: these objects go (the
            # task ends without closing them), what they held passes to
            # ``parked`` and is released by ``close``
            client.let_go()
            raw.detach()
        return True

    def resume(self, parked: Parked) -> None:
        assert isinstance(parked, ParkedClient)
        client = parked.held if parked.held is not None else self._rebuild(parked)
        if client is not None:
            self.connections.start_soon(run_client, client, partial(self.serve_http, served=parked.served))

    def _rebuild(self, parked: ParkedClient) -> Accepted | None:
        """The socket objects of a connection parked as its fd (None: it has
        gone meanwhile; closed)."""
        sock = trio.socket.from_stdlib_socket(socket.socket(self.family, socket.SOCK_STREAM, 0, parked.fd))
        client = Accepted(Downstream(trio.SocketStream(sock), self.service.settings.send_timeout), self.slots,
                          parked.token)
        if parked.ip:
            client.count_ip(self.by_ip, parked.ip, again=True)
        try:
            client.peer, client.local = _addresses(client.stream)
        except OSError:  # (reset while parked)
            client.close()
            return None
        client.tcp_peer = client.peer
        return client

    def close(self, parked: Parked) -> None:
        assert isinstance(parked, ParkedClient)
        if parked.held is not None:
            parked.held.close()
            return
        os.close(parked.fd)
        if self.slots is not None:
            self.slots.release_on_behalf_of(parked.token)
        if parked.ip:
            _leave(self.by_ip, parked.ip)


async def _opens_with_preface(client: Accepted, limit: float) -> bool | None:
    """On an h2c listener: does the client start with HTTP/2's preface (prior
    knowledge)? None: it sent nothing within ``limit`` seconds, or left (closed
    silently, as ``h1`` closes a connection that never sent a byte)."""
    with trio.move_on_after(limit):
        try:
            return await client.stream.starts_with(PREFACE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
    return None


async def tls_handshake(client: Accepted, tls: TlsSites | None, limit: float, stats: TlsStats) -> bool:
    """Wrap ``client.stream`` in TLS (``tls.front``; SNI picks the site) and
    handshake within ``limit`` seconds. False: it failed (counted by reason, one
    info line, no traceback) and the caller closes the connection.

    With ``tls.acme_alpn`` (``[acme] challenge = "tls-alpn-01"``) the
    ClientHello is looked at first, in place, within the same ``limit``: a CA
    validating TLS-ALPN-01 (ALPN ``acme-tls/1`` alone, a name under
    validation) gets the challenge certificate, and the connection is closed
    after the handshake (False). A hello that is cut short, malformed or
    anything else goes on to the usual handshake, which judges it."""
    if tls is None:  # a tls listener in a process given no certificates: refuse quietly
        stats.failures["no_certificate"] += 1
        log.info("TLS handshake from %s refused: no certificates loaded", client.peer[0])
        return False
    deadline = trio.current_time() + limit
    context, validation = tls.front, None
    if tls.acme_alpn:
        validation = await _acme_validation(client, tls, deadline)
        if validation is not None:
            context = validation[1]
    ssl_stream = trio.SSLStream(client.stream.tls_transport(), context, server_side=True, https_compatible=True)
    reason = "timeout"
    with trio.move_on_at(deadline):
        try:
            await ssl_stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = failure_reason(exc, getattr(ssl_stream, "_ssl_object", None))
            stats.failures[reason] += 1
            log.info("TLS handshake from %s failed (%s): %s", client.peer[0], reason, describe(exc))
            await send_tls_alert(ssl_stream)
            return False
        reason = ""
    if reason:
        stats.failures[reason] += 1
        log.info("TLS handshake from %s: no handshake within %gs, closed", client.peer[0], limit)
        return False
    stats.handshakes += 1
    if validation is not None:
        # RFC 8737 3: the CA closes after the handshake; nothing else is said on it
        log.info("TLS-ALPN-01: challenge certificate for %s shown to %s", validation[0], client.peer[0])
        await trio.aclose_forcefully(ssl_stream)
        return False
    if ssl_stream.session_reused:
        stats.resumed += 1
    client.stream = Downstream(ssl_stream, client.stream.send_timeout)
    return True


async def _acme_validation(client: Accepted, tls: TlsSites, deadline: float) -> tuple[str, ssl.SSLContext] | None:
    """(name, the challenge context) when the ClientHello waiting on
    ``client`` is a TLS-ALPN-01 validation of a name under way; else None.
    The hello stays where it is for the handshake."""
    peek = ClientHelloPeek()
    with trio.move_on_at(deadline):
        try:
            await client.stream.receive_prefix(peek)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None  # the handshake meets the close and counts it
    hello = peek.hello
    if hello is None or not wants_challenge(hello):
        return None
    assert hello.server_name is not None
    ctx = challenge_context(tls.state, hello)
    if ctx is None:
        log.info("TLS-ALPN-01: %s asked for %s, which has no validation under way; it gets the site's certificate",
                 client.peer[0], hello.server_name)
        return None
    return hello.server_name, ctx


async def serve_until_shutdown(shutdown: trio.Event, listener_state: ListenerState, services: list[Service],
                               graceful: float, *, on_started: Callable[[], None],
                               watchers: list[Callable[[trio.Event], Awaitable[None]]] | None = None) -> None:
    """Accept and serve ``services`` until ``shutdown`` is set (by a caller, or one
    of ``watchers``: signals, the master's pipe); then close the listeners at
    once and let connections finish within ``graceful`` seconds."""
    async with trio.open_nursery() as helpers:  # the parkers and in-flight watchers outlive the connections
        for service in services:
            service.listener_state.inflight = InFlightWatcher()
            helpers.start_soon(service.listener_state.inflight.run)
            service.listener_state.parker = Parker(service.listener_state.stats)
            helpers.start_soon(service.listener_state.parker.run)
        await _serve_connections(shutdown, listener_state, services, graceful, on_started, watchers or [])
        helpers.cancel_scope.cancel()


async def _serve_connections(shutdown: trio.Event, listener_state: ListenerState, services: list[Service],
                             graceful: float, on_started: Callable[[], None],
                             watchers: list[Callable[[trio.Event], Awaitable[None]]]) -> None:
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accept:
            for service in services:
                slots = trio.CapacityLimiter(service.max_connections)
                by_ip: dict[str, int] = {}
                for i, listener in enumerate(service.listeners):
                    family = getattr(listener, "socket", None)
                    clients = ListenerClients(service, connections, service.spec(i), by_ip, slots,
                                              family.family if family is not None else socket.AF_INET)
                    accept.start_soon(serve_listener, listener, clients.handle, connections, slots,
                                      service.listener_state.parker, service.settings.send_timeout,
                                      service.listener_state)
            for watcher in watchers:
                accept.start_soon(watcher, shutdown)
            on_started()
            await shutdown.wait()
            accept.cancel_scope.cancel()
        # Close the listening sockets now, as nginx does: a new client is refused at
        # once instead of waiting in the backlog until we exit (and then reset).
        for service in services:
            for listener in service.listeners:
                await trio.aclose_forcefully(listener)
        log.info("shutting down: listeners closed; %d open connections get %.0fs to finish",
                 listener_state.open_connections, graceful)
        for service in services:
            service.listener_state.begin_shutdown()
        connections.cancel_scope.deadline = trio.current_time() + graceful
