"""Reading what PHP waits on (IO): the /proc files of busy php-fpm workers,
and the pool's slowlog; ``waits`` and ``slowlog`` make sense of them.

The monitor calls ``WorkerSampler.sample`` once a second per pool, in a
worker thread (so the reads never show up as the event loop's own lag), with
the pids of the workers that are busy: php-fpm's status page says which
(state "Running"), else every worker of the master is read and those waiting
for the gateway are left out (``waits``).

Cost, bounded: per busy worker, its stat, syscall and wchan, and only the fd
links the call needs (one fd; a poll's fds, read from its memory; every fd
for epoll/select); then /proc/net/{tcp,tcp6,unix} once, and only when a
socket is to be named. At most ``MAX_WORKERS`` workers a sample. Measured:
README "What is PHP waiting on?".

Permissions: ``/proc/PID/syscall``, ``fd/`` and ``mem`` need the right to
ptrace the worker: root, or the workers' own user. When they cannot be read
the workers count as "unknown", the reason says why, and it is logged once.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping, Sequence

from ..config import endpoint_key
from . import waits
from .slowlog import SlowFrames, parse
from .waits import Context, Endpoint, Waits, WorkerSample

log = logging.getLogger(__name__)

#: The most workers read in one sample (a pool larger than this is sampled in part).
MAX_WORKERS = 256
#: The most pollfds read from a worker's memory.
MAX_POLLFDS = 64
#: The most slowlog bytes read in one sample.
SLOWLOG_CHUNK = 1 << 20


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_worker(pid: int) -> WorkerSample | None:
    """What /proc says of worker ``pid``; None if it is gone."""
    try:
        state = waits.parse_stat_state(_read(f"/proc/{pid}/stat"))
    except OSError:
        return None
    try:
        call = waits.parse_syscall(_read(f"/proc/{pid}/syscall"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return WorkerSample(pid, state, error="cannot read php-fpm's workers' /proc files: run the gateway as "
                                                  "root or as their user")
        return None
    if call is None:
        return WorkerSample(pid, state, error=f"cannot parse /proc/{pid}/syscall")
    if state == "R" or call.running or call.number is None:
        return WorkerSample(pid, state, call)
    try:
        wchan = _read(f"/proc/{pid}/wchan")
    except OSError:
        wchan = ""
    fds: dict[int, str] = {}
    polled: tuple[int, ...] = ()
    number = call.number
    if number in waits.FD_CALLS:
        _link(pid, call.args[0], fds)
    elif number in waits.POLL_CALLS:
        polled = tuple(_pollfds(pid, call.args[0], call.args[1]))
        for fd in polled:
            _link(pid, fd, fds)
    elif number in waits.HIDDEN_FD_CALLS:
        try:
            for name in os.listdir(f"/proc/{pid}/fd"):
                _link(pid, int(name), fds)
        except OSError:
            pass
    return WorkerSample(pid, state, call, wchan, fds, polled)


def _link(pid: int, fd: int, into: dict[int, str]) -> None:
    if 0 <= fd < 1 << 20:
        try:
            into[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass


def _pollfds(pid: int, address: int, count: int) -> list[int]:
    """The fds of the pollfd array at ``address`` in ``pid``'s memory."""
    count = min(count, MAX_POLLFDS)
    if count <= 0:
        return []
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
            f.seek(address)
            return waits.parse_pollfds(f.read(8 * count))
    except (OSError, OverflowError, ValueError):
        return []


def read_sockets(pid: int, inodes: set[int]) -> dict[int, waits.SocketInfo]:
    """The sockets ``inodes`` from ``pid``'s view of /proc/net (its network namespace)."""
    out: dict[int, waits.SocketInfo] = {}
    for name, parser in (("tcp", waits.parse_net_tcp), ("tcp6", waits.parse_net_tcp), ("unix", waits.parse_net_unix)):
        missing = inodes - out.keys()
        if not missing:
            break
        try:
            out.update(parser(_read(f"/proc/{pid}/net/{name}"), missing))
        except OSError:
            continue
    return out


class SlowlogTail:
    """New entries of a php-fpm slowlog, read from where the last read ended
    (from its end at the first read; from the start again if it shrank)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset: int | None = None
        self.rest = ""
        self.frames = SlowFrames()

    def read(self, now: float) -> None:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if self.offset is None or size < self.offset:
                    self.offset, self.rest = (size if self.offset is None else 0), ""
                f.seek(self.offset)
                data = f.read(SLOWLOG_CHUNK)
        except OSError:
            self.frames.prune(now)
            return
        self.offset += len(data)
        entries, self.rest = parse(self.rest + data.decode("utf-8", "replace"))
        self.frames.add(now, entries)


class WorkerSampler:
    """What one pool's busy workers wait on, sample by sample."""

    def __init__(self, endpoints: Mapping[str, Endpoint], fastcgi: frozenset[str], slowlog: str = "") -> None:
        self.endpoints = dict(endpoints)
        self.fastcgi = fastcgi
        self.slowlog = SlowlogTail(slowlog) if slowlog else None
        self._told = False
        #: the last sample
        self.last: Waits | None = None

    def sample(self, pids: Sequence[int], workers: int, now: float) -> Waits:
        """Read ``pids`` (the busy workers, or every worker) of a pool of
        ``workers`` and classify them; also read the slowlog."""
        samples = [s for pid in pids[:MAX_WORKERS] if (s := read_worker(pid)) is not None]
        inodes = {inode for s in samples for link in s.fds.values() if (inode := waits.socket_inode(link))}
        sockets = read_sockets(samples[0].pid, inodes) if inodes else {}
        ctx = Context(sockets, self.endpoints, self.fastcgi)
        found = {s.pid: waits.classify(s, ctx) for s in samples}
        errors = [s.error for s in samples if s.error]
        if errors and not self._told:
            self._told = True
            log.warning("what PHP waits on is unknown: %s", errors[0])
        frames: dict[int, str] = {}
        if self.slowlog is not None:
            self.slowlog.read(now)
            frames = self.slowlog.frames.by_pid()
        self.last = waits.summarise(found, workers, frames, errors)
        return self.last


def fastcgi_addresses(address: str) -> frozenset[str]:
    """php-fpm's listen address as /proc/net shows its sockets: a unix path,
    or "ip:port"; "" for a name that is not an IP address (not matched)."""
    if address.startswith("unix:"):
        return frozenset({address[5:]})
    host, _, port = address.rpartition(":")
    try:
        return frozenset({waits_key(host, port)})
    except ValueError:
        return frozenset()


def waits_key(host: str, port: str) -> str:
    host = host.strip("[]")
    return endpoint_key(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


def master_workers(pid_file: str) -> list[int]:
    """The workers (children) of the php-fpm master whose pid is in ``pid_file``."""
    try:
        pid = int(_read(pid_file).strip())
        return [int(p) for p in _read(f"/proc/{pid}/task/{pid}/children").split()]
    except (OSError, ValueError):
        return []
