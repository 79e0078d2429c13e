"""``[sites.NAME.cache]``: the page cache of a PHP site (``app.cache``).

The keys named in issue 17 (``enabled``, ``ttl``, ``max_size``, ``disk_dir``,
``disk_max_size``, ``bypass_cookies``, ``bypass_paths``, ``vary``,
``stale_while_revalidate``, ``stale_if_error``, ``purge_allow``) keep those
names; the rest say what nginx's ``fastcgi_cache_*`` directives say:
``statuses`` (``fastcgi_cache_valid``'s codes), ``lock_timeout``
(``fastcgi_cache_lock_timeout``), ``max_entry_size`` (LSCache's and Varnish's
bound on one object), ``ignore_params`` (query parameters left out of the key),
``header`` (the name of the ``X-Cache`` response header).

Defaults are WordPress's: the cookies of a logged-in user, a password-protected
post's visitor, a commenter and a WooCommerce cart bypass the cache, and so do
the admin, the login page, the REST API and the shop's per-user pages.

This module imports nothing of the package at import time (``config``
imports it); sizes and durations are parsed by ``config``'s own parsers.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _size(value: Any) -> int:
    from . import parse_size  # noqa: PLC0415 - config imports this module

    return parse_size(value)


def _duration(value: Any) -> float:
    from . import parse_duration  # noqa: PLC0415 - config imports this module

    return parse_duration(value)


def _header_name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def _path_prefix(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must start with \"/\"")
    return value


def _network(value: str) -> str:
    if value == "unix:":
        return value
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ValueError(f"{value!r} is not an address, a CIDR network like \"10.0.0.0/8\" or \"unix:\"") from None
    return value


def _disk_dir(value: str) -> str:
    if value and not value.startswith("/"):
        raise ValueError(f"{value!r}: give an absolute path (a directory the gateway may create)")
    return value


def _status(value: int) -> int:
    if value in (206, 304):
        raise ValueError(f"{value}: a {'part of a page' if value == 206 else 'conditional answer without a body'} "
                         "is no page to store (every later request would get it)")
    return value


Size = Annotated[int, BeforeValidator(_size)]
Duration = Annotated[float, BeforeValidator(_duration)]
HeaderName = Annotated[str, AfterValidator(_header_name)]

DEFAULT_BYPASS_COOKIES = ["wordpress_logged_in_*", "wp-postpass_*", "comment_author_*", "woocommerce_items_in_cart",
                          "wp_woocommerce_session_*"]
DEFAULT_BYPASS_PATHS = ["/wp-admin/", "/wp-login.php", "/wp-json/", "/cart/", "/checkout/", "/my-account/"]
DEFAULT_IGNORE_PARAMS = ["utm_*", "fbclid", "gclid", "msclkid", "_ga"]


class CacheConfig(BaseModel):
    """``[sites.X.cache]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Cache this site's PHP responses (anonymous GET/HEAD).
    enabled: bool = False
    #: Lifetime of a cacheable response that gives none of its own (no
    #: Cache-Control max-age/s-maxage, no Expires); nginx fastcgi_cache_valid.
    ttl: Duration = 600.0
    #: Memory for cached responses (bodies and headers), per gateway process.
    max_size: Size = 64 * 1024 * 1024
    #: A second tier on disk, shared by the gateway's processes and kept across
    #: restarts (``app.cache_disk``); empty: memory only.
    disk_dir: Annotated[str, AfterValidator(_disk_dir)] = ""
    #: The disk tier's bound (kept by a sweep every 30 s, sooner after a
    #: process wrote a quarter of it).
    disk_max_size: Size = 1024 * 1024 * 1024
    #: Cookie names (a trailing or inner "*" matches anything) whose presence
    #: sends the request to PHP, uncached and not stored.
    bypass_cookies: list[str] = DEFAULT_BYPASS_COOKIES
    #: Path prefixes never cached ("/wp-login.php" is a prefix of itself).
    bypass_paths: list[Annotated[str, AfterValidator(_path_prefix)]] = DEFAULT_BYPASS_PATHS
    #: Request headers whose values are part of the key (e.g. "X-Device").
    vary: list[HeaderName] = []
    #: How long after expiry a stale copy is served at once while one request
    #: refreshes it in the background; 0: never.
    stale_while_revalidate: Duration = 0.0
    #: How long after expiry a stale copy is served when PHP fails (502, 503,
    #: 504, a 500); 0: never.
    stale_if_error: Duration = 0.0
    #: Addresses or CIDR networks allowed to send PURGE (others: 403);
    #: "unix:" for peers on a unix socket (not by default: a front proxy on
    #: one would pass every visitor's PURGE; nginx ``allow unix:``).
    purge_allow: list[Annotated[str, AfterValidator(_network)]] = ["127.0.0.1/32", "::1/128"]
    #: Response statuses that are cached.
    statuses: list[Annotated[int, Field(ge=200, le=599), AfterValidator(_status)]] = [200, 301, 404]
    #: How long requests for a key being fetched wait for it before going to PHP themselves.
    lock_timeout: Duration = 5.0
    #: Responses larger than this are not cached.
    max_entry_size: Size = 2 * 1024 * 1024
    #: Query parameters left out of the key ("*" as in bypass_cookies).
    ignore_params: list[str] = DEFAULT_IGNORE_PARAMS
    #: Name of the response header that says HIT, MISS, STALE, BYPASS or EXPIRED.
    header: HeaderName = "X-Cache"

    @model_validator(mode="after")
    def _check(self) -> CacheConfig:
        if self.max_entry_size > self.max_size:
            raise ValueError(f"max_entry_size ({self.max_entry_size}) is larger than max_size ({self.max_size})")
        return self
