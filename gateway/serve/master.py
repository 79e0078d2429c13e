"""Several processes, one gateway: ``[server] processes = N`` (default one per core).

Python runs one thread of bytecode per process, so one process tops out at one
core. Like nginx's master and worker processes:

- The **master** (this module's ``serve_master``) starts the php-fpm
  supervisors, binds the listen sockets, and starts N worker processes that
  inherit them. It restarts a worker that dies (``serve.restart``'s backoff,
  ``RESTART_BACKOFF``), answers the admin listener by asking each worker and
  merging (``aggregate.py``), and on SIGTERM/SIGINT/SIGQUIT closes its listen
  sockets, stops the workers (each closes its own copies at once, so new
  connects are refused, and finishes its requests) and then php-fpm.
- **Reload** (SIGHUP; ``serve.signals``): the master keeps the listen sockets,
  so a new *generation* of workers starts on them with the new configuration
  while the old one still serves; once every new worker serves, the old ones
  get SIGTERM and finish their requests within ``timeouts.graceful``. Between
  the two, both accept from the same sockets: no connect is refused and none
  waits for a restart. A spawned php-fpm whose settings changed (``spawn_key``)
  is started anew beside the old one, which stops (gracefully) after the old
  workers; an unchanged one serves both generations. Listen addresses added
  are bound before anything starts (an address in use fails the reload, which
  changes nothing), removed ones are closed with the old generation.
  ``admin.listen``, ``pid_file`` and ``error_log`` take effect at a restart.
- Each **worker** is an ordinary single-process gateway (``serve.process.serve``) on
  the inherited sockets, with its own pools. A backend's ``pool_size`` is split
  between them (5 over 2 processes: 3 + 2), so php-fpm never has more
  connections than workers; each has a queue of ``queue_depth``. All call
  accept() on the same socket, so a busy process simply accepts less.
- A listen entry flagged **reuseport** (nginx's ``listen ... reuseport``) is
  bound as one socket per worker instead (SO_REUSEPORT: the kernel spreads
  connections over them, evenly on average, busy or not). The master holds
  them all and gives worker i socket i, and only that (``worker_listeners``),
  in every generation and after a restart: a socket is never closed while
  its address is listened on, since closing one resets the connections
  queued in it. A reload to more workers clones sockets, one to fewer keeps
  them and worker ``j % count`` serves socket j (``listen_sets``). The flag
  changed on an address that stays takes effect at the next start.
- A worker's admin listener is a unix socket in the runtime directory; a pipe
  from the master tells it when the master is gone (EOF), so no worker outlives
  its master; ``serve.watchdog`` kills one that does not stop, and php-fpm.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..acme.manager import CertificateManager
from ..app import cache_lock, guard_table
from ..config import FASTCGI_ONLY_KEYS, Config, ConfigError, validate
from ..config.addresses import ListenSpec, parse_listen
from ..front.h1 import ListenerState
from ..front.listen import Service, clone_listeners, listener_url, reuses_port, serve_until_shutdown
from ..http._h11 import describe
from ..observe.admin import NO_CACHE, AdminRouter, AdminStatus, NoCache, admin_request
from ..observe.aggregate import merge_prometheus, merge_status, split
from ..tls.ticket_keys import new_keys
from .php_fpm import PhpFpmSupervisor, stop_stale_php_fpm
from .privileges import Plan, PrivilegeError, prepare_dirs
from .privileges import plan as privileges_plan
from .process import (
    Inherited,
    admin_connection_settings,
    listen_specs,
    open_admin_listeners,
    open_listen_map,
    prepare_tls,
    reload_failed,
    renew_internal,
    runtime_dir_for,
    spawn_key,
    start_backend,
    start_certificates,
)
from .restart import Backoff, Restarting, StartFailed
from .signals import HANDLED, RELOAD, REOPEN, STOP, remove_pid_file, reopen_log_files, unblock, write_pid_file
from .watchdog import tell as tell_watchdog
from .watchdog import watching

log = logging.getLogger(__name__)

#: A worker that dies is restarted after 0.5 s, doubling up to 10 s while it
#: keeps dying within 10 s of its start.
RESTART_BACKOFF = Backoff(first=0.5, most=10.0, reset_after=10.0)
#: How long the master waits for one worker's /status or /metrics.
ADMIN_FETCH_TIMEOUT = 2.0
#: How long a worker may take to start serving.
WORKER_START_TIMEOUT = 30.0


def process_count(config: Config) -> int:
    """Processes to run: ``[server] processes`` ("auto": one per core), never more
    than the smallest PHP backend's ``pool_size`` (each process needs one
    connection of each)."""
    wanted = usable_cpus() if config.server.processes == "auto" else int(config.server.processes)
    php = [b.pool_size for name, b in config.backends.items() if any(s.php == name for s in config.sites.values())]
    return max(1, min([wanted, *php]))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cpusets), not
    all the host has."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_config(config: Config, index: int, count: int, backends: dict[str, tuple[str, str]],
                  runtime_dir: str, generation: int = 0) -> dict[str, Any]:
    """Worker ``index``'s configuration (as data): its share of each backend's
    connections and of max_connections, the backends' resolved
    addresses, an admin unix socket, and a runtime dir of its own. Only
    worker 0 samples what php-fpm's workers wait on (``[diagnosis]
    sample_workers``): every process would read the same workers."""
    data: dict[str, Any] = config.model_dump(mode="json")
    data["server"]["processes"] = 1
    suffix = f".g{generation}" if generation else ""
    data["server"]["runtime_dir"] = os.path.join(runtime_dir, f"worker-{index}{suffix}")
    data["server"]["pid_file"] = ""
    data["admin"]["listen"] = "unix:" + admin_socket(runtime_dir, index, generation)
    data["limits"]["max_connections"] = max(1, split(config.limits.max_connections, count)[index])
    if index > 0:  # one process reads what php-fpm's workers wait on; the master's merge shows its answer
        data["diagnosis"]["sample_workers"] = False
    for name, backend in config.backends.items():
        address, status = backends[name]
        b = data["backends"][name]
        if backend.type == "http":
            for key in FASTCGI_ONLY_KEYS:  # (the schema refuses them on an HTTP backend)
                del b[key]
        else:
            b["status"] = status
        if backend.addresses:
            del b["address"]  # (one or the other)
        else:
            b["address"] = address
        # (a backend no site uses may have a smaller pool than there are processes;
        # it never gets a request, so never a connection)
        b["pool_size"] = max(1, split(backend.pool_size, count)[index])
        # queue_depth is not split: processes accept unevenly, and a process's
        # queue costs php-fpm nothing (it bounds waiting in that process)
    return data


def uses_guard_table(config: Config) -> bool:
    """Does a site have a rate limit or basic auth (whose failures are counted)?"""
    return any(site.rate_limit or site.basic_auth for site in config.sites.values())


def admin_socket(runtime_dir: str, index: int, generation: int = 0) -> str:
    """Worker ``index``'s admin socket; a reload's workers (``generation`` 1, 2...) get their own."""
    tag = f"{index}" if not generation else f"{index}.g{generation}"
    return os.path.join(runtime_dir, f"worker-{tag}.admin.sock")


class Workers:
    """The worker processes: start, restart, stop."""

    def __init__(self, specs: list[str], pass_fds: list[list[int]], runtime_dir: str, generation: int = 0) -> None:
        self.runtime_dir = runtime_dir
        self.generation = generation
        self.specs = specs
        #: each worker's inherited fds: its listen sockets (none of another's) and the pipe
        self.pass_fds = pass_fds
        self.processes: list[trio.Process | None] = [None] * len(specs)
        self.stopping = False

    async def run(self, index: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep worker ``index`` running; report started once it first serves
        (``serve.restart``: the first start must succeed, later ones back off)."""
        keeper = Restarting(f"worker process {index}", RESTART_BACKOFF, stopping=lambda: self.stopping)
        await keeper.run(partial(self._run_once, index), task_status=task_status)

    async def _run_once(self, index: int, up: Callable[[], None]) -> str:
        """Start worker ``index``, call ``up`` once it serves, return when it has exited."""
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway", "worker", self.specs[index]],
            pass_fds=self.pass_fds[index], start_new_session=True)  # the master alone gets the terminal's Ctrl-C
        self.processes[index] = proc
        tell_watchdog(f"worker {proc.pid}")
        try:
            if not await self._ready(index, proc):
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                raise StartFailed(f"exit status {proc.returncode}; its log lines above say why")
            up()
            await proc.wait()
        finally:
            tell_watchdog(f"done {proc.pid}")
        return f"(pid {proc.pid}) exited with status {proc.returncode}"

    async def _ready(self, index: int, proc: trio.Process) -> bool:
        """Wait until the worker answers on its admin socket (it opens that once
        it serves); False if it exited first or took longer than WORKER_START_TIMEOUT."""
        path = admin_socket(self.runtime_dir, index, self.generation)
        with trio.move_on_after(WORKER_START_TIMEOUT):
            while proc.returncode is None:
                try:
                    stream = await trio.open_unix_socket(path)
                except OSError:
                    await trio.sleep(0.02)  # nothing to wait on but the socket's appearance
                    continue
                await stream.aclose()
                return True
        return False

    def send_signal(self, signum: int) -> None:
        for proc in self.processes:
            if proc is not None and proc.returncode is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    async def stop(self, graceful: float) -> None:
        """SIGTERM each worker (it finishes its requests within ``graceful``), then
        SIGKILL what is left a few seconds after that."""
        self.stopping = True
        running = [p for p in self.processes if p is not None and p.returncode is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(graceful + 5):
            for proc in running:
                await proc.wait()
        for proc in running:
            if proc.returncode is None:
                log.error("worker process %d did not stop; killing it", proc.pid)
                proc.kill()
                await proc.wait()


class MasterAdmin(AdminRouter):
    """The admin listener in the master: each worker's /status or /metrics, merged."""

    def __init__(self, runtime_dir: str, count: int, supervisors: dict[str, PhpFpmSupervisor],
                 certificates: Callable[[], CertificateManager | None] = lambda: None) -> None:
        super().__init__(self.status, self.metrics, self.purge)
        self.runtime_dir = runtime_dir
        self.sockets = [admin_socket(runtime_dir, i) for i in range(count)]
        self.supervisors = supervisors
        #: the master's ACME task, if any (its certificates are the master's own numbers)
        self.certificates = certificates
        self.started = time.time()

    def show(self, count: int, generation: int, supervisors: dict[str, PhpFpmSupervisor]) -> None:
        """After a reload: show the new generation's workers and php-fpm."""
        self.sockets = [admin_socket(self.runtime_dir, i, generation) for i in range(count)]
        self.supervisors = supervisors

    async def _fetch_all(self, target: bytes, body: bytes | None = None,
                         statuses: list[int] | None = None) -> list[bytes | None]:
        """Each worker's answer to GET ``target`` (POST ``body`` when given); None:
        no answer (``statuses`` gets the non-200 statuses that came instead)."""
        out: list[bytes | None] = [None] * len(self.sockets)

        async def one(i: int) -> None:
            with trio.move_on_after(ADMIN_FETCH_TIMEOUT):
                try:
                    if body is None:
                        out[i] = await _get(self.sockets[i], target)
                    else:
                        out[i] = await admin_request(self.sockets[i], target, method=b"POST", body=body)
                except AdminStatus as exc:
                    if statuses is not None:
                        statuses.append(exc.status)
                except (OSError, ValueError, trio.BrokenResourceError):
                    pass

        async with trio.open_nursery() as nursery:
            for i in range(len(self.sockets)):
                nursery.start_soon(one, i)
        return out

    async def status(self) -> dict[str, Any]:
        bodies = await self._fetch_all(b"/status")
        out = merge_status([None if b is None else json.loads(b) for b in bodies], pid=os.getpid(),
                           uptime=time.time() - self.started,
                           fpm_restarts={n: s.restarts for n, s in self.supervisors.items()})
        out["http1_parser"] = describe()  # (the workers inherit GATEWAY_H11: they run the same)
        manager = self.certificates()
        if manager is not None:
            out["certificates"] = manager.status()
        return out

    async def purge(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A page-cache purge in every worker (each has its own memory tier)."""
        statuses: list[int] = []
        answers = await self._fetch_all(b"/cache/purge", json.dumps(obj).encode(), statuses)
        done = [json.loads(a) for a in answers if a is not None]
        if not done and statuses and all(s == 404 for s in statuses):
            raise NoCache(NO_CACHE)
        if len(done) < len(answers):
            log.warning("cache purge %s: %d of %d worker processes did not answer", obj,
                        len(answers) - len(done), len(answers))
        return {"purged": sum(d.get("purged", 0) for d in done), "processes": len(done), "asked": len(answers)}

    async def metrics(self) -> str:
        texts = [None if b is None else b.decode() for b in await self._fetch_all(b"/metrics")]
        return merge_prometheus(texts, await self.status())


#: The most the master reads of one worker's /status or /metrics.
ADMIN_MAX_BODY = 64 << 20


async def _get(path: str, target: bytes, max_body: int = ADMIN_MAX_BODY) -> bytes:
    """GET ``target`` from a worker's admin unix socket (``admin_request``)."""
    return await admin_request(path, target, max_body=max_body)


@dataclass
class Generation:
    """One configuration's worker processes and what they were started with.
    A reload starts a new generation; the old one is retired once it is up."""

    number: int
    config: Config
    count: int
    workers: Workers
    #: backend name -> (``spawn_key``, its supervisor; None: not spawned)
    fpm: dict[str, tuple[str | None, PhpFpmSupervisor | None]]
    #: backend name -> (FastCGI address, status address)
    backends: dict[str, tuple[str, str]]
    #: listen address -> the master's sets of listeners for it (a set: a socket
    #: per address family): one, served by every worker, or for a
    #: ``reuseport`` address one per worker (``worker_listeners``)
    listen: dict[str, list[list[trio.SocketListener]]]

    @property
    def supervisors(self) -> dict[str, PhpFpmSupervisor]:
        return {name: sup for name, (_, sup) in self.fpm.items() if sup is not None}


class Master:
    """Generations of workers over one runtime directory: start one, reload
    into a new one, retire an old one, stop them all (``serve.signals``' policy)."""

    def __init__(self, runtime_dir: str, parent_read: int, log_level: str, system: trio.Nursery,
                 reload: Callable[[], Config] | None, privileges: Plan | None = None) -> None:
        self.runtime_dir = runtime_dir
        #: who runs as whom (``serve.privileges``); recomputed for a reload's configuration
        self.privileges = privileges
        self.parent_read = parent_read
        self.log_level = log_level
        self.system = system
        self.load_config = reload
        #: live generations, oldest first; the last one is current
        self.generations: list[Generation] = []
        self.admin: MasterAdmin | None = None
        #: the ACME task (``acme.manager``), when a site has ``acme = true``
        self.certificates: CertificateManager | None = None
        self._numbers = itertools.count()

    @property
    def current(self) -> Generation:
        return self.generations[-1]

    async def start_generation(self, config: Config, count: int,
                               bound: dict[str, list[trio.SocketListener]] | None = None,
                               privileges: Plan | None = None) -> Generation:
        """Start what ``config`` needs beside what runs (listeners for new
        addresses, bound first; php-fpm for a backend whose ``spawn_key``
        changed; the rest is shared with the current generation), then ``count``
        workers, and return once each serves. On a failure, stop what was
        started here and raise. ``bound``: the first generation's listeners,
        bound by the caller."""
        number = next(self._numbers)
        current = self.generations[-1] if self.generations else None
        started: list[PhpFpmSupervisor] = []
        opened: list[trio.SocketListener] = []
        gen: Generation | None = None
        try:
            if bound is not None:
                first = bound
            else:
                first = await open_listen_map(config.server.listen, reuseport=True, keep=None if current is None else
                                              {address: sets[0] for address, sets in current.listen.items()})
                opened = [listener for address, ls in first.items()
                          if current is None or address not in current.listen for listener in ls]
            listen = await listen_sets(config.server.listen, first, count, current.listen if current else {}, opened)
            fpm: dict[str, tuple[str | None, PhpFpmSupervisor | None]] = {}
            backends: dict[str, tuple[str, str]] = {}
            for name in config.backends:
                key = spawn_key(config, name, privileges)
                if current is not None and key is not None and current.fpm.get(name, (None, None))[0] == key:
                    fpm[name] = current.fpm[name]
                    backends[name] = current.backends[name]
                    continue
                directory = os.path.join(self.runtime_dir, f"fpm-{name}" + (f".g{number}" if number else ""))
                address, status, sup = await start_backend(config, name, self.runtime_dir, self.system,
                                                           privileges, directory=directory)
                if sup is not None:
                    started.append(sup)
                fpm[name] = (key, sup)
                backends[name] = (address, status)
            prepare_tls(config, privileges)  # the internal CA's certificates, before a worker reads them
            ticket_keys = new_keys()  # one set per generation: a reload rotates them
            # one rate-limit table for all workers and generations (nginx's zone)
            table = guard_table.create(self.runtime_dir) if uses_guard_table(config) else ""
            # one page-cache lock table too: a cold page costs one PHP run, not one per worker
            locks = cache_lock.create(self.runtime_dir) if any(s.cache.enabled for s in config.sites.values()) else ""
            specs: list[str] = []
            pass_fds: list[list[int]] = []
            for i in range(count):
                listeners, listen_entries = worker_listeners(config.server.listen, listen, i, count)
                listen_fds = [listener.socket.fileno() for listener in listeners]
                specs.append(write_spec(config, i, count, backends, self.runtime_dir, listen_fds, self.parent_read,
                                        self.log_level, number, [str(spec) for spec in listen_entries],
                                        ticket_keys, table, locks))
                pass_fds.append([*listen_fds, self.parent_read])
            workers = Workers(specs, pass_fds, self.runtime_dir, number)
            gen = Generation(number, config, count, workers, fpm, backends, listen)
            self.generations.append(gen)  # a stop meanwhile stops these workers too
            async with trio.open_nursery() as starting:  # all at once; on once each serves
                for i in range(count):
                    starting.start_soon(self.system.start, workers.run, i)
        except BaseException:
            with trio.CancelScope(shield=True):
                if gen is not None:
                    self.generations.remove(gen)
                    await gen.workers.stop(0)
                    self._remove_files(gen)
                for sup in started:
                    sup.stop()
                    await sup.stopped.wait()
                for listener in opened:
                    await trio.aclose_forcefully(listener)
            raise
        return gen

    async def reload(self) -> None:
        """SIGHUP: validate the configuration again; if it is good, start a new
        generation and retire the current one (its workers finish their requests
        within ``timeouts.graceful``); if not, log why and change nothing."""
        if self.load_config is None:
            log.info("received SIGHUP: ignored (no configuration directory to read again)")
            return
        try:
            config = self.load_config()
            privileges = privileges_plan(config, os.geteuid()) if self.privileges is not None else None
            if privileges is not None:
                prepare_dirs(config, privileges.account)
        except ConfigError as exc:
            reload_failed(exc)
            return
        except PrivilegeError as exc:
            reload_failed(ConfigError(str(exc)))
            return
        old = self.current
        for key, was, now in (("admin.listen", old.config.admin.listen, config.admin.listen),
                              ("server.pid_file", old.config.server.pid_file, config.server.pid_file),
                              ("server.error_log", old.config.server.error_log, config.server.error_log)):
            if was != now:
                log.warning("reload: %s changed; it takes effect at the next start", key)
        count = process_count(config)
        log.info("received SIGHUP: the configuration is valid; starting %d new worker processes", count)
        try:
            gen = await self.start_generation(config, count, privileges=privileges)
        except Exception as exc:  # noqa: BLE001 - a failed start arrives wrapped in nursery groups
            leaf: BaseException = exc
            while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
                leaf = leaf.exceptions[0]
            log.error("reload failed, the running configuration stays: %s", leaf)
            return
        if self.admin is not None:
            self.admin.show(count, gen.number, gen.supervisors)
        self.privileges = privileges
        if self.certificates is not None:
            self.certificates.reconfigure(config)
        else:
            self.certificates = start_certificates(config, privileges, self.system)
        log.info("reloaded: %d worker processes serve the new configuration; the %d old ones finish their "
                 "requests within %gs", count, old.count, old.config.timeouts.graceful)
        self.system.start_soon(self.retire, old)

    async def retire(self, gen: Generation) -> None:
        """Stop ``gen``'s workers gracefully, then what no live generation shares:
        its php-fpm (gracefully), its listen sockets, its files."""
        gen.workers.stopping = True
        await gen.workers.stop(gen.config.timeouts.graceful)
        if gen in self.generations:
            self.generations.remove(gen)
        shared_sups = {id(s) for g in self.generations for s in g.supervisors.values()}
        shared_listeners = {id(listener) for g in self.generations for sets in g.listen.values()
                            for ls in sets for listener in ls}
        for sup in gen.supervisors.values():
            if id(sup) not in shared_sups:
                sup.stop()
                await sup.stopped.wait()
                shutil.rmtree(sup.paths.directory, ignore_errors=True)
        for address, sets in gen.listen.items():
            for listener in (listener for ls in sets for listener in ls):
                if id(listener) not in shared_listeners:
                    await trio.aclose_forcefully(listener)
            if address.startswith("unix:") and not any(address in g.listen for g in self.generations):
                _unlink(address[5:])
        self._remove_files(gen)
        log.info("the worker processes of the previous configuration have stopped")

    def _remove_files(self, gen: Generation) -> None:
        for path in gen.workers.specs:
            _unlink(path)
        suffix = f".g{gen.number}" if gen.number else ""
        for i in range(gen.count):
            shutil.rmtree(os.path.join(self.runtime_dir, f"worker-{i}{suffix}"), ignore_errors=True)

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen ours, and tell every worker and php-fpm to reopen theirs."""
        files = reopen_log_files()
        for gen in self.generations:
            gen.workers.send_signal(signal.SIGUSR1)
        for sup in {id(s): s for g in self.generations for s in g.supervisors.values()}.values():
            sup.reopen_logs()
        log.info("received SIGUSR1: reopened %d log files; the worker processes and php-fpm reopen theirs", files)

    async def watch_signals(self, signals: AsyncIterator[int], shutdown: trio.Event) -> None:
        """``serve.signals``' policy. A reload runs beside this loop, so a stop or
        a reopen is not held up by one; HUPs while one runs make one more (the
        configuration is read when it starts)."""
        wanted, reloads = trio.open_memory_channel[None](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reloader, reloads)
            async for signum in signals:
                if signum in STOP:
                    log.info("received %s", signal.Signals(signum).name)
                    shutdown.set()  # a reload being started is undone (``start_generation``)
                    nursery.cancel_scope.cancel()
                    return
                if signum == REOPEN:
                    self.reopen_logs()
                elif signum == RELOAD:
                    try:
                        wanted.send_nowait(None)
                    except trio.WouldBlock:
                        pass  # one is queued already: it will read the newest configuration

    async def _reloader(self, reloads: trio.MemoryReceiveChannel[None]) -> None:
        async for _ in reloads:
            await self.reload()

    async def stop(self) -> None:
        """Close the master's listen sockets, stop every generation's workers
        (each finishes its requests within its ``graceful``)."""
        for gen in self.generations:
            gen.workers.stopping = True
        for gen in self.generations:
            for sets in gen.listen.values():
                for listener in (listener for ls in sets for listener in ls):
                    await trio.aclose_forcefully(listener)
        async with trio.open_nursery() as nursery:
            for gen in self.generations:
                nursery.start_soon(gen.workers.stop, gen.config.timeouts.graceful)


def clean_runtime_dir(runtime_dir: str) -> None:
    """A configured runtime directory reused after a master that was killed
    (and its watchdog with it): stop a php-fpm a reload had started there,
    remove the files of reloads and of old workers (and the page cache's
    hand-off files they left). ``fpm-NAME`` itself is the supervisor's to
    check (``php_fpm.stop_stale_php_fpm``)."""
    for entry in os.listdir(runtime_dir):
        path = os.path.join(runtime_dir, entry)
        if entry.startswith("fpm-") and ".g" in entry and os.path.isdir(path):
            stop_stale_php_fpm(path)
            shutil.rmtree(path, ignore_errors=True)
        elif entry.startswith("worker-") or entry == cache_lock.HANDOFF_DIR:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


async def serve_master(config: Config, count: int, *, log_level: str = "info", handle_signals: bool = True,
                       reload: Callable[[], Config] | None = None, watchdog: bool = True,
                       privileges: Plan | None = None,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run php-fpm, the listen sockets and ``count`` worker processes until
    SIGTERM/SIGINT/SIGQUIT; then stop the workers (graceful), then php-fpm.
    SIGHUP reloads (``reload`` gives the new configuration), SIGUSR1 reopens
    the logs: ``serve.signals``. If this process is killed, ``serve.watchdog``
    stops the workers and php-fpm. ``privileges`` (``serve.privileges``): the
    master keeps root, as nginx's; the runtime dir is given to the user the
    workers drop to."""
    # From the start: a signal that arrives while starting waits its turn instead
    # of killing us with its default action.
    with trio.open_signal_receiver(*HANDLED) if handle_signals else contextlib.nullcontext() as signals:
        unblock()
        if not watchdog:
            await _serve_master(config, count, log_level, signals, reload, privileges, task_status)
            return
        async with watching(config.timeouts.graceful + 2):
            await _serve_master(config, count, log_level, signals, reload, privileges, task_status)


async def _serve_master(config: Config, count: int, log_level: str, signals: AsyncIterator[int] | None,
                        reload: Callable[[], Config] | None, privileges: Plan | None,
                        task_status: trio.TaskStatus[None]) -> None:
    # Bind first: an address in use is reported (naming it) before php-fpm starts.
    bound = await open_listen_map(config.server.listen, reuseport=True)
    listeners, specs = listen_specs(config.server.listen, bound)
    admin_listeners = await open_admin_listeners(config.admin.listen, listeners)
    runtime_dir, remove_runtime = runtime_dir_for(config, privileges)
    if not remove_runtime:
        clean_runtime_dir(runtime_dir)
    parent_read, parent_write = os.pipe()
    pid_file = config.server.pid_file
    listened: set[str] = set()
    try:
        async with trio.open_nursery() as system:
            master = Master(runtime_dir, parent_read, log_level, system, reload, privileges)
            gen = await master.start_generation(config, count, bound, privileges)
            system.start_soon(renew_internal, lambda: (master.current.config, master.privileges)
                              if master.generations else None)
            # once the workers serve: they answer the CA's HTTP-01 requests
            master.certificates = start_certificates(config, privileges, system)
            services: list[Service] = []
            listener_state = ListenerState()
            if admin_listeners:
                master.admin = MasterAdmin(runtime_dir, count, gen.supervisors, lambda: master.certificates)
                services.append(Service(admin_listeners, master.admin.handle, admin_connection_settings(),
                                         listener_state, max_connections=64))
                for listener in admin_listeners:
                    log.info("admin (/status, /metrics) on %s", listener_url(listener))
            if pid_file:
                write_pid_file(pid_file)
                tell_watchdog(f"remove {pid_file}")
            for listener, spec in zip(listeners, specs, strict=True):
                log.info("listening on %s (%d worker processes)", listener_url(listener, spec.tls), count)
            shutdown = trio.Event()
            watchers: list[Callable[[trio.Event], Awaitable[None]]] = (
                [partial(master.watch_signals, signals)] if signals is not None else [])
            await serve_until_shutdown(shutdown, listener_state, services, 2.0, on_started=task_status.started,
                                       watchers=watchers)
            listened = {address for g in master.generations for address in g.listen}
            # New connects are refused once no process holds a listen socket: close
            # ours now (no worker is restarted from here on, none needs them), and
            # each worker closes its copies as soon as it gets SIGTERM.
            await master.stop()
            system.cancel_scope.cancel()  # php-fpm stops last
    finally:
        for listener in [*listeners, *admin_listeners]:
            listener.socket.close()  # already closed unless start-up failed
        os.close(parent_write)
        os.close(parent_read)
        for address in {*listened, *(parse_listen(e).address for e in config.server.listen), config.admin.listen}:
            if address.startswith("unix:"):
                _unlink(address[5:])
        if remove_runtime:
            shutil.rmtree(runtime_dir, ignore_errors=True)
        if pid_file:
            remove_pid_file(pid_file)



async def listen_sets(entries: list[str], first: dict[str, list[trio.SocketListener]], count: int,
                      current: dict[str, list[list[trio.SocketListener]]],
                      opened: list[trio.SocketListener]) -> dict[str, list[list[trio.SocketListener]]]:
    """The sets of listeners for a generation of ``count`` workers (see
    ``Generation.listen``): ``first`` (``open_listen_map``'s answer) gives each
    address's first set; a ``reuseport`` address gets the sets ``current`` has
    for it, and clones up to ``count`` (added to ``opened``). A set is never
    closed while its address is listened on: that would drop the connections
    queued in it; a reload to fewer processes leaves more sets than workers,
    and some workers serve two. A flag changed on a kept socket takes effect
    at the next start (SO_REUSEPORT must be set before a socket's neighbours bind)."""
    flagged = {spec.address for spec in map(parse_listen, entries) if spec.reuseport}
    out: dict[str, list[list[trio.SocketListener]]] = {}
    for address, listeners in first.items():
        sets = list(current.get(address, [listeners]))
        if reuses_port(listeners):
            if address not in flagged:
                log.warning("listen %s: reuseport removed; it takes effect at the next start (one socket per "
                            "worker process until then)", address)
            while len(sets) < count:
                clone = await clone_listeners(listeners)
                opened += clone
                sets.append(clone)
        elif address in flagged:
            log.warning("listen %s: reuseport added; it takes effect at the next start (one shared socket until "
                        "then)", address)
        out[address] = sets
    return out


def worker_listeners(entries: list[str], listen: dict[str, list[list[trio.SocketListener]]], index: int,
                     count: int) -> tuple[list[trio.SocketListener], list[ListenSpec]]:
    """Worker ``index``'s listeners (of ``count``) and the ``[server] listen``
    entry each serves: an address's one set, or of its several (``reuseport``)
    the sets ``j`` with ``j % count == index``: worker i gets socket i, the
    same socket in every generation and after a restart, so none is closed
    and nothing queued in one is lost."""
    specs = {spec.address: spec for spec in map(parse_listen, entries)}
    listeners: list[trio.SocketListener] = []
    out: list[ListenSpec] = []
    for address, sets in listen.items():
        for j, listener_set in enumerate(sets):
            if len(sets) == 1 or j % count == index:
                listeners += listener_set
                out += [specs[address]] * len(listener_set)
    return listeners, out


def write_spec(config: Config, index: int, count: int, backends: dict[str, tuple[str, str]], runtime_dir: str,
               listen_fds: list[int], parent_fd: int, log_level: str, generation: int = 0,
               listen_entries: list[str] | None = None, ticket_keys: bytes = b"", table: str = "",
               cache_locks: str = "") -> str:
    """Worker ``index``'s spec file, 0600 (it holds the TLS session-ticket keys)."""
    path = os.path.join(runtime_dir, f"worker-{index}" + (f".g{generation}" if generation else "") + ".json")
    try:
        os.unlink(path)  # a leftover could have another mode; O_EXCL below makes sure
    except FileNotFoundError:
        pass
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        json.dump({"config": worker_config(config, index, count, backends, runtime_dir, generation),
                   "listen_fds": listen_fds, "listen_entries": listen_entries or [], "parent_fd": parent_fd,
                   "log_level": log_level, "ticket_keys": ticket_keys.hex(), "guard_table": table,
                   "cache_locks": cache_locks}, f)
    return path


def read_spec(spec_path: str) -> tuple[Config, Inherited, str]:
    """A worker's spec, written by its master: configuration, inherited fds, log level."""
    with open(spec_path) as f:
        spec = json.load(f)
    inherited = Inherited(spec["listen_fds"], spec["parent_fd"], spec.get("listen_entries", []),
                          bytes.fromhex(spec.get("ticket_keys", "")), spec.get("guard_table", ""),
                          spec.get("cache_locks", ""))
    return validate(spec["config"]), inherited, spec["log_level"]
