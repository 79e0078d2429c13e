"""sd_notify's datagram (``serve.notify``), received on a socket of our own."""

from __future__ import annotations

import os
import socket

from gateway.serve.notify import notify, take_address


def test_the_address_is_taken_out_of_the_environment(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    assert take_address() == "/run/systemd/notify"
    assert "NOTIFY_SOCKET" not in os.environ


def test_ready_reaches_the_notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert notify("READY=1\nMAINPID=42", path)
        assert server.recv(4096) == b"READY=1\nMAINPID=42"


def test_abstract_socket_names_start_with_an_at(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(f"\0gateway-test-{id(server)}")
        assert notify("READY=1", f"@gateway-test-{id(server)}")
        assert server.recv(4096) == b"READY=1"


def test_not_under_systemd_nothing_is_sent_and_a_dead_socket_is_a_warning(tmp_path, caplog):
    assert not notify("READY=1", "")
    assert not notify("READY=1", str(tmp_path / "gone.sock"))
    assert len(caplog.records) == 1 and "could not tell systemd" in caplog.records[0].getMessage()
