"""Run php-fpm for a backend whose address is ``spawn``.

The supervisor writes a pool configuration into the runtime directory, starts
``php-fpm -F`` (foreground, so it is our child), waits until it answers a
FastCGI ping on its status socket, and restarts it if it dies, with the
backoff policy of ``serve.restart`` (``RESTART_BACKOFF``). On shutdown it asks
php-fpm to stop gracefully (SIGQUIT), then kills it after a grace period.

php-fpm starts in a session (and so a process group) of its own, whose id is
the master's pid; its workers inherit that group. When the master is gone,
however it went (SIGKILL, a crash, our stop), whatever is left of its group is
killed before a new master starts: orphaned workers would otherwise run on
beside the new pool, unsupervised (no request_terminate_timeout, no
pm.max_requests), serving the kept-alive FastCGI connections they still hold.
The group is killed while the dead master is still unreaped (we wait for its
exit through a pidfd, without reaping), so its id cannot have been reused: only
processes this supervisor started are ever signalled. Its own session also
keeps a terminal's Ctrl-C away from php-fpm: the gateway stops it, last.

Pool settings that matter to the gateway:
- ``pm = static`` with ``pm.max_children`` = the gateway's pool size: each
  kept-alive FastCGI connection pins a worker, so the pool must never be
  larger than max_children, and with ``static`` every slot has a worker ready.
- ``pm.status_listen`` on a separate socket, so the status page stays
  reachable when every worker is busy.
- ``listen.backlog`` stays at php-fpm's default; our queue is in front of it.
- ``request_slowlog_timeout`` (``php_fpm.slowlog_timeout``, 2 s) with
  ``slowlog`` beside the config: the backtraces of slow requests, which the
  diagnosis reads (``observe.slowlog``) to name the call PHP waits in.
- ``process.dumpable = yes`` when its workers run as another user and
  ``[diagnosis] sample_workers`` is on (the default): the gateway, dropped to
  that user, may then read their /proc files (system call, fds) to say what
  they wait on (``observe.sampler``). The cost: a process of that user may
  ptrace the workers (and they may dump core); ``sample_workers = false``
  leaves php-fpm's default (not dumpable).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import trio

import fastcgi

from ..config import BackendConfig
from ..http.errors import UpstreamConnectError
from ..upstream.php_fpm_status import fastcgi_get
from . import watchdog
from .privileges import DEFAULT_USER, Account, FpmUsers, can_use_dir, give, system_account
from .restart import Backoff, Restarting, StartFailed, SupervisorError

log = logging.getLogger(__name__)

#: A php-fpm that dies is restarted after 0.5 s, doubling up to 30 s while it
#: keeps dying before it is ready; once ready, the next delay is 0.5 s again.
RESTART_BACKOFF = Backoff(first=0.5, most=30.0)
READY_TIMEOUT = 15.0
#: php-fpm's ping.path in the pools we write: the readiness probe and the
#: monitor's health check (``observe.health``) ask it on the status socket.
PING_PATH = "/fpm-ping"
STOP_GRACE = 10.0


#: Where php-fpm binaries are looked for besides PATH (Debian/Ubuntu: /usr/sbin).
FPM_DIRS = ("/usr/sbin", "/usr/local/sbin")
_FPM_NAME = re.compile(r"^(?:php-fpm(\d+)\.(\d+)|php(\d+)\.(\d+)-fpm|php-fpm)$")


def find_php_fpm(configured: str = "") -> str:
    """The php-fpm binary: the configured path, else the newest ``php-fpmX.Y``
    (Debian/Ubuntu: php-fpm8.4, 8.3, 8.2...) or a plain ``php-fpm`` on PATH or
    in /usr/sbin, /usr/local/sbin."""
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        found = shutil.which(configured)
        if found:
            return found
        raise SupervisorError(f"php_fpm.binary = {configured!r} is not an executable")
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d] + list(FPM_DIRS)
    candidates = fpm_candidates(dirs)
    if candidates:
        return candidates[0]
    raise SupervisorError(
        f"php-fpm not found (looked for php-fpmX.Y, phpX.Y-fpm and php-fpm in {os.pathsep.join(dict.fromkeys(dirs))}): "
        "install it (Debian: apt-get install php-fpm, or run scripts/setup), set the backend's php_fpm.binary, "
        "or point the backend at a running php-fpm with address = ..."
    )


def fpm_candidates(dirs: list[str]) -> list[str]:
    """Executable php-fpm binaries in ``dirs``, newest version first; an
    unversioned ``php-fpm`` last; the first directory wins for one name."""
    found: dict[str, tuple[tuple[int, int], str]] = {}
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            m = _FPM_NAME.match(name)
            path = os.path.join(directory, name)
            if m is None or name in found or not os.access(path, os.X_OK) or os.path.isdir(path):
                continue
            major, minor = m.group(1) or m.group(3), m.group(2) or m.group(4)
            version = (int(major), int(minor)) if major else (-1, -1)
            found[name] = (version, path)
    return [path for _, path in sorted(found.values(), key=lambda vp: vp[0], reverse=True)]


@dataclass(frozen=True, slots=True)
class FpmPaths:
    directory: str
    config: str
    socket: str
    status_socket: str
    pid: str
    log: str
    slowlog: str = ""


def _ini_value(value: str) -> str:
    return value if value.replace(".", "").replace("-", "").isalnum() else '"' + value.replace('"', "") + '"'


def user_can_read_dir(path: str, user: str) -> bool:
    """Whether ``user`` may list ``path`` and traverse every directory above it,
    judged from the permission bits (we run as root, so os.access cannot tell)."""
    account = system_account(user)
    return account is not None and can_use_dir(path, account)


def default_fpm_users(backend: BackendConfig) -> FpmUsers | None:
    """How php-fpm runs when the caller gave no plan (``serve`` called without
    one, e.g. in a test): as this process when not root; else its workers run
    as ``php_fpm.user``, default www-data (never root unless written), and own
    the sockets."""
    if os.geteuid() != 0:
        return None
    worker = backend.php_fpm.user or DEFAULT_USER
    return FpmUsers(worker, worker, "root")


#: PHP's output buffer in pools we write (php.ini-production: 4096).
OUTPUT_BUFFERING = 64 * 1024


def write_pool_config(name: str, backend: BackendConfig, directory: str, *,
                      max_body_size: int | None = None, users: FpmUsers | None = None,
                      error_log: str = "", dumpable: bool = True) -> FpmPaths:
    """Write ``php-fpm.conf`` for one pool into ``directory`` and return the paths.

    ``error_log``: a file for php-fpm's log (the gateway's error log, reopened
    on SIGUSR1), else its standard error, relayed to ours.

    ``max_body_size`` (the gateway's client_max_body_size) also becomes PHP's
    upload_max_filesize and post_max_size, whose php.ini defaults (2M, 8M)
    would otherwise reject WordPress media uploads the gateway accepted.
    ``users`` (``serve.privileges``, when root): its workers' user and who
    owns its sockets; default ``default_fpm_users``.
    """
    users = users if users is not None else default_fpm_users(backend)
    os.makedirs(directory, exist_ok=True)
    paths = FpmPaths(
        directory=directory,
        config=os.path.join(directory, "php-fpm.conf"),
        socket=os.path.join(directory, "php.sock"),
        status_socket=os.path.join(directory, "status.sock"),
        pid=os.path.join(directory, "php-fpm.pid"),
        log=os.path.join(directory, "php-fpm.log"),
        slowlog=os.path.join(directory, "slow.log") if backend.php_fpm.slowlog_timeout > 0 else "",
    )
    lines = [
        "; written by the gateway; changes are overwritten at the next start",
        "[global]",
        f"pid = {paths.pid}",
        f"error_log = {error_log or '/proc/self/fd/2'}",
        "log_level = notice",
        "daemonize = no",
        "",
        f"[{name}]",
        f"listen = {paths.socket}",
        "listen.mode = 0660",
        "pm = static",
        f"pm.max_children = {backend.pool_size}",
        f"pm.max_requests = {backend.php_fpm.max_requests}",
        "pm.status_path = /fpm-status",
        f"pm.status_listen = {paths.status_socket}",
        f"ping.path = {PING_PATH}",
        f"request_terminate_timeout = {int(backend.php_fpm.request_terminate_timeout)}",
        "catch_workers_output = yes",
        "decorate_workers_output = no",
        "clear_env = yes",
    ]
    if paths.slowlog:
        lines += [f"slowlog = {paths.slowlog}",
                  f"request_slowlog_timeout = {max(1, round(backend.php_fpm.slowlog_timeout))}s"]
    if users is not None:
        lines += [f"user = {users.worker}", f"group = {_primary_group(users.worker)}",
                  f"listen.owner = {users.socket_owner}", f"listen.group = {users.socket_group}"]
        if dumpable:
            lines.append("process.dumpable = yes")
    if max_body_size:
        megabytes = f"{max(1, -(-max_body_size // (1024 * 1024)))}M"
        for key in ("upload_max_filesize", "post_max_size"):
            if key not in backend.php_fpm.php_admin_values:
                lines.append(f"php_value[{key}] = {megabytes}")
    if "output_buffering" not in backend.php_fpm.php_admin_values:
        # PHP hands its output to php-fpm in 64 KiB pieces instead of php.ini's
        # 4 KiB: a page reaches us in one or two reads, not a dozen (-20 % of
        # the gateway's CPU on the WordPress home page). flush()/ob_flush()
        # still send at once; php_value, so a script's ini can change it.
        lines.append(f"php_value[output_buffering] = {OUTPUT_BUFFERING}")
    for key, value in backend.php_fpm.php_admin_values.items():
        lines.append(f"php_admin_value[{key}] = {_ini_value(value)}")
    with open(paths.config, "w") as f:
        f.write("\n".join(lines) + "\n")
    return paths


def _primary_group(user: str) -> str:
    import grp

    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


class PhpFpmSupervisor:
    """Keeps one php-fpm master running for a ``spawn`` backend."""

    def __init__(self, name: str, backend: BackendConfig, runtime_dir: str, *,
                 max_body_size: int | None = None, users: FpmUsers | None = None, directory: str = "",
                 error_log: str = "", dumpable: bool = True) -> None:
        self.name = name
        self.backend = backend
        self.binary = find_php_fpm(backend.php_fpm.binary)
        self.users = users if users is not None else default_fpm_users(backend)
        self.paths = write_pool_config(name, backend, directory or os.path.join(runtime_dir, f"fpm-{name}"),
                                       max_body_size=max_body_size, users=self.users, error_log=error_log,
                                       dumpable=dumpable)
        #: cancelled by ``stop``: php-fpm then stops gracefully (SIGQUIT)
        self._scope = trio.CancelScope()
        #: set once ``run`` has returned (php-fpm stopped and reaped)
        self.stopped = trio.Event()
        #: the current master; ask ``running``, not its ``returncode``, which reaps
        #: it and so frees its pid while its group may still need killing
        self.process: trio.Process | None = None
        self._keeper = Restarting(f"php-fpm for backend {name}", RESTART_BACKOFF)
        #: How many times php-fpm has become ready (1 after start-up, +1 per restart).
        self.starts = 0
        self._start_waiters: list[tuple[int, trio.Event]] = []

    @property
    def running(self) -> bool:
        """php-fpm's master is running (asked without reaping it: see ``_stop``)."""
        return self.process is not None and exit_status(self.process) is None

    @property
    def address(self) -> str:
        return "unix:" + self.paths.socket

    def _argv(self) -> list[str]:
        argv = [self.binary, "-F", "-y", self.paths.config]
        if os.geteuid() == 0:
            argv.append("-R")
        return argv

    async def _wait_ready(self, process: trio.Process) -> None:
        with trio.fail_after(READY_TIMEOUT):
            while True:
                if (status := exit_status(process)) is not None:
                    raise SupervisorError(f"php-fpm exited with status {status} during start-up")
                try:
                    with trio.fail_after(1.0):
                        _, body = await fastcgi_get(self.paths.status_socket, PING_PATH)
                    if body.strip() == b"pong":
                        return
                except (UpstreamConnectError, OSError, trio.TooSlowError, fastcgi.FastCGIError,
                        trio.BrokenResourceError):
                    pass
                await trio.sleep(0.05)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start php-fpm, report ready via ``task_status``, restart it when it
        dies (``serve.restart``: the first start must succeed, later ones back off).

        Runs until cancelled or ``stop``; then stops php-fpm.
        """
        try:
            with self._scope:
                await self._keeper.run(self._run_once, task_status=task_status)
        finally:
            self.stopped.set()

    def stop(self) -> None:
        """Stop php-fpm gracefully (a reload that no longer needs it); ``stopped`` is set once it has."""
        self._scope.cancel()

    def reopen_logs(self) -> None:
        """SIGUSR1: php-fpm reopens its error log (ours, when it is a file)."""
        if self.running and self.process is not None:
            try:
                self.process.send_signal(signal.SIGUSR1)
            except ProcessLookupError:
                pass

    @property
    def restarts(self) -> int:
        """Times php-fpm died (or did not come back) after its first start."""
        return self._keeper.restarts

    async def _run_once(self, up: Callable[[], None]) -> str:
        """Start php-fpm, call ``up`` once it answers, return when it has exited
        (a description for the log); stop it on the way out, cancelled or not."""
        for path in (self.paths.socket, self.paths.status_socket):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        log.info("starting php-fpm for backend %s: %s", self.name, " ".join(self._argv()))
        self._stop_stale_master()
        # php-fpm's error_log is /proc/self/fd/2: a pipe of ours, which it can
        # reopen (journald's socket under systemd cannot be); copied to our stderr.
        relay_fd, stderr_fd = os.pipe()
        relayed = trio.Event()
        async with trio.open_nursery() as relaying:
            relaying.start_soon(_relay_to_stderr, relay_fd, relayed)
            try:
                # a session of its own: its group is ours to kill (see the module's docstring)
                process = await trio.lowlevel.open_process(self._argv(), start_new_session=True, stderr=stderr_fd)
            finally:
                os.close(stderr_fd)
            self.process = process
            watchdog.tell(f"fpm {process.pid} {self.paths.config}")  # stops it if we are killed
            try:
                try:
                    await self._wait_ready(process)
                except (SupervisorError, trio.TooSlowError) as exc:
                    raise StartFailed(str(exc) or f"not ready within {READY_TIMEOUT:g}s") from None
                log.info("php-fpm for backend %s is ready (pid %d, %d workers)", self.name, process.pid,
                         self.backend.pool_size)
                self._note_start()
                up()
                await _wait_exited(process)
                return f"exited with status {exit_status(process)}"
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop(process)
                    with trio.move_on_after(1.0):  # its last lines; then stop waiting for EOF
                        await relayed.wait()
                relaying.cancel_scope.cancel()

    def _stop_stale_master(self) -> None:
        """A php-fpm left running by an earlier gateway that died without stopping
        it (SIGKILL, and its watchdog with it) still holds our socket path: ask it to quit.

        (No PR_SET_PDEATHSIG here: it fires when the *thread* that forked exits,
        and trio forks from worker threads that idle out after 10 s.)
        """
        stop_stale_php_fpm(self.paths.directory)

    def _note_start(self) -> None:
        self.starts += 1
        for count, event in self._start_waiters:
            if self.starts >= count:
                event.set()
        self._start_waiters = [(c, e) for c, e in self._start_waiters if not e.is_set()]

    async def wait_for_start(self, count: int) -> None:
        """Wait until php-fpm has become ready ``count`` times in all."""
        if self.starts >= count:
            return
        event = trio.Event()
        self._start_waiters.append((count, event))
        await event.wait()

    async def _stop(self, process: trio.Process) -> None:
        """Stop ``process`` (SIGQUIT, then SIGKILL after STOP_GRACE) and kill
        what is left of its process group; then reap it."""
        if exit_status(process) is None:
            try:
                process.send_signal(signal.SIGQUIT)
            except ProcessLookupError:
                pass
            with trio.move_on_after(STOP_GRACE):
                await _wait_exited(process)
        # Its workers: none after a graceful stop, orphans if the master was killed.
        _kill_group(process.pid)
        watchdog.tell(f"done {process.pid}")
        await process.wait()


async def _relay_to_stderr(fd: int, done: trio.Event) -> None:
    """Copy what php-fpm writes to its standard error to ours, until EOF; closes ``fd``."""
    try:
        async with trio.lowlevel.FdStream(fd) as stream:
            while chunk := await stream.receive_some(65536):
                try:
                    os.write(2, chunk)
                except OSError:
                    pass
    finally:
        done.set()


def stop_stale_php_fpm(directory: str) -> None:
    """SIGQUIT the php-fpm whose pid file and config are in ``directory``, if one
    still runs there (checked by its command line, so a reused pid is left alone)."""
    config = os.path.join(directory, "php-fpm.conf")
    try:
        with open(os.path.join(directory, "php-fpm.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return
    if b"php-fpm" in cmdline and config.encode() in cmdline:
        log.warning("stopping php-fpm %d left over from an earlier run", pid)
        try:
            os.kill(pid, signal.SIGQUIT)
        except OSError:
            pass


async def _wait_exited(process: trio.Process) -> None:
    """Wait until ``process`` has exited, without reaping it (its pid, and so
    its process group's id, stays reserved until ``process.wait()``)."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:  # already reaped, or no pidfd (Linux < 5.3)
        await process.wait()
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def exit_status(process: trio.Process) -> int | None:
    """``process``'s exit status (negative: the signal) once it has exited, else
    None. Unlike ``process.returncode`` it does not reap a child that exited."""
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped already
        return process.returncode
    if info is None:
        return None
    return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the group ``pgid``: a php-fpm master we
    started with start_new_session (so ``pgid`` is its pid), exited but not yet
    reaped, and its workers if any outlived it."""
    left = [pid for pid in group_members(pgid) if pid != pgid]
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return  # nobody left
    except PermissionError as exc:
        log.error("could not kill php-fpm's process group %d: %s", pgid, exc)
        return
    if left:
        log.warning("killed %d php-fpm workers left by master %d: %s", len(left), pgid,
                    " ".join(map(str, left)))


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes in process group ``pgid``."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            out.append(int(entry))
    return out


def make_runtime_dir(configured: str, owner: Account | None = None) -> tuple[str, bool]:
    """The runtime directory and whether we created it (and so remove it at
    exit); given to ``owner`` (the user the gateway drops to), who creates its
    admin sockets and worker directories in it."""
    if configured:
        os.makedirs(configured, exist_ok=True)
        give(configured, owner)
        return configured, False
    directory = tempfile.mkdtemp(prefix="gateway-")
    give(directory, owner)
    return directory, True
