"""Configuration: TOML files in ``conf.d/``, read in name order, merged, validated.

Rules:
- Files are read in name order; tables merge recursively, a later file's value
  replaces an earlier one's. So ``conf.d/50-local.toml`` can override one key.
- Everything is validated by pydantic with unknown keys rejected. Each problem
  is one line, ``FILE: KEY: sentence (line N)``: the file that set the key,
  its dotted path, the line found by searching the file's text
  (``messages``), and never pydantic's own wording. All problems of one load
  are reported together.
- What ``serve`` would trip on is an error here, not at start-up: two
  listeners on one address (``[server] listen`` and ``[admin] listen``), a
  site root or alias that does not exist or is not a directory (``load_dir``
  checks the filesystem; ``validate`` alone does not), ``try_files`` entries
  the router would misread and malformed ``[[sites.X.return]]`` /
  ``[[sites.X.rewrite]]`` rules (``rewrite``), a site without ``root`` that
  does not answer every request with a return rule (``root_problems``).
- Sizes are ``"8k"``, ``"64m"``, ``"1g"`` or a byte count; durations are
  ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, compounds like ``"1m30s"`` or
  ``"1h 30m"`` (as nginx), or seconds.
- Addresses (``[server] listen``, ``[admin] listen``, a backend's ``address``
  and ``status``) are checked by the one parser ``serve`` uses
  (``addresses.parse_address``), so an address that passes ``gateway check``
  is one the gateway can listen on or connect to. ``"spawn"`` (a backend the
  gateway runs), ``"off"`` (no admin listener) and ``""`` (a spawned backend's
  own status socket) are the special values.
- ``[sites.X.tls] acme = true`` needs what ACME needs (``acme_problems``):
  real DNS names in ``server_names`` (no ``_``, no wildcard: the
  challenges served here cannot validate one, no IP address), a listener
  flagged ``tls`` to serve the certificate on, a plain one for ``http-01``
  (the CA connects to port 80), an https ``[acme] directory``, and no two
  certificates that would share a state-dir name (their first name).
- Command-line flags (``--listen``, ``--processes``...) are ``Override``s:
  validated by the same schema, and named in errors as a file is.
- Names say the role: ``[server] processes`` are gateway processes, a
  backend's ``pool_size`` its FastCGI connections (pm.max_children when
  spawned); what only concerns running php-fpm is in ``[backends.X.php_fpm]``.
  Old spellings (``workers``, flat ``user``...) still work, each with one
  warning line naming the file and the new key (``upgrade``).
- Every default lives here, once: the runtime settings (``ConnectionSettings``,
  ``PhpSettings``, the pool) are built from these models by ``from_config``
  constructors and carry no defaults of their own.
- Defaults follow nginx (+ php-fpm) where it has one, except where nginx's
  default is a known trap for WordPress; those are marked ``TRAP`` below and
  listed in the README.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)

from .addresses import Address, UpstreamAddress, parse_address, parse_listen, parse_upstream
from .cache import CacheConfig
from .guard import AccessRule, BasicAuthRule, RateLimitRule, check_rule_prefix, resolve_paths
from .messages import describe, find_line, format_problem
from .responses import Alias, ErrorPages, HeaderRules
from .rewrite import ReturnRule, RewriteRule, check_try_files

log = logging.getLogger(__name__)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)b?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
#: One part of a compound duration, "1m30s" or "1h 30m" (as nginx writes them).
_DURATION_PART_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Any) -> int:
    """``"8k"`` -> 8192. Integers pass through."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '8k', '64m', '1g'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size; write bytes or a string like '8k', '64m', '1g'")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    """``"30s"`` -> 30.0, ``"500ms"`` -> 0.5, ``"1m30s"`` -> 90.0. Numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is seconds or a string like '500ms', '30s', '5m'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = str(value)
    m = _DURATION_RE.match(text)
    if m:
        unit = m.group(2).lower() if m.group(2) else None
        return float(m.group(1)) * _DURATION_UNITS[unit]
    parts = list(_DURATION_PART_RE.finditer(text))
    if parts and "".join(p.group(0) for p in parts) == text:
        return sum(float(p.group(1)) * _DURATION_UNITS[p.group(2).lower()] for p in parts)
    raise ValueError(f"{value!r} is not a duration; write seconds or a string like '500ms', '30s', '5m', '1m30s'")


def _address(role: str, *special: str) -> AfterValidator:
    """A validator: the text is one of ``special`` or parses as an address
    (``ValueError`` naming ``role`` if not); it is kept as written."""
    also = "".join(f', or "{word}"' for word in special if word)

    def check(value: str) -> str:
        if value not in special:
            try:
                parse_address(value, role=role)
            except ValueError as exc:
                raise ValueError(f"{exc}{also}") from None
        return value

    return AfterValidator(check)


def _count_or_auto(least: int, most: int | None = None) -> PlainValidator:
    """A validator for a whole number in [least, most] or "auto", with one
    error message (a plain union reports one per member)."""
    bounds = f"from {least} to {most}" if most is not None else f"{least} or more"

    def check(value: Any) -> int | Literal["auto"]:
        if value == "auto":
            return "auto"
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and least <= value <= (most or value):
            return value
        raise ValueError(f'{value!r} is neither a whole number {bounds} nor "auto"')

    return PlainValidator(check, json_schema_input_type=int | str)


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


#: "ADDRESS [tls] [proxy_protocol] [reuseport]" (``addresses.parse_listen``), kept as written.
ListenAddress = Annotated[str, AfterValidator(_check_listen)]
#: A URI prefix a request path can start with (``guard.check_rule_prefix``).
RulePrefix = Annotated[str, AfterValidator(check_rule_prefix)]


def check_network(value: str) -> str:
    """A trusted proxy: an address, a CIDR network, or "unix:" (peers on unix
    sockets), as nginx's ``set_real_ip_from``; host bits set in a network are
    an error (``10.0.0.1/8`` was surely not meant as all of 10/8)."""
    if value == "unix:":
        return value
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        hint = " (host bits are set: did you mean the network address?)" if "host bits set" in str(exc) else ""
        raise ValueError(f"{value!r} is not an address or a CIDR network like \"10.0.0.0/8\"{hint}") from None
    return value


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def check_header_name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    #: Started as root, the gateway binds its sockets, opens its logs and starts
    #: php-fpm, then serves as this user (nginx ``user``). Empty: www-data when
    #: started as root; "root" keeps root. Ignored when not started as root.
    user: str = ""
    #: The group it then runs as. Empty: the user's primary group.
    group: str = ""
    #: Addresses to listen on: "127.0.0.1:8080", "[::1]:8080", ":8080" (all), "unix:/path",
    #: each optionally followed by flags, as nginx: "0.0.0.0:443 tls" (TLS, with
    #: the certificate of each site's [sites.X.tls]), "0.0.0.0:80 proxy_protocol"
    #: (a PROXY protocol v1/v2 header first, from trusted_proxies only).
    listen: list[ListenAddress] = ["127.0.0.1:8080"]
    #: Peers whose forwarded client address is believed (nginx set_real_ip_from):
    #: addresses, CIDR networks, or "unix:" for peers on unix sockets. Empty:
    #: nobody's; REMOTE_ADDR is always the TCP peer.
    trusted_proxies: list[Annotated[str, AfterValidator(check_network)]] = []
    #: Where a trusted proxy puts the client's address: "X-Forwarded-For" (the
    #: rightmost address not in trusted_proxies, as nginx's real_ip_recursive
    #: on), "Forwarded" (RFC 7239 for=), or "X-Real-IP". A trusted peer's
    #: X-Forwarded-Proto: https also makes the request HTTPS for PHP.
    real_ip_header: Annotated[str, AfterValidator(check_header_name)] = "X-Forwarded-For"
    #: Encodings offered to clients for text responses (html, css, js, json,
    #: xml, svg, plain), in the server's order of preference; [] turns
    #: compression off.
    compression: list[Literal["br", "gzip"]] = ["br", "gzip"]
    #: Responses smaller than this are sent as they are (Caddy: 512).
    compress_min_size: Size = 512
    #: Value of the Server header and of SERVER_SOFTWARE (nginx: server_tokens).
    server_software: str = "gateway"
    #: Where the gateway writes runtime files (php-fpm pool configs, sockets).
    #: Empty: a fresh directory under the system temp dir.
    runtime_dir: str = ""
    #: Where request bodies and PHP responses larger than the memory thresholds spool.
    temp_dir: str = ""
    #: Access log: "-" is standard output, "off" disables it, else a file path
    #: (reopened on SIGUSR1, after logrotate's mv).
    access_log: str = "-"
    #: Error log (the gateway's own lines, and a spawned php-fpm's): "-" is
    #: standard error, else a file path (reopened on SIGUSR1).
    error_log: str = "-"
    #: The master's pid is written here at start and removed at stop (nginx
    #: ``pid``); ``gateway reload`` and ``gateway reopen`` read it. Empty: none.
    pid_file: str = ""
    #: "combined" (nginx's format plus timings) or "json" (one object per line).
    access_log_format: Literal["combined", "json"] = "combined"
    #: Add a Server-Timing header (queue;dur=…, php;dur=…) to PHP responses.
    server_timing: bool = False
    #: Gateway processes that serve connections (nginx worker_processes); they
    #: share the listen sockets. "auto": one per core. Each PHP backend's
    #: pool_size is split between them, so php-fpm never sees more connections
    #: than it has workers: there are never more processes than the smallest
    #: backend's pool_size. 1: everything in one process. (Was ``workers``.)
    processes: Annotated[int | Literal["auto"], _count_or_auto(1, 256)] = "auto"
    #: HTTP/2 on ``tls`` listeners: ALPN offers ``h2`` before ``http/1.1``
    #: (nginx ``http2 on``). false: HTTP/1.1 only.
    http2: bool = True
    #: HTTP/2 without TLS on plain listeners, for clients that start with the
    #: HTTP/2 preface (prior knowledge: ``curl --http2-prior-knowledge``, a
    #: front proxy speaking h2c). Off by default: browsers never use it.
    http2_cleartext: bool = False


class AdminConfig(_Model):
    #: Where /metrics and /status are served; "off" disables the admin listener.
    #: Never put it on a public address: it is not authenticated.
    listen: Annotated[str, _address("admin listen address", "off")] = "127.0.0.1:9180"


class TimeoutsConfig(_Model):
    client_header: Duration = 60.0  # nginx client_header_timeout
    client_body: Duration = 60.0  # nginx client_body_timeout: between two reads
    #: After 10 s, a request body must arrive at this average rate (bytes/s) or
    #: get 408; "0" turns it off (nginx has no such limit).
    client_body_min_rate: Size = 1024
    keepalive: Duration = 75.0  # nginx keepalive_timeout
    send: Duration = 60.0  # nginx send_timeout: between two writes
    graceful: Duration = 10.0  # shutdown: how long in-flight requests may finish
    #: A switched connection (WebSocket...) with no byte either way for this
    #: long is closed (nginx proxy_read_timeout on an upgraded connection).
    tunnel_idle: Duration = 60.0
    #: A TLS handshake (and a PROXY protocol header before it) must be done in this time.
    tls_handshake: Duration = 10.0


class LimitsConfig(_Model):
    #: TRAP: nginx's client_max_body_size is 1m, which breaks WordPress media
    #: uploads; we default to 64m.
    client_max_body_size: Size = 64 * 1024 * 1024
    #: Request line + headers (nginx: large_client_header_buffers 4 8k).
    max_header_size: Size = 32 * 1024
    #: Longest request target; longer gets 414 (nginx: one 8k buffer).
    max_uri_size: Size = 8 * 1024
    #: Most request header lines; more gets 431 (nginx has no count limit).
    max_header_count: Annotated[int, Field(ge=1)] = 100
    #: Request bodies up to this stay in memory, larger ones go to a temp file
    #: (nginx: client_body_buffer_size 16k).
    body_buffer_size: Size = 64 * 1024
    #: Open client connections; at the limit the gateway stops accepting (new
    #: clients wait in the kernel's backlog) and keeps serving. Capped below
    #: the open-files limit, which is raised to its hard maximum at start.
    max_connections: Annotated[int, Field(ge=1)] = 10000
    #: Open connections per client address; more get 503 and are closed. 0: off
    #: (nginx limit_conn).
    max_connections_per_ip: Annotated[int, Field(ge=0)] = 0
    #: Requests served on one keep-alive connection (nginx keepalive_requests).
    keepalive_requests: Annotated[int, Field(ge=1)] = 1000


class PhpFpmConfig(_Model):
    """How the gateway runs php-fpm for a backend whose ``address`` is "spawn"
    (``[backends.X.php_fpm]``); nothing here concerns the FastCGI connections."""

    #: php-fpm binary; empty: php-fpm8.2, then php-fpm on PATH and in /usr/sbin.
    binary: str = ""
    #: Unix user the workers run as when the gateway starts as root. Empty: the
    #: gateway's ``[server] user`` (www-data when that is root). Never root
    #: unless written here as "root".
    user: str = ""
    #: php-fpm pm.max_requests (0: never recycle, php-fpm's default). A busy
    #: pool recycling every few hundred requests spends its time forking.
    max_requests: Annotated[int, Field(ge=0)] = 0
    #: php-fpm request_terminate_timeout (0: off). An idle kept-alive
    #: connection counts as a running request for it.
    request_terminate_timeout: Duration = 0.0
    #: Extra php.ini values for the pool, as php_admin_value.
    php_admin_values: dict[str, str] = {}
    #: php-fpm request_slowlog_timeout: a request still running after this
    #: long has its PHP backtrace written to the pool's slowlog, which the
    #: diagnosis reads ("mysqli_query from wp-includes/class-wpdb.php"). 0: off.
    #: php-fpm counts whole seconds.
    slowlog_timeout: Duration = 2.0


def _check_upstream(value: str) -> str:
    """Any backend address form (a URL too); whether the backend's type allows
    it is ``BackendConfig``'s check, which knows the type."""
    if value == "spawn":
        raise ValueError('"spawn" goes in address, alone: a spawned php-fpm is one address')
    parse_upstream(value, http=True)
    return value


