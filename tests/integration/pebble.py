"""Pebble (Let's Encrypt's ACME test server, Debian's ``pebble``) on loopback
for the ACME tests, with ``pebble-challtestsrv`` as its DNS server (every
name is 127.0.0.1), its TLS certificate from a trustme CA.

Ports are fixed (Pebble cannot report a port 0 back), chosen free at random
in 22000-22999 as the house asks.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trustme

PORT_RANGE = (22000, 22999)


def free_ports(count: int, *, udp: int = 0) -> list[int]:
    """``count`` ports free on 127.0.0.1 in PORT_RANGE; the first ``udp`` of
    them free for UDP too. (A race with another user of the range is possible;
    the caller retries.)"""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(*PORT_RANGE)
        if port in chosen:
            continue
        kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if len(chosen) < udp else [])
        try:
            for kind in kinds:
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        chosen.append(port)
    return chosen


@dataclass
class Pebble:
    directory: str
    ca_bundle: str  # trustme CA that signed Pebble's HTTPS certificate
    management: str
    http_port: int
    tls_port: int
    processes: list[trio.Process] = field(default_factory=list)
    log_path: Path = Path()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def orders(self) -> int:
        """Orders Pebble has created (its log line for each)."""
        return len(re.findall(r"Added order ", self.log()))

    def _get(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=self.ca_bundle)
        with urllib.request.urlopen(self.management + path, context=ctx, timeout=10) as answer:  # noqa: S310
            data: bytes = answer.read()
            return data

    def root_pem(self) -> bytes:
        """The root that signs issued chains (management /roots/0)."""
        return self._get("/roots/0")


def _prepare(tmp: Path, validity: int | None) -> tuple[list[int], Path]:
    """Pebble's TLS certificate (from a trustme CA), its ports and its config file."""
    tmp.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp / "pebble-cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "pebble-key.pem"))
    ca.cert_pem.write_to_path(str(tmp / "pebble-ca.pem"))
    ports = free_ports(6, udp=1)
    _, _, listen, mgmt, http_port, tls_port = ports
    config: dict[str, Any] = {"pebble": {
        "listenAddress": f"127.0.0.1:{listen}", "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(tmp / "pebble-cert.pem"), "privateKey": str(tmp / "pebble-key.pem"),
        "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}
    if validity is not None:
        config["pebble"]["certificateValidityPeriod"] = validity
    (tmp / "pebble.json").write_text(json.dumps(config))
    (tmp / "pebble.log").write_bytes(b"")
    return ports, tmp / "pebble.log"


async def start_pebble(tmp: Path, *, validity: int | None = None) -> Pebble:
    """Pebble and its DNS, started; the caller stops them (``stop``)."""
    (dns, dns_mgmt, listen, mgmt, http_port, tls_port), log_path = _prepare(tmp, validity)
    env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"}
    log_file = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    processes = [
        await trio.lowlevel.open_process(
            ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns}",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_mgmt}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        await trio.lowlevel.open_process(
            ["pebble", "-config", str(tmp / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(tmp)),
    ]
    os.close(log_file)
    pebble = Pebble(f"https://127.0.0.1:{listen}/dir", str(tmp / "pebble-ca.pem"), f"https://127.0.0.1:{mgmt}",
                    http_port, tls_port, processes, log_path)
    with trio.fail_after(20):
        while "ACME directory available" not in pebble.log():
            if processes[1].poll() is not None:
                raise RuntimeError("pebble exited:\n" + pebble.log())
            await trio.sleep(0.05)  # nothing to wait on but its log line
    return pebble


async def stop(pebble: Pebble) -> None:
    for proc in pebble.processes:
        if proc.returncode is None:
            proc.terminate()
    with trio.move_on_after(5):
        for proc in pebble.processes:
            await proc.wait()
    for proc in pebble.processes:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
