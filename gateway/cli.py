"""The ``gateway`` command: ``serve`` and ``check``."""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from .config import BackendConfig, Config, ConfigError, Override, load_dir, validate
from .observe.views import DEFAULT_ADMIN, AdminUnreachable, fetch_status, summary_lines, top_view
from .serve.restart import SupervisorError

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="An event-driven HTTP front end and FastCGI gateway for PHP.")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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


def quick_config(root: str, overrides: list[Override]) -> Config:
    """The configuration ``serve --root`` uses: one PHP site with the front
    controller, backend ``php`` spawned unless ``overrides`` (the flags) say
    otherwise; every other value is the schema's default."""
    return validate({
        "backends": {"php": {}},
        "sites": {"default": {"root": str(Path(root).resolve()), "php": "php", "default": True}},
    }, default_file="--root", overrides=overrides)


def _load(config_dir: str, overrides: list[Override] | None = None) -> Config:
    try:
        return load_dir(config_dir, overrides or [])
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
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
    php: Annotated[str | None, typer.Option(help="With --root: php-fpm address, unix:/path or host:port "
                                                 "(default: spawn).")] = None,
    pool_size: Annotated[int | None, typer.Option(help="With --root: connections to PHP (pm.max_children when "
                                                       f"spawned; default {BackendConfig().pool_size}).")] = None,
    php_workers: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --pool-size.")] = None,
    admin: Annotated[str | None, typer.Option(help="Admin listener (/status, /metrics): HOST:PORT or off.")] = None,
    processes: Annotated[str | None, typer.Option(help="Gateway processes: N, or auto (one per core).")] = None,
    workers: Annotated[str | None, typer.Option(hidden=True, help="Deprecated: --processes.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve the configuration in --config (default ./conf.d), or a docroot given with --root.

    Flags override the configuration and are validated as it is.
    """
    _setup_logging(log_level)
    processes_flag, processes = _renamed("--workers", workers, "--processes", processes)
    pool_size_flag, pool_size = _renamed("--php-workers", php_workers, "--pool-size", pool_size)
    overrides: list[Override] = []
    if listen:
        overrides.append(Override("--listen", ("server", "listen"), listen))
    if admin is not None:
        overrides.append(Override("--admin", ("admin", "listen"), admin))
    if processes is not None:
        overrides.append(Override(processes_flag, ("server", "processes"), processes))
    if root is not None:
        if not os.path.isdir(root):
            typer.echo(f"--root {root}: no such directory", err=True)
            raise typer.Exit(2)
        if php is not None:
            overrides.append(Override("--php", ("backends", "php", "address"), php))
        if pool_size is not None:
            overrides.append(Override(pool_size_flag, ("backends", "php", "pool_size"), pool_size))
        try:
            cfg = quick_config(root, overrides)
        except ConfigError as exc:
            typer.echo(f"configuration error:\n{exc}", err=True)
            raise typer.Exit(2) from None
    else:
        cfg = _load(config, overrides)
    _setup_access_log(cfg.server.access_log)
    from .serve.master import process_count, serve_master
    from .serve.process import serve as run_server

    count = process_count(cfg)
    try:
        if count == 1:
            trio.run(run_server, cfg)
        else:
            trio.run(partial(serve_master, cfg, count, log_level=log_level))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # noqa: BLE001 - start-up errors arrive wrapped in nursery groups
        leaf = _single_leaf(exc)
        if isinstance(leaf, SupervisorError):
            typer.echo(f"error: {leaf}", err=True)
        elif isinstance(leaf, OSError):
            typer.echo(f"error: cannot listen: {leaf}", err=True)
        else:
            raise
        raise typer.Exit(1) from None


def _single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) one-exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@app.command(hidden=True)
def worker(spec: str) -> None:
    """One worker process of a multi-process gateway (started by its master)."""
    from .serve.master import read_spec
    from .serve.process import serve as run_server

    cfg, inherited, log_level = read_spec(spec)
    _setup_logging(log_level)
    _setup_access_log(cfg.server.access_log)
    try:
        trio.run(partial(run_server, cfg, inherited=inherited))
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


@app.command()
def status(
    admin: Annotated[str, typer.Option(help="The admin listener's URL.")] = DEFAULT_ADMIN,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as one JSON object.")] = False,
) -> None:
    """Print the verdict (where the time goes) and the key numbers, once."""
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
def top(
    admin: Annotated[str, typer.Option(help="The admin listener's URL.")] = DEFAULT_ADMIN,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    count: Annotated[int, typer.Option(help="Stop after this many refreshes (0: until Ctrl-C).")] = 0,
) -> None:
    """A live view: verdict, queue depth, pool busy/size, loop lag; refreshes every second."""
    import time

    from rich.console import Console
    from rich.live import Live

    console = Console()
    n = 0

    def frame() -> Any:
        try:
            return top_view(fetch_status(admin), admin)
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