def _spawn_or_upstream(value: str) -> str:
    if value != "spawn":
        try:
            _check_upstream(value)
        except ValueError as exc:
            raise ValueError(f'{exc}, or "spawn"') from None
    return value


#: What ``Host`` an HTTP backend may be sent instead of the client's: host[:port].
_UPSTREAM_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=]+)(?::[0-9]{1,5})?$")


def _check_upstream_host(value: str) -> str:
    if value and not _UPSTREAM_HOST.match(value):
        raise ValueError(f"{value!r} is not a host name with an optional port, like \"app.internal:8080\"")
    return value


class HealthConfig(_Model):
    """``[backends.X.health]``: when an address of the backend is taken out
    of rotation and when it comes back.

    Passive (nginx ``max_fails``/``fail_timeout``): ``max_fails`` failures
    (connect errors and timeouts, read timeouts, fresh connections closed
    unanswered) of one address within ``fail_timeout`` take it out of rotation
    for ``fail_timeout``; then it is tried again. A backend with one address
    is never taken out (there is nowhere else to go). Active, for a group:
    every ``interval`` each address is checked within ``timeout``: an HTTP
    backend's by GET ``path`` (none without a path), a FastCGI backend's by a
    connect (not php-fpm's ping.path: a worker answers it, and the gateway's
    kept-alive connections may pin them all); ``fails`` failed checks in a row
    take it out, ``passes`` answered ones bring it back."""

    #: Seconds between two active checks of one address.
    interval: Duration = 5.0
    #: An active check not answered within this has failed.
    timeout: Duration = 2.0
    #: HTTP: the path active checks GET (a 2xx/3xx passes). Empty: no active
    #: checks of an HTTP backend. (FastCGI addresses are checked by a connect.)
    path: str = ""
    #: Failed active checks in a row that mark an address down.
    fails: Annotated[int, Field(ge=1)] = 1
    #: Answered active checks in a row that bring it back.
    passes: Annotated[int, Field(ge=1)] = 1
    #: Connect errors or timeouts within fail_timeout that mark an address
    #: down (nginx max_fails); 0: never.
    max_fails: Annotated[int, Field(ge=0)] = 1
    #: The window for max_fails and how long a failed address stays down
    #: (nginx fail_timeout).
    fail_timeout: Duration = 10.0

    @model_validator(mode="after")
    def _path_is_a_path(self) -> HealthConfig:
        if self.path and not self.path.startswith("/"):
            raise ValueError(f"path {self.path!r} must start with \"/\"")
        if self.path and any(c in self.path for c in " \r\n\t#"):
            raise ValueError(f"path {self.path!r} contains a space, control character or #")
        return self


