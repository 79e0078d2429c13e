"""``serve``: listeners, php-fpm supervisors, pools, connection tasks, shutdown.

Nurseries, outermost first:
1. ``system``: php-fpm supervisors and pool reapers; lives until everything
   else is done, so php-fpm stops last.
2. ``connections``: one task per client connection (``HttpConnection.run``).
3. ``accept``: ``trio.serve_listeners`` with ``handler_nursery=connections``.

Signals: ``serve.signals``. A php-fpm it spawns is stopped by ``serve.watchdog``
if this process is killed.

Shutdown (SIGTERM/SIGINT/SIGQUIT, or ``shutdown`` set by a caller): cancel the accept
nursery and close the listening sockets at once (new connects are refused, as
with nginx; a worker process closes its inherited copies, its master its own),
tell connections (idle ones close at once, busy ones finish with ``Connection:
close``), give them ``graceful`` seconds, then cancel what is left; then close
pools and stop php-fpm. Every phase has a deadline.

Configuration becomes runtime settings once per type, with no default repeated
(they all live in ``gateway.config``): ``ConnectionSettings.from_config`` and
``PhpSettings.from_config`` beside their types, ``pool_from_config`` here; the
admin listener's two tighter timeouts are ``admin_connection_settings``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import trio

from ..acme.manager import CertificateManager
from ..app.site import App
from ..config import BackendConfig, Config, ConfigError, LimitsConfig
from ..config.addresses import ListenSpec, parse_listen
from ..front.h1 import ConnectionSettings, ListenerState
from ..front.listen import (
    Service,
    inherited_listeners,
    listener_url,
    open_listeners,
    raise_open_files_limit,
    serve_until_shutdown,
)
from ..http.cache_policy import Purge
from ..observe.admin import AdminApp, admin_request, purge_json
from ..observe.health import BackendHealth
from ..observe.monitor import Monitor, PoolMonitor
from ..observe.sampler import WorkerSampler, fastcgi_addresses
from ..observe.waits import Endpoint
from ..tls.contexts import SiteTls, TlsError, TlsSites, prepare_internal
from ..tls.store import StateDir
from ..tls.ticket_keys import new_keys
from ..upstream.checks import CheckPolicy, Probe, connect_probe, http_probe, run_checks
from ..upstream.connect import Connector, make_connector, make_upstream_connector
from ..upstream.fastcgi import fastcgi_pool
from ..upstream.http1 import http_pool
from ..upstream.pool import Pool
from .php_fpm import PING_PATH, PhpFpmSupervisor, make_runtime_dir
from .privileges import Plan, drop
from .signals import HANDLED, RELOAD, REOPEN, STOP, remove_pid_file, reopen_log_files, unblock, write_pid_file
from .watchdog import tell as tell_watchdog
from .watchdog import watching

log = logging.getLogger(__name__)


#: The admin listener's own limits (not configurable): it answers a monitoring
#: client, never a browser, so idle or slow connections are cut sooner.
ADMIN_KEEPALIVE_TIMEOUT = 5.0
ADMIN_HEADER_TIMEOUT = 10.0
#: How long a worker waits for a sibling to take a purge it passes on.
ADMIN_PURGE_TIMEOUT = 2.0


def admin_connection_settings() -> ConnectionSettings:
    """What a connection to the admin listener (here or in the master) obeys:
    the schema's defaults with shorter keep-alive and header timeouts."""
    return replace(ConnectionSettings.from_config(), keepalive_timeout=ADMIN_KEEPALIVE_TIMEOUT,
                   header_timeout=ADMIN_HEADER_TIMEOUT)


