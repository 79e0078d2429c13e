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

Configuration becomes runtime settings once per type, with no default repeated
(they all live in ``gateway.config``): ``ConnectionSettings.from_config`` and
``PhpSettings.from_config`` beside their types, ``pool_from_config`` here; the
admin listener's two tighter timeouts are ``admin_connection_settings``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from ..app.site import App
from ..config import BackendConfig, Config, LimitsConfig
from ..front.h1 import ConnectionSettings, ListenerState
from ..front.listen import (
    Service,
    inherited_listeners,
    listener_url,
    open_listeners,
    raise_open_files_limit,
    serve_until_shutdown,
)
from ..observe.admin import AdminApp
from ..observe.health import BackendHealth
from ..observe.monitor import Monitor, PoolMonitor
from ..upstream.connect import Connector, make_connector
from ..upstream.fastcgi import FastCgiConn, fastcgi_pool
from ..upstream.pool import Pool
from .php_fpm import PING_PATH, PhpFpmSupervisor, make_runtime_dir
from .privileges import Plan, drop

log = logging.getLogger(__name__)


#: The admin listener's own limits (not configurable): it answers a monitoring
#: client, never a browser, so idle or slow connections are cut sooner.
ADMIN_KEEPALIVE_TIMEOUT = 5.0
ADMIN_HEADER_TIMEOUT = 10.0


def admin_connection_settings() -> ConnectionSettings:
    """What a connection to the admin listener (here or in the master) obeys:
    the schema's defaults with shorter keep-alive and header timeouts."""
    return replace(ConnectionSettings.from_config(), keepalive_timeout=ADMIN_KEEPALIVE_TIMEOUT,
                   header_timeout=ADMIN_HEADER_TIMEOUT)


def pool_from_config(name: str, connector: Connector, backend: BackendConfig,
                     limits: LimitsConfig) -> Pool[FastCgiConn]:
    """Backend ``name``'s pool: the one mapping from its configuration."""
    return fastcgi_pool(name, connector, size=backend.pool_size,
                        queue_depth=backend.queue_limit(limits.max_connections), queue_timeout=backend.queue_timeout,
                        connect_timeout=backend.connect_timeout,
                        idle_timeout=backend.idle_timeout)


@dataclass
class Running:
    """What a started server exposes to its caller (and to tests)."""

    listeners: list[trio.SocketListener]
    pools: dict[str, Pool[FastCgiConn]]
    supervisors: dict[str, PhpFpmSupervisor]
    listener_state: ListenerState
    monitor: Monitor
    admin_listeners: list[trio.SocketListener] = field(default_factory=list)
    shutdown: trio.Event = field(default_factory=trio.Event)


async def start_backend(config: Config, name: str, runtime_dir: str, system: trio.Nursery,
                        privileges: Plan | None = None) -> tuple[str, str, PhpFpmSupervisor | None]:
    """Backend ``name``'s FastCGI address and status address; a ``spawn``
    backend's php-fpm is started (and supervised) in ``system`` first, as
    ``privileges`` say (``serve.privileges``)."""
    backend = config.backends[name]
    if backend.address != "spawn":
        return backend.address, backend.status, None
    sup = PhpFpmSupervisor(name, backend, runtime_dir, max_body_size=config.limits.client_max_body_size,
                           users=privileges.fpm.get(name) if privileges is not None else None)
    await system.start(sup.run)
    return sup.address, backend.status or "unix:" + sup.paths.status_socket, sup


@dataclass(frozen=True)
class Inherited:
    """What a worker process gets from its master (see ``serve.master``): the
    listen sockets, already bound, and the read end of a pipe whose EOF means
    the master is gone."""

    listen_fds: list[int]
    parent_fd: int | None = None