#: Keys that only mean something for a FastCGI backend (php-fpm).
FASTCGI_ONLY_KEYS = ("status", "status_path", "php_fpm")


class BackendConfig(_Model):
    """A backend: a PHP pool (``type = "fastcgi"``) or an HTTP application
    (``type = "http"``), at one ``address`` or several ``addresses``; the pool
    of connections to each address and the one queue in front of them."""

    #: "fastcgi" (php-fpm) or "http" (an HTTP/1.1 application server).
    type: Literal["fastcgi", "http"] = "fastcgi"
    #: "spawn": the gateway runs php-fpm itself; else "unix:/path.sock" or
    #: "host:port" (an HTTP backend's may be a URL, as in ``addresses``).
    address: Annotated[str, AfterValidator(_spawn_or_upstream)] = "spawn"
    #: Several addresses of one backend, balanced (``balance``), each with its
    #: own pool_size connections; instead of ``address``. An HTTP backend's may
    #: be URLs: "http://10.0.0.2:8080", "https://api.internal" (certificate verified).
    addresses: list[Annotated[str, AfterValidator(_check_upstream)]] = []
    #: Which address a request goes to: "least_busy" (most free connections),
    #: "round_robin", or "ip_hash" (by client address, so a client sticks to one).
    balance: Literal["least_busy", "round_robin", "ip_hash"] = "least_busy"
    #: HTTP only: the Host header sent to the backend; empty: the client's.
    upstream_host: Annotated[str, AfterValidator(_check_upstream_host)] = ""
    #: HTTP only: PEM CA certificates that https:// addresses' certificates
    #: are verified against; empty: the system's (they are always verified).
    ca_bundle: str = ""
    #: When an address is taken out of rotation, and brought back.
    health: HealthConfig = HealthConfig()
    #: Live connections to each address of this backend. For php-fpm each
    #: kept-alive connection pins one worker, so this must not exceed that
    #: host's pm.max_children. When spawned, php-fpm gets pm.max_children =
    #: pool_size. (Was ``workers``.)
    pool_size: Annotated[int, Field(ge=1, le=4096)] = 4
    #: Requests allowed to wait for a connection (in each gateway process); one
    #: more gets 503. "auto": as many as the process may have connections
    #: (limits.max_connections), so a burst is queued, not refused, and
    #: queue_timeout bounds the wait.
    queue_depth: Annotated[int | Literal["auto"], _count_or_auto(0)] = "auto"
    #: How long a request may wait in the queue before 504.
    queue_timeout: Duration = 60.0
    connect_timeout: Duration = 5.0  # nginx fastcgi_connect_timeout is 60s
    #: Between two reads from PHP (nginx fastcgi_read_timeout).
    read_timeout: Duration = 60.0
    #: Idle kept-alive connections are closed after this (a php-fpm worker is
    #: pinned while one is open; see php_fpm.request_terminate_timeout).
    idle_timeout: Duration = 10.0
    #: Largest CGI header block PHP may send (nginx fastcgi_buffer_size); past it, 502.
    max_response_header_size: Size = 64 * 1024
    #: PHP output up to this size is held in memory, larger in a temp file.
    response_buffer_size: Size = 1024 * 1024
    #: The temp file may grow to this; past it the rest of the response passes
    #: through at the client's pace, holding the worker (nginx
    #: fastcgi_max_temp_file_size 1024m).
    max_temp_file_size: Size = 1024 * 1024 * 1024
    #: nginx fastcgi_ignore_client_abort: let PHP finish when the client has gone.
    ignore_client_abort: bool = False
    #: php-fpm's status endpoint for an external backend: "unix:/path" or
    #: "host:port" (its pm.status_listen, or its listen address). A spawned
    #: php-fpm's separate status socket is used automatically.
    status: Annotated[str, _address("status address", "")] = ""
    #: php-fpm's pm.status_path.
    status_path: str = "/fpm-status"
    #: Only when spawned: how php-fpm is run.
    php_fpm: PhpFpmConfig = PhpFpmConfig()

    def queue_limit(self, max_connections: int) -> int:
        """``queue_depth`` as a number: "auto" is the process's max_connections."""
        return max_connections if self.queue_depth == "auto" else self.queue_depth

    @property
    def spawned(self) -> bool:
        """Does the gateway run this backend's php-fpm itself?"""
        return self.type == "fastcgi" and not self.addresses and self.address == "spawn"

    def upstreams(self) -> list[UpstreamAddress]:
        """The addresses to connect to, parsed (not for a spawned backend, whose
        address is known once php-fpm runs)."""
        return [parse_upstream(text, http=self.type == "http") for text in (self.addresses or [self.address])]

    @model_validator(mode="after")
    def _addresses_fit_the_type(self) -> BackendConfig:
        http = self.type == "http"
        if http and not self.addresses and self.address == "spawn":
            raise ValueError('type = "http" needs addresses = ["HOST:PORT", ...] (only php-fpm can be spawned)')
        for text in self.addresses:
            parse_upstream(text, http=http)  # a URL on a FastCGI backend
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError("addresses lists an address twice")
        if http:
            given = [key for key in FASTCGI_ONLY_KEYS if key in self.model_fields_set]
            if given:
                raise ValueError(f"{', '.join(given)}: only for php-fpm (type = \"fastcgi\"), not an HTTP backend")
        elif self.health.path:
            raise ValueError("health.path is for type = \"http\" backends: php-fpm hosts are checked by a connect "
                             "(php-fpm answers its ping.path from a worker, which the gateway's kept-alive connections "
                             "may all pin)")
        elif self.upstream_host or self.ca_bundle:
            key = "upstream_host" if self.upstream_host else "ca_bundle"
            raise ValueError(f'{key} is for type = "http" backends, not php-fpm')
        return self

    @model_validator(mode="after")
    def _idle_before_terminate(self) -> BackendConfig:
        rtt = self.php_fpm.request_terminate_timeout
        if rtt and self.idle_timeout >= rtt:
            raise ValueError(
                f"idle_timeout ({self.idle_timeout:g}s) must be shorter than php_fpm.request_terminate_timeout "
                f"({rtt:g}s): php-fpm kills a worker whose kept-alive connection stays idle that long"
            )
        return self


