"""Who the gateway and its php-fpm run as: bind as root, then serve as ``[server] user``.

Policy (nginx's ``user`` and master/worker split, php-fpm's pool ``user``):

- Started as **root**, the processes that serve clients run as ``[server] user``
  (default ``www-data``) and ``[server] group`` (default: that user's primary
  group), with that user's supplementary groups. Started as anyone else,
  nothing changes: no user is switched to and none is required.
  ``user = "root"`` keeps root, explicitly.
- As nginx's, the **master keeps root** and serves no client: it restarts and
  stops php-fpm, whose master must be root to set its workers' user, and
  restarts worker processes (a Python it may not be able to exec as the user).
  So when the gateway drops, it always runs master + worker processes, even
  for ``processes = 1``; each worker drops as soon as its listen sockets,
  admin socket and log files are open. The master's admin listener only asks
  the workers and merges their answers.
- Done as root, **before** the drop: listen sockets bound, log files opened
  (the access log file given to the user, as nginx does, so it may reopen it),
  the runtime directory created and given to the user (worker admin sockets
  and directories go there), a configured ``temp_dir`` created and given to
  the user (an existing one must be writable by it), php-fpm started.
- **php-fpm's workers** run as the backend's ``php_fpm.user``, default the
  gateway's user, or ``www-data`` when the gateway keeps root: never root
  unless ``php_fpm.user = "root"`` is written. The sockets php-fpm listens on
  belong to the gateway's user and group (mode 0660).
- A document root (or alias) the gateway's user cannot read (it serves the
  static files) or a php-fpm user cannot read (it runs the scripts) is an error
  at ``gateway check`` and at start: one line naming the key, the path and the
  user. So is a runtime or temp directory the gateway's user cannot use.
- The drop is ``setgroups``, ``setresgid``, ``setresuid`` (all three ids, so
  root cannot be regained), then checked.

The pure part (``plan``, ``problems`` with injected look-ups, ``bits_allow``)
decides; ``drop``, ``give`` and ``prepare_dirs`` act.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config

#: The gateway's user when started as root and ``[server] user`` is empty (nginx: nobody; Debian's nginx: www-data).
DEFAULT_USER = "www-data"


#: A configuration key (dotted path as a tuple) and what is wrong with it:
#: ``gateway.config.validate`` adds the file and line (its ``checks``).
Problem = tuple[tuple[str, ...], str]


class PrivilegeError(Exception):
    """A user, group or directory does not fit: ``key`` and a one-line ``message``
    naming the path and the user; ``str()`` is ``KEY: message``."""

    def __init__(self, key: tuple[str, ...], message: str) -> None:
        super().__init__(f"{'.'.join(key)}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Account:
    """A user to run as: names and numeric ids, with its supplementary groups."""

    name: str
    uid: int
    gid: int
    group: str
    groups: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FpmUsers:
    """How a spawned php-fpm runs (only when the gateway starts as root): its
    master as root, its workers as ``worker``, its sockets owned by
    ``socket_owner``/``socket_group`` (the gateway's user, who connects)."""

    worker: str
    socket_owner: str
    socket_group: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What the gateway does with its privileges.

    ``account``: whom the serving processes drop to (None: stay as they are;
    then no master is needed for it). ``fpm``: per spawned backend, how its
    php-fpm runs (empty when not root).
    """

    account: Account | None
    fpm: dict[str, FpmUsers] = field(default_factory=dict)


#: Look-ups the pure part is given: a user name to its Account (None: no such user), a group name to its gid.
UserLookup = Callable[[str], Account | None]
GroupLookup = Callable[[str], int | None]


def system_account(name: str) -> Account | None:
    """``name`` from the system's user database, with its supplementary groups."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    try:
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        group = str(pw.pw_gid)
    groups = tuple(sorted({pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}))
    return Account(name, pw.pw_uid, pw.pw_gid, group, groups)


def system_group(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def plan(config: Config, euid: int, users: UserLookup = system_account,
         groups: GroupLookup = system_group) -> Plan:
    """Decide who runs as whom (pure, given the look-ups).

    Raises PrivilegeError for a user or group that does not exist.
    """
    if euid != 0:
        return Plan(None)
    name = config.server.user or DEFAULT_USER
    account = users(name)
    if account is None:
        default = "" if config.server.user else " (the default when started as root)"
        raise PrivilegeError(("server", "user"), f"no such user {name!r}{default}: create it or set [server] user")
    if config.server.group:
        gid = groups(config.server.group)
        if gid is None:
            raise PrivilegeError(("server", "group"), f"no such group {config.server.group!r}")
        account = Account(account.name, account.uid, gid, config.server.group,
                          tuple(sorted({gid, *account.groups})))
    dropping = account.uid != 0
    fpm: dict[str, FpmUsers] = {}
    for backend_name, backend in config.backends.items():
        if not backend.spawned:
            continue
        worker = backend.php_fpm.user or (account.name if dropping else DEFAULT_USER)
        if users(worker) is None:
            raise PrivilegeError(("backends", backend_name, "php_fpm", "user"), f"no such user {worker!r}")
        fpm[backend_name] = FpmUsers(worker, account.name if dropping else worker,
                                     account.group if dropping else "root")
    return Plan(account if dropping else None, fpm)


def bits_allow(st_uid: int, st_gid: int, st_mode: int, account: Account, need: int) -> bool:
    """Whether the permission bits give ``account`` the ``need`` bits (4 r, 2 w, 1 x)."""
    if account.uid == 0:
        return True
    if st_uid == account.uid:
        bits = (st_mode >> 6) & 7
    elif st_gid in account.groups:
        bits = (st_mode >> 3) & 7
    else:
        bits = st_mode & 7
    return bits & need == need


def can_use_dir(path: str, account: Account, need: int = 5) -> bool:
    """Whether ``account`` has ``need`` on directory ``path`` (5: list it; 3:
    create files in it) and may traverse every directory above it."""
    current = os.path.realpath(path)
    chain = [current]
    while current != "/":
        current = os.path.dirname(current)
        chain.append(current)
    for i, part in enumerate(chain):
        try:
            st = os.stat(part)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or not bits_allow(st.st_uid, st.st_gid, st.st_mode, account,
                                                          need if i == 0 else 1):
            return False
    return True


def problems(config: Config, the_plan: Plan, users: UserLookup = system_account,
             can_read: Callable[[str, Account], bool] = can_use_dir,
             is_dir: Callable[[str], bool] = os.path.isdir) -> list[Problem]:
    """One line per site root or alias that is no directory, or that a user who
    needs it cannot read: the gateway's user (static files) and the php-fpm
    user of the site's spawned backend."""
    me = the_plan.account
    out: list[Problem] = []
    for site_name, site in config.sites.items():
        readers: list[tuple[Account, str]] = []
        if me is not None:
            readers.append((me, "the gateway's user, [server] user"))
        fpm = the_plan.fpm.get(site.php)
        if fpm is not None and (me is None or fpm.worker != me.name):
            worker = users(fpm.worker)
            if worker is not None:
                readers.append((worker, f"php-fpm's workers, backends.{site.php}.php_fpm.user"))
        # (a site without root only answers with return rules: nothing to read)
        paths: list[tuple[tuple[str, ...], str]] = [(("sites", site_name, "root"), site.root)] if site.root else []
        paths += [(("sites", site_name, "aliases", prefix), d.path) for prefix, d in site.aliases.items()]
        for key, path in paths:
            if not is_dir(path):
                out.append((key, f"{path}: no such directory"))
                continue
            for account, role in readers:
                if not can_read(path, account):
                    out.append((key, f"{path}: not readable by user {account.name} ({role}); give it r-x "
                                     f"on the directory and x on every one above, or choose another user"))
                    break
    return out


def check(config: Config) -> list[Problem]:
    """The problems ``gateway check`` and ``serve`` report before starting
    (empty: none), for ``gateway.config.validate``'s ``checks``, which names
    the file and line of each key."""
    try:
        the_plan = plan(config, os.geteuid())
    except PrivilegeError as exc:
        return [(exc.key, exc.message)]
    if the_plan.account is None and os.geteuid() != 0:
        me = system_account(pwd.getpwuid(os.geteuid()).pw_name) if _known_uid() else None
        if me is None:
            return []
        the_plan = Plan(me)
    return problems(config, the_plan)


def _known_uid() -> bool:
    try:
        pwd.getpwuid(os.geteuid())
        return True
    except KeyError:
        return False


def give(path: str, account: Account | None) -> None:
    """Make ``path`` (a directory we created as root) the account's own."""
    if account is not None and os.geteuid() == 0:
        os.chown(path, account.uid, account.gid)


def prepare_dirs(config: Config, account: Account | None) -> None:
    """As root, before anything starts: a configured ``temp_dir`` and page-cache
    ``disk_dir`` exist and the account may create files in them, a configured ``runtime_dir``'s parents let
    it through (raises PrivilegeError naming the key, the path and the user),
    and the access log file exists and is the account's (as nginx's workers'
    log files are), so a worker that reopens it after the drop may."""
    if account is None:
        return
    access_log = config.server.access_log
    if access_log not in ("-", "off"):
        try:
            fd = os.open(access_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise PrivilegeError(("server", "access_log"), f"{access_log}: cannot open it: {exc.strerror}") from None
        try:
            os.fchown(fd, account.uid, -1)
        finally:
            os.close(fd)
    temp_dir = config.server.temp_dir
    if temp_dir:
        if not os.path.isdir(temp_dir):
            try:
                os.makedirs(temp_dir, mode=0o700)
            except OSError as exc:
                raise PrivilegeError(("server", "temp_dir"), f"{temp_dir}: cannot create it: {exc.strerror}") from None
            give(temp_dir, account)
        if not can_use_dir(temp_dir, account, 3):
            raise PrivilegeError(("server", "temp_dir"), f"{temp_dir}: user {account.name} cannot create files in it")
    for name, site in config.sites.items():
        disk_dir = site.cache.disk_dir if site.cache.enabled else ""
        if not disk_dir:
            continue
        key = ("sites", name, "cache", "disk_dir")
        if not os.path.isdir(disk_dir):
            try:
                os.makedirs(disk_dir, mode=0o750)
            except OSError as exc:
                raise PrivilegeError(key, f"{disk_dir}: cannot create it: {exc.strerror}") from None
            give(disk_dir, account)
        if not can_use_dir(disk_dir, account, 3):
            raise PrivilegeError(key, f"{disk_dir}: user {account.name} cannot create files in it")
    runtime_dir = config.server.runtime_dir
    if runtime_dir:
        parent = os.path.dirname(os.path.abspath(runtime_dir))
        if not can_use_dir(parent, account, 1):
            raise PrivilegeError(("server", "runtime_dir"),
                                 f"{runtime_dir}: user {account.name} cannot reach it ({parent} is closed to it)")


def drop(account: Account | None) -> None:
    """Become ``account`` for good: supplementary groups, gid, uid (real,
    effective and saved), then check that root cannot be regained. Nothing
    when ``account`` is None or we are not root."""
    if account is None or os.geteuid() != 0:
        return
    os.setgroups(list(account.groups))
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError(("server", "user"), f"could regain root after dropping to user {account.name}")
