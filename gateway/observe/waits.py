"""What each busy PHP worker is waiting on, from the outside: pure functions
over text read from /proc (``sampler.py`` reads it; nothing here does IO).

Per worker the sampler reads ``/proc/PID/stat`` (its state), ``/proc/PID/syscall``
(the system call it is blocked in and its arguments, x86_64 numbers),
``/proc/PID/wchan``, its fds (``/proc/PID/fd/N`` links), for poll/ppoll the
fds it polls (its pollfd array, read from ``/proc/PID/mem``), and once per
sample ``/proc/net/{tcp,tcp6,unix}``. ``classify`` turns that into a ``Wait``:

- ``cpu``: state R, or ``/proc/PID/syscall`` says "running".
- ``disk``: state D (uninterruptible: storage), or blocked in
  read/write/fsync/fdatasync/sync_file_range... on a regular file (target: its path).
- ``lock``: flock, fcntl(F_SETLKW), futex, nanosleep/clock_nanosleep (PHP's
  ``sleep``), wait4 (target: the locked file's path, or "sleep"/"futex").
- a socket the worker reads, writes, connects or polls: its peer address
  from /proc/net/tcp{,6} (unix sockets: the socket's path). A configured
  endpoint (``[diagnosis.endpoints]``) gives its name and kind; otherwise the
  port says it: ``database`` (3306 MySQL/MariaDB, 5432 PostgreSQL, or a
  unix socket named like mysqld's), ``cache`` (6379 Redis, 11211 memcached),
  ``http`` (80, 443), else ``socket``.
- ``idle``: blocked on php-fpm's own listen socket or on a FastCGI
  connection from the gateway (reading the next request): not busy at all.
- ``unknown``: its /proc files could not be read (permissions: the gateway
  must run as root or as php-fpm's workers' user), or it waits in a system
  call none of the above covers.

Which workers are busy is php-fpm's own answer (its status page's process
list, state "Running"), which the monitor reads anyway; without a status page
every worker of the master is classified and those found ``idle`` (waiting for
the gateway) are left out. Either way ``idle`` workers are never counted.

Kinds (also the ``on`` label of ``gateway_php_workers_waiting``): ``KINDS``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: What a busy worker can be waiting on, in the order reasons list them.
KINDS = ("database", "cache", "http", "socket", "disk", "lock", "cpu")

#: Ports that say what their server is, when no endpoint is configured.
PORT_KINDS: dict[int, str] = {3306: "database", 5432: "database", 1433: "database", 27017: "database",
                              6379: "cache", 11211: "cache", 80: "http", 443: "http"}
#: Unix socket names that say what their server is (file name, any directory).
UNIX_KINDS: dict[str, str] = {"mysqld.sock": "database", "mysql.sock": "database", "mariadb.sock": "database",
                              ".s.PGSQL.5432": "database", "redis.sock": "cache", "redis-server.sock": "cache",
                              "memcached.sock": "cache"}

# x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SYS_READ, SYS_WRITE, SYS_POLL, SYS_PREAD64, SYS_PWRITE64, SYS_READV, SYS_WRITEV = 0, 1, 7, 17, 18, 19, 20
SYS_SELECT, SYS_NANOSLEEP, SYS_CONNECT, SYS_ACCEPT = 23, 35, 42, 43
SYS_SENDTO, SYS_RECVFROM, SYS_SENDMSG, SYS_RECVMSG = 44, 45, 46, 47
SYS_WAIT4, SYS_FCNTL, SYS_FLOCK, SYS_FSYNC, SYS_FDATASYNC = 61, 72, 73, 74, 75
SYS_SYNC, SYS_FUTEX, SYS_EPOLL_WAIT, SYS_CLOCK_NANOSLEEP = 162, 202, 232, 230
SYS_PSELECT6, SYS_PPOLL, SYS_SYNC_FILE_RANGE, SYS_EPOLL_PWAIT, SYS_ACCEPT4 = 270, 271, 277, 281, 288
SYS_RECVMMSG, SYS_SENDMMSG, SYS_SYNCFS, SYS_PREADV, SYS_PWRITEV, SYS_EPOLL_PWAIT2 = 299, 307, 306, 295, 296, 441
SYS_OPENAT, SYS_OPEN, SYS_FALLOCATE, SYS_FTRUNCATE = 257, 2, 285, 77
#: A call interrupted by a signal and resumed (after php-fpm's slowlog traced
#: the worker, say): the original call and its arguments are gone.
SYS_RESTART_SYSCALL = 219

#: Calls whose first argument is the fd they wait on.
FD_CALLS = frozenset({SYS_READ, SYS_WRITE, SYS_PREAD64, SYS_PWRITE64, SYS_READV, SYS_WRITEV, SYS_CONNECT,
                      SYS_SENDTO, SYS_RECVFROM, SYS_SENDMSG, SYS_RECVMSG, SYS_RECVMMSG, SYS_SENDMMSG,
                      SYS_FSYNC, SYS_FDATASYNC, SYS_SYNC_FILE_RANGE, SYS_PREADV, SYS_PWRITEV, SYS_FALLOCATE,
                      SYS_FTRUNCATE, SYS_SYNCFS, SYS_FLOCK, SYS_FCNTL})
#: Calls that flush to storage whatever the fd is.
SYNC_CALLS = frozenset({SYS_FSYNC, SYS_FDATASYNC, SYS_SYNC_FILE_RANGE, SYS_SYNC, SYS_SYNCFS})
#: Calls that wait on several fds, given in memory (poll, ppoll: a pollfd array).
POLL_CALLS = frozenset({SYS_POLL, SYS_PPOLL})
#: Calls that wait on fds we cannot see from the arguments (an fd_set, an epoll set).
HIDDEN_FD_CALLS = frozenset({SYS_SELECT, SYS_PSELECT6, SYS_EPOLL_WAIT, SYS_EPOLL_PWAIT, SYS_EPOLL_PWAIT2,
                             SYS_RESTART_SYSCALL})
SLEEP_CALLS = frozenset({SYS_NANOSLEEP, SYS_CLOCK_NANOSLEEP})
ACCEPT_CALLS = frozenset({SYS_ACCEPT, SYS_ACCEPT4})
#: fcntl commands that wait for a lock: F_SETLKW, F_OFD_SETLKW.
FCNTL_WAIT = frozenset({7, 38})


# -- the /proc text formats -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Syscall:
    """``/proc/PID/syscall``: the call a blocked task is in and its six
    arguments; ``number`` None: it is running (``running``) or blocked outside
    a system call (``-1``: a page fault, say)."""

    number: int | None
    args: tuple[int, ...] = ()
    running: bool = False


def parse_syscall(text: str) -> Syscall | None:
    """``"45 0x4 0x7f0a9565bf80 0xa 0x0 0x0 0x0 SP PC"``, ``"running"`` or
    ``"-1 SP PC"``; None for anything else."""
    parts = text.split()
    if not parts:
        return None
    if parts[0] == "running":
        return Syscall(None, running=True)
    try:
        number = int(parts[0])
        if number < 0:
            return Syscall(None)
        args = tuple(int(p, 16) for p in parts[1:7])
    except ValueError:
        return None
    return Syscall(number, args) if len(args) == 6 else None


def parse_stat_state(text: str) -> str:
    """The state letter of ``/proc/PID/stat`` (after the command in parentheses,
    which may itself hold spaces and parentheses); "" if unreadable."""
    _, sep, rest = text.rpartition(")")
    fields = rest.split()
    return fields[0] if sep and fields else ""


def socket_inode(link: str) -> int | None:
    """The inode of an fd link ``socket:[5614791]``; None if it is no socket."""
    if link.startswith("socket:[") and link.endswith("]"):
        try:
            return int(link[8:-1])
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class SocketInfo:
    """A socket from /proc/net: ``local``/``peer`` "ip:port" (``[v6]:port``)
    for TCP, ``local`` the path (or "") for unix, ``peer`` then its peer's path if known."""

    family: str  # "tcp" | "unix"
    local: str
    peer: str
    listening: bool = False