class SiteTlsConfig(_Model):
    """``[sites.X.tls]``: where the site's certificate comes from; exactly one
    of ``cert`` + ``key``, ``acme`` or ``internal``."""

    #: PEM certificate file, the chain after the leaf (nginx ssl_certificate).
    cert: str = ""
    #: PEM private key file (nginx ssl_certificate_key).
    key: str = ""
    #: Obtain and renew the certificate from the [acme] directory (Let's Encrypt
    #: by default) for the site's server_names.
    acme: bool = False
    #: A certificate from the gateway's own local CA, kept in the state dir
    #: (Caddy's "tls internal", mkcert): for development and intranets.
    internal: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> SiteTlsConfig:
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert and key go together: give both PEM files")
        sources = [name for name, on in (("cert", bool(self.cert)), ("acme", self.acme),
                                         ("internal", self.internal)) if on]
        if len(sources) != 1:
            raise ValueError("give exactly one of cert + key, acme = true or internal = true"
                             + (f" (got {' and '.join(sources)})" if sources else ""))
        return self


class AcmeConfig(_Model):
    """``[acme]``: how certificates for ``[sites.X.tls] acme = true`` are obtained (RFC 8555)."""

    #: The ACME server's directory URL (default: Let's Encrypt production).
    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    #: Contact address given to the CA (expiry notices); may be empty.
    email: str = ""
    #: An extra CA bundle (PEM) to trust when talking to the ACME server (a test server's).
    ca_bundle: str = ""
    #: Where the ACME account, obtained certificates and the internal CA are kept.
    #: Empty: /var/lib/gateway when run as root, else $XDG_DATA_HOME/gateway
    #: (~/.local/share/gateway).
    state_dir: str = ""
    #: "http-01" (answered on a plain listener on port 80) or "tls-alpn-01"
    #: (answered on a tls listener on port 443).
    challenge: Literal["http-01", "tls-alpn-01"] = "http-01"

    def state_path(self, euid: int | None = None) -> str:
        """``state_dir``, or its default for a process running as ``euid``."""
        if self.state_dir:
            return self.state_dir
        if (os.geteuid() if euid is None else euid) == 0:
            return "/var/lib/gateway"
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return os.path.join(data, "gateway")


