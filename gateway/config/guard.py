"""Schema of the site rules that guard a site: ``[[sites.X.rate_limit]]``,
``[[sites.X.access]]`` and ``[[sites.X.basic_auth]]`` (nginx's ``limit_req``,
``allow``/``deny`` and ``auth_basic``).

Rules:
- Each is an array of tables under a site. ``paths`` are URI prefixes (as
  the site's ``deny``), default ``["/"]``: the whole site. For a request the
  rule of a kind with the longest matching prefix applies, and only it
  (``http.prefix``); ``methods`` narrows a rate limit (none: every method).
- A prefix no request path could start with (a query, a %-escape, ``//``,
  a dot segment: rules see the normalised, decoded path) is an error, not a
  rule that silently protects nothing.
- Values are parsed here by the functions ``app.guard`` builds the rules
  with (``parse_rate``, ``parse_network``), so what passes ``gateway check``
  is what ``serve`` runs.
- ``basic_auth``'s ``user_file`` is read and parsed by ``gateway check``, at
  start and at a reload (``app.guard.user_file_problems``, passed as a check
  with the roots' ones: the format is ``http.htpasswd``'s business): missing,
  unreadable, or a line in a format the gateway cannot check is an error
  naming the file and key. ``realm = "off"`` turns authentication off under
  its paths (nginx ``auth_basic off``), e.g. for one public file of a closed
  site; such a rule needs no ``user_file``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

#: IPv4-mapped IPv6 addresses, ::ffff:0:0/96 (RFC 4291 2.5.5.2)
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_METHOD = re.compile(r"^[A-Z]+$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*r/(s|m)\s*$")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_rate(text: str) -> float:
    """``"1r/s"`` -> 1.0, ``"30r/m"`` -> 0.5 (requests per second), as nginx's
    ``rate=``.

    Raises:
        ValueError: a sentence saying what to write.
    """
    m = _RATE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate; write requests per second or minute, like \"1r/s\" or "
                         "\"30r/m\" (more than 0)")
    per_second = float(m.group(1))
    return per_second / 60.0 if m.group(2) == "m" else per_second


def parse_network(text: str) -> IPNetwork | None:
    """An ``allow``/``deny`` entry: None for ``"all"``, else its network
    (an address is a /32 or /128); IPv4-mapped IPv6 ones as IPv4
    (``::ffff:192.0.2.0/120`` is ``192.0.2.0/24``).

    Raises:
        ValueError: a sentence naming the entry (host bits set included:
            ``10.0.0.1/8`` was surely not meant as all of 10/8).
    """
    if text == "all":
        return None
    try:
        if "%" in text:
            raise ValueError("zone id")
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        hint = " (host bits are set: did you mean the network address?)" if "host bits set" in str(exc) else ""
        raise ValueError(f"{text!r} is not \"all\", an address or a CIDR network like \"192.0.2.0/24\" or "
                         f"\"2001:db8::/32\"{hint}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")


def check_rule_prefix(value: str) -> str:
    """A prefix some request path can start with: rules match the
    normalised, decoded path, so one with a query, an escape, ``//`` or a dot
    segment would silently never apply (a rule that protects nothing)."""
    if not value.startswith("/"):
        raise ValueError(f"the prefix {value!r} must start with \"/\"")
    if "?" in value or "#" in value:
        raise ValueError(f"the prefix {value!r} has a query: rules match the path only (nginx locations too)")
    if _ENCODED.search(value):
        raise ValueError(f"the prefix {value!r} has a %-escape: rules match the decoded path; write the character")
    segments = value.split("/")[:-1]  # the last may begin a name: "/." is a prefix of "/.git/"
    if "//" in value or any(seg in (".", "..") for seg in segments) or any(c in value for c in "\0\r\n"):
        raise ValueError(f"the prefix {value!r} is not a normalised path (no //, . or .. segments): "
                         "no request would ever match it")
    return value


def _method(value: str) -> str:
    if not _METHOD.match(value):
        raise ValueError(f"{value!r} is not a method name in capitals, like \"POST\"")
    return value


def _rate(value: str) -> str:
    parse_rate(value)
    return value


def _addresses(value: list[str]) -> list[str]:
    for entry in value:
        parse_network(entry)
    return value


def _realm(value: str) -> str:
    if any(c in value for c in '"\\\r\n\0') or not value.isprintable():
        raise ValueError("the realm is shown in a quoted header value: no quotes, backslashes or control "
                         "characters")
    return value


def _duration(value: Any) -> float:
    from . import parse_duration  # (the package imports this module first)

    return parse_duration(value)


Paths = Annotated[list[Annotated[str, AfterValidator(check_rule_prefix)]], Field(min_length=1)]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitRule(_Rule):
    """``[[sites.X.rate_limit]]`` (nginx ``limit_req``), per client address."""

    paths: Paths = ["/"]
    #: only these methods count (e.g. ["POST"]); empty: all; HEAD counts as GET
    methods: list[Annotated[str, AfterValidator(_method)]] = []
    #: "1r/s" or "30r/m" (nginx rate=)
    rate: Annotated[str, AfterValidator(_rate)]
    #: requests allowed over the rate, delayed to it (nginx burst=)
    burst: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    #: serve the burst at once instead of delaying it (nginx nodelay)
    nodelay: bool = False


class AccessRule(_Rule):
    """``[[sites.X.access]]``: in ``allow`` passes, else in ``deny`` gets 403."""

    paths: Paths = ["/"]
    #: addresses, CIDR networks, "all"
    allow: Annotated[list[str], AfterValidator(_addresses)] = []
    deny: Annotated[list[str], AfterValidator(_addresses)] = []

    @model_validator(mode="after")
    def _says_something(self) -> AccessRule:
        if not self.allow and not self.deny:
            raise ValueError("neither allow nor deny is set: the rule would change nothing")
        return self


class BasicAuthRule(_Rule):
    """``[[sites.X.basic_auth]]`` (nginx ``auth_basic`` + ``auth_basic_user_file``)."""

    paths: Paths = ["/"]
    #: shown by the browser's login prompt; "off": no authentication here
    realm: Annotated[str, AfterValidator(_realm)] = "Restricted"
    #: an htpasswd file (htpasswd -B, -m, -2, -5, -s); relative: to the config dir's parent
    user_file: str = ""
    #: failed logins from one address within failure_window before it gets 429s
    max_failures: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    failure_window: Annotated[float, BeforeValidator(_duration), Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _has_users(self) -> BasicAuthRule:
        if self.realm != "off" and not self.user_file:
            raise ValueError("user_file is required (an htpasswd file), unless realm = \"off\"")
        return self


def resolve_paths(site: dict[str, Any], resolve: Callable[[str], str]) -> None:
    """Make each ``basic_auth`` ``user_file`` of a merged site table absolute (``resolve``)."""
    rules = site.get("basic_auth")
    if not isinstance(rules, list):
        return
    for rule in rules:
        if isinstance(rule, dict) and isinstance(rule.get("user_file"), str) and rule["user_file"]:
            rule["user_file"] = resolve(rule["user_file"])
