"""Restart with backoff (``serve.restart``), the policy behind php-fpm's and the
worker processes' restarts: exact times on the autojump clock, no processes."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import trio

from gateway.serve.restart import Backoff, Restarting, StartFailed, SupervisorError


class Script:
    """A stand-in for a process: run ``i`` comes up after ``ready[i]`` seconds
    (None: never; the run fails to start) and then lives ``lives[i]`` seconds.
    Records when each run began, relative to the test's start."""

    def __init__(self, lives: list[float], ready: list[float | None] | None = None) -> None:
        self.lives = lives
        self.ready = ready or [0.0] * len(lives)
        self.began: list[float] = []
        self.t0 = trio.current_time()
        self.done = trio.Event()

    async def once(self, up: Callable[[], None]) -> str:
        i = len(self.began)
        self.began.append(trio.current_time() - self.t0)
        if i == len(self.lives):  # the script is over: stay up until the test ends
            self.done.set()
            await trio.sleep_forever()
        if self.ready[i] is None:
            await trio.sleep(1)
            raise StartFailed(f"run {i} failed")
        await trio.sleep(self.ready[i])
        up()
        await trio.sleep(self.lives[i])
        return f"run {i} exited"


async def play(script: Script, keeper: Restarting, nursery: trio.Nursery) -> None:
    await nursery.start(keeper.run, script.once)
    await script.done.wait()
    nursery.cancel_scope.cancel()


async def test_a_crash_loop_waits_longer_each_time_up_to_the_cap(autojump_clock):
    # each run dies 1 s after it starts: never healthy (reset_after 10 s)
    script = Script(lives=[1, 1, 1, 1, 1])
    keeper = Restarting("worker 0", Backoff(first=0.5, most=2.0, reset_after=10.0))
    async with trio.open_nursery() as nursery:
        await play(script, keeper, nursery)
    # delays 0.5, 1, 2, then 2 (the cap), 2
    assert script.began == [0, 1.5, 3.5, 6.5, 9.5, 12.5]
    assert keeper.restarts == 5


async def test_a_run_that_stayed_up_long_enough_restarts_at_once_again(autojump_clock):
    script = Script(lives=[1, 1, 10, 1])
    keeper = Restarting("worker 0", Backoff(first=0.5, most=8.0, reset_after=10.0))
    async with trio.open_nursery() as nursery:
        await play(script, keeper, nursery)
    # 0.5 and 1 while it crash-loops; the third run lasted 10 s, so 0.5 again, then 1
    assert script.began == [0, 1.5, 3.5, 14.0, 16.0]


async def test_with_no_reset_after_any_run_that_came_up_resets_the_delay(autojump_clock):
    # php-fpm's policy: once it answered, the next crash is retried after `first`
    script = Script(lives=[1, 1, 1], ready=[2, 2, 2])
    keeper = Restarting("php-fpm for backend php", Backoff(first=0.5, most=30.0))
    async with trio.open_nursery() as nursery:
        await play(script, keeper, nursery)
    assert script.began == [0, 3.5, 7.0, 10.5]


async def test_failed_restarts_back_off_too_and_are_logged(autojump_clock, caplog):
    caplog.set_level(logging.ERROR, logger="gateway.serve.restart")
    script = Script(lives=[1, 0, 0, 1], ready=[0, None, None, 0])
    keeper = Restarting("php-fpm for backend php", Backoff(first=0.5, most=30.0))
    async with trio.open_nursery() as nursery:
        await play(script, keeper, nursery)
    # a failed start takes 1 s here; it does not reset the delay: 0.5, 1, 2, then 0.5 after run 3 came up
    assert script.began == [0, 1.5, 3.5, 6.5, 8.0]
    assert [r.getMessage() for r in caplog.records] == [
        "php-fpm for backend php run 0 exited; restarting in 0.5s",
        "php-fpm for backend php did not come up: run 1 failed; restarting in 1.0s",
        "php-fpm for backend php did not come up: run 2 failed; restarting in 2.0s",
        "php-fpm for backend php run 3 exited; restarting in 0.5s",
    ]


async def test_started_is_reported_when_the_first_run_comes_up(nursery, autojump_clock):
    script = Script(lives=[100], ready=[3])
    await nursery.start(Restarting("worker 0", Backoff(0.5, 10.0)).run, script.once)
    assert trio.current_time() - script.t0 == 3


async def test_a_first_run_that_does_not_come_up_is_fatal_not_retried(autojump_clock):
    script = Script(lives=[1], ready=[None])
    with pytest.raises(SupervisorError, match=r"^worker process 0 did not start: run 0 failed$"):
        await Restarting("worker process 0", Backoff(0.5, 10.0)).run(script.once)
    assert script.began == [0]


async def test_nothing_is_restarted_once_the_owner_is_stopping(autojump_clock):
    stopping = False
    script = Script(lives=[5, 5])

    async def stop_during_the_second_run() -> None:
        nonlocal stopping
        await trio.sleep(6)
        stopping = True

    keeper = Restarting("worker 0", Backoff(0.5, 10.0), stopping=lambda: stopping)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_during_the_second_run)
        await keeper.run(script.once)  # returns when the second run ends
    assert script.began == [0, 5.5]
    assert trio.current_time() - script.t0 == 10.5
    assert keeper.restarts == 1
