"""The ``gateway`` command: ``serve``, ``check``, ``status``, ``top``, and
``reload``/``reopen`` (SIGHUP/SIGUSR1 to the pid in ``[server] pid_file``;
``gateway.serve.signals`` says what each signal does).

Policy: a mistake on the command line or in the configuration is exit status 2
with one line per problem on standard error (file or flag, key, line); a
start-up failure (an address in use, php-fpm not found) is exit status 1 with
one line naming what failed. Flags that only mean something together with
another (``--php`` with ``--root``) are refused alone, never ignored.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import trio
import typer

from .config import BackendConfig, Config, ConfigError, Override, load_dir, validate
from .config.addresses import parse_address
from .front.listen import ListenError
from .observe.views import DEFAULT_ADMIN, AdminUnreachable, fetch_status, post_purge, summary_lines, top_view
from .serve.restart import SupervisorError
from .tls.contexts import TlsError
from .tls.store import StateDir

if TYPE_CHECKING:
    from .serve.privileges import Plan

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="An event-driven HTTP front end and FastCGI gateway for PHP.")


def version() -> str:
    """The installed package's version ("unknown" when run from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("php-gateway")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        from .http._h11 import summary

        typer.echo(f"gateway {version()}, {summary()}")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
) -> None:
    """An event-driven HTTP front end and FastCGI gateway for PHP."""


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr, format=_LOG_FORMAT)


def _setup_error_log(error_log: str) -> None:
    """``[server] error_log``: a file instead of standard error (reopened on SIGUSR1)."""
    if error_log == "-":
        return
    try:
        handler = logging.FileHandler(error_log)
    except OSError as exc:
        typer.echo(f"error: server.error_log: cannot open {error_log}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)


def _setup_access_log(access_log: str) -> None:
    access = logging.getLogger("gateway.access")
    access.propagate = False
    if access_log == "off":
        access.disabled = True
        return
    handler: logging.Handler = (logging.StreamHandler(sys.stdout) if access_log == "-"
                                else logging.FileHandler(access_log))
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)


def quick_config(root: str, overrides: list[Override], *, tls: bool = False) -> Config:
    """The configuration ``serve --root`` uses: one PHP site with the front
    controller, backend ``php`` spawned unless ``overrides`` (the flags) say
    otherwise; every other value is the schema's default. ``tls``: the site
    has a certificate from the internal CA (``--tls-listen``), for
    localhost, 127.0.0.1 and ::1."""
    from .serve.privileges import check as readable_by_users

    site: dict[str, Any] = {"root": str(Path(root).resolve()), "php": "php", "default": True}
    if tls:
        site["tls"] = {"internal": True}
    return validate({"backends": {"php": {}}, "sites": {"default": site}},
                    default_file="--root", overrides=overrides, checks=[readable_by_users])


def _load(config_dir: str, overrides: list[Override] | None = None, *, check_paths: bool = True) -> Config:
    """``load_dir``; with ``check_paths``, roots must also exist and be readable
    by the users who will read them (``serve.privileges.check``). Exit 2 with
    one line per problem."""
    from .app.guard import user_file_problems
    from .serve.privileges import check as readable_by_users

    try:
        return load_dir(config_dir, overrides or [], check_paths=check_paths,
                        checks=[readable_by_users, user_file_problems] if check_paths else [])
    except ConfigError as exc:
        _config_error(exc)


def _config_error(exc: ConfigError) -> NoReturn:
    """Exit 2 with the error's lines, one per problem, as they are."""
    typer.echo(str(exc), err=True)
    raise typer.Exit(2) from None


def _renamed(old_flag: str, old: Any, new_flag: str, new: Any) -> tuple[str, Any]:
    """(the flag given, its value): ``new_flag``, or its deprecated spelling
    ``old_flag`` (with a warning line); errors then name the flag typed."""
    if old is None:
        return new_flag, new
    if new is not None:
        typer.echo(f"{old_flag} and {new_flag} are the same option: give {new_flag} only", err=True)
        raise typer.Exit(2)
    log.warning("%s is deprecated, write %s instead (the old flag still works)", old_flag, new_flag)
    return old_flag, old


