"""Restart with backoff: the one policy for what the gateway keeps running (a
spawned php-fpm, the worker processes of a multi-process gateway).

Policy (``Restarting.run``):

- A *run* is one ``once(up)`` call: start the thing, call ``up()`` when it is
  ready to serve, return a few words for the log ("exited with status 3") when
  it has gone. It raises ``StartFailed`` if it never became ready (and has
  cleaned up after itself).
- The first run must come up: if it does not, ``SupervisorError`` is raised,
  so the gateway fails at start instead of serving without a backend or a
  process. The caller's ``task_status`` is reported started when the first run
  comes up, and never again.
- Every later end, an exit or a failed start, is logged as one error line and
  followed by the next run after a delay: ``Backoff.first``, doubled after each
  restart up to ``Backoff.most``. A run that came up and lasted
  ``Backoff.reset_after`` seconds from its start was healthy: the delay after
  it is ``first`` again. So a crash now and then restarts at once, and a crash
  loop slows down instead of spinning.
- When ``stopping()`` is true as a run ends (or a delay is over), nothing is
  restarted: the owner is shutting down.
- Times are trio's clock (``trio.current_time``), so tests drive the policy on
  the autojump clock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

log = logging.getLogger(__name__)


class SupervisorError(Exception):
    """Something the gateway runs did not start; the message says what and why."""


class StartFailed(Exception):
    """One run did not come up; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between runs: ``first``, doubling up to ``most``; reset to
    ``first`` after a run that came up and lasted ``reset_after`` seconds."""

    first: float
    most: float
    reset_after: float = 0.0


#: One run: ``await once(up)``; see the module's docstring.
Once = Callable[[Callable[[], None]], Awaitable[str]]


def _never() -> bool:
    return False


class Restarting:
    """Keeps one thing running under ``backoff``; ``name`` starts its log lines
    ("php-fpm for backend php", "worker process 1")."""

    def __init__(self, name: str, backoff: Backoff, *, stopping: Callable[[], bool] = _never) -> None:
        self.name = name
        self.backoff = backoff
        self.stopping = stopping
        #: Runs that ended after the first came up, each followed by a restart.
        self.restarts = 0
        self._task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        self._started = False
        self._came_up = False

    def _up(self) -> None:
        self._came_up = True
        if not self._started:
            self._started = True
            self._task_status.started()

    async def run(self, once: Once, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run ``once`` until cancelled or ``stopping()``; see the module's docstring."""
        self._task_status = task_status
        delay = self.backoff.first
        while not self.stopping():
            began = trio.current_time()
            self._came_up = False
            try:
                outcome = await once(self._up)
            except StartFailed as exc:
                if not self._started:
                    raise SupervisorError(f"{self.name} did not start: {exc}") from None
                outcome = f"did not come up: {exc}"
            if self.stopping():
                return
            self.restarts += 1
            if self._came_up and trio.current_time() - began >= self.backoff.reset_after:
                delay = self.backoff.first
            log.error("%s %s; restarting in %.1fs", self.name, outcome, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, self.backoff.most)
