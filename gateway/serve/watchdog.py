"""The watchdog: what stops php-fpm and the worker processes when the gateway's
master is killed (``kill -9``, the OOM killer, a crash), so nothing is orphaned.

Policy. The master (or the one process of ``processes = 1``) starts this
module as a small process of its own (``python -m gateway.serve.watchdog``,
in its own session, so a terminal's Ctrl-C does not reach it) with the read
end of a pipe as its standard input. The write end stays in the master only
(close-on-exec, never passed to php-fpm or a worker). Over it the master tells
the watchdog, one line each, what to clean up if it dies:

- ``fpm PID CONFIG``: a php-fpm master started in its own process group
  (``serve.php_fpm``); ``done PID`` when the master has stopped it itself;
- ``worker PID``: a worker process; ``done PID`` once it has exited;
- ``remove PATH``: a file or directory to remove (the runtime directory we
  created, the pid file); ``keep PATH`` to take it back;
- ``bye``: the master has cleaned up everything itself (a normal stop, or the
  re-exec of a reload in one process): exit and do nothing.

EOF without ``bye`` means the master is gone. Then, in order: wait for the
worker processes to stop (each notices the master's pipe close and finishes
its requests within ``timeouts.graceful``; SIGKILL after ``--grace`` seconds),
so they can still use php-fpm for what they finish; ask each php-fpm master to
stop (SIGQUIT), SIGKILL its process group after ``STOP_GRACE`` seconds; remove
the paths. Before signalling a pid the watchdog checks ``/proc/PID/cmdline``
(a php-fpm with that config, a gateway worker), so a reused pid is never hit.

Why a process, not ``PR_SET_PDEATHSIG`` on php-fpm: that signal follows the
*thread* that forked (trio forks from worker threads that come and go), it
would reach php-fpm's master only (its workers are its children), and a
SIGKILLed php-fpm master leaves its workers running. Workers surviving their
master could kill php-fpm too, but ``processes = 1`` has no workers. It costs
one idle process (~10 MB) that blocks in read().

The watchdog process imports nothing from the gateway (and not trio): it must
start fast and fail in no way the gateway could. The master's side is
``watching`` (start it, for the code inside) and ``tell``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from functools import partial

#: After SIGQUIT, how long php-fpm gets before its group is SIGKILLed.
STOP_GRACE = 2.0


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait(check: Callable[[], bool], seconds: float) -> bool:
    """Poll ``check()`` until it is false or ``seconds`` pass; True if it became false."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            return True
        time.sleep(0.05)
    return not check()


def _log(message: str) -> None:
    try:
        sys.stderr.write(f"gateway watchdog {os.getpid()}: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass


def clean_up(fpm: dict[int, str], workers: set[int], paths: list[str], grace: float) -> None:
    """The master is gone: stop what it left, as the module's docstring says."""
    workers = {p for p in workers if _alive(p) and b"gateway" in _cmdline(p) and b"worker" in _cmdline(p)}
    if workers and not _wait(lambda: any(_alive(p) for p in workers), grace):
        for pid in workers:
            if _alive(pid):
                _log(f"worker process {pid} did not stop after the master died; killing it")
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
    for pid, config in fpm.items():
        if not _alive(pid) or config.encode() not in _cmdline(pid):
            continue
        _log(f"the gateway's master died: stopping php-fpm {pid}")
        try:
            os.kill(pid, signal.SIGQUIT)
        except OSError:
            continue
        _wait(partial(_alive, pid), STOP_GRACE)
    for pgid in fpm:
        # the group id is the php-fpm master's pid; reused only once no process is left in it
        if _group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grace", type=float, default=10.0, help="seconds workers get to finish")
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    fpm: dict[int, str] = {}
    workers: set[int] = set()
    paths: list[str] = []
    for raw in sys.stdin.buffer:
        line = raw.decode(errors="replace").rstrip("\n")
        verb, _, rest = line.partition(" ")
        if verb == "bye":
            return
        if verb == "fpm":
            pid, _, config = rest.partition(" ")
            fpm[int(pid)] = config
        elif verb == "worker":
            workers.add(int(rest))
        elif verb == "done":
            fpm.pop(int(rest), None)
            workers.discard(int(rest))
        elif verb == "remove":
            paths.append(rest)
        elif verb == "keep" and rest in paths:
            paths.remove(rest)
    clean_up(fpm, workers, paths, args.grace)


# -- the master's side ------------------------------------------------------------


class Watchdog:
    """The master's end of the pipe: ``tell`` sends one line (see the module's docstring)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def tell(self, line: str) -> None:
        try:
            os.write(self.fd, (line + "\n").encode())
        except OSError as exc:  # it died: nothing to do but say so
            _log(f"cannot reach the watchdog: {exc}")


_current: ContextVar[Watchdog | None] = ContextVar("gateway_watchdog", default=None)


def tell(line: str) -> None:
    """Tell the watchdog of the current task's gateway, if there is one (a
    gateway run in-process by tests has none unless it asked for one)."""
    dog = _current.get()
    if dog is not None:
        dog.tell(line)


@asynccontextmanager
async def watching(grace: float) -> AsyncIterator[Watchdog]:
    """Start the watchdog for the code inside (``tell`` reaches it from any task
    started there); on a normal exit say ``bye`` and reap it."""
    import trio

    read_end, write_end = os.pipe()
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway.serve.watchdog", "--grace", f"{grace:g}"],
            stdin=read_end, start_new_session=True)
    finally:
        os.close(read_end)
    dog = Watchdog(write_end)
    token = _current.set(dog)
    try:
        yield dog
    finally:
        _current.reset(token)
        dog.tell("bye")
        os.close(write_end)
        with trio.CancelScope(shield=True):
            await proc.wait()


if __name__ == "__main__":
    main()
