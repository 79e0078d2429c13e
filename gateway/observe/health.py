"""Active backend checks: does php-fpm answer when no request is asking?

Without traffic there are no connect errors, so a dead php-fpm looks healthy.
Each pool's monitor therefore probes its backend on its own, outside the pool:

- a spawned php-fpm: a FastCGI GET of its ``ping.path`` (``/fpm-ping``) on its
  status socket (``pm.status_listen``); the answer must be ``pong``;
- an external php-fpm with a status address (``status =``): a FastCGI GET of
  its status page (``status_path``) there; any FastCGI answer will do;
- an external php-fpm without one: a connect to its FastCGI address, closed at
  once without a request, so no PHP runs.

Policy:

- One probe every ``CHECK_EVERY`` seconds, each bounded by ``CHECK_TIMEOUT``
  (a hung php-fpm fails it as a dead one does). With the monitor's one-second
  sample and the verdict's 3 s hold, ``backend-down`` shows within
  CHECK_EVERY + CHECK_TIMEOUT + 1 + HOLD = 7 s of php-fpm dying (a dead one
  refuses at once: 6 s).
- One failed probe marks the backend down, one answered probe marks it up;
  ``up`` is None until the first probe has ended (unknown, not "up").
- A probe never takes a pool slot: it opens its own short-lived connection
  (the status socket is served outside php-fpm's worker pool; a connect to the
  FastCGI address waits in the listen backlog, not for a worker).
- A change is logged once (down: warning with the reason; up again: info);
  repeated failures are not logged again.

The probe is injected (``Probe``), so the timing is tested on trio's autojump
clock without sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

import fastcgi

from ..http.errors import UpstreamConnectError
from ..upstream.connect import make_connector
from ..upstream.php_fpm_status import fastcgi_get

log = logging.getLogger(__name__)

#: Seconds between two probes of one backend.
CHECK_EVERY = 2.0
#: Seconds a probe may take before it counts as failed.
CHECK_TIMEOUT = 1.0
#: Failures a probe may end with (anything else is a bug and propagates).
PROBE_ERRORS = (UpstreamConnectError, OSError, trio.BrokenResourceError, fastcgi.FastCGIError, ValueError)

#: One probe: returns if the backend answered, raises (``PROBE_ERRORS``) if not.
Probe = Callable[[], Awaitable[None]]


class NoPong(Exception):
    """php-fpm answered its ping path with something other than ``pong``."""


def ping_probe(status_address: str, path: str) -> Probe:
    """php-fpm's ``ping.path`` over FastCGI on ``status_address``: must say pong."""

    async def probe() -> None:
        _, body = await fastcgi_get(status_address, path)
        if body.strip() != b"pong":
            raise NoPong(f"{path} on {status_address} answered {body[:40]!r}, not 'pong'")

    return probe


def page_probe(status_address: str, path: str) -> Probe:
    """Any FastCGI answer to a GET of ``path`` on ``status_address``."""

    async def probe() -> None:
        await fastcgi_get(status_address, path)

    return probe


def connect_probe(address: str) -> Probe:
    """A connect to the FastCGI ``address``, closed at once (no request sent)."""
    connect = make_connector(address)

    async def probe() -> None:
        stream = await connect()
        await stream.aclose()

    return probe


@dataclass
class BackendHealth:
    """The active check of one pool's backend; ``run`` probes until cancelled."""

    pool: str
    probe: Probe
    #: what is probed, for people (``ping unix:/run/status.sock /fpm-ping``)
    what: str
    every: float = CHECK_EVERY
    timeout: float = CHECK_TIMEOUT
    #: True: answered the last probe; False: did not; None: no probe has ended yet
    up: bool | None = None
    #: why the last probe failed ("" when it did not)
    error: str = ""
    #: trio time of the last change of ``up``
    since: float = 0.0
    #: trio time the last probe ended
    checked_at: float | None = None
    probes: int = 0
    #: set after every probe (tests wait on it instead of sleeping)
    _probed: trio.Event = field(default_factory=trio.Event)

    @classmethod
    def for_backend(cls, pool: str, *, address: str, status_address: str, status_path: str,
                    ping_path: str = "") -> BackendHealth:
        """The check policy of the module's docstring: ping if there is a ping
        path, else the status page if there is a status address, else a connect."""
        if status_address and ping_path:
            return cls(pool, ping_probe(status_address, ping_path), f"ping {status_address} {ping_path}")
        if status_address:
            return cls(pool, page_probe(status_address, status_path), f"status page {status_address} {status_path}")
        return cls(pool, connect_probe(address), f"connect {address}")

    async def run(self) -> None:
        while True:
            await self.check()
            await trio.sleep(self.every)

    async def check(self) -> bool:
        """One probe, bounded by ``timeout``; updates ``up`` and returns it."""
        error = ""
        try:
            with trio.fail_after(self.timeout):
                await self.probe()
        except trio.TooSlowError:
            error = f"no answer within {self.timeout:g}s"
        except (*PROBE_ERRORS, NoPong) as exc:
            error = str(exc) or type(exc).__name__
        now = trio.current_time()
        up = not error
        if up != self.up:
            if not up:
                log.warning("backend %s is down: %s failed: %s", self.pool, self.what, error)
            elif self.up is False:
                log.info("backend %s is up again (%s answers)", self.pool, self.what)
            self.since = now
        self.up, self.error, self.checked_at = up, error, now
        self.probes += 1
        self._probed.set()
        self._probed = trio.Event()
        return up

    async def wait_probed(self) -> None:
        """Until the next probe has ended (for tests)."""
        await self._probed.wait()

    def down_for(self, now: float) -> float:
        """Seconds the backend has been down (0 when it is not)."""
        return now - self.since if self.up is False else 0.0
