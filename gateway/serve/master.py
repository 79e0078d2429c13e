"""Several processes, one gateway: ``[server] processes = N`` (default one per core).

Python runs one thread of bytecode per process, so one process tops out at one
core. Like nginx's master and worker processes:

- The **master** (this module's ``serve_master``) starts the php-fpm
  supervisors, binds the listen sockets, and starts N worker processes that
  inherit them. It restarts a worker that dies (``serve.restart``'s backoff,
  ``RESTART_BACKOFF``), answers the admin listener by asking each worker and
  merging (``aggregate.py``), and on SIGTERM/SIGINT closes its listen sockets,
  stops the workers (each closes its own copies at once, so new connects are
  refused, and finishes its requests) and then php-fpm.
- Each **worker** is an ordinary single-process gateway (``serve.process.serve``) on
  the inherited sockets, with its own pools. A backend's ``pool_size`` is split
  between them (5 over 2 processes: 3 + 2), so php-fpm never has more
  connections than workers; each has a queue of ``queue_depth``. All call
  accept() on the same socket, so a busy process simply accepts less.
- A worker's admin listener is a unix socket in the runtime directory; a pipe
  from the master tells it when the master is gone (EOF), so no worker outlives
  its master.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from ..config import Config, validate
from ..front.h1 import ListenerState
from ..front.listen import Service, listener_url, open_listeners, serve_until_shutdown
from ..http._h11 import h11
from ..observe.admin import AdminRouter
from ..observe.aggregate import merge_prometheus, merge_status, split
from .php_fpm import PhpFpmSupervisor, make_runtime_dir
from .privileges import Plan
from .process import Inherited, admin_connection_settings, signal_watchers, start_backend
from .restart import Backoff, Restarting, StartFailed

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
                  runtime_dir: str) -> dict[str, Any]:
    """Worker ``index``'s configuration (as data): its share of each backend's
    connections and of max_connections, the backends' resolved
    addresses, an admin unix socket, and a runtime dir of its own."""
    data: dict[str, Any] = config.model_dump(mode="json")
    data["server"]["processes"] = 1
    data["server"]["runtime_dir"] = os.path.join(runtime_dir, f"worker-{index}")
    data["admin"]["listen"] = "unix:" + admin_socket(runtime_dir, index)
    data["limits"]["max_connections"] = max(1, split(config.limits.max_connections, count)[index])
    for name, backend in config.backends.items():
        address, status = backends[name]
        b = data["backends"][name]
        b["address"], b["status"] = address, status
        # (a backend no site uses may have a smaller pool than there are processes;
        # it never gets a request, so never a connection)
        b["pool_size"] = max(1, split(backend.pool_size, count)[index])
        # queue_depth is not split: processes accept unevenly, and a process's
        # queue costs php-fpm nothing (it bounds waiting in that process)
    return data


def admin_socket(runtime_dir: str, index: int) -> str:
    return os.path.join(runtime_dir, f"worker-{index}.admin.sock")


class Workers:
    """The worker processes: start, restart, stop."""

    def __init__(self, specs: list[str], pass_fds: list[int], runtime_dir: str) -> None:
        self.runtime_dir = runtime_dir
        self.specs = specs
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
            pass_fds=self.pass_fds, start_new_session=True)  # the master alone gets the terminal's Ctrl-C
        self.processes[index] = proc
        if not await self._ready(index, proc):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise StartFailed(f"exit status {proc.returncode}; its log lines above say why")
        up()
        await proc.wait()
        return f"(pid {proc.pid}) exited with status {proc.returncode}"

    async def _ready(self, index: int, proc: trio.Process) -> bool:
        """Wait until the worker answers on its admin socket (it opens that once
        it serves); False if it exited first or took longer than WORKER_START_TIMEOUT."""
        path = admin_socket(self.runtime_dir, index)
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

    def __init__(self, runtime_dir: str, count: int, supervisors: dict[str, PhpFpmSupervisor]) -> None:
        super().__init__(self.status, self.metrics)
        self.sockets = [admin_socket(runtime_dir, i) for i in range(count)]
        self.supervisors = supervisors
        self.started = time.time()

    async def _fetch_all(self, target: bytes) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(self.sockets)

        async def one(i: int) -> None:
            with trio.move_on_after(ADMIN_FETCH_TIMEOUT):
                try:
                    out[i] = await _get(self.sockets[i], target)
                except (OSError, ValueError, trio.BrokenResourceError):
                    pass

        async with trio.open_nursery() as nursery:
            for i in range(len(self.sockets)):
                nursery.start_soon(one, i)
        return out

    async def status(self) -> dict[str, Any]:
        bodies = await self._fetch_all(b"/status")
        return merge_status([None if b is None else json.loads(b) for b in bodies], pid=os.getpid(),
                            uptime=time.time() - self.started,
                            fpm_restarts={n: s.restarts for n, s in self.supervisors.items()})

    async def metrics(self) -> str:
        texts = [None if b is None else b.decode() for b in await self._fetch_all(b"/metrics")]
        return merge_prometheus(texts, await self.status())


#: The most the master reads of one worker's /status or /metrics.
ADMIN_MAX_BODY = 64 << 20


async def _get(path: str, target: bytes, max_body: int = ADMIN_MAX_BODY) -> bytes:
    """GET ``target`` from the admin listener on unix socket ``path`` (a worker's),
    with h11's client role; the body of its 200 response.

    Raises ValueError for any other answer: another status, a response h11
    cannot parse or that ends early, a body over ``max_body`` bytes.
    """
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=target, headers=[("Host", "worker"), ("Connection", "close")])
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status = 0
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > max_body:
                        raise ValueError(f"{path}: response body over {max_body} bytes")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        except h11.ProtocolError as exc:
            raise ValueError(f"{path}: bad response: {exc}") from None
    if status != 200:
        raise ValueError(f"{path}: status {status}")
    return bytes(body)


async def serve_master(config: Config, count: int, *, log_level: str = "info", handle_signals: bool = True,
                       privileges: Plan | None = None,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run php-fpm, the listen sockets and ``count`` worker processes until
    SIGTERM/SIGINT; then stop the workers (graceful), then php-fpm.
    ``privileges`` (``serve.privileges``): the master keeps root, as nginx's;
    the runtime dir is given to the user the workers drop to."""
    # Bind first: an address in use is reported (naming it) before php-fpm starts.
    listeners = await open_listeners(config.server.listen)
    try:
        admin_listeners = await open_listeners([config.admin.listen]) if config.admin.listen != "off" else []
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    account = privileges.account if privileges is not None else None
    runtime_dir, remove_runtime = make_runtime_dir(config.server.runtime_dir, account)
    parent_read, parent_write = os.pipe()
    try:
        async with trio.open_nursery() as system:
            supervisors: dict[str, PhpFpmSupervisor] = {}
            backends: dict[str, tuple[str, str]] = {}
            for name in config.backends:
                address, status, sup = await start_backend(config, name, runtime_dir, system, privileges)
                backends[name] = (address, status)
                if sup is not None:
                    supervisors[name] = sup
            listen_fds = [listener.socket.fileno() for listener in listeners]
            specs = [write_spec(config, i, count, backends, runtime_dir, listen_fds, parent_read, log_level)
                     for i in range(count)]
            workers = Workers(specs, [*listen_fds, parent_read], runtime_dir)
            async with trio.open_nursery() as starting:  # all at once; on once each serves
                for i in range(count):
                    starting.start_soon(system.start, workers.run, i)
            services: list[Service] = []
            listener_state = ListenerState()
            if admin_listeners:
                services.append(Service(admin_listeners, MasterAdmin(runtime_dir, count, supervisors).handle,
                                         admin_connection_settings(),
                                         listener_state, max_connections=64))
                for listener in admin_listeners:
                    log.info("admin (/status, /metrics) on %s", listener_url(listener))
            for listener in listeners:
                log.info("listening on %s (%d worker processes)", listener_url(listener), count)
            shutdown = trio.Event()
            await serve_until_shutdown(shutdown, listener_state, services, 2.0, on_started=task_status.started,
                                       watchers=signal_watchers(handle_signals, None))
            # New connects are refused once no process holds a listen socket: close
            # ours now (no worker is restarted from here on, none needs them), and
            # each worker closes its copies as soon as it gets SIGTERM.
            workers.stopping = True
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            await workers.stop(config.timeouts.graceful)
            system.cancel_scope.cancel()  # php-fpm stops last
    finally:
        for listener in [*listeners, *admin_listeners]:
            listener.socket.close()  # already closed unless start-up failed
        os.close(parent_write)
        os.close(parent_read)
        for address in [*config.server.listen, config.admin.listen]:
            if address.startswith("unix:"):
                try:
                    os.unlink(address[5:])
                except OSError:
                    pass
        if remove_runtime:
            shutil.rmtree(runtime_dir, ignore_errors=True)


def write_spec(config: Config, index: int, count: int, backends: dict[str, tuple[str, str]], runtime_dir: str,
               listen_fds: list[int], parent_fd: int, log_level: str) -> str:
    path = os.path.join(runtime_dir, f"worker-{index}.json")
    with open(path, "w") as f:
        json.dump({"config": worker_config(config, index, count, backends, runtime_dir), "listen_fds": listen_fds,
                   "parent_fd": parent_fd, "log_level": log_level}, f)
    return path


def read_spec(spec_path: str) -> tuple[Config, Inherited, str]:
    """A worker's spec, written by its master: configuration, inherited fds, log level."""
    with open(spec_path) as f:
        spec = json.load(f)
    return validate(spec["config"]), Inherited(spec["listen_fds"], spec["parent_fd"]), spec["log_level"]