def share_purges(app: App, admin_listen: str) -> None:
    """In a master's worker: pass each purge a request made here (PURGE,
    PHP's X-Cache-Purge) to the sibling workers of this generation, through
    their admin sockets (each process has its own memory tier), all at once,
    before the response that made it goes out; shielded from the client
    leaving, bounded by ``ADMIN_PURGE_TIMEOUT``: a sibling that does not
    answer by then is logged, and the response goes out anyway."""
    mine = admin_listen.removeprefix("unix:")
    directory, name = os.path.split(mine)
    m = re.fullmatch(r"worker-\d+((?:\.g\d+)?)\.admin\.sock", name)
    if m is None:
        return
    pattern = re.compile(rf"worker-\d+{re.escape(m.group(1))}\.admin\.sock")

    async def one(path: str, body: bytes) -> None:
        with trio.move_on_after(ADMIN_PURGE_TIMEOUT) as scope:
            try:
                await admin_request(path, b"/cache/purge", method=b"POST", body=body)
            except (OSError, ValueError, trio.BrokenResourceError) as exc:
                log.warning("cache purge not passed on to %s: %s", path, exc)
        if scope.cancelled_caught:
            log.warning("cache purge not passed on to %s: no answer in %gs", path, ADMIN_PURGE_TIMEOUT)

    async def on_purge(purge: Purge) -> None:
        try:
            siblings = [os.path.join(directory, n) for n in os.listdir(directory) if pattern.fullmatch(n) and n != name]
        except OSError:
            return
        body = json.dumps(purge_json(purge)).encode()
        with trio.CancelScope(shield=True):  # (bounded: each sibling by ADMIN_PURGE_TIMEOUT)
            async with trio.open_nursery() as nursery:
                for path in siblings:
                    nursery.start_soon(one, path, body)

    for cache in app.caches.values():
        cache.on_purge = on_purge


def pool_from_config(name: str, connector: Connector | list[tuple[str, Connector]], backend: BackendConfig,
                     limits: LimitsConfig) -> Pool[Any]:
    """Backend ``name``'s pool: the one mapping from its configuration (the
    transport by its ``type``; ``connector``: one, or one per address)."""
    common: dict[str, Any] = dict(
        size=backend.pool_size, queue_depth=backend.queue_limit(limits.max_connections),
        queue_timeout=backend.queue_timeout, connect_timeout=backend.connect_timeout,
        idle_timeout=backend.idle_timeout, balance=backend.balance, max_fails=backend.health.max_fails,
        fail_timeout=backend.health.fail_timeout)
    if backend.type == "http":
        return http_pool(name, connector, max_header_size=backend.max_response_header_size, **common)
    return fastcgi_pool(name, connector, **common)


