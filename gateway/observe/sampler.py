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

import ctypes
import errno
import logging
import os
import platform
import socket
from collections.abc import Mapping, Sequence

from ..config import endpoint_key
from . import waits
from .slowlog import SlowFrames, parse
from .waits import Context, Endpoint, Waits, WorkerSample

log = logging.getLogger(__name__)

#: ``waits`` knows x86_64's system call numbers; elsewhere only the state
#: (running, or D: storage) is read.
X86_64 = platform.machine() in ("x86_64", "AMD64")
#: The most workers read in one sample (a pool larger than this is sampled in part).
MAX_WORKERS = 256
#: The most pollfds read from a worker's memory.
MAX_POLLFDS = 64
#: The most slowlog bytes read in one sample.
SLOWLOG_CHUNK = 1 << 20


def _read(path: str, size: int = 4096) -> str:
    """A small /proc file in one read (os.read: no buffered text layer, it is
    most of the cost at 64 workers)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size).decode("ascii", "replace")
    finally:
        os.close(fd)


def _read_all(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("ascii", "replace")


def read_worker(pid: int) -> WorkerSample | None:
    """What /proc says of worker ``pid``; None if it is gone."""
    try:
        state = waits.parse_stat_state(_read(f"/proc/{pid}/stat"))
    except OSError:
        return None
    if not X86_64:  # the numbers in /proc/PID/syscall are the architecture's own
        if state in ("R", "D"):
            return WorkerSample(pid, state, waits.Syscall(None, running=state == "R"))
        return WorkerSample(pid, state, error=f"system calls are read on x86_64 only, not {platform.machine()}")
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
    if state == "R" or (state != "D" and (call.running or call.number is None)):
        return WorkerSample(pid, state, call)
    wchan = ""
    if state == "D":  # where in the kernel: only said of a disk wait without a file
        try:
            wchan = _read(f"/proc/{pid}/wchan")
        except OSError:
            pass
    fds: dict[int, str] = {}
    polled: tuple[int, ...] = ()
    number = call.number
    if number is None:
        pass
    elif number in waits.FD_CALLS:
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
    """The sockets ``inodes`` from ``pid``'s view of /proc/net (its network
    namespace): tcp, then tcp6 and unix only for those still missing."""
    out: dict[int, waits.SocketInfo] = {}
    for name, parser in (("tcp", waits.parse_net_tcp), ("tcp6", waits.parse_net_tcp), ("unix", waits.parse_net_unix)):
        missing = inodes - out.keys()
        if not missing:
            break
        try:
            out.update(parser(_read_all(f"/proc/{pid}/net/{name}"), missing))
        except OSError:
            continue
    return out


#: x86_64 pidfd_getfd(2) (Linux 5.6): a copy of another process's fd.
SYS_PIDFD_GETFD = 438
_libc = ctypes.CDLL(None, use_errno=True)


def socket_of(pid: int, fd: int) -> waits.SocketInfo | None:
    """Worker ``pid``'s socket ``fd``, asked of the socket itself: a copy of
    the fd (pidfd_getfd, the same right as reading its /proc files), its
    local and peer address, closed at once (the worker's is not touched).
    Costs three system calls where /proc/net/tcp lists every socket of the
    host (megabytes on a busy one), and names a unix socket's peer, which
    /proc/net/unix does not. None if not possible (older kernel, no right):
    the caller falls back to /proc/net."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        copy = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    if copy < 0:
        return None
    try:
        sock = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return None
    try:
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        peer = _peer(sock)
        if sock.family == socket.AF_UNIX:
            return waits.SocketInfo("unix", _unix(sock.getsockname()), _unix(peer), listening=listening)
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return waits.SocketInfo("other", "", "", listening=True)  # nothing the classifier names
        host, port = sock.getsockname()[:2]
        if peer is None and not listening:
            return None  # connecting (SYN sent): /proc/net/tcp has its destination
        remote = _ip_port(*peer[:2]) if isinstance(peer, tuple) else ""
        return waits.SocketInfo("tcp", _ip_port(host, port), remote, listening=listening)
    except OSError:
        return None
    finally:
        sock.close()


def _peer(sock: socket.socket) -> object:
    try:
        return sock.getpeername()
    except OSError:
        return None


def _unix(address: object) -> str:
    if isinstance(address, bytes):  # abstract namespace
        return "@" + address[1:].decode("utf-8", "replace") if address else ""
    return address if isinstance(address, str) else ""


def _ip_port(host: str, port: int) -> str:
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: A spawned pool's slowlog (ours, in the runtime directory) is emptied once
#: read past this size, so it does not grow for ever.
SLOWLOG_MAX = 16 << 20


class SlowlogTail:
    """New entries of a php-fpm slowlog, read from where the last read ended
    (from its end at the first read; from the start again if it shrank).
    ``own``: the file is ours (a spawned pool's), emptied past ``SLOWLOG_MAX``
    (php-fpm opens it in append mode for each trace)."""

    def __init__(self, path: str, own: bool = True) -> None:
        self.path = path
        self.own = own
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
        if self.own and self.offset >= SLOWLOG_MAX and self.offset >= size and not self.rest:
            try:
                os.truncate(self.path, 0)
                self.offset = 0
            except OSError:
                pass


class WorkerSampler:
    """What one pool's busy workers wait on, sample by sample."""

    def __init__(self, endpoints: Mapping[str, Endpoint], fastcgi: frozenset[str], slowlog: str = "") -> None:
        self.endpoints = dict(endpoints)
        self.fastcgi = fastcgi
        self.slowlog = SlowlogTail(slowlog) if slowlog else None
        self._told = False
        #: the last sample
        self.last: Waits | None = None
        #: sockets seen in the last sample, by inode (a kept connection is
        #: not looked up in /proc/net again; an inode is not reused while open)
        self._sockets: dict[int, waits.SocketInfo] = {}

    def sample(self, pids: Sequence[int], workers: int, now: float) -> Waits:
        """Read ``pids`` (the busy workers, or every worker) of a pool of
        ``workers`` and classify them; also read the slowlog."""
        samples = [s for pid in pids[:MAX_WORKERS] if (s := read_worker(pid)) is not None]
        sockets: dict[int, waits.SocketInfo] = {}
        for s in samples:
            for fd, link in s.fds.items():
                inode = waits.socket_inode(link)
                if inode is None or inode in sockets:
                    continue
                known = self._sockets.get(inode) or socket_of(s.pid, fd)
                if known is not None:
                    sockets[inode] = known
        inodes = {inode for s in samples for link in s.fds.values() if (inode := waits.socket_inode(link))}
        if inodes - sockets.keys():
            sockets.update(read_sockets(samples[0].pid, inodes - sockets.keys()))
        self._sockets = sockets
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
        pid = int(_read_all(pid_file).strip())
    except (OSError, ValueError):
        return []
    return task_children(pid)


def task_children(pid: int) -> list[int]:
    """The children of process ``pid``, from every one of its threads'
    /proc/PID/task/TID/children: each lists the children that thread forked,
    and a process on trio forks from worker threads (``open_process``), so the
    main thread's list misses them until that thread idles out (10 s) and the
    kernel hands its children to the main thread. Empty if ``pid`` is gone."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(p) for p in _read_all(f"/proc/{pid}/task/{tid}/children").split()]
        except (OSError, ValueError):
            continue
    return out