@app.command()
def serve(
    config: Annotated[str, typer.Option("--config", "-c", help="Configuration directory.")] = "conf.d",
    root: Annotated[str | None, typer.Option(help="Serve this PHP docroot with no config file.")] = None,
    listen: Annotated[list[str] | None, typer.Option(help="HOST:PORT, [::1]:PORT or unix:/path (repeatable).")] = None,
    tls_listen: Annotated[list[str] | None, typer.Option(help="HOST:PORT for HTTPS (repeatable); with --root, "
                                                              "a certificate from the internal CA.")] = None,
    php: Annotated[str | None, typer.Option(help="With --root: php-fpm address, unix:/path or host:port "
                                                 "(default: spawn).")] = None,
    pool_size: Annotated[int | None, typer.Option(help="With --root: connections to PHP (pm.max_children when "
                                                       f"spawned; default {BackendConfig().pool_size}).")] = None,
    php_workers: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --pool-size.")] = None,
    admin: Annotated[str | None, typer.Option(help="Admin listener (/status, /metrics): HOST:PORT or off.")] = None,
    processes: Annotated[str | None, typer.Option(help="Gateway processes: N, or auto (one per core).")] = None,
    workers: Annotated[str | None, typer.Option(hidden=True, help="Deprecated: --processes.")] = None,
    user: Annotated[str | None, typer.Option(help="Started as root: serve as this user (default www-data; "
                                                  "root keeps root).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve the configuration in --config (default ./conf.d), or a docroot given with --root.

    Flags override the configuration and are validated as it is.
    """
    _setup_logging(log_level)
    processes_flag, processes = _renamed("--workers", workers, "--processes", processes)
    pool_size_flag, pool_size = _renamed("--php-workers", php_workers, "--pool-size", pool_size)
    overrides: list[Override] = []
    if listen or tls_listen:
        entries = [*(listen or []), *(f"{address} tls" for address in tls_listen or [])]
        overrides.append(Override("--tls-listen" if not listen else "--listen", ("server", "listen"), entries))
    if admin is not None:
        overrides.append(Override("--admin", ("admin", "listen"), admin))
    if processes is not None:
        overrides.append(Override(processes_flag, ("server", "processes"), processes))
    if user is not None:
        overrides.append(Override("--user", ("server", "user"), user))
    if root is None:
        alone = [flag for flag, value in (("--php", php), (pool_size_flag, pool_size)) if value is not None]
        if alone:
            typer.echo(f"{alone[0]} goes with --root (it sets the spawned site's backend); with a configuration "
                       "directory, set backends.NAME.address or pool_size in it instead", err=True)
            raise typer.Exit(2)
    if root is not None:
        if not os.path.isdir(root):
            typer.echo(f"--root {root}: no such directory", err=True)
            raise typer.Exit(2)
        if php is not None:
            overrides.append(Override("--php", ("backends", "php", "address"), php))
        if pool_size is not None:
            overrides.append(Override(pool_size_flag, ("backends", "php", "pool_size"), pool_size))
        try:
            cfg = quick_config(root, overrides, tls=bool(tls_listen))
        except ConfigError as exc:
            _config_error(exc)
        if tls_listen:
            ca_file = os.path.abspath(StateDir(cfg.acme.state_path()).ca_paths()[0])
            typer.echo(f"HTTPS with the gateway's internal CA: {ca_file}\n"
                       f"  trust it: curl --cacert {ca_file} https://localhost:PORT/, or see README \"TLS\"", err=True)
    else:
        cfg = _load(config, overrides)

    def load() -> Config:
        """The configuration again, from the same directory and flags, checked as
        at start (SIGHUP)."""
        from .app.guard import user_file_problems
        from .serve.privileges import check as readable_by_users
        from .serve.process import check_certificates

        if root is not None:
            new = quick_config(root, overrides, tls=bool(tls_listen))
        else:
            new = load_dir(config, overrides, checks=[readable_by_users, user_file_problems])
        check_certificates(new)  # a certificate that does not load refuses the reload
        return new

    plan = _privileges(cfg)
    _setup_error_log(cfg.server.error_log)  # opened as root, before the drop
    _setup_access_log(cfg.server.access_log)  # opened as root, before the drop
    from .serve.master import process_count, serve_master
    from .serve.notify import take_address
    from .serve.process import serve as run_server

    notify_address = take_address()  # before any child starts: only we tell systemd
    count = process_count(cfg)
    carried = _carried_fds()
    try:
        if count == 1 and plan.account is None:
            carry = trio.run(_notify_when_started, partial(run_server, cfg, privileges=plan, reload=load,
                                                           carried=carried), notify_address)
            if carry is not None:
                _reexec(carry)
        else:  # a master that keeps root serves no client itself (serve.privileges)
            for fds in carried.values():  # a reload in one process that now wants a master
                for fd in fds:
                    os.close(fd)
            trio.run(_notify_when_started, partial(serve_master, cfg, count, log_level=log_level, privileges=plan,
                                                   reload=load), notify_address)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # noqa: BLE001 - start-up errors arrive wrapped in nursery groups
        leaf = _single_leaf(exc)
        if isinstance(leaf, SupervisorError | ListenError | TlsError):
            typer.echo(f"error: {leaf}", err=True)
        elif isinstance(leaf, OSError):
            typer.echo(f"error: cannot listen: {leaf}", err=True)
        else:
            raise
        raise typer.Exit(1) from None


async def _notify_when_started(run: Any, address: str) -> Any:
    """Run ``run`` (``serve`` or ``serve_master``) and tell systemd at
    ``address`` once it serves (``serve.notify``); ``run``'s result."""
    from .serve.notify import ready

    result: list[Any] = []

    async def keep_result(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        result.append(await run(task_status=task_status))

    async with trio.open_nursery() as nursery:
        await nursery.start(keep_result)
        ready(address)
    return result[0] if result else None


#: Listen sockets carried over a re-exec (SIGHUP with ``processes = 1``): JSON,
#: listen address -> fds.
CARRIED_FDS_ENV = "GATEWAY_LISTEN_FDS"


def _carried_fds() -> dict[str, list[int]]:
    raw = os.environ.pop(CARRIED_FDS_ENV, "")
    if not raw:
        return {}
    carried: dict[str, list[int]] = json.loads(raw)
    return carried


def _reexec(carry: dict[str, list[int]]) -> None:
    """Become a new gateway with the same arguments, the same pid and the same
    listen sockets (SIGHUP with one process: see README "Signals")."""
    os.environ[CARRIED_FDS_ENV] = json.dumps(carry)
    # Until the new image handles them (``serve.signals.unblock``), signals wait:
    # a second HUP (or a TERM) during the restart must not hit a default action.
    from .serve.signals import HANDLED

    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    for handler in [*logging.getLogger().handlers, *logging.getLogger("gateway.access").handlers]:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "gateway", *sys.argv[1:]])


def _privileges(cfg: Config) -> Plan:
    """Who serves (``serve.privileges.plan``; ``_load`` has checked who may
    read the roots), once the temp and runtime directories are ready for that
    user; else exit 2 with one line."""
    from .serve import privileges

    try:
        plan = privileges.plan(cfg, os.geteuid())
        privileges.prepare_dirs(cfg, plan.account)
    except privileges.PrivilegeError as exc:
        _config_error(ConfigError(str(exc)))
    return plan


def _single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) one-exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@app.command(hidden=True)
def worker(spec: str) -> None:
    """One worker process of a multi-process gateway (started by its master)."""
    from .serve.master import read_spec
    from .serve.privileges import plan
    from .serve.process import serve as run_server

    cfg, inherited, log_level = read_spec(spec)
    _setup_logging(log_level)
    _setup_error_log(cfg.server.error_log)  # before the drop, as the access log
    _setup_access_log(cfg.server.access_log)  # before the drop (a master that keeps root starts us as root)
    try:
        trio.run(partial(run_server, cfg, inherited=inherited, privileges=plan(cfg, os.geteuid())))
    except KeyboardInterrupt:
        pass


@app.command()
def check(
    config: Annotated[str, typer.Option("--config", "-c", help="Configuration directory.")] = "conf.d",
) -> None:
    """Validate the configuration and print the effective result as JSON
    (deprecated names are warned about on standard error)."""
    _setup_logging("warning")
    cfg = _load(config)
    data: dict[str, Any] = cfg.model_dump(mode="json")
    for name, site in cfg.sites.items():
        data["sites"][name]["try_files"] = site.effective_try_files()
    typer.echo(json.dumps(data, indent=2))


def _signal_master(config: str, pid_file: str | None, signum: int, what: str) -> None:
    from .serve.signals import PidFileError, read_pid_file

    path = pid_file or _load(config, check_paths=False).server.pid_file
    if not path:
        typer.echo(f"error: no [server] pid_file in {config}: set one (and restart the gateway), or give --pid-file",
                   err=True)
        raise typer.Exit(2)
    try:
        pid = read_pid_file(path)
        os.kill(pid, signum)
    except PidFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: cannot signal the gateway (pid from {path}): {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"sent {signal.Signals(signum).name} to the gateway (pid {pid}): {what}")


@app.command()
def reload(
    config: Annotated[str, typer.Option("--config", "-c", help="Configuration directory.")] = "conf.d",
    pid_file: Annotated[str | None, typer.Option(help="The master's pid file (default: [server] pid_file).")] = None,
) -> None:
    """Reload: check the configuration, then SIGHUP the running gateway (new
    worker processes with it; the old ones finish their requests)."""
    _setup_logging("warning")
    _load(config)  # as nginx -s reload: a configuration that does not validate is not sent
    _signal_master(config, pid_file, signal.SIGHUP, "it reloads; its error log says how it went")


@app.command()
def reopen(
    config: Annotated[str, typer.Option("--config", "-c", help="Configuration directory.")] = "conf.d",
    pid_file: Annotated[str | None, typer.Option(help="The master's pid file (default: [server] pid_file).")] = None,
) -> None:
    """Reopen the log files (SIGUSR1 to the running gateway), e.g. after logrotate moved them."""
    _setup_logging("warning")
    _signal_master(config, pid_file, signal.SIGUSR1, "it reopens its log files")


def admin_url(listen: str) -> str:
    """The URL ``status``/``top`` read for an ``[admin] listen`` value; a
    wildcard host is read on loopback. ``ValueError`` for "off" or a unix
    socket (these commands speak HTTP over TCP only)."""
    if listen == "off":
        raise ValueError("admin.listen is off: there is no admin listener to read (set it, e.g. 127.0.0.1:9180)")
    where = parse_address(listen, role="admin listen address")
    if where.kind == "unix":
        raise ValueError(f"admin.listen is {listen}: status and top read a TCP address only "
                         "(give one with --admin HOST:PORT)")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(where.host, where.host)
    return f"http://[{host}]:{where.port}" if ":" in host else f"http://{host}:{where.port}"


ADMIN_OPTION = typer.Option(help="The admin listener's URL (default: admin.listen from --config, "
                                 f"else {DEFAULT_ADMIN}).")
CONFIG_OPTION = typer.Option("--config", "-c", help="Read the admin address from this configuration directory.")


def _admin_address(admin: str | None, config: str | None) -> str:
    """--admin if given; else ``[admin] listen`` from --config; else the default."""
    if admin is not None:
        return admin
    if config is None:
        return DEFAULT_ADMIN
    cfg = _load(config, check_paths=False)
    try:
        return admin_url(cfg.admin.listen)
    except ValueError as exc:
        typer.echo(f"{config}: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def status(
    admin: Annotated[str | None, ADMIN_OPTION] = None,
    config: Annotated[str | None, CONFIG_OPTION] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as one JSON object.")] = False,
) -> None:
    """Print the verdict (where the time goes) and the key numbers, once."""
    admin = _admin_address(admin, config)
    try:
        st = fetch_status(admin)
    except AdminUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(st, indent=2))
    else:
        typer.echo("\n".join(summary_lines(st)))


