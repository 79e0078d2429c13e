"""Signals, as nginx, and the pid file that ``gateway reload``/``reopen`` use.

Policy (the master, or the one process of ``processes = 1``):

- SIGTERM, SIGINT, SIGQUIT: graceful stop. Listeners close at once, requests
  in flight finish within ``timeouts.graceful``, then php-fpm stops. (nginx's
  TERM/INT are a fast stop; here every stop is graceful, and QUIT is too.)
- SIGHUP: reload. The configuration directory is read and validated again; an
  invalid one is logged as one line per problem, naming file and key, and the
  running configuration keeps serving. A valid one is taken up without a
  failed request: in the master by new worker processes (``serve.master``),
  in one process by re-executing itself on the same listen sockets
  (``serve.process``).
- SIGUSR1: reopen the log files (after logrotate's ``mv``): the master its
  own, each worker its own (the master forwards the signal), a spawned
  php-fpm its own (the same).

A worker process gets these signals from its master only (it runs in a
session of its own): SIGTERM to stop, SIGUSR1 to reopen; it ignores SIGHUP
(only the master reloads).

The pid file (``[server] pid_file``) holds the master's pid; it is written,
atomically, once the listen sockets are bound and removed at the stop (or by
the watchdog, if the master is killed). A re-executed single process keeps its
pid and its pid file.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

STOP = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
RELOAD = signal.SIGHUP
REOPEN = signal.SIGUSR1
#: every signal a gateway process handles
HANDLED = (*sorted(STOP), RELOAD, REOPEN)


def unblock() -> None:
    """Let the handled signals in, once their handlers are installed. A
    re-exec (SIGHUP with ``processes = 1``) blocks them across ``execv``, so a
    signal sent while the new image starts waits for it instead of killing it
    (the signal mask survives exec; pending signals stay pending)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


def reopen_log_files() -> int:
    """Reopen every log file this process writes (the error log on the root
    logger, the access log on ``gateway.access``); standard streams are left
    alone. Returns how many files were reopened."""
    reopened = 0
    for logger in (logging.getLogger(), logging.getLogger("gateway.access")):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    # the new file first: if it cannot be opened (a worker that
                    # dropped to a user who may not create it), the old one stays
                    new = handler._open()
                except OSError as exc:
                    failed = f"cannot reopen log file {handler.baseFilename}: {exc.strerror}; still writing to " \
                             "the old one (a worker process reopens it as its user: create the file for it)"
                else:
                    old, handler.stream, failed = handler.stream, new, ""
                    if old is not None:
                        old.close()
                    reopened += 1
                finally:
                    handler.release()
                if failed:
                    log.error("%s", failed)
    return reopened


def write_pid_file(path: str) -> None:
    """Write this process's pid to ``path`` (atomically: a reader never sees it half written)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pid_file(path: str) -> None:
    """Remove ``path`` if it still holds this process's pid (a newer gateway may own it)."""
    try:
        with open(path) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(path)
    except OSError:
        pass


class PidFileError(Exception):
    """The pid file is missing, unreadable or stale; the message says which."""


def read_pid_file(path: str) -> int:
    """The pid in ``path``, checked to be a running process."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise PidFileError(f"{path}: no pid file: is the gateway running (with this pid_file)?") from None
    except OSError as exc:
        raise PidFileError(f"{path}: cannot read the pid file: {exc.strerror}") from None
    if not text.isdigit():
        raise PidFileError(f"{path}: not a pid: {text[:40]!r}")
    pid = int(text)
    if not os.path.exists(f"/proc/{pid}"):
        raise PidFileError(f"{path}: stale pid file: process {pid} is not running")
    return pid