class SiteConfig(_Model):
    # "return" is a Python keyword: the field is return_, written and dumped as "return"
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    #: Host names: exact ("example.com"), wildcard ("*.example.com"), or "_" for none.
    server_names: list[str] = []
    #: The site for requests whose Host matches no other site.
    default: bool = False
    #: Required (``root_problems``) unless a return rule answers every request.
    root: str = ""
    index: list[str] = ["index.php", "index.html", "index.htm"]
    #: Name of a [backends.X] table; empty: a static-only site.
    php: str = ""
    #: Name of a type = "http" [backends.X]: every request that is not for a
    #: static file of the root goes there (nginx try_files $uri @proxy).
    proxy: str = ""
    #: URI prefix -> a type = "http" backend: requests under the prefix go
    #: there whatever the root holds (nginx "location /api/ { proxy_pass ...; }"),
    #: the target unchanged. The longest prefix wins.
    routes: dict[str, str] = {}
    #: nginx try_files: files (or "dir/") to look for, then one fallback,
    #: "/index.php?$args" or "=404" (``rewrite.check_try_files`` says exactly
    #: what is supported).
    #: Default for a PHP site: the front controller, as WordPress needs.
    try_files: Annotated[list[str] | None, AfterValidator(check_try_files)] = None
    #: "follow": follow symlinks like nginx; "within_root": refuse those whose
    #: target leaves the root (nginx disable_symlinks if_not_owner-like).
    symlinks: Literal["follow", "within_root"] = "follow"
    #: Paths under which PHP never runs (e.g. "/wp-content/uploads/"); like
    #: every rule prefix, one a normalised, decoded request path can start with.
    no_php_under: list[RulePrefix] = []
    #: URI prefixes whose PHP output is streamed, not buffered (long polls,
    #: downloads generated on the fly); the PHP worker is held while it streams.
    unbuffered: list[str] = []
    #: URI prefixes (or exact paths) answered 403, e.g. "/wp-config.php";
    #: checked as rule prefixes (no query, %-escape, // or dot segment).
    deny: list[RulePrefix] = []
    #: Serve backup and editor copies ("wp-config.php~", "x.php.bak", "#x.php#",
    #: "x.orig", "x.save", "x.swp"...) as static files. Off: they are a 403,
    #: since a copy of a PHP file is its source (nginx serves them).
    serve_backup_files: bool = False
    #: URI prefix -> directory, as nginx's "location /p/ { alias /dir/; }"
    #: (e.g. Debian's WordPress keeps /wp-content/ in /var/lib/wordpress/wp-content/);
    #: or a table { path = DIR, internal = true } (``responses.AliasConfig``).
    aliases: dict[str, Alias] = {}
    #: Extra FastCGI params sent to PHP for this site (nginx fastcgi_param).
    #: They override the computed ones; a client can never set these.
    params: dict[str, str] = {}
    #: Cache lifetime for static files with these extensions (nginx "expires"):
    #: Cache-Control: max-age=N and Expires. 0 turns it off.
    static_max_age: Duration = 0.0
    #: HTTPS for this site on listeners flagged "tls".
    tls: SiteTlsConfig | None = None
    #: Answer plain-HTTP requests with a 308 to the same URL over HTTPS (the
    #: ACME HTTP-01 challenge path excepted).
    redirect_to_https: bool = False
    #: Response header rules ([[sites.X.headers]]), or the table form: set on
    #: every response, e.g. "Strict-Transport-Security" = "max-age=31536000"
    #: (``responses.HeaderRule``).
    headers: HeaderRules = []
    #: Custom error pages (nginx error_page): status -> a URI of the site.
    error_pages: ErrorPages = {}
    #: Error pages for PHP's and proxied backends' error responses too
    #: (nginx fastcgi_intercept_errors / proxy_intercept_errors).
    intercept_errors: bool = False
    #: Serve "x.css.br" / "x.css.gz" beside "x.css" to clients that accept
    #: them (nginx gzip_static, Caddy precompressed).
    precompressed: bool = False
    #: [[sites.X.return]]: nginx "return CODE [to]" by prefix or regex (config.rewrite, http.rewrite).
    return_: list[ReturnRule] = Field(default=[], alias="return")
    #: [[sites.X.rewrite]]: internal rewrites before routing, re-matched, loop-guarded.
    rewrite: list[RewriteRule] = []
    #: [[sites.X.rate_limit]], [[sites.X.access]], [[sites.X.basic_auth]] (``config.guard``)
    rate_limit: list[RateLimitRule] = []
    access: list[AccessRule] = []
    basic_auth: list[BasicAuthRule] = []
    static_cache_extensions: list[str] = [
        "css", "js", "mjs", "png", "jpg", "jpeg", "gif", "webp", "avif", "svg", "ico", "woff", "woff2", "ttf",
        "eot", "otf", "mp4", "webm", "mp3", "ogg", "pdf",
    ]
    #: The page cache of this site's PHP responses (``config.cache``).
    cache: CacheConfig = CacheConfig()

    def effective_try_files(self) -> list[str]:
        if self.try_files is not None:
            return self.try_files
        if self.php:
            return ["$uri", "$uri/", "/index.php?$args"]
        return ["$uri", "$uri/", "=404"]

    @model_validator(mode="after")
    def _routes_are_prefixes(self) -> SiteConfig:
        for prefix in self.routes:
            if not prefix.startswith("/"):
                raise ValueError(f"routes: the prefix {prefix!r} must start with \"/\"")
        if self.php and self.proxy:
            raise ValueError(f"php ({self.php!r}) and proxy ({self.proxy!r}): a site's fallback is one of them; "
                             "send a part of the site to the other with [sites.X.routes]")
        if self.proxy and self.try_files is not None:
            raise ValueError("try_files and proxy: a proxy site serves the files of its root and sends everything "
                             "else to its backend; remove try_files")
        return self


_ENDPOINT = re.compile(r"^(?:unix:/.+|\[[0-9A-Fa-f:.]+\]:\d{1,5}|[0-9.]+:\d{1,5})$")


def endpoint_key(address: str) -> str:
    """A ``[diagnosis.endpoints]`` key as the diagnosis compares it: "ip:port"
    ("[v6]:port", IPv6 compressed) or "unix:/path"."""
    if not _ENDPOINT.match(address):
        raise ValueError(f"{address!r} is not \"ip:port\", \"[ipv6]:port\" or \"unix:/path\"")
    if address.startswith("unix:"):
        return address
    host, port = address.rsplit(":", 1)
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"{address!r}: {host!r} is not an IP address") from None
    if not 0 < int(port) < 65536:
        raise ValueError(f"{address!r}: port {port} is out of range")
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class EndpointConfig(_Model):
    """``[diagnosis.endpoints] "10.0.0.5:3306" = { name = "primary db", kind = "database" }``:
    what a PHP worker waiting on that address waits on, when its port does not say it."""

    #: Shown in the verdict's reason beside the address.
    name: str = ""
    kind: Literal["database", "cache", "http", "socket", "disk", "lock", "cpu"]


class DiagnosisConfig(_Model):
    """``[diagnosis]``: what the verdict may read to say what PHP waits on."""

    #: Read the busy php-fpm workers' /proc files (system call, state, sockets)
    #: once a second: the spawned php-fpm's, or those php-fpm's status page or
    #: ``php_fpm_pid_file`` names. Needs root or php-fpm's workers' user.
    sample_workers: bool = True
    #: The pid file of a php-fpm master on this host that the gateway did not
    #: spawn and whose status page it does not read: its workers are sampled
    #: for the FastCGI backends that are not spawned. Empty: none.
    php_fpm_pid_file: str = ""
    #: Addresses ("ip:port", "[ipv6]:port", "unix:/path") and what they are.
    endpoints: dict[Annotated[str, AfterValidator(endpoint_key)], EndpointConfig] = {}


