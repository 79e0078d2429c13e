"""Tell systemd (``Type=notify``) that the gateway serves: sd_notify's protocol,
without libsystemd.

Policy: one datagram ``READY=1`` (with ``MAINPID``) to the unix socket named
by ``$NOTIFY_SOCKET`` once the listen sockets are open and every worker
serves; nothing when the variable is unset (not started by systemd). A failure
to send is one warning line, never fatal: systemd then times the start out
and says so. An address starting with ``@`` is in the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False if not under systemd or it failed."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not tell systemd %r at NOTIFY_SOCKET=%s: %s", state, address.replace("\0", "@"), exc)
        return False
    return True


def ready() -> bool:
    """``READY=1`` and our pid (the master's), once serving."""
    return notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving")
