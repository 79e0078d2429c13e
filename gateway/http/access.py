"""Who may fetch what: ``[[sites.X.access]]`` allow/deny address lists (nginx's
``allow``/``deny``).

Pure: address text in, a yes/no out; no IO.

Policy (the issue's wording, which is nginx's for the usual "allow these;
deny all"):

- An address in ``allow`` passes; otherwise one in ``deny`` gets 403;
  an address in neither passes. So ``allow = ["192.0.2.0/24"]``,
  ``deny = ["all"]`` is "the office only", and ``allow = ["all"]`` on a
  longer prefix opens a part again (``/wp-admin/admin-ajax.php`` under an
  office-only ``/wp-admin/``). Which rule applies to a path is the longest
  prefix's business (``http.prefix``), not this module's.
- Entries are addresses, CIDR networks (IPv4 and IPv6) or ``"all"``, parsed
  by ``config.guard.parse_network`` (which ``gateway check`` runs).
- IPv4-mapped IPv6 is IPv4 on both sides: a client ``::ffff:192.0.2.7`` (a
  dual-stack listener's view of an IPv4 client) is ``192.0.2.7``
  (``realip.parse_ip``), and an entry ``::ffff:192.0.2.0/120`` means
  ``192.0.2.0/24`` (``parse_network``).
- A client that is no IP address (a unix-socket peer, "unix:") matches only
  ``"all"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .realip import IPNetwork, parse_ip


@dataclass(frozen=True, slots=True)
class AddressList:
    """Parsed entries of one ``allow`` or ``deny`` list."""

    networks: tuple[IPNetwork, ...] = ()
    all: bool = False

    @classmethod
    def of(cls, entries: Sequence[IPNetwork | None]) -> AddressList:
        """From ``config.guard.parse_network``'s results (None: "all")."""
        networks = tuple(entry for entry in entries if entry is not None)
        return cls(networks, any(entry is None for entry in entries))

    def __contains__(self, address: str) -> bool:
        if self.all:
            return True
        ip = parse_ip(address)
        if ip is None:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)


@dataclass(frozen=True, slots=True)
class AccessRule:
    """One ``[[sites.X.access]]`` rule's lists."""

    allow: AddressList
    deny: AddressList

    def permits(self, address: str) -> bool:
        """In ``allow``: yes; else in ``deny``: no; else yes."""
        return address in self.allow or address not in self.deny