class Config(_Model):
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    limits: LimitsConfig = LimitsConfig()
    acme: AcmeConfig = AcmeConfig()
    backends: dict[str, BackendConfig] = {}
    sites: dict[str, SiteConfig] = {}
    diagnosis: DiagnosisConfig = DiagnosisConfig()

    # Which backend a site names, and which site is the default, are checked
    # by ``validate`` (``reference_problems``), so each error names its key.


#: A check of a valid configuration beyond the schema: (dotted key, message) per problem.
Check = Callable[["Config"], list[tuple[tuple[str, ...], str]]]


class ConfigError(Exception):
    """The configuration is wrong; the message says where and what to do."""


# -- old spellings ---------------------------------------------------------------
#: Keys that were renamed or moved: still read, with one warning line each
#: naming the file and the new key. Upgraded file by file, before the merge, so
#: a later file's old spelling still overrides an earlier file's new one.
SERVER_RENAMED: dict[str, tuple[str, ...]] = {"workers": ("processes",)}
BACKEND_RENAMED: dict[str, tuple[str, ...]] = {
    "workers": ("pool_size",),
    # spawn-only keys moved to the [backends.X.php_fpm] table
    "user": ("php_fpm", "user"),
    "max_requests": ("php_fpm", "max_requests"),
    "request_terminate_timeout": ("php_fpm", "request_terminate_timeout"),
    "php_admin_values": ("php_fpm", "php_admin_values"),
}


def upgrade(data: dict[str, Any], source: str) -> list[str]:
    """Rewrite one file's (or one caller's) old spellings to today's, in place.

    Returns one deprecation line per old key, ``"FILE: OLD.KEY: deprecated,
    write NEW.KEY instead"``. An old and a new spelling of one key in the same
    ``source`` is a ``ConfigError``: which one was meant cannot be known.
    """
    notes: list[str] = []
    server = data.get("server")
    if isinstance(server, dict):
        for old, new in SERVER_RENAMED.items():
            _move(server, old, new, "server", source, notes)
    backends = data.get("backends")
    if isinstance(backends, dict):
        for name, backend in backends.items():
            if not isinstance(backend, dict):
                continue
            where = f"backends.{name}"
            if isinstance(backend.get("php_fpm"), str):  # was the binary; now the table's name
                _move(backend, "php_fpm", ("php_fpm", "binary"), where, source, notes)
            for old, new in BACKEND_RENAMED.items():
                _move(backend, old, new, where, source, notes)
    return notes


def _move(table: dict[str, Any], old: str, new: tuple[str, ...], where: str, source: str, notes: list[str]) -> None:
    if old not in table:
        return
    old_key, new_key = f"{where}.{old}", ".".join((where, *new))
    value = table.pop(old)
    target = table
    for part in new[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: {where}.{part}: must be a table to hold {new_key}")
    if new[-1] in target:
        raise ConfigError(f"{source}: {old_key}: also set as {new_key}; keep only {new_key}")
    target[new[-1]] = value
    notes.append(f"{source}: {old_key}: deprecated, write {new_key} instead (the old name still works)")


# -- loading ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Override:
    """One value set outside the files (a command-line flag): ``source`` names
    it in errors the way a file name does, e.g. ``"--listen"``."""

    source: str
    key: tuple[str, ...]
    value: Any


def _merge(into: dict[str, Any], new: dict[str, Any], origin: dict[tuple[str, ...], str], fname: str,
           prefix: tuple[str, ...] = ()) -> None:
    for key, value in new.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, fname, path)
        else:
            into[key] = value
        origin[path] = fname
        if isinstance(value, dict):
            for sub in _walk(value, path):
                origin[sub] = fname