async def serve(config: Config, *, handle_signals: bool = True, inherited: Inherited | None = None,
                privileges: Plan | None = None,
                task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the gateway in this process until SIGTERM/SIGINT (or ``Running.shutdown``
    is set). ``inherited``: serve a master's sockets as one of its workers.
    ``privileges``: drop to its user once everything is bound and started.

    Reports a ``Running`` through ``task_status`` once listening.
    """
    # Bind first: an address in use is reported (naming it) before php-fpm starts.
    # A worker opens its admin socket last: its master takes that as "serving".
    listeners = (inherited_listeners(inherited.listen_fds) if inherited is not None
                 else await open_listeners(config.server.listen))
    admin_listeners: list[trio.SocketListener] = []
    try:
        if config.admin.listen != "off" and inherited is None:
            admin_listeners = await open_listeners([config.admin.listen])
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    account = privileges.account if privileges is not None else None
    runtime_dir, remove_runtime = make_runtime_dir(config.server.runtime_dir, account)
    listener_state = ListenerState()
    try:
        async with trio.open_nursery() as system:
            supervisors: dict[str, PhpFpmSupervisor] = {}
            pools: dict[str, Pool[FastCgiConn]] = {}
            pool_monitors: list[PoolMonitor] = []
            for name, backend in config.backends.items():
                address, status_address, sup = await start_backend(config, name, runtime_dir, system, privileges)
                if sup is not None:
                    supervisors[name] = sup
                pool = pool_from_config(name, make_connector(address), backend, config.limits)
                pools[name] = pool
                ping = PING_PATH if sup is not None and not backend.status else ""  # our pool config has it
                health = BackendHealth.for_backend(name, address=address, status_address=status_address,
                                                   status_path=backend.status_path, ping_path=ping)
                pool_monitors.append(PoolMonitor(pool, sup, status_address, backend.status_path, health=health))
                system.start_soon(pool.run_reaper)
            monitor = Monitor(listener_state.stats, pool_monitors)
            system.start_soon(monitor.run)
            app = App(config, pools)
            settings = ConnectionSettings.from_config(config.server, config.timeouts, config.limits)
            max_conns = raise_open_files_limit(config.limits.max_connections)
            services = [Service(listeners, app.handle, settings, listener_state, max_conns,
                                 config.limits.max_connections_per_ip)]
            running = Running(listeners, pools, supervisors, listener_state, monitor)
            if config.admin.listen != "off":
                admin_listeners = admin_listeners or await open_listeners([config.admin.listen])
                running.admin_listeners = admin_listeners
                services.append(Service(running.admin_listeners, AdminApp(monitor).handle,
                                         admin_connection_settings(),
                                         ListenerState(), max_connections=64))
            drop(account)  # everything that needs root is bound, opened and started
            if inherited is None:
                for listener in listeners:
                    log.info("listening on %s", listener_url(listener))
                for listener in running.admin_listeners:
                    log.info("admin (/status, /metrics) on %s", listener_url(listener))
            else:
                log.debug("worker process %d serving", os.getpid())
            system.start_soon(_end_shielded_runs, running.shutdown, list(pools.values()), config.timeouts.graceful)
            await serve_until_shutdown(running.shutdown, listener_state, services, config.timeouts.graceful,
                                       watchers=signal_watchers(handle_signals, inherited),
                                       on_started=lambda: task_status.started(running))
            for pool in pools.values():
                await pool.aclose()
            system.cancel_scope.cancel()
    finally:
        for listener in [*listeners, *admin_listeners]:
            listener.socket.close()  # already closed unless start-up failed
        owned = [config.admin.listen] + (config.server.listen if inherited is None else [])
        for path in _unix_paths(owned):
            try:
                os.unlink(path)
            except OSError:
                pass
        if remove_runtime:
            shutil.rmtree(runtime_dir, ignore_errors=True)


async def _end_shielded_runs(shutdown: trio.Event, pools: list[Pool[FastCgiConn]], graceful: float) -> None:
    """PHP runs shielded from client aborts (``ignore_client_abort``) get the
    same graceful period as the connections, not until PHP ends."""
    await shutdown.wait()
    deadline = trio.current_time() + graceful
    for pool in pools:
        pool.end_shielded_at(deadline)


def _unix_paths(addresses: list[str]) -> list[str]:
    return [a[5:] for a in addresses if a.startswith("unix:")]


def signal_watchers(handle_signals: bool,
              inherited: Inherited | None) -> list[Callable[[trio.Event], Awaitable[None]]]:
    watchers: list[Callable[[trio.Event], Awaitable[None]]] = []
    if handle_signals:
        watchers.append(_watch_signals)
    if inherited is not None and inherited.parent_fd is not None:
        watchers.append(partial(_watch_parent, inherited.parent_fd))
    return watchers


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
