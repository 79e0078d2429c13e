"""Active health checks of a group's addresses (``[backends.X.health] path``).

Passive health (``pool``: connect errors take an address out for
``fail_timeout``) needs traffic to notice a dead host and brings it back
blindly; active checks ask each address on their own, traffic or not:

- every ``interval``, each address of the group is checked on a connection
  of its own (never a pool slot: a saturated pool is checked too), bounded by
  ``timeout``: an HTTP backend with ``GET path`` (a 2xx or 3xx answer
  passes); a FastCGI one with a connect, closed at once (``connect_probe``).
  Not php-fpm's ``ping.path``: php-fpm answers it from a worker, and the
  gateway's kept-alive connections may pin every worker of a healthy host
  (pool_size = pm.max_children), so a ping would wait in the listen backlog
  and fail; a connect is accepted by that backlog, and refused (or unanswered)
  only by a dead or unreachable host;
- ``fails`` failed checks in a row take the address out of rotation
  (``Pool.mark_checked``), ``passes`` answered ones in a row bring it back;
- a group of one address is not checked (it is never taken out).

The probe is injected (``Probe``), so the policy is tested on the autojump clock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import trio

import fastcgi

from ..config import HealthConfig
from ..http.errors import GatewayError
from .connect import Connector
from .pool import Member, Pool

log = logging.getLogger(__name__)

#: One check: returns if the address answered well, raises (``CHECK_ERRORS``) if not.
Probe = Callable[[], Awaitable[None]]


class CheckFailed(Exception):
    """The address answered, but not well (a 5xx, garbage)."""


#: What a failed check may raise (anything else is a bug and propagates).
CHECK_ERRORS = (GatewayError, OSError, trio.BrokenResourceError, trio.ClosedResourceError, fastcgi.FastCGIError,
                h11.ProtocolError, CheckFailed, ValueError)


def http_probe(connector: Connector, path: str, host: str) -> Probe:
    """``GET path`` on a connection of its own; a 2xx or 3xx passes."""

    async def probe() -> None:
        stream = await connector()
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            await stream.send_all(conn.send(h11.Request(method="GET", target=path, headers=[
                ("Host", host), ("User-Agent", "gateway-health-check"), ("Connection", "close")])) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(16384)))
                elif isinstance(event, h11.Response):
                    if not 200 <= event.status_code < 400:
                        raise CheckFailed(f"GET {path} answered {event.status_code}")
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise CheckFailed(f"GET {path}: closed without an answer")

    return probe


def connect_probe(connector: Connector) -> Probe:
    """A connect, closed at once: no request, so no php-fpm worker is needed."""

    async def probe() -> None:
        stream = await connector()
        await trio.aclose_forcefully(stream)

    return probe


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    """``[backends.X.health]``'s active part (``from_config``: the one mapping)."""

    interval: float
    #: a check not answered within this has failed
    timeout: float
    fails: int
    passes: int

    @classmethod
    def from_config(cls, health: HealthConfig) -> CheckPolicy:
        return cls(health.interval, health.timeout, health.fails, health.passes)


async def run_checks(pool: Pool[Any], probes: list[Probe], policy: CheckPolicy) -> None:
    """Check each member of ``pool`` with its probe (``probes``, in member
    order) until cancelled."""
    if len(pool.members) < 2:
        return
    async with trio.open_nursery() as nursery:
        for member, probe in zip(pool.members, probes, strict=True):
            nursery.start_soon(check_member, pool, member, probe, policy)


async def check_member(pool: Pool[Any], member: Member[Any], probe: Probe, policy: CheckPolicy) -> None:
    failed = passed = 0
    while True:
        error = ""
        try:
            with trio.fail_after(policy.timeout):
                await probe()
        except trio.TooSlowError:
            error = f"no answer within {policy.timeout:g}s"
        except CHECK_ERRORS as exc:
            error = str(exc) or type(exc).__name__
        if error:
            failed, passed = failed + 1, 0
            if failed >= policy.fails:
                pool.mark_checked(member, True, error)
        else:
            failed, passed = 0, passed + 1
            if passed >= policy.passes:
                pool.mark_checked(member, False)
        await trio.sleep(policy.interval)
