"""Page-cache policy, sans-IO: which request may be served from the cache, its
key, whether a response may be stored and for how long, and what a stored
entry may still be used for. ``app.cache`` does the storing and waiting.

Requests (``request_bypass``):

- Only GET and HEAD are looked up (anything else goes to PHP uncounted).
- A request with a method override header (``X-HTTP-Method-Override``,
  ``X-HTTP-Method``, ``X-Method-Override``: WordPress's REST API, reachable
  as ``/?rest_route=``, takes it as the method) is not a GET to PHP: it goes
  to PHP uncounted, as a POST does.
- A request with ``Authorization`` (RFC 9111 3.5), a cookie named in
  ``bypass_cookies`` (WordPress: a logged-in user, a commenter, a cart) or a
  path under ``bypass_paths`` is a **BYPASS**: it goes to PHP and its response
  is never stored, so a logged-in user neither sees nor pollutes the cache.
  Cookie names are matched as PHP reads them (``$_COOKIE``): PHP turns "."
  and " " (and a "[" without "]") into "_", and ``name[x]`` is ``name``, so
  ``wordpress.logged.in_HASH`` is WordPress's login cookie (PHP 8.2, tested):
  matched as sent, a logged-in user's page would be stored for everybody.

The key (``cache_key``): scheme, host, path (as sent: ``raw_target``) and the query with its parameters
sorted (``?b=2&a=1`` and ``?a=1&b=2`` are one page) and tracking parameters
(``utm_*``, ``fbclid``, ``gclid``...: ``ignore_params``) left out (and
taken out of what PHP is sent, ``drop_params``: a page that echoes
``utm_source`` must not store one visitor's value, a script, as everybody's
page; Varnish's recipes strip them so too), then the
values of the ``vary`` request headers, then (``IMPLICIT_VARY``) the request
headers PHP reads that change a page without being its URL: the ``Host``
header as sent (WordPress answers ``Host: example.com:1234`` or
``example.com.`` with a 301 to the canonical URL: keyed on the normalised host
alone, that redirect would be every visitor's page, a loop), and
``X-Forwarded-Host``/``-Proto``/``-Port``/``-Ssl``, ``Forwarded``'s ``host=``
and ``proto=``, ``X-Original-URL``... which reach PHP from any client (as
under nginx; a wp-config that believes them builds other links). A client's
value gets its own entry, never the one everybody shares (nginx's default key
has the same hole; Varnish documents it as cache poisoning).
``Accept-Encoding`` is not in it:
the cache stores the identity body once and the compression filter encodes it
per client (see ``app.cache``).

Responses (``storable``), as nginx's fastcgi_cache and RFC 9111 a shared cache:

- only a status in ``statuses`` (200, 301, 404), only of a GET;
- never one with ``Set-Cookie`` (it is someone's session), nor
  ``Cache-Control: no-store``, ``private`` or ``no-cache``, nor ``Vary: *`` or
  a Vary on a request header the key does not hold (``Accept-Encoding`` is
  fine: the body is stored identity), nor one PHP compressed itself
  (``Content-Encoding``), nor an ``X-Accel-Redirect``/``X-Sendfile`` (a
  download PHP authorised for that request), nor a body over
  ``max_entry_size``;
- lifetime, first found of: ``X-Accel-Expires`` (nginx's, seconds, or
  ``@`` and a Unix time; 0: not cached), ``Cache-Control: s-maxage``, ``max-age``, ``Expires`` (against
  ``Date`` when PHP sent one), else the configured ``ttl``. A lifetime of 0 is
  not stored.
- ``stale-while-revalidate=N`` and ``stale-if-error=N`` in PHP's
  Cache-Control (RFC 5861) replace the configured windows for that response.

An entry's state at a time (``freshness``): **fresh** until its lifetime
ends; then **stale** (served at once while one request refreshes it) for
``stale_while_revalidate``; usable only when PHP fails for ``stale_if_error``;
then **expired** (refetched; ``X-Cache: EXPIRED``).
"""

from __future__ import annotations

import email.utils
import enum
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import quote, unquote

CACHEABLE_METHODS = (b"GET", b"HEAD")

