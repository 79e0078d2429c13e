"""Integration fixtures: the real gateway on 127.0.0.1 with a real php-fpm that
its supervisor spawns (Debian's php8.2-fpm, installed by scripts/setup)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.config import validate
from gateway.serve.php_fpm import find_php_fpm
from gateway.serve.process import Running, serve
from tests.helpers import HttpClient, HttpResponse

DOCROOT = Path(__file__).parent / "docroot"


@pytest.fixture(scope="session", autouse=True)
def _php_fpm_is_installed():
    # Never skip: the README's test command installs php-fpm, so its absence is a failure.
    find_php_fpm()


@dataclass
class Gateway:
    running: Running
    port: int

    @property
    def pool(self):
        return self.running.pools["php"]

    @property
    def supervisor(self):
        return self.running.supervisors["php"]

    async def client(self) -> HttpClient:
        return await HttpClient.connect(self.port)

    async def get(self, target: str, **kw: Any) -> HttpResponse:
        c = await self.client()
        try:
            return await c.request(kw.pop("method", "GET"), target, **kw)
        finally:
            await c.aclose()


def gateway_config(root: Path, *, backend: dict[str, Any] | None = None, site: dict[str, Any] | None = None,
                   server: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                   runtime_dir: str = "", timeouts: dict[str, Any] | None = None,
                   diagnosis: dict[str, Any] | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"address": "spawn", "pool_size": 2, "idle_timeout": "30s", "php_fpm": {"user": "root"}}
    for key, value in (backend or {}).items():
        b[key] = {**b[key], **value} if key == "php_fpm" else value
    s = {"root": str(root), "php": "php", "default": True, "no_php_under": ["/uploads/"]}
    s.update(site or {})
    srv = {"listen": ["127.0.0.1:0"], "access_log": "off", "runtime_dir": runtime_dir}
    srv.update(server or {})
    return {"server": srv, "admin": {"listen": "127.0.0.1:0"}, "limits": limits or {}, "backends": {"php": b},
            "sites": {"t": s}, "timeouts": timeouts or {}, "diagnosis": diagnosis or {}}


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartGateway]:
    started: list[Running] = []

    async def start(root: Path = DOCROOT, **kw: Any) -> Gateway:
        kw.setdefault("runtime_dir", str(tmp_path / f"run{len(started)}"))
        cfg = validate(gateway_config(root, **kw))
        running: Running = await nursery.start(partial(serve, cfg, handle_signals=False))
        started.append(running)
        port = next(listener.socket.getsockname()[1] for listener in running.listeners
                    if listener.socket.family.name in ("AF_INET", "AF_INET6"))
        return Gateway(running, port)

    yield start
    for running in started:
        running.shutdown.set()


@pytest.fixture
async def gw(start_gateway: StartGateway) -> Gateway:
    return await start_gateway()


def free_port() -> int:
    """A port free on 127.0.0.1 now (for a gateway started as a subprocess)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_cli(args: list[str]) -> tuple[trio.Process, trio.abc.ReceiveStream]:
    """Run ``python -m gateway ARGS``; return once it logs that it is listening."""
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "gateway", *args], stderr=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    log = b""
    with trio.fail_after(20):
        while b"listening on" not in log:
            chunk = await proc.stderr.receive_some(4096)
            assert chunk, "gateway exited before listening:\n" + log.decode()
            log += chunk
    return proc, proc.stderr
