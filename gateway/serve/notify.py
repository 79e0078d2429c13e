"""Tell systemd (``Type=notify``) that the gateway serves: sd_notify's protocol,
without libsystemd.

Policy: one datagram ``READY=1`` (with ``MAINPID``) to the unix socket named
by ``$NOTIFY_SOCKET`` once the listen sockets are open and every worker
serves; nothing when the variable is unset (not started by systemd). The
variable is taken out of the environment first (``take_address``), as
sd_notify's ``unset_environment``: php-fpm, built with systemd support, would
otherwise send its own READY=1 before ours. A failure
to send is one warning line, never fatal: systemd then times the start out
and says so. An address starting with ``@`` is in the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def take_address() -> str:
    """``$NOTIFY_SOCKET``, removed from our environment so no child inherits it."""
    return os.environ.pop("NOTIFY_SOCKET", "")


def notify(state: str, address: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd at ``address``; False if
    there is none (not under systemd) or it failed."""
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


def ready(address: str) -> bool:
    """``READY=1`` and our pid (the master's), once serving."""
    return notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving", address)