def upstream_tls_context(backend: BackendConfig) -> ssl.SSLContext:
    """How an HTTP backend's https:// addresses are verified: the system's CAs,
    or ``ca_bundle``'s.

    Raises:
        ConfigError: ``ca_bundle`` cannot be read as PEM certificates.
    """
    try:
        return ssl.create_default_context(cafile=backend.ca_bundle or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ca_bundle {backend.ca_bundle}: cannot load CA certificates from it: {exc}") from None


def health_probes(backend: BackendConfig, connectors: list[tuple[str, Connector]]) -> list[Probe] | None:
    """The active check of each address of a group (``upstream.checks``): GET
    ``health.path`` for HTTP (none without a path), a connect for FastCGI."""
    if len(connectors) < 2:
        return None
    if backend.type == "http":
        if not backend.health.path:
            return None
        return [http_probe(connect, backend.health.path, backend.upstream_host or str(u.where))
                for (_, connect), u in zip(connectors, backend.upstreams(), strict=True)]
    return [connect_probe(connect) for _, connect in connectors]


def backend_connectors(backend: BackendConfig, address: str) -> list[tuple[str, Connector]]:
    """(address, connector) for each address of ``backend``; a spawned
    php-fpm's is ``address``. TLS for an ``https://`` HTTP backend."""
    if backend.spawned:
        return [(address, make_connector(address))]
    if backend.type == "http":
        context = upstream_tls_context(backend) if any(u.tls for u in backend.upstreams()) else None
        return [(str(u), make_upstream_connector(u, context)) for u in backend.upstreams()]
    return [(str(u), make_connector(str(u))) for u in backend.upstreams()]


@dataclass
class Running:
    """What a started server exposes to its caller (and to tests)."""

    listeners: list[trio.SocketListener]
    pools: dict[str, Pool[Any]]
    supervisors: dict[str, PhpFpmSupervisor]
    listener_state: ListenerState
    monitor: Monitor
    admin_listeners: list[trio.SocketListener] = field(default_factory=list)
    shutdown: trio.Event = field(default_factory=trio.Event)
    #: the ACME task, in the process that runs it (not in a master's workers)
    certificates: CertificateManager | None = None


def spawn_key(config: Config, name: str, privileges: Plan | None = None) -> str | None:
    """What backend ``name``'s spawned php-fpm is started with (None: not
    spawned). A reload restarts that php-fpm exactly when this changes: its
    pool size, its ``php_fpm`` table, the body limit it gets, the users it
    runs as (``serve.privileges``), the error log."""
    backend = config.backends[name]
    if not backend.spawned:
        return None
    users = privileges.fpm.get(name) if privileges is not None else None
    return json.dumps([backend.pool_size, backend.php_fpm.model_dump(mode="json"), config.limits.client_max_body_size,
                       repr(users), config.server.error_log, config.diagnosis.sample_workers])


async def start_backend(config: Config, name: str, runtime_dir: str, system: trio.Nursery,
                        privileges: Plan | None = None, *,
                        directory: str = "") -> tuple[str, str, PhpFpmSupervisor | None]:
    """Backend ``name``'s FastCGI address and status address; a ``spawn``
    backend's php-fpm is started (and supervised) in ``system`` first, as
    ``privileges`` say (``serve.privileges``), its files in ``directory``
    (default: ``fpm-NAME`` in ``runtime_dir``)."""
    backend = config.backends[name]
    if not backend.spawned:
        return (backend.addresses or [backend.address])[0], backend.status, None
    error_log = "" if config.server.error_log == "-" else config.server.error_log
    sup = PhpFpmSupervisor(name, backend, runtime_dir, max_body_size=config.limits.client_max_body_size,
                           users=privileges.fpm.get(name) if privileges is not None else None,
                           directory=directory, error_log=error_log, dumpable=config.diagnosis.sample_workers)
    await system.start(sup.run)
    return sup.address, backend.status or "unix:" + sup.paths.status_socket, sup


def worker_sampling(config: Config, backend: BackendConfig, address: str,
                    sup: PhpFpmSupervisor | None) -> dict[str, Any]:
    """The ``PoolMonitor`` arguments that sample what a FastCGI backend's
    busy workers wait on (``observe.sampler``): its endpoints, php-fpm's
    listen address, its slowlog (a spawned pool's, also in a master's worker
    process, which finds it beside the socket of a pool config we wrote), and
    ``[diagnosis] php_fpm_pid_file`` for one not spawned."""
    if backend.type != "fastcgi" or not config.diagnosis.sample_workers or len(backend.addresses) > 1:
        return {}
    endpoints = {key: Endpoint(e.name, e.kind) for key, e in config.diagnosis.endpoints.items()}
    slowlog = sup.paths.slowlog if sup is not None else spawned_slowlog(address)
    pid_file = "" if sup is not None or slowlog else config.diagnosis.php_fpm_pid_file
    return {"sampler": WorkerSampler(endpoints, fastcgi_addresses(address), slowlog), "pid_file": pid_file}


def spawned_slowlog(address: str) -> str:
    """The slowlog of a pool config we wrote whose socket is ``address``
    (a master's php-fpm, seen from its worker process), if it has one."""
    if not address.startswith("unix:"):
        return ""
    directory = os.path.dirname(address[5:])
    try:
        with open(os.path.join(directory, "php-fpm.conf")) as f:
            text = f.read(65536)
    except OSError:
        return ""
    if not text.startswith("; written by the gateway"):
        return ""
    slowlog = os.path.join(directory, "slow.log")
    return slowlog if f"slowlog = {slowlog}\n" in text else ""


@dataclass(frozen=True)
class Inherited:
    """What a worker process gets from its master (see ``serve.master``): the
    listen sockets, already bound, and the read end of a pipe whose EOF means
    the master is gone."""

    listen_fds: list[int]
    parent_fd: int | None = None
    #: the ``[server] listen`` entry of each of ``listen_fds`` (its flags);
    #: empty: all plain
    listen_entries: list[str] = field(default_factory=list)
    #: the generation's TLS session-ticket keys (``tls.ticket_keys``), shared
    #: by its workers; empty: this process makes its own
    ticket_keys: bytes = b""
    #: the master's rate-limit and login-failure table (``app.guard_table``),
    #: shared by its workers; empty: this process keeps its own
    guard_table: str = ""
    #: the master's page-cache lock table (``app.cache_lock``), shared by its
    #: workers; empty: the lock holds in this process only
    cache_locks: str = ""


def site_tls(config: Config) -> list[SiteTls]:
    """Every site's ``[sites.X.tls]`` for ``tls.contexts`` (sites without one too:
    the default site decides what an unknown name gets)."""
    return [SiteTls(name, site.server_names, site.default,
                    *((site.tls.cert, site.tls.key, site.tls.acme, site.tls.internal) if site.tls else ()))
            for name, site in config.sites.items()]


def tls_state(config: Config, privileges: Plan | None) -> StateDir:
    """The state dir, its files group-readable by the user workers drop to."""
    account = privileges.account if privileges is not None else None
    return StateDir(config.acme.state_path(), account.gid if account is not None else None)


def prepare_tls(config: Config, privileges: Plan | None) -> None:
    """The writer's start-up part (before privileges drop, before workers
    start): the internal CA and certificates, if any site wants them.
    ``TlsError`` names the state dir if that fails."""
    if any(parse_listen(entry).tls for entry in config.server.listen):
        state = tls_state(config, privileges)
        try:
            prepare_internal(site_tls(config), state)
        except (OSError, ValueError) as exc:
            raise TlsError(f"internal CA in {state.root}: {exc}") from None


def check_certificates(config: Config) -> None:
    """Load every ``cert`` + ``key`` of ``config`` as a worker will (a reload's
    check, before anything stops); ``ConfigError`` names the site and file."""
    if any(parse_listen(entry).tls for entry in config.server.listen):
        try:
            TlsSites.load(site_tls(config), StateDir(config.acme.state_path()), lambda seconds: None)
        except TlsError as exc:
            raise ConfigError(str(exc)) from None


#: How often the writer looks whether an internal certificate is near expiry.
INTERNAL_RENEW_EVERY = 12 * 3600.0


async def renew_internal(current: Callable[[], tuple[Config, Plan | None] | None]) -> None:
    """The writer's loop: reissue internal certificates near expiry
    (``internal_ca.RENEW_DAYS``); workers pick the new bundle up by its stamp.
    ``current``: the running configuration (None: none right now)."""
    while True:
        await trio.sleep(INTERNAL_RENEW_EVERY)
        now = current()
        if now is None:
            continue
        config, privileges = now
        try:
            await trio.to_thread.run_sync(prepare_tls, config, privileges)
        except (OSError, ValueError) as exc:
            log.warning("could not renew internal certificates: %s", exc)


def load_tls(config: Config, specs: list[ListenSpec], listener_state: ListenerState, privileges: Plan | None,
             ticket_keys: bytes) -> TlsSites | None:
    """The certificates of this process's ``tls`` listeners (None: it has
    none); they answer TLS-ALPN-01 when ACME validates that way."""
    if not any(spec.tls for spec in specs):
        return None
    acme_alpn = config.acme.challenge == "tls-alpn-01" and any(
        site.tls is not None and site.tls.acme for site in config.sites.values())
    tls = TlsSites.load(site_tls(config), tls_state(config, privileges), listener_state.stats.tls.add_cpu,
                        ticket_keys=ticket_keys or new_keys(), acme_alpn=acme_alpn,
                        http2=config.server.http2)
    if not tls.has_certificates:
        log.warning("a listener is flagged tls but no site has a certificate yet ([sites.NAME.tls]): "
                    "handshakes fail until one appears")
    return tls


#: ``serve``'s answer when SIGHUP asked for a re-exec: listen address -> the
#: inheritable fds (dups of its sockets) that carry it over ``execv``.
CarriedFds = dict[str, list[int]]


async def open_listen_map(addresses: list[str], carried: CarriedFds | None = None,
                          keep: dict[str, list[trio.SocketListener]] | None = None, *, reuseport: bool = False,
                          ) -> dict[str, list[trio.SocketListener]]:
    """Listeners for ``addresses`` (``[server] listen`` entries), keyed by
    the address without its flags (a reload that changes only a flag keeps
    the socket): those in ``keep`` as they are, those whose sockets were
    ``carried`` over a re-exec from their fds, the rest bound now (with
    ``reuseport``, as a master binds them: those flagged ``reuseport`` may be
    cloned, ``front.listen.clone_listeners``). Carried fds no address wants
    are closed. On an error nothing opened here stays open."""
    carried = dict(carried or {})
    out: dict[str, list[trio.SocketListener]] = {}
    opened: list[trio.SocketListener] = []
    flagged = {spec.address for spec in map(parse_listen, addresses) if spec.reuseport}
    try:
        for address in dict.fromkeys(parse_listen(entry).address for entry in addresses):
            if keep is not None and address in keep:
                out[address] = keep[address]
            elif address in carried:
                out[address] = inherited_listeners(carried.pop(address))
                opened += out[address]
            else:
                out[address] = await open_listeners([address], reuseport=reuseport and address in flagged)
                opened += out[address]
    except BaseException:
        for listener in opened:
            await trio.aclose_forcefully(listener)
        raise
    finally:
        for fds in carried.values():
            for fd in fds:
                os.close(fd)
    return out


def listen_specs(entries: list[str], by_address: dict[str, list[trio.SocketListener]]
                 ) -> tuple[list[trio.SocketListener], list[ListenSpec]]:
    """The listeners of ``by_address`` (``open_listen_map``'s answer) and,
    in the same order, the ``[server] listen`` entry (flags) each serves."""
    specs = {spec.address: spec for spec in map(parse_listen, entries)}
    listeners = [listener for ls in by_address.values() for listener in ls]
    return listeners, [specs[address] for address, ls in by_address.items() for _ in ls]


def carry_fds(by_address: dict[str, list[trio.SocketListener]]) -> CarriedFds:
    """Inheritable duplicates of the listen sockets, to survive ``execv``."""
    carried: CarriedFds = {}
    for address, listeners in by_address.items():
        fds = [os.dup(listener.socket.fileno()) for listener in listeners]
        for fd in fds:
            os.set_inheritable(fd, True)
        carried[address] = fds
    return carried


async def open_admin_listeners(address: str, opened: list[trio.SocketListener]) -> list[trio.SocketListener]:
    """The admin listener (none for "off"); if it cannot be bound, the listeners
    already ``opened`` are closed before the error goes up (nothing stays bound)."""
    if address == "off":
        return []
    try:
        return await open_listeners([address])
    except BaseException:
        for listener in opened:
            listener.socket.close()
        raise


def start_certificates(config: Config, privileges: Plan | None, system: trio.Nursery) -> CertificateManager | None:
    """The ACME task (``acme.manager``) for ``config``'s ``acme = true``
    sites, started in ``system`` (None when there are none). Its key files get
    the group of the user the workers drop to, so they can read them."""
    account = privileges.account if privileges is not None else None
    manager = CertificateManager.from_config(config, group=account.gid if account is not None else None)
    if manager is not None:
        system.start_soon(manager.run)
    return manager


def runtime_dir_for(config: Config, privileges: Plan | None) -> tuple[str, bool]:
    """``make_runtime_dir`` for this config and user; a temporary one is told to
    the watchdog, which removes it if the master is killed."""
    account = privileges.account if privileges is not None else None
    runtime_dir, remove_runtime = make_runtime_dir(config.server.runtime_dir, account)
    if remove_runtime:
        tell_watchdog(f"remove {runtime_dir}")
    return runtime_dir, remove_runtime


async def serve(config: Config, *, handle_signals: bool = True, inherited: Inherited | None = None,
                privileges: Plan | None = None,
                reload: Callable[[], Config] | None = None, carried: CarriedFds | None = None,
                watchdog: bool = True,
                task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> CarriedFds | None:
    """Run the gateway in this process until SIGTERM/SIGINT/SIGQUIT (or
    ``Running.shutdown`` is set). ``inherited``: serve a master's sockets as one
    of its workers. ``privileges``: drop to its user once everything is bound
    and started (then no re-exec: the caller runs a master instead).

    SIGHUP (not in a worker) calls ``reload`` for the new configuration; if it
    raises ``ConfigError`` the error is logged and nothing changes, else the
    server stops gracefully *without closing its listen sockets* and returns
    their fds for the caller to ``execv`` itself with (``carried`` on the other
    side): the same pid, no connect refused, new connections wait in the
    kernel's backlog for the restart. Returns None after a plain stop.

    Reports a ``Running`` through ``task_status`` once listening.
    """
    # From the start: a signal that arrives while starting waits its turn instead
    # of killing us with its default action.
    with trio.open_signal_receiver(*HANDLED) if handle_signals else contextlib.nullcontext() as signals:
        unblock()
        if inherited is not None or not watchdog:
            return await _serve(config, signals=signals, inherited=inherited, privileges=privileges, reload=reload,
                                carried=carried, task_status=task_status)
        async with watching(config.timeouts.graceful + 2):
            return await _serve(config, signals=signals, inherited=inherited, privileges=privileges, reload=reload,
                                carried=carried, task_status=task_status)


async def _serve(config: Config, *, signals: AsyncIterator[int] | None, inherited: Inherited | None,
                 privileges: Plan | None,
                 reload: Callable[[], Config] | None, carried: CarriedFds | None,
                 task_status: trio.TaskStatus[Running]) -> CarriedFds | None:
    # Bind first: an address in use is reported (naming it) before php-fpm starts.
    # A worker opens its admin socket last: its master takes that as "serving".
    by_address: dict[str, list[trio.SocketListener]] = {}
    if inherited is not None:
        listeners = inherited_listeners(inherited.listen_fds)
        specs = [parse_listen(entry) for entry in inherited.listen_entries]
    else:
        by_address = await open_listen_map(config.server.listen, carried)
        listeners, specs = listen_specs(config.server.listen, by_address)
    admin_listeners = await open_admin_listeners(config.admin.listen if inherited is None else "off", listeners)
    account = privileges.account if privileges is not None else None
    runtime_dir, remove_runtime = runtime_dir_for(config, privileges)
    listener_state = ListenerState()
    carry: CarriedFds | None = None
    pid_file = config.server.pid_file if inherited is None else ""
    try:
        if inherited is None:
            prepare_tls(config, privileges)
        tls = load_tls(config, specs, listener_state, privileges, inherited.ticket_keys if inherited else b"")
        async with trio.open_nursery() as system:
            supervisors: dict[str, PhpFpmSupervisor] = {}
            pools: dict[str, Pool[Any]] = {}
            pool_monitors: list[PoolMonitor] = []
            for name, backend in config.backends.items():
                address, status_address, sup = await start_backend(config, name, runtime_dir, system, privileges)
                if sup is not None:
                    supervisors[name] = sup
                connectors = backend_connectors(backend, address)
                pool = pool_from_config(name, connectors, backend, config.limits)
                pools[name] = pool
                probes = health_probes(backend, connectors)
                if probes is not None:
                    system.start_soon(run_checks, pool, probes, CheckPolicy.from_config(backend.health))
                ping = PING_PATH if sup is not None and not backend.status else ""  # our pool config has it
                # (a group's hosts are checked by the pool: passive, and run_checks)
                health = None if backend.type == "http" or len(connectors) > 1 else BackendHealth.for_backend(
                    name, address=address, status_address=status_address, status_path=backend.status_path,
                    ping_path=ping)
                pool_monitors.append(PoolMonitor(pool, sup, status_address, backend.status_path,
                                                 health=health, kind=backend.type,
                                                 **worker_sampling(config, backend, address, sup)))
                system.start_soon(pool.run_reaper)
            monitor = Monitor(listener_state.stats, pool_monitors,
                              master_pid=os.getppid() if inherited is not None else None)
            system.start_soon(monitor.run)
            app = App(config, pools, monitor.compression, monitor.guard,
                      inherited.guard_table if inherited is not None else "", cache_stats=monitor.cache)
            system.start_soon(app.run)  # the page caches' background refreshes
            if inherited is not None and app.caches:
                share_purges(app, config.admin.listen)
                if inherited.cache_locks:
                    app.caches.share_locks(inherited.cache_locks)  # (opened before privileges drop)
            settings = ConnectionSettings.from_config(config.server, config.timeouts, config.limits)
            max_conns = raise_open_files_limit(config.limits.max_connections)
            services = [Service(listeners, app, settings, listener_state, max_conns,
                                 config.limits.max_connections_per_ip, specs, tls)]
            running = Running(listeners, pools, supervisors, listener_state, monitor)
            if inherited is None:  # a master's worker only reads what the master obtains
                running.certificates = start_certificates(config, privileges, system)
            if config.admin.listen != "off":
                admin_listeners = admin_listeners or await open_listeners([config.admin.listen])
                running.admin_listeners = admin_listeners
                certificates = running.certificates.status if running.certificates is not None else None
                purge = app.purge if app.caches else None
                services.append(Service(running.admin_listeners, AdminApp(monitor, certificates, purge).handle,
                                         admin_connection_settings(),
                                         ListenerState(), max_connections=64))
            if pid_file:
                write_pid_file(pid_file)
                tell_watchdog(f"remove {pid_file}")
            drop(account)  # everything that needs root is bound, opened and started
            if inherited is None:
                for listener, spec in zip(listeners, specs, strict=True):
                    log.info("listening on %s", listener_url(listener, spec.tls))
                for listener in running.admin_listeners:
                    log.info("admin (/status, /metrics) on %s", listener_url(listener))
            else:
                log.debug("worker process %d serving", os.getpid())

            def reexec() -> None:
                nonlocal carry
                carry = carry_fds(by_address)

            watchers = signal_watchers(signals, inherited, supervisors=supervisors,
                                       reload=reload if inherited is None else None, reexec=reexec)
            system.start_soon(_end_shielded_runs, running.shutdown, list(pools.values()), config.timeouts.graceful)
            if inherited is None and tls is not None:
                system.start_soon(renew_internal, lambda: (config, privileges))
            await serve_until_shutdown(running.shutdown, listener_state, services, config.timeouts.graceful,
                                       watchers=watchers, on_started=lambda: task_status.started(running))
            for pool in pools.values():
                await pool.aclose()
            system.cancel_scope.cancel()
    finally:
        for listener in [*listeners, *admin_listeners]:
            listener.socket.close()  # already closed unless start-up failed
        owned = [config.admin.listen] + (config.server.listen if inherited is None and carry is None else [])
        for path in _unix_paths(owned):
            try:
                os.unlink(path)
            except OSError:
                pass
        if remove_runtime:
            shutil.rmtree(runtime_dir, ignore_errors=True)
        if pid_file and carry is None:
            remove_pid_file(pid_file)
        if carry is not None:
            tell_watchdog(f"keep {pid_file}")  # the re-executed process is the same pid, and keeps it
    return carry


async def _end_shielded_runs(shutdown: trio.Event, pools: list[Pool[Any]], graceful: float) -> None:
    """PHP runs shielded from client aborts (``ignore_client_abort``) get the
    same graceful period as the connections, not until PHP ends."""
    await shutdown.wait()
    deadline = trio.current_time() + graceful
    for pool in pools:
        pool.end_shielded_at(deadline)


def _unix_paths(entries: list[str]) -> list[str]:
    addresses = [parse_listen(entry).address for entry in entries if entry != "off"]
    return [a[5:] for a in addresses if a.startswith("unix:")]


def signal_watchers(signals: AsyncIterator[int] | None, inherited: Inherited | None, *,
                    supervisors: dict[str, PhpFpmSupervisor] | None = None,
                    reload: Callable[[], Config] | None = None,
                    reexec: Callable[[], None] | None = None) -> list[Callable[[trio.Event], Awaitable[None]]]:
    watchers: list[Callable[[trio.Event], Awaitable[None]]] = []
    if signals is not None:
        watchers.append(partial(_watch_signals, signals, supervisors or {}, reload, reexec, inherited is not None))
    if inherited is not None and inherited.parent_fd is not None:
        watchers.append(partial(_watch_parent, inherited.parent_fd))
    return watchers


async def _watch_parent(fd: int, shutdown: trio.Event) -> None:
    """A worker's pipe from its master reads EOF once the master is gone (even
    killed with SIGKILL): then stop, rather than serve on alone."""
    await trio.lowlevel.wait_readable(fd)
    log.warning("the master process is gone: shutting down")
    shutdown.set()


def reload_failed(exc: ConfigError) -> None:
    """One log line per problem of a configuration a reload refused."""
    for line in str(exc).splitlines():
        log.error("reload refused, the running configuration stays: %s", line)


async def _watch_signals(signals: AsyncIterator[int], supervisors: dict[str, PhpFpmSupervisor],
                         reload: Callable[[], Config] | None, reexec: Callable[[], None] | None, worker: bool,
                         shutdown: trio.Event) -> None:
    """``serve.signals``' policy for one process (or a worker)."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum in STOP:
            log.info("received %s", name)
            shutdown.set()
            return
        if signum == REOPEN:
            files = reopen_log_files()
            for sup in supervisors.values():
                sup.reopen_logs()
            log.info("received %s: reopened %d log files", name, files)
        elif signum == RELOAD:
            if worker or reload is None:
                log.info("received %s: ignored (only the master reloads)", name)
                continue
            try:
                reload()
            except ConfigError as exc:
                reload_failed(exc)
                continue
            log.info("received %s: the configuration is valid; restarting in place (same pid, "
                     "listen sockets kept open) after in-flight requests", name)
            if reexec is not None:
                reexec()
            shutdown.set()
            return
