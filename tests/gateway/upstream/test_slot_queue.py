"""``SlotQueue``: the pool's slots and their line, as ``trio.CapacityLimiter`` kept them."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from gateway.upstream.pool import SlotQueue


async def test_free_slots_are_taken_at_once_and_then_the_line_forms():
    q = SlotQueue(2)
    a, b, c = object(), object(), object()
    assert q.take(a) and q.take(b)
    assert not q.take(c)
    with pytest.raises(trio.WouldBlock):
        q.acquire_on_behalf_of_nowait(c)
    assert (q.borrowed_tokens, q.available_tokens, q.total_tokens) == (2, 0, 2)
    with pytest.raises(RuntimeError):
        q.release_on_behalf_of(c)
    q.release_on_behalf_of(a)
    assert q.take(c)


async def test_releases_hand_slots_to_waiters_first_come_first(nursery):
    q = SlotQueue(1)
    holder = object()
    assert q.take(holder)
    served: list[int] = []

    async def waiter(i: int) -> None:
        token = ("waiter", i)
        await q.wait(token)
        served.append(i)

    for i in range(4):
        nursery.start_soon(waiter, i)
        await trio.testing.wait_all_tasks_blocked()
    q.release_on_behalf_of(holder)
    late = object()
    assert not q.take(late)  # the slot went to the first waiter: nobody takes it past the line
    await trio.testing.wait_all_tasks_blocked()
    assert served == [0]
    for i in range(3):
        q.release_on_behalf_of(("waiter", i))
        await trio.testing.wait_all_tasks_blocked()
    assert served == [0, 1, 2, 3]
    q.release_on_behalf_of(("waiter", 3))
    assert q.borrowed_tokens == 0


async def test_a_cancelled_waiter_leaves_the_line_holding_nothing(nursery):
    q = SlotQueue(1)
    holder = object()
    assert q.take(holder)
    got: list[str] = []

    async def waiter(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await q.wait(name)
            got.append(name)

    first, second = trio.CancelScope(), trio.CancelScope()
    nursery.start_soon(waiter, "first", first)
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(waiter, "second", second)
    await trio.testing.wait_all_tasks_blocked()
    first.cancel()
    await trio.testing.wait_all_tasks_blocked()
    q.release_on_behalf_of(holder)
    await trio.testing.wait_all_tasks_blocked()
    assert got == ["second"] and q.borrowed_tokens == 1
    second.cancel()  # (already served: the slot stays its own)
    q.release_on_behalf_of("second")
    assert q.borrowed_tokens == 0


async def test_more_slots_wake_as_many_waiters(nursery):
    q = SlotQueue(0)
    got: list[int] = []

    async def waiter(i: int) -> None:
        await q.wait(i)
        got.append(i)

    for i in range(3):
        nursery.start_soon(waiter, i)
        await trio.testing.wait_all_tasks_blocked()
    q.total_tokens = 2
    await trio.testing.wait_all_tasks_blocked()
    # the first two in line hold the slots (trio runs tasks woken together in either order)
    assert sorted(got) == [0, 1] and q.borrowed_tokens == 2
    q.total_tokens = 1  # fewer: the holders keep theirs, nobody new gets one
    q.release_on_behalf_of(0)
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(got) == [0, 1]
    q.release_on_behalf_of(1)
    await trio.testing.wait_all_tasks_blocked()
    assert got[2:] == [2]


async def test_a_queue_timeout_costs_the_waiters_it_ends_not_the_whole_line(nursery):
    """The pool's queue timer wakes at each deadline (one per waiter, in
    line order) and ``expire`` ends the waiters due. With queue_depth "auto"
    (max_connections, 10000) a full line must not cost a walk of every
    waiter per 504: 1000 timeouts in a line of 10000 take milliseconds, not
    the seconds (~10 million entries looked at) of a walk each."""
    q = SlotQueue(1)
    assert q.take(object())
    woken: list[int] = []
    joined = 0

    async def waiter() -> None:
        nonlocal joined
        joined += 1
        i = joined  # (its deadline as the pool's: a fixed time after it joins the line)
        if not await q.wait(("waiter", i), float(i)):
            woken.append(i - 1)

    for _ in range(10000):
        nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    cpu = time.process_time()
    for i in range(1000):
        assert q.expire(float(i + 1)) == float(i + 2)
    cpu = time.process_time() - cpu
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(woken) == list(range(1000))
    assert cpu < 0.1, f"{cpu:.2f}s of CPU for 1000 queue timeouts"
    assert q.expire(0.0, everyone=True) == float("inf")  # (the rest, as the timer's end wakes them)
    await trio.testing.wait_all_tasks_blocked()
    assert len(woken) == 10000


async def test_a_deadline_out_of_line_order_still_ends_on_time(nursery):
    """``expire`` stops at the first waiter not due only while the line's
    deadlines come in its order (the pool's); one that does not is still
    ended at its own deadline, and the timer told the earliest left."""
    q = SlotQueue(1)
    assert q.take(object())
    woken: list[str] = []

    async def waiter(name: str, deadline: float) -> None:
        if not await q.wait(name, deadline):
            woken.append(name)

    for name, deadline in (("a", 10.0), ("b", 30.0), ("early", 5.0), ("c", 40.0)):
        nursery.start_soon(waiter, name, deadline)
        await trio.testing.wait_all_tasks_blocked()
    assert q.expire(5.0) == 10.0
    await trio.testing.wait_all_tasks_blocked()
    assert woken == ["early"]
    assert q.expire(10.0) == 30.0
    await trio.testing.wait_all_tasks_blocked()
    assert woken == ["early", "a"]
    assert q.expire(40.0, everyone=True) == float("inf")
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(woken) == ["a", "b", "c", "early"]