def _hex_address(text: str) -> tuple[str, int]:
    """``0100007F:D01F`` (IPv4) or 32 hex digits (IPv6, four host-order
    words) and a port, as /proc/net/tcp{,6} write them."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(raw[::-1])
    else:
        words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
        ip = ipaddress.IPv6Address(b"".join(words))
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"



#: TCP state LISTEN in /proc/net/tcp.
_TCP_LISTEN = "0A"


def parse_net_tcp(text: str, wanted: Iterable[int] | None = None) -> dict[int, SocketInfo]:
    """``/proc/net/tcp`` or ``tcp6``: inode -> socket, only the ``wanted``
    inodes if given (the file may list thousands)."""
    want = None if wanted is None else set(wanted)
    out: dict[int, SocketInfo] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            inode = int(fields[9])
        except ValueError:
            continue
        if want is not None and inode not in want:
            continue
        try:
            local, peer = _hex_address(fields[1]), _hex_address(fields[2])
        except ValueError:
            continue
        out[inode] = SocketInfo("tcp", _join(*local), _join(*peer), listening=fields[3] == _TCP_LISTEN)
    return out


def parse_net_unix(text: str, wanted: Iterable[int] | None = None) -> dict[int, SocketInfo]:
    """``/proc/net/unix``: inode -> socket with its path ("" if unnamed). An
    accepted connection shows its listener's path; a client's is unnamed."""
    want = None if wanted is None else set(wanted)
    out: dict[int, SocketInfo] = {}
    for line in text.splitlines()[1:]:
        fields = line.split(maxsplit=7)
        if len(fields) < 7:
            continue
        try:
            inode = int(fields[6])
        except ValueError:
            continue
        if want is not None and inode not in want:
            continue
        path = fields[7].strip() if len(fields) > 7 else ""
        flags = fields[3]
        out[inode] = SocketInfo("unix", path, "", listening=flags == "00010000")
    return out


def parse_pollfds(data: bytes) -> list[int]:
    """The fds of a ``struct pollfd`` array (int fd, short events, short
    revents), negative ones (ignored by poll) left out."""
    out = []
    for i in range(0, len(data) - len(data) % 8, 8):
        fd = struct.unpack_from("<i", data, i)[0]
        if fd >= 0:
            out.append(fd)
    return out


# -- one worker --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """What the sampler read of one worker. ``syscall`` None: unreadable
    (``error`` says why). ``fds``: fd -> link target. ``polled``: the fds of
    a poll/ppoll it is blocked in."""

    pid: int
    state: str = ""
    syscall: Syscall | None = None
    wchan: str = ""
    fds: Mapping[int, str] = field(default_factory=dict)
    polled: tuple[int, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A configured endpoint (``[diagnosis.endpoints]``)."""

    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class Wait:
    """What one worker waits on: a kind (``KINDS``, or "idle"/"unknown"),
    the target ("ip:port", a path, "sleep") and its configured name."""

    kind: str
    target: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Context:
    """What the classifier knows besides the worker: sockets by inode, the
    configured endpoints ("ip:port" or "unix:/path" -> Endpoint), and php-fpm's
    listen addresses ("ip:port" or a unix path): sockets there are the gateway's."""

    sockets: Mapping[int, SocketInfo] = field(default_factory=dict)
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    fastcgi: frozenset[str] = frozenset()