def _walk(d: dict[str, Any], prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _walk(v, (*prefix, k))
    return out


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def resolve(path: str) -> str:
        return path if os.path.isabs(path) else str((base / path).resolve())

    acme = data.get("acme")
    if isinstance(acme, dict):
        for key in ("ca_bundle", "state_dir"):
            if isinstance(acme.get(key), str) and acme[key]:
                acme[key] = resolve(acme[key])
    for backend in data.get("backends", {}).values():
        if isinstance(backend, dict) and isinstance(backend.get("ca_bundle"), str) and backend["ca_bundle"]:
            backend["ca_bundle"] = resolve(backend["ca_bundle"])
    for site in data.get("sites", {}).values():
        if not isinstance(site, dict):
            continue
        if isinstance(site.get("root"), str):
            site["root"] = resolve(site["root"])
        tls = site.get("tls")
        if isinstance(tls, dict):
            for key in ("cert", "key"):
                if isinstance(tls.get(key), str) and tls[key]:
                    tls[key] = resolve(tls[key])
        if isinstance(site.get("aliases"), dict):
            for k, v in site["aliases"].items():
                if isinstance(v, str):
                    site["aliases"][k] = resolve(v)
                elif isinstance(v, dict) and isinstance(v.get("path"), str):
                    v["path"] = resolve(v["path"])
        resolve_paths(site, resolve)


def load_dir(path: str | os.PathLike[str], overrides: Iterable[Override] = (), *,
             check_paths: bool = True, checks: Iterable[Check] = ()) -> Config:
    """Read every ``*.toml`` in ``path`` in name order, merge, apply
    ``overrides`` (command-line flags) and validate.

    Relative site roots are taken relative to the directory's parent (so
    ``conf.d/`` beside ``demo/`` can say ``root = "demo"``). Old spellings are
    upgraded file by file, each logged once as a warning (``upgrade``).
    ``check_paths``: a site root or alias that does not exist or is not a
    directory is an error too (``serve`` would answer 404 to everything).
    ``checks``: more checks of the valid configuration (``serve.privileges.check``:
    who may read the roots), their problems reported as the schema's are.

    Raises:
        ConfigError: one line per problem, with the file (or flag), the dotted
            key and, where it can be found, the line.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such configuration directory (give one with --config DIR)")
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ConfigError(f"{directory}: no *.toml files in it")
    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    texts: dict[str, str] = {}
    for f in files:
        texts[str(f)] = text = f.read_text()
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{f}: not valid TOML: {exc}") from None
        for note in upgrade(data, str(f)):
            log.warning("%s", note)
        _merge(merged, data, origin, str(f))
    _resolve_paths(merged, directory.resolve().parent)
    return validate(merged, origin, default_file=str(files[-1]), overrides=overrides, texts=texts,
                    check_paths=check_paths, checks=checks)


def validate(data: dict[str, Any], origin: dict[tuple[str, ...], str] | None = None,
             default_file: str = "<config>", overrides: Iterable[Override] = (), *,
             texts: dict[str, str] | None = None, check_paths: bool = False,
             checks: Iterable[Check] = ()) -> Config:
    """Validate a merged mapping (``data`` is not changed), with ``overrides``
    on top; errors name the file (or flag) that set the key, and the line
    when ``texts`` (file name -> its text) has the file. Old spellings in
    ``data`` are upgraded with a warning naming ``default_file``.

    Beyond the schema: two listeners on one address (``listen_conflicts``)
    and, with ``check_paths``, site roots and aliases that are not
    directories (``path_problems``); then each of ``checks`` on the valid
    configuration (a layer above passes what it knows: who may read the
    roots)."""
    data = copy.deepcopy(data)
    origin = dict(origin or {})
    for note in upgrade(data, default_file):
        log.warning("%s", note)
    for override in overrides:
        *parents, last = override.key
        table = data
        for part in parents:
            table = table.setdefault(part, {})
        table[last] = override.value
        origin[override.key] = override.source
        if isinstance(override.value, dict):
            for sub in _walk(override.value, override.key):
                origin[sub] = override.source

    def source(key: tuple[str, ...]) -> str:
        for i in range(len(key), 0, -1):
            if key[:i] in origin:
                return origin[key[:i]]
        return default_file

    def problem(key: tuple[str, ...], message: str) -> str:
        fname = source(key)
        text = (texts or {}).get(fname)
        return format_problem(fname, key, message, find_line(text, key) if text is not None else None)

    # every problem in one run: the checks beyond the schema read the merged
    # data, skipping what the schema reports as malformed
    found = (reference_problems(data) + root_problems(data) + redirect_problems(data) + listen_conflicts(data, source)
             + (path_problems(data) if check_paths else []))
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        lines = [problem(tuple(str(p) for p in err["loc"]), describe(err)) for err in exc.errors()]
        raise ConfigError("\n".join(lines + [problem(key, message) for key, message in found])) from None
    found += acme_problems(cfg)
    if found:
        raise ConfigError("\n".join(problem(key, message) for key, message in found))
    later = [item for check in checks for item in check(cfg)]
    if later:
        raise ConfigError("\n".join(problem(key, message) for key, message in later))
    return cfg


def _table(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        value = data.get(key)
        data = value if isinstance(value, dict) else {}
    return data


def reference_problems(data: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """(key, message) for what ties tables together in merged ``data``: at
    least one site, each site's ``php`` names a defined FastCGI backend, its
    ``proxy`` and ``routes`` defined HTTP backends, at most one ``default``
    site; a backend gives ``address`` or ``addresses``, not both."""
    sites, backends = _table(data, "sites"), _table(data, "backends")
    if not sites:
        return [(("sites",), "no [sites.NAME] table: there is nothing to serve")]
    out: list[tuple[tuple[str, ...], str]] = []
    for name, backend in backends.items():
        if isinstance(backend, dict) and "address" in backend and backend.get("addresses"):
            out.append((("backends", name, "addresses"), "and address are both set: keep one (address is "
                                                          "one address, addresses a list of them)"))

    def kind(backend: str) -> str | None:
        table = backends.get(backend)
        if not isinstance(table, dict):
            return None
        value = table.get("type", "fastcgi")
        return value if isinstance(value, str) else None

    def check(key: tuple[str, ...], backend: Any, want: str) -> None:
        if not isinstance(backend, str) or not backend:
            return
        if backend not in backends:
            known = ", ".join(sorted(backends)) or "none"
            out.append((key, f"names backend {backend!r}, which is not defined (defined: {known})"))
        elif kind(backend) not in (want, None):
            what = "a FastCGI (php-fpm) backend" if want == "fastcgi" else 'an HTTP backend (type = "http")'
            out.append((key, f"names backend {backend!r}, which is type = {kind(backend)!r}: it must be {what}"))

    default = ""
    for name, site in sites.items():
        if not isinstance(site, dict):
            continue
        check(("sites", name, "php"), site.get("php"), "fastcgi")
        check(("sites", name, "proxy"), site.get("proxy"), "http")
        for prefix, backend in _table(site, "routes").items():
            check(("sites", name, "routes", prefix), backend, "http")
        if site.get("default") is True:
            if default:
                out.append((("sites", name, "default"),
                            f"sites.{default} is the default site already: only one site can be"))
            default = default or name
    return out


def root_problems(data: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """(key, message) for each site without ``root`` that does not answer
    every request with a return rule (``paths = ["/"]``, no ``methods``):
    a site that only redirects (``www.`` to the apex) needs no root."""
    out: list[tuple[tuple[str, ...], str]] = []
    for name, site in _table(data, "sites").items():
        if not isinstance(site, dict) or "root" in site:
            continue
        rules = site.get("return")
        catch_all = isinstance(rules, list) and any(
            isinstance(r, dict) and "/" in (r.get("paths") or []) and not r.get("methods") for r in rules)
        if not catch_all:
            out.append((("sites", name, "root"), "is required: set it" + (
                ' (only a site whose return rule answers every request, paths = ["/"], can do without)'
                if rules else "")))
    return out


def redirect_problems(data: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """(key, message) for each site with ``redirect_to_https = true`` when no
    ``[server] listen`` entry is ``tls``: the redirect would lead nowhere."""
    listen = _table(data, "server").get("listen", ServerConfig().listen)
    entries = listen if isinstance(listen, list) else []
    tls = False
    for text in entries:
        try:
            tls = tls or (isinstance(text, str) and parse_listen(text).tls)
        except ValueError:
            pass
    if tls:
        return []
    return [(("sites", name, "redirect_to_https"),
             'is true but no [server] listen entry is "tls" (e.g. "0.0.0.0:443 tls"): the redirect would lead '
             "nowhere")
            for name, site in _table(data, "sites").items()
            if isinstance(site, dict) and site.get("redirect_to_https") is True]


def _listen_entries(data: dict[str, Any]) -> list[tuple[tuple[str, ...], Address]]:
    """The listen addresses in merged (not yet validated) ``data``, defaults
    filled in; the ones that do not parse are left to the schema's error."""
    server = _table(data, "server").get("listen", ServerConfig().listen)
    admin = _table(data, "admin").get("listen", AdminConfig().listen)
    named: list[tuple[tuple[str, ...], Any]] = (
        [(("server", "listen", str(i)), a) for i, a in enumerate(server)] if isinstance(server, list) else [])
    named.append((("admin", "listen"), admin))
    entries: list[tuple[tuple[str, ...], Address]] = []
    for key, text in named:
        if isinstance(text, str) and text != "off":
            try:
                entries.append((key, parse_listen(text).where))
            except ValueError:
                pass
    return entries


def _same_socket(a: Address, b: Address) -> bool:
    """Would binding ``a`` and ``b`` both fail (or, with SO_REUSEPORT, share)?
    A wildcard host overlaps every host of its family; port 0 never clashes."""
    if a.kind != b.kind:
        return False
    if a.kind == "unix":
        return os.path.normpath(a.path) == os.path.normpath(b.path)
    if a.port != b.port or a.port == 0:
        return False
    if a.host == b.host or "" in (a.host, b.host):
        return True
    for wildcard, v6 in (("0.0.0.0", False), ("::", True)):
        if wildcard in (a.host, b.host) and (":" in a.host) == v6 and (":" in b.host) == v6:
            return True
    return False


def listen_conflicts(data: dict[str, Any], source: Callable[[tuple[str, ...]], str] | None = None
                     ) -> list[tuple[tuple[str, ...], str]]:
    """(key, message) for each ``[server] listen`` or ``[admin] listen`` entry
    of merged ``data`` that overlaps an earlier one: ``serve`` would fail to
    bind it. ``source(key)`` names the file of the other entry."""
    out: list[tuple[tuple[str, ...], str]] = []
    entries = _listen_entries(data)
    for i, (key, address) in enumerate(entries):
        for other_key, other in entries[:i]:
            if _same_socket(address, other):
                where = ""
                if source is not None and source(other_key) != source(key):
                    where = f" in {source(other_key)}"
                out.append((key, f"{address} overlaps {'.'.join(other_key)} ({other}){where}: "
                                 "each listener needs its own address or port"))
                break
    return out


def path_problems(data: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """(key, message) for each site root or alias target in merged ``data``
    that does not exist or is not a directory, and each ``ca_bundle``
    (a backend's, ``[acme]``'s) that is not a file. (Whether the php-fpm user may
    read it is another check's business.)"""
    out: list[tuple[tuple[str, ...], str]] = []
    for name, backend in _table(data, "backends").items():
        bundle = backend.get("ca_bundle") if isinstance(backend, dict) else None
        if isinstance(bundle, str) and bundle and not os.path.isfile(bundle):
            out.append((("backends", name, "ca_bundle"), f"{bundle} is not a file (PEM CA certificates)"))
    acme = data.get("acme")
    bundle = acme.get("ca_bundle") if isinstance(acme, dict) else None
    if isinstance(bundle, str) and bundle and not os.path.isfile(bundle):
        out.append((("acme", "ca_bundle"), f"{bundle} is not a file (PEM CA certificates the ACME server's "
                                           "certificate is checked against)"))
    for name, site in _table(data, "sites").items():
        if not isinstance(site, dict):
            continue
        dirs: list[tuple[tuple[str, ...], Any]] = [(("sites", name, "root"), site.get("root"))]
        for prefix, target in _table(site, "aliases").items():
            if isinstance(target, dict):
                dirs.append((("sites", name, "aliases", prefix, "path"), target.get("path")))
            else:
                dirs.append((("sites", name, "aliases", prefix), target))
        for key, directory in dirs:
            if not isinstance(directory, str):
                continue
            try:
                st = os.stat(directory)
            except (FileNotFoundError, NotADirectoryError):
                out.append((key, f"{directory} does not exist (a typo? serve would answer 404 to everything)"))
                continue
            except (OSError, ValueError):
                continue  # unreadable: reported by the privileges check, with the user
            if not stat.S_ISDIR(st.st_mode):
                out.append((key, f"{directory} is not a directory"))
    return out


_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def dns_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be in an ACME certificate (challenges served by
    the gateway: http-01, tls-alpn-01), None if it can."""
    if name == "_":
        return '"_" is a catch-all, not a name a certificate can be issued for'
    if name.startswith("*."):
        return (f"{name!r} is a wildcard: a CA validates those only with dns-01, which the gateway does not do; "
                "list the names")
    text = name.lower().rstrip(".")
    try:
        ipaddress.ip_address(text.strip("[]"))
        return f"{name!r} is an IP address; ACME certificates here are for DNS names"
    except ValueError:
        pass
    labels = text.split(".")
    if (len(text) > 253 or len(labels) < 2 or not all(_DNS_LABEL.match(label) for label in labels)
            or labels[-1].isdigit()):
        return f"{name!r} is not a public DNS name (letters, digits and hyphens, dot-separated, with a domain)"
    return None


def acme_problems(cfg: Config) -> list[tuple[tuple[str, ...], str]]:
    """(key, message) for what ``acme = true`` sites need and ``cfg`` lacks."""
    sites = [(name, site) for name, site in cfg.sites.items() if site.tls is not None and site.tls.acme]
    if not sites:
        return []
    out: list[tuple[tuple[str, ...], str]] = []
    first_names: dict[str, tuple[str, list[str]]] = {}
    for name, site in sites:
        key = ("sites", name, "server_names")
        if not site.server_names:
            out.append((key, "is empty: tls.acme = true needs the site's DNS names (the certificate is for them)"))
            continue
        bad = [(i, text) for i, n in enumerate(site.server_names) if (text := dns_name_problem(n)) is not None]
        out += [((*key, str(i)), text) for i, text in bad]
        if bad:
            continue
        names = [n.lower().rstrip(".") for n in site.server_names]
        other = first_names.setdefault(names[0], (name, names))
        if other[0] != name and sorted(set(other[1])) != sorted(set(names)):
            out.append((key, f"starts with {names[0]!r} as sites.{other[0]}.server_names does, with other names: "
                             "their certificates would share one state-dir entry; put the names in one site or "
                             "start each list with a different name"))
    listens = [parse_listen(entry) for entry in cfg.server.listen]
    first = sites[0][0]
    if not any(spec.tls for spec in listens):
        out.append((("server", "listen"), f"sites.{first} has tls.acme = true but no listener is flagged tls "
                                          '(e.g. "0.0.0.0:443 tls"): the certificate would never be served'))
    if cfg.acme.challenge == "http-01" and not any(not spec.tls for spec in listens):
        out.append((("server", "listen"), f"sites.{first} has tls.acme = true with the http-01 challenge, which the "
                                          'CA sends to a plain listener on port 80 (e.g. "0.0.0.0:80"); there is none'))
    if not cfg.acme.directory.startswith("https://"):
        out.append((("acme", "directory"), f"{cfg.acme.directory!r} is not an https URL (RFC 8555 requires https)"))
    if cfg.acme.email and not re.fullmatch(r"[^@\s:,]+@[^@\s:,]+\.[^@\s:,]+", cfg.acme.email):
        out.append((("acme", "email"), f"{cfg.acme.email!r} is not an e-mail address"))
    return out
