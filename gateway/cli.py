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

from .config import Config, ConfigError, load_dir, validate
from .observe.views import DEFAULT_ADMIN, AdminUnreachable, fetch_status, summary_lines, top_view
from .serve.php_fpm import SupervisorError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="An event-driven HTTP front end and FastCGI gateway for PHP.")


def _setup_logging(level: str, access_log: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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


def quick_config(root: str, listen: list[str], php: str | None, php_workers: int) -> Config:
    """The configuration ``serve --root`` uses: one PHP site with the front controller."""
    return validate({
        "server": {"listen": listen},
        "admin": {},
        "backends": {"php": {"address": php or "spawn", "workers": php_workers}},
        "sites": {"default": {"root": str(Path(root).resolve()), "php": "php", "default": True}},
    })


def _load(config_dir: str) -> Config:
    try:
        return load_dir(config_dir)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: Annotated[str, typer.Option("--config", "-c", help="Configuration directory.")] = "conf.d",
    root: Annotated[str | None, typer.Option(help="Serve this PHP docroot with no config file.")] = None,
    listen: Annotated[list[str] | None, typer.Option(help="HOST:PORT, [::1]:PORT or unix:/path (repeatable).")] = None,
    php: Annotated[str | None, typer.Option(help="php-fpm address, unix:/path or host:port (default: spawn).")] = None,
    php_workers: Annotated[int, typer.Option(help="PHP pool size (and pm.max_children when spawned).")] = 4,
    admin: Annotated[str | None, typer.Option(help="Admin listener (/status, /metrics): HOST:PORT or off.")] = None,
    workers: Annotated[str | None, typer.Option(help="Gateway processes: N, or auto (one per core).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve the configuration in --config (default ./conf.d), or a docroot given with --root."""
    if root is not None:
        if not os.path.isdir(root):
            typer.echo(f"--root {root}: no such directory", err=True)
            raise typer.Exit(2)
        try:
            cfg = quick_config(root, listen or ["127.0.0.1:8080"], php, php_workers)
        except ConfigError as exc:
            typer.echo(f"configuration error:\n{exc}", err=True)
            raise typer.Exit(2) from None
    else:
        cfg = _load(config)
        if listen:
            cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"listen": listen})})
    if admin is not None:
        cfg = cfg.model_copy(update={"admin": cfg.admin.model_copy(update={"listen": admin})})
    if workers is not None:
        try:
            cfg = validate({**cfg.model_dump(mode="json"),
                            "server": {**cfg.server.model_dump(mode="json"), "workers": workers}})
        except ConfigError as exc:
            typer.echo(f"--workers {workers}: {exc}", err=True)
            raise typer.Exit(2) from None
    _setup_logging(log_level, cfg.server.access_log)
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
    _setup_logging(log_level, cfg.server.access_log)
    try:
        trio.run(partial(run_server, cfg, inherited=inherited))
    except KeyboardInterrupt:
        pass


@app.command()
def check(
    config: Annotated[str, typer.Option("--config", "-c", help="Configuration directory.")] = "conf.d",
) -> None:
    """Validate the configuration and print the effective result as JSON."""
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