def _fd_arg(call: Syscall) -> int | None:
    if call.number in FD_CALLS and call.args:
        fd = call.args[0]
        return fd if fd < 1 << 31 else None
    return None


def _is_file(link: str) -> bool:
    return link.startswith("/") and not link.startswith(("/dev/", "/proc/"))


def classify(worker: WorkerSample, ctx: Context) -> Wait:
    """What ``worker`` waits on (see the module's docstring)."""
    call = worker.syscall
    if call is None:
        return Wait("unknown", worker.error)
    fd = _fd_arg(call)
    link = worker.fds.get(fd, "") if fd is not None else ""
    # D first: the kernel says "running" for a task that changed state while it was read
    if worker.state == "D" or call.number in SYNC_CALLS:
        return Wait("disk", link if _is_file(link) else worker.wchan.strip().strip("0"))
    if worker.state == "R" or call.running:
        return Wait("cpu")
    if call.number == SYS_FLOCK or (call.number == SYS_FCNTL and len(call.args) > 1 and call.args[1] in FCNTL_WAIT):
        return Wait("lock", link or "flock")
    if call.number in SLEEP_CALLS:
        return Wait("lock", "sleep")
    if call.number == SYS_FUTEX:
        return Wait("lock", "futex")
    if call.number == SYS_WAIT4:
        return Wait("lock", "a child process")
    if call.number in ACCEPT_CALLS:
        return Wait("idle")
    if fd is not None:
        if socket_inode(link) is not None:
            return _socket_wait([link], ctx)
        if _is_file(link):
            return Wait("disk", link)
        return Wait("socket", link) if link.startswith("pipe:") else Wait("unknown", f"syscall {call.number}")
    if call.number in POLL_CALLS and worker.polled:
        return _socket_wait([worker.fds.get(f, "") for f in worker.polled], ctx)
    if call.number in POLL_CALLS or call.number in HIDDEN_FD_CALLS:
        # which fds is not in the arguments: the worker's sockets that are not the gateway's
        return _socket_wait(list(worker.fds.values()), ctx, guess=True)
    return Wait("unknown", f"syscall {call.number}")


def _socket_wait(links: list[str], ctx: Context, *, guess: bool = False) -> Wait:
    """The most telling of the sockets a worker waits on: a known endpoint,
    then a known port, then any outbound socket; all of them the gateway's
    (FastCGI) ones: idle."""
    best: Wait | None = None
    rank = {kind: i for i, kind in enumerate(KINDS)}
    for link in links:
        inode = socket_inode(link)
        if inode is None:
            continue
        info = ctx.sockets.get(inode)
        if info is None:
            continue
        wait = _socket_kind(info, ctx)
        if wait is None:
            continue
        if best is None or rank.get(wait.kind, 99) < rank.get(best.kind, 99):
            best = wait
    if best is not None:
        return best
    if guess:
        return Wait("unknown", "a poll on fds it does not name")
    return Wait("idle")


