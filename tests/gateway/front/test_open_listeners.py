"""Binding: every address or none, and the error names the one that failed."""

from __future__ import annotations

import socket

import pytest

from gateway.front.listen import ListenError, listener_url, open_listeners


async def test_an_address_in_use_is_named_and_nothing_stays_bound(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sock = str(tmp_path / "gw.sock")
        with pytest.raises(ListenError) as exc:
            await open_listeners([f"unix:{sock}", f"127.0.0.1:{port}"])
    assert str(exc.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
    assert isinstance(exc.value, OSError) and exc.value.address == f"127.0.0.1:{port}"
    with socket.socket(socket.AF_UNIX) as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(sock)  # the unix listener opened first was closed again


async def test_listeners_are_shown_as_urls(tmp_path):
    listeners = await open_listeners(["127.0.0.1:0", f"unix:{tmp_path}/gw.sock"])
    try:
        urls = [listener_url(listener) for listener in listeners]
    finally:
        for listener in listeners:
            await listener.aclose()
    assert urls[0].startswith("http://127.0.0.1:") and urls[0].rpartition(":")[2].isdigit()
    assert urls[1] == f"unix:{tmp_path}/gw.sock"
