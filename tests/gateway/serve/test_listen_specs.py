"""Each listen socket keeps its entry's flags, through a reload and into the
worker processes (which get fds, not addresses)."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from gateway.config import validate
from gateway.serve.master import read_spec, write_spec
from gateway.serve.process import listen_specs, open_listen_map


async def test_flags_follow_their_socket_and_a_flag_change_keeps_the_socket():
    entries = ["127.0.0.1:0", "127.0.0.2:0 tls proxy_protocol"]
    by_address = await open_listen_map(entries)
    try:
        assert list(by_address) == ["127.0.0.1:0", "127.0.0.2:0"]
        listeners, specs = listen_specs(entries, by_address)
        assert [(s.tls, s.proxy_protocol) for s in specs] == [(False, False), (True, True)]
        assert listeners[1].socket.getsockname()[0] == "127.0.0.2"
        # a reload that drops a flag keeps the bound socket (same address key)
        kept = await open_listen_map(["127.0.0.1:0", "127.0.0.2:0 tls"], keep=by_address)
        assert kept["127.0.0.2:0"] is by_address["127.0.0.2:0"]
        assert [s.proxy_protocol for s in listen_specs(["127.0.0.1:0", "127.0.0.2:0 tls"], kept)[1]] == [False, False]
    finally:
        for ls in by_address.values():
            for listener in ls:
                await trio.aclose_forcefully(listener)


def test_a_worker_spec_carries_each_fds_entry(tmp_path):
    config = validate({"sites": {"a": {"root": str(tmp_path)}}, "server": {"listen": ["127.0.0.1:8443 tls"]}})
    path = write_spec(config, 0, 1, {}, str(tmp_path), [7], 9, "info", listen_entries=["127.0.0.1:8443 tls"])
    assert json.loads(Path(path).read_text())["listen_entries"] == ["127.0.0.1:8443 tls"]
    _, inherited, _ = read_spec(path)
    assert inherited.listen_fds == [7] and inherited.listen_entries == ["127.0.0.1:8443 tls"]