@app.command()
def purge(
    url: Annotated[str | None, typer.Argument(help="A page: https://HOST/PATH (every variant of it), or /PATH on "
                                                    "every host; end it with * for everything under it.")] = None,
    purge_all: Annotated[bool, typer.Option("--all", help="Empty every site's page cache.")] = False,
    tag: Annotated[str | None, typer.Option(help="Purge the pages PHP tagged with this (X-Cache-Tags).")] = None,
    admin: Annotated[str | None, ADMIN_OPTION] = None,
    config: Annotated[str | None, CONFIG_OPTION] = None,
) -> None:
    """Remove pages from the page cache, in every worker process (the admin's POST /cache/purge)."""
    given = [x for x in (url, tag) if x is not None] + (["--all"] if purge_all else [])
    if len(given) != 1:
        typer.echo("error: give one of URL, --all or --tag NAME", err=True)
        raise typer.Exit(2)
    if purge_all:
        body: dict[str, Any] = {"all": True}
    elif tag is not None:
        body = {"tag": tag}
    else:
        assert url is not None
        body = {"prefix": url.removesuffix("*")} if url.endswith("*") and url != "*" else {"url": url}
    address = _admin_address(admin, config)
    try:
        answer = post_purge(address, body)
    except AdminUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    where = ""
    if "asked" in answer:
        where = f" in {answer['processes']} of {answer['asked']} worker processes"
    typer.echo(f"purged {answer.get('purged', 0)} entries{where}")
    if answer.get("processes", 0) < answer.get("asked", 0):
        raise typer.Exit(1)


@app.command()
def top(
    admin: Annotated[str | None, ADMIN_OPTION] = None,
    config: Annotated[str | None, CONFIG_OPTION] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    count: Annotated[int, typer.Option(help="Stop after this many refreshes (0: until Ctrl-C).")] = 0,
) -> None:
    """A live view: verdict, queue depth, pool busy/size, loop lag; refreshes every second."""
    import time

    from rich.console import Console
    from rich.live import Live

    url = _admin_address(admin, config)
    console = Console()
    n = 0

    def frame() -> Any:
        try:
            return top_view(fetch_status(url), url)
        except AdminUnreachable as exc:
            return f"[red]{exc}[/red]"

    try:
        if not console.is_terminal:  # piped: print frames one after another
            while True:
                console.print(frame())
                n += 1
                if count and n >= count:
                    return
                time.sleep(interval)
        with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
            while not count or n < count - 1:
                time.sleep(interval)
                live.update(frame())
                n += 1
    except KeyboardInterrupt:
        pass


def main() -> None:
    app()