#: Response headers the cache never stores: hop by hop, recomputed per
#: response, or the cache's own instructions from PHP.
NOT_STORED = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"set-cookie", b"server-timing",
    b"x-cache-purge", b"x-cache-tags", b"x-accel-expires", b"age", b"te", b"trailer", b"upgrade",
    b"proxy-authenticate", b"date",
})

#: Request headers in every key, as sent (see the module docstring); a Vary
#: on them is fine too.
IMPLICIT_VARY = (b"host", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-scheme", b"x-forwarded-port",
                 b"x-forwarded-ssl", b"x-forwarded-server", b"x-forwarded-prefix", b"front-end-https",
                 b"x-original-url", b"x-rewrite-url", b"x-original-host")
#: ``Forwarded``'s parameters that change a page (``for=`` is each client's: not keyed).
_FORWARDED_KEYED = re.compile(rb"(?i)\b(host|proto)\s*=\s*(\"[^\"]*\"|[^;,\s]*)")
#: Request headers that make a GET another method to PHP.
METHOD_OVERRIDES = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})

_DIRECTIVE = re.compile(r"\s*([A-Za-z-]+)\s*(?:=\s*(\"[^\"]*\"|[^,\s]*))?\s*(?:,|$)")


class Freshness(enum.Enum):
    FRESH = "fresh"
    #: past its lifetime, within stale_while_revalidate
    STALE = "stale"
    #: past that too, within stale_if_error: served only when PHP fails
    ERROR_ONLY = "error_only"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What ``[sites.X.cache]`` says, in the form the checks use."""

    ttl: float
    bypass_cookies: tuple[str, ...]
    bypass_paths: tuple[str, ...]
    vary: tuple[bytes, ...]
    stale_while_revalidate: float
    stale_if_error: float
    statuses: frozenset[int]
    max_entry_size: int
    ignore_params: tuple[str, ...]

    @classmethod
    def build(cls, *, ttl: float, bypass_cookies: Iterable[str] = (), bypass_paths: Iterable[str] = (),
              vary: Iterable[str] = (), stale_while_revalidate: float = 0.0, stale_if_error: float = 0.0,
              statuses: Iterable[int] = (200, 301, 404), max_entry_size: int = 2 * 1024 * 1024,
              ignore_params: Iterable[str] = ()) -> CachePolicy:
        return cls(ttl, tuple(bypass_cookies), tuple(bypass_paths), tuple(v.lower().encode() for v in vary),
                   stale_while_revalidate, stale_if_error, frozenset(statuses), max_entry_size,
                   tuple(ignore_params))


# -- requests ----------------------------------------------------------------------


_PHP_MANGLED = str.maketrans({".": "_", " ": "_", "[": "_"})


def cookie_names(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The names of the cookies in every Cookie header (HTTP/2 may send
    several, RFC 9113 8.2.3), each also as PHP names it in ``$_COOKIE``."""
    names = []
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.split(b";"):
            cookie = part.split(b"=", 1)[0].strip().decode("latin-1")
            if cookie:
                names.append(cookie)
                array = cookie.split("[", 1)[0] if "]" in cookie.partition("[")[2] else cookie
                names.extend(dict.fromkeys(n for n in (array.translate(_PHP_MANGLED), cookie.translate(_PHP_MANGLED))
                                           if n != cookie))
    return names


