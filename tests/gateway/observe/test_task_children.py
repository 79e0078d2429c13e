"""The children of a process whatever thread forked them (``task_children``):
trio's ``open_process`` forks from a worker thread, and /proc lists a
child under the thread that forked it (the gateway master's workers were
missing from its CPU for their first 10 s, counted as "other" processes)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import trio

from gateway.metrics import ListenerStats
from gateway.observe.monitor import Monitor, gateway_children
from gateway.observe.sampler import task_children


def test_a_child_forked_by_another_thread_is_found() -> None:
    spawned: list[subprocess.Popen[bytes]] = []
    done = threading.Event()

    def fork_and_stay() -> None:  # as trio's worker thread does, alive after the fork
        spawned.append(subprocess.Popen(["sleep", "30"]))
        done.wait(30)

    thread = threading.Thread(target=fork_and_stay)
    thread.start()
    try:
        while not spawned:  # noqa: ASYNC110 - a plain thread; Popen returns at once
            if not thread.is_alive():
                raise AssertionError("the thread did not start the child")
            thread.join(0.01)
        child = spawned[0].pid
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            assert child not in [int(p) for p in f.read().split()]  # the main thread's list misses it
        assert child in task_children(os.getpid())
        assert child in gateway_children(os.getpid())
    finally:
        done.set()
        thread.join()
        for p in spawned:
            p.kill()
            p.wait()


def test_a_gone_process_has_no_children() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    assert task_children(p.pid) == []


def test_the_gateway_processes_are_listed_again_when_one_is_gone() -> None:
    """A worker's monitor reads the CPU of the master's children each second
    but lists them only now and then (``GATEWAY_LIST_EVERY``), and at once
    when one of them is gone (its replacement is then counted)."""
    first = subprocess.Popen(["sleep", "30"])
    second: subprocess.Popen[bytes] | None = None
    try:
        async def make() -> Monitor:
            return Monitor(ListenerStats(), [], master_pid=os.getpid())  # this process as the master

        monitor = trio.run(make)
        monitor.sample_gateway_cpu(time.monotonic())
        assert first.pid in monitor._gateway_pids
        second = subprocess.Popen(["sleep", "30"])
        monitor.sample_gateway_cpu(time.monotonic())
        assert second.pid not in monitor._gateway_pids  # not listed again: nothing is gone
        first.kill()
        first.wait()
        monitor.sample_gateway_cpu(time.monotonic())
        assert second.pid in monitor._gateway_pids and first.pid not in monitor._gateway_pids
    finally:
        for p in (first, second):
            if p is not None:
                p.kill()
                p.wait()