def _socket_kind(info: SocketInfo, ctx: Context) -> Wait | None:
    """The wait on one socket; None for php-fpm's own (listen socket,
    the gateway's connections) and other listening sockets."""
    if info.listening or info.local in ctx.fastcgi:
        return None
    if info.family == "unix":
        path = info.peer or info.local
        endpoint = ctx.endpoints.get("unix:" + path) if path else None
        if endpoint is not None:
            return Wait(endpoint.kind, path, endpoint.name)
        kind = UNIX_KINDS.get(path.rsplit("/", 1)[-1], "socket") if path else "socket"
        return Wait(kind, path or "a unix socket")
    endpoint = ctx.endpoints.get(info.peer)
    if endpoint is not None:
        return Wait(endpoint.kind, info.peer, endpoint.name)
    port = int(info.peer.rsplit(":", 1)[1])
    if port == 0:
        return None
    return Wait(PORT_KINDS.get(port, "socket"), info.peer)


# -- the pool ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One kind's busy workers: how many, the most common target, its name, and
    the slowlog's most common frame for them ("mysqli_query from x.php")."""

    kind: str
    count: int
    target: str = ""
    name: str = ""
    frame: str = ""


@dataclass(frozen=True, slots=True)
class Waits:
    """What the busy workers of one pool wait on, kind by kind (most first)."""

    busy: int
    workers: int
    targets: tuple[Target, ...] = ()
    unknown: int = 0
    #: why some workers could not be read ("" if all were)
    error: str = ""

    @property
    def counts(self) -> dict[str, int]:
        """kind -> busy workers in it, every kind present (``verdict.waiting_on``)."""
        return {kind: sum(t.count for t in self.targets if t.kind == kind) for kind in KINDS}


def summarise(waits: Mapping[int, Wait], workers: int, frames: Mapping[int, str] | None = None,
              errors: Iterable[str] = ()) -> Waits:
    """The busy workers' ``waits`` (pid -> Wait; "idle" ones are not busy) as a
    ``Waits``; ``frames``: pid -> its latest slowlog frame, if any."""
    frames = frames or {}
    busy = {pid: w for pid, w in waits.items() if w.kind != "idle"}
    by_kind: dict[str, list[int]] = {}
    for pid, w in busy.items():
        by_kind.setdefault(w.kind, []).append(pid)
    targets = []
    for kind in KINDS:
        pids = by_kind.get(kind, [])
        if not pids:
            continue
        # the most common target, a named one before none ("" when the call was not readable)
        named = [p for p in pids if busy[p].target] or pids
        (target, name), _ = Counter((busy[p].target, busy[p].name) for p in named).most_common(1)[0]
        top = Counter(frames[p] for p in pids if frames.get(p)).most_common(1)
        targets.append(Target(kind, len(pids), target, name, top[0][0] if top else ""))
    targets.sort(key=lambda t: -t.count)
    unknown = len(by_kind.get("unknown", []))
    # why: a read error, else the most common call not understood ("syscall 7")
    error = next(iter(e for e in errors if e), "") or next(
        (target for target, _ in Counter(busy[p].target for p in by_kind.get("unknown", [])).most_common(1)), "")
    return Waits(len(busy), workers, tuple(targets), unknown, error)


_PHRASES = {"database": "on the database at {}", "cache": "on the cache server at {}",
            "http": "on external HTTP to {}", "socket": "on a socket to {}", "disk": "on disk I/O to {}",
            "lock": "on a lock on {}"}


def _phrase(t: Target) -> str:
    if t.kind == "cpu":
        return "running on CPU"
    if t.kind == "disk" and not t.target:
        return "on disk I/O"
    if t.kind == "lock" and t.target in ("sleep", "futex", "a child process"):
        return {"sleep": "sleeping", "futex": "on a futex", "a child process": "on a child process"}[t.target]
    return _PHRASES[t.kind].format(t.target or "?")


def describe(waits: Waits) -> str:
    """``"4/4 workers busy, 3 of them waiting on the database at 127.0.0.1:3306
    (mysqli_query from wp-includes/class-wpdb.php), 1 on external HTTP to ..."``."""
    parts = []
    for i, t in enumerate(waits.targets):
        phrase = _phrase(t)
        if i == 0:
            lead = "" if phrase.startswith(("running", "sleeping")) else "waiting "
            phrase = f"{t.count} of them {lead}{phrase}"
        else:
            phrase = f"{t.count} {phrase}"
        notes = [n for n in (t.name if t.kind != "cpu" else "", t.frame) if n]
        parts.append(phrase + (f" ({'; '.join(notes)})" if notes else ""))
    if waits.unknown:
        parts.append(f"{waits.unknown} unknown" + (f" ({waits.error})" if waits.error else ""))
    head = f"{waits.busy}/{waits.workers} workers busy"
    return head + (", " + ", ".join(parts) if parts else "")