def request_bypass(policy: CachePolicy, method: bytes, path: str,
                   headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why this request must not use the cache ("method", "authorization",
    "cookie NAME", "path"), or None: it may."""
    if method not in CACHEABLE_METHODS or any(name in METHOD_OVERRIDES for name, _ in headers):
        return "method"
    if any(name == b"authorization" for name, _ in headers):
        return "authorization"
    for cookie in cookie_names(headers):
        if any(fnmatchcase(cookie, pattern) for pattern in policy.bypass_cookies):
            return f"cookie {cookie}"
    if any(path.startswith(prefix) for prefix in policy.bypass_paths):
        return "path"
    return None


def raw_target(target: bytes) -> tuple[str, str]:
    """The path and query of a request target as the client sent them (not
    percent-decoded, not normalised: ``/a/../b`` is not ``/b`` to PHP, so it
    must not share ``/b``'s entry), from origin or absolute form."""
    if target[:1] != b"/" and b"://" in target:
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    path, _, query = target.split(b"#", 1)[0].partition(b"?")
    return path.decode("latin-1"), query.decode("latin-1")


def normal_query(query: str, ignore: Iterable[str] = ()) -> str:
    """``query`` with its parameters sorted by name and those matching
    ``ignore`` left out, each name and value percent-encoded one way (``%7E``
    and ``~`` are one). Parameters of one name keep their order (``a[]=2&a[]=1``
    is another array to PHP than ``a[]=1&a[]=2``)."""
    ignore = tuple(ignore)
    params = []
    for part in query.split("&"):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = quote(unquote(name.replace("+", " ")), safe="")
        if any(fnmatchcase(name, pattern) for pattern in ignore):
            continue
        params.append((name, eq, quote(unquote(value.replace("+", " ")), safe="")))
    params.sort(key=lambda p: p[0])
    return "&".join(f"{n}{eq}{v}" for n, eq, v in params)


def drop_params(query: bytes, ignore: Iterable[str]) -> bytes:
    """``query`` as sent without the parameters ``ignore`` matches (named as
    ``normal_query`` names them), the others untouched and in order."""
    ignore = tuple(ignore)
    if not ignore or not query:
        return query
    kept = [part for part in query.split(b"&")
            if not any(fnmatchcase(quote(unquote(part.partition(b"=")[0].decode("latin-1").replace("+", " ")),
                                         safe=""), pattern) for pattern in ignore)]
    return b"&".join(kept)


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where an entry is from (purges match on host, path and query) and the
    key it is stored under."""

    host: str
    path: str
    query: str
    key: bytes


def cache_key(policy: CachePolicy, *, https: bool, host: bytes, path: str, query: str,
              headers: Sequence[tuple[bytes, bytes]]) -> CacheKey:
    """The key of a request (see the module docstring)."""
    q = normal_query(query, policy.ignore_params)
    url = ("https://" if https else "http://") + host.decode("latin-1") + path + ("?" + q if q else "")
    key = url.encode("utf-8", "surrogateescape")
    for name in policy.vary:
        values = b",".join(v for n, v in headers if n == name)
        key += b"\n" + name + b":" + values
    for name, value in headers:
        if name in IMPLICIT_VARY:
            key += b"\n" + name + b":" + value
        elif name == b"forwarded":
            key += b"\n" + name + b":" + b";".join(m.group(0).lower() for m in _FORWARDED_KEYED.finditer(value))
    return CacheKey(host.decode("latin-1"), path, q, key)


# -- responses ---------------------------------------------------------------------


def cache_control(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Cache-Control's directives, lower-cased names, values unquoted
    (a directive without a value maps to "")."""
    out: dict[str, str] = {}
    for name, value in headers:
        if name.lower() != b"cache-control":
            continue
        for m in _DIRECTIVE.finditer(value.decode("latin-1")):
            if m.group(1):
                out.setdefault(m.group(1).lower(), (m.group(2) or "").strip('"'))
    return out


def _seconds(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text.strip())


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    found = None
    for n, v in headers:
        if n.lower() == name:
            found = v
    return found


def _date(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Seconds an entry is fresh, then served stale while refreshed, then
    served only in place of an error (each counted from the end of the one before)."""

    fresh: float
    stale_while_revalidate: float
    stale_if_error: float


def storable(policy: CachePolicy, method: bytes, status: int, headers: Sequence[tuple[bytes, bytes]],
             size: int | None, now: float) -> Lifetime | str:
    """How long this response may be used, or why it is not stored.
    ``size``: the body's (None: not known whole, a stream). ``now``: the wall clock."""
    if method != b"GET":
        return "method"
    if status not in policy.statuses:
        return f"status {status}"
    if size is None:
        return "streamed"
    if size > policy.max_entry_size:
        return "too large"
    names = {n.lower() for n, _ in headers}
    if b"set-cookie" in names:
        return "set-cookie"
    if b"content-encoding" in names:
        return "content-encoding"
    if names & {b"x-accel-redirect", b"x-sendfile"}:
        return "x-accel-redirect"  # a download PHP authorised for this request, not a page
    cc = cache_control(headers)
    for word in ("no-store", "private", "no-cache"):
        if word in cc:
            return f"cache-control {word}"
    for name, value in headers:
        if name.lower() == b"vary":
            for field in value.lower().split(b","):
                field = field.strip()
                if field == b"*":
                    return "vary *"
                if field and field != b"accept-encoding" and field not in policy.vary \
                        and field not in IMPLICIT_VARY:
                    return f"vary {field.decode('latin-1')}"
    fresh: float | None = None
    accel = _header(headers, b"x-accel-expires")
    if accel is not None:
        text = accel.decode("latin-1").strip()
        until = _seconds(text[1:]) if text.startswith("@") else None
        fresh = max(0.0, until - now) if until is not None else _seconds(text)
    if fresh is None:
        fresh = _seconds(cc.get("s-maxage"))
    if fresh is None:
        fresh = _seconds(cc.get("max-age"))
    if fresh is None:
        expires = _header(headers, b"expires")
        if expires is not None:
            at = _date(expires)
            base = _date(_header(headers, b"date")) or now
            fresh = max(0.0, at - base) if at is not None else 0.0  # an invalid Expires is in the past
    if fresh is None:
        fresh = policy.ttl
    if fresh <= 0:
        return "expires now"
    swr = _seconds(cc.get("stale-while-revalidate"))
    sie = _seconds(cc.get("stale-if-error"))
    return Lifetime(float(fresh), float(policy.stale_while_revalidate if swr is None else swr),
                    float(policy.stale_if_error if sie is None else sie))


#: Request headers ``request_bypass`` reads (besides the method and path).
_BYPASS_HEADERS = METHOD_OVERRIDES | {b"authorization", b"cookie"}
#: Response headers ``storable`` reads (besides the status and size): a
#: response without any of them is stored for the policy's ttl.
_LIFETIME_HEADERS = frozenset({b"set-cookie", b"content-encoding", b"x-accel-redirect", b"x-sendfile",
                               b"cache-control", b"vary", b"x-accel-expires", b"expires"})


def would_store(policy: CachePolicy, method: bytes, path: str, request_headers: Sequence[tuple[bytes, bytes]],
                status: int, headers: Sequence[tuple[bytes, bytes]], size: int | None) -> bool:
    """Would a cache with ``policy`` have stored this PHP response to this
    request: ``request_bypass`` None and ``storable`` a ``Lifetime`` for its
    GET. The common answer (no cookie, authorization or method override; a
    response that says nothing of its lifetime) without the two's parsing."""
    if (method in CACHEABLE_METHODS and not any(name in _BYPASS_HEADERS for name, _ in request_headers)
            and _LIFETIME_HEADERS.isdisjoint([name.lower() for name, _ in headers])):
        return (not path.startswith(policy.bypass_paths) and status in policy.statuses and size is not None
                and size <= policy.max_entry_size and policy.ttl > 0)
    return request_bypass(policy, method, path, request_headers) is None and isinstance(
        storable(policy, b"GET", status, headers, size, time.time()), Lifetime)


def freshness(stored_at: float, lifetime: Lifetime, now: float) -> Freshness:
    """What an entry stored at ``stored_at`` may be used for at ``now``."""
    age = now - stored_at
    if age < lifetime.fresh:
        return Freshness.FRESH
    age -= lifetime.fresh
    if age < lifetime.stale_while_revalidate:
        return Freshness.STALE
    if age < lifetime.stale_while_revalidate + lifetime.stale_if_error:
        return Freshness.ERROR_ONLY
    return Freshness.EXPIRED


#: What a 304 from the cache carries of the entry's headers (RFC 9110 15.4.5).
NOT_MODIFIED_HEADERS = frozenset({b"etag", b"cache-control", b"expires", b"vary", b"last-modified",
                                  b"content-location"})


def not_modified(request: Sequence[tuple[bytes, bytes]], stored: Sequence[tuple[bytes, bytes]]) -> bool:
    """Does a conditional GET (``If-None-Match``, else ``If-Modified-Since``)
    match an entry with these headers, so a 304 answers it (as nginx answers
    from its cache)? Entity tags compare weakly."""
    inm = _header(request, b"if-none-match")
    if inm is not None:
        etag = _header(stored, b"etag")
        if etag is None:
            return False
        tags = [t.strip().removeprefix(b"W/") for t in inm.split(b",")]
        return b"*" in tags or etag.strip().removeprefix(b"W/") in tags
    ims = _date(_header(request, b"if-modified-since"))
    modified = _date(_header(stored, b"last-modified"))
    return ims is not None and modified is not None and modified <= ims


def stored_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers an entry keeps (``NOT_STORED`` left out)."""
    return [(n, v) for n, v in headers if n.lower() not in NOT_STORED]


# -- purges ------------------------------------------------------------------------


def purge_items(value: bytes) -> list[str]:
    """PHP's ``X-Cache-Purge`` (as LiteSpeed's ``X-LiteSpeed-Purge``): a comma
    separated list of paths ("/2024/hello/"), path prefixes ending in "*"
    ("/category/*"), tags ("tag:post-12") or "*" (everything)."""
    return [item.strip() for item in value.decode("latin-1").split(",") if item.strip()]


def tag_list(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[str]:
    """An entry's tags from ``X-Cache-Tags`` (comma separated, every such header)."""
    return frozenset(t.strip() for n, v in headers if n.lower() == b"x-cache-tags"
                     for t in v.decode("latin-1").split(",") if t.strip())


@dataclass(frozen=True, slots=True)
class Purge:
    """Which entries a purge removes: everything, a tag's, a path's (every
    query and ``vary`` variant, or one query), or those under a path prefix;
    on one host or (``host`` None) every host; of one site's cache
    (``site``: a purge a request made, PURGE or PHP's ``X-Cache-Purge``, is
    its site's alone, in every process) or (None) every site's."""

    everything: bool = False
    tag: str | None = None
    host: str | None = None
    path: str | None = None
    query: str | None = None
    prefix: str | None = None
    site: str | None = None

    def matches(self, where: CacheKey, tags: frozenset[str]) -> bool:
        if self.everything:
            return True
        if self.tag is not None:
            return self.tag in tags and (self.host is None or self.host == where.host)
        if self.host is not None and self.host != where.host:
            return False
        if self.prefix is not None:
            return where.path.startswith(self.prefix)
        return where.path == self.path and (self.query is None or self.query == where.query)


def purge_item(item: str, host: str | None, ignore: Iterable[str] = ()) -> Purge:
    """One item of ``X-Cache-Purge`` or a PURGE request's path, on ``host``:
    "*", "tag:NAME", "/prefix/*", "/path" (every variant) or "/path?query"."""
    if item == "*":
        return Purge(everything=True)
    if item.startswith("tag:"):
        return Purge(tag=item[4:].strip(), host=host)
    if item.endswith("*"):
        return Purge(host=host, prefix=item[:-1])
    path, q, query = item.partition("?")
    return Purge(host=host, path=path, query=normal_query(query, ignore) if q else None)


def purge_url(url: str, *, prefix: bool = False, ignore: Iterable[str] = ()) -> Purge:
    """The admin's ``{"url": ...}`` or ``{"prefix": ...}``: "http(s)://HOST/PATH[?QUERY]"
    (both schemes), "/PATH" (every host), or "*" (everything).

    Raises:
        ValueError: neither form.
    """
    if url == "*":
        return Purge(everything=True)
    host: str | None = None
    rest = url
    for scheme in ("https://", "http://"):
        if url.lower().startswith(scheme):
            host, slash, tail = url[len(scheme):].partition("/")
            host = host.lower().rsplit(":", 1)[0] if not host.endswith("]") else host.lower()
            rest = slash + tail
            if not host:
                raise ValueError(f"{url!r} has no host")
            break
    if not rest.startswith("/"):
        raise ValueError(f"{url!r} is neither an http(s) URL nor a path starting with \"/\"")
    if prefix or rest.endswith("*"):
        return Purge(host=host, prefix=rest.split("?", 1)[0].removesuffix("*"))
    return purge_item(rest, host, ignore)
