"""The sampler's reads on real processes and sockets of this test (Linux)."""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from pathlib import Path

import pytest

from gateway.observe.sampler import WorkerSampler, fastcgi_addresses, read_worker, socket_of
from gateway.observe.waits import Endpoint


def test_socket_of_asks_the_socket_itself(tmp_path: Path):
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    path = str(tmp_path / "db.sock")
    unix_server = socket.socket(socket.AF_UNIX)
    unix_server.bind(path)
    unix_server.listen()
    unix_client = socket.socket(socket.AF_UNIX)
    unix_client.connect(path)
    with server, client, accepted, unix_server, unix_client:
        info = socket_of(os.getpid(), client.fileno())
        assert info is not None and info.peer == f"127.0.0.1:{server.getsockname()[1]}"
        listening = socket_of(os.getpid(), server.fileno())
        assert listening is not None and listening.listening
        peer = socket_of(os.getpid(), unix_client.fileno())
        assert peer is not None and peer.family == "unix" and peer.peer == path and peer.local == ""
        assert socket_of(os.getpid(), 10_000) is None  # no such fd


def test_a_forked_worker_polling_a_socket(tmp_path: Path):
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "worker": waits in poll() on its connection
        try:
            poller = select.poll()
            poller.register(client, select.POLLIN)
            os.write(write, b"x")
            poller.poll(10_000)
        finally:
            os._exit(0)
    try:
        os.read(read, 1)
        port = server.getsockname()[1]
        sampler = WorkerSampler({f"127.0.0.1:{port}": Endpoint("test db", "database")}, frozenset())
        for _ in range(200):  # until the child is in poll() (bounded)
            sample = read_worker(pid)
            if sample is not None and sample.syscall is not None and sample.syscall.number == 7:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the child never blocked in poll()")
        waits = sampler.sample([pid], 1, 0.0)
        assert waits.counts["database"] == 1
        assert waits.targets[0].target == f"127.0.0.1:{port}" and waits.targets[0].name == "test db"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for s in (server, client, accepted):
            s.close()
        os.close(read)
        os.close(write)


def test_fastcgi_addresses():
    assert fastcgi_addresses("unix:/run/php.sock") == frozenset({"/run/php.sock"})
    assert fastcgi_addresses("127.0.0.1:9000") == frozenset({"127.0.0.1:9000"})
    assert fastcgi_addresses("[::1]:9000") == frozenset({"[::1]:9000"})
    assert fastcgi_addresses("php:9000") == frozenset()


def test_master_workers_from_a_pid_file(tmp_path: Path):
    from gateway.observe.sampler import master_workers

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(read, 1)
        os._exit(0)
    try:
        (tmp_path / "fpm.pid").write_text(f"{os.getpid()}\n")
        assert pid in master_workers(str(tmp_path / "fpm.pid"))
        assert master_workers(str(tmp_path / "missing.pid")) == []
    finally:
        os.write(write, b"x")
        os.waitpid(pid, 0)
        os.close(read)
        os.close(write)


def test_off_x86_64_only_the_state_is_read(monkeypatch):
    import gateway.observe.sampler as sampler

    monkeypatch.setattr(sampler, "X86_64", False)
    me = read_worker(os.getpid())  # running: reading its own /proc
    assert me is not None and me.syscall is not None and me.syscall.running
    parent = read_worker(os.getppid())
    assert parent is not None and (parent.state in ("R", "D") or "x86_64 only" in parent.error)
