"""The page cache of a PHP site: a memory tier (LRU), the stampede lock,
stale serving, purges. The rules (what is cached, the key, lifetimes) are
``http.cache_policy``'s; this module keeps entries and decides who waits.

One ``SiteCache`` per site with ``[sites.X.cache] enabled``, wrapped around
the PHP handler (``App._php``), before the compression filter. An entry holds
PHP's identity body, and each coding a client asked for (br, gzip), made at
the first hit that asked for it and kept beside it (``Entry.variants``,
counted in ``max_size``); the coding is chosen by ``http.encoding``'s rules as
for any response. Measured on a 52 KB WordPress home page (README "Page
cache"): br at quality 5 costs ~0.9 ms of CPU per compression, a hit served
from a kept variant ~45 us of handler CPU against ~1.3 ms when every hit is
compressed again; br and gzip variants add ~37 % to the entry (9 + 10 KB).

- **Memory tier**: entries in an LRU ordered dict, bounded by ``max_size``
  (body + headers); storing past the bound drops the least recently used
  (``evictions``). Each gateway process has its own (README: "across
  processes"): a purge through the master's admin reaches them all.
- **Disk tier** (``disk_dir``, ``cache_disk``): asked when memory has no
  entry (or only an expired one: another process may have refreshed it),
  written with every entry stored (in a thread, before the lock is released),
  shared by the processes; a purge here purges it too (in a thread).
- **Complete bodies only**: a response is stored after PHP's output was
  drained whole into its spool (``upstream.exchange``), before the client is
  sent a byte; a streamed response is never stored, and a request whose
  client leaves while PHP runs is cancelled before anything is stored.
- **Stampede lock**: the first request for a missing or expired key goes to
  PHP; others for that key wait on its ``trio.Event`` (``lock_waits``), at
  most ``lock_timeout`` in all, then go to PHP themselves. When the leader's
  response was stored, they are HITs. When it could not be stored (no-store,
  Set-Cookie, an error), the key is marked uncacheable for
  ``UNCACHEABLE_FOR`` seconds: the waiters and the requests after them go to
  PHP at once, side by side, without the lock (Varnish's hit-for-miss; without
  it, requests for a no-store page would reach PHP one at a time). When the
  leader's client left, the next waiter leads.
- **Across worker processes** (``locks``, ``app.cache_lock``): the leader of
  a process first claims the key in the table the workers share. When
  another process holds it, this request waits for that process's fetch
  (``_watch``, polling the table) and the others of its process wait on it
  as on a leader; then the page is taken from the disk tier, or, without one,
  from the hand-off file every stored page is written to for
  ``HANDOFF_KEEP`` seconds (``handoff``: a request of another process that
  comes just after the fetch finds it there too). The outcome (stored,
  uncacheable, or nothing: the holder's client left, its process died) is
  the table's, so each process goes on as its own waiters would.
- **stale_while_revalidate**: a stale entry is served at once (``STALE``)
  while one refresh runs in the background, in the nursery ``App.run`` owns
  (no orphan task; it ends with the process). Without that nursery (an App
  that is not run) a stale entry is refetched in the foreground.
- **stale_if_error**: a 500/502/503/504 from PHP (or from the gateway in
  PHP's place) is replaced by an entry still in that window (``STALE``).
- **Purges**: ``PURGE`` from ``purge_allow`` (a unix socket peer only with
  "unix:" there: a front proxy on one would pass anyone's) (this host's path, "/prefix/*",
  "tag:NAME" in ``X-Cache-Purge`` style), PHP's ``X-Cache-Purge`` response
  header (stripped before the client), the admin's ``POST /cache/purge``.
  A purge a request made is its site's alone, here and in the other worker
  processes: PHP's ``X-Cache-Purge: *`` empties its own site's cache, never
  another site's (another customer's, on a shared host).
  ``X-Cache-Tags`` from PHP tags an entry (stripped too).
- **Hits at once** (``ready_entry`` and ``answer``, for ``app.fastpath``): a fresh memory-tier
  entry below 400, in identity or a kept coding, is answered in the
  connection cycle, built and counted by the same methods ``handle``
  uses; anything else (a miss, stale, disk tier, a bypass, a coding to
  make) is declined uncounted, and ``handle`` answers it.
- **What PHP is sent** (``unkeyed_params_out``, ``for_php``): for a GET or
  HEAD, the query without ``ignore_params`` and no ``Accept-Encoding``: what
  the key leaves out must not change PHP's answer. A purge scans the
  entries: O(entries), fine for the thousands a memory tier holds.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from ..config import Config
from ..config.cache import CacheConfig
from ..http.cache_lock import DONE_KEEP, STORED, UNCACHEABLE, Claim
from ..http.cache_policy import (
    CACHEABLE_METHODS,
    NOT_MODIFIED_HEADERS,
    CacheKey,
    CachePolicy,
    Freshness,
    Lifetime,
    Purge,
    cache_key,
    drop_params,
    freshness,
    not_modified,
    purge_item,
    purge_items,
    request_bypass,
    storable,
    stored_headers,
    tag_list,
    would_store,
)
from ..http.encoding import add_vary, coded_headers, decide
from ..http.request import Request
from ..http.response import Response
from ..http.spool import Spool
from ..metrics import CacheStats, PoolInstruments
from .accel import FOLLOWED
from .cache_disk import DiskStore, head_headers
from .cache_lock import HANDOFF_KEEP, CacheLocks
from .compress import Compressor, compress_bytes
from .routing import PhpScript

log = logging.getLogger(__name__)

#: What an entry costs beyond its body and headers (the objects around them).
ENTRY_OVERHEAD = 256
#: PHP's answers that a stale_if_error entry replaces.
ERROR_STATUSES = frozenset({500, 502, 503, 504})
#: How long a page whose response could not be stored goes to PHP without the
#: lock (Varnish's hit-for-miss): concurrent requests for an uncacheable URL
#: must not queue behind each other.
UNCACHEABLE_FOR = 10.0
#: The most such pages remembered (the oldest forgotten first).
MAX_UNCACHEABLE = 10_000
#: The PHP handler: ``detached`` for a background refresh (no client to watch).
Fetch = Callable[[bool], Awaitable[Response]]


@dataclass(slots=True)
class Held:
    """A request's hold on a key's stampede lock: its key in the shared table
    (None: no table, the lock is this process's alone), its token there, and
    how its fetch ended (``http.cache_lock``'s STORED, UNCACHEABLE; None: the
    client left or it failed)."""

    shared: bytes | None
    token: int = 0
    phase: int | None = None


@dataclass(slots=True, weakref_slot=True)  # (``app.fastpath`` keeps answers by entry, weakly)
class Entry:
    where: CacheKey
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    tags: frozenset[str]
    lifetime: Lifetime
    #: trio.current_time() when stored
    stored_at: float
    #: the body compressed, by coding, made at the first hit that asked for it
    variants: dict[str, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(n) + len(v) + 4 for n, v in self.headers) + len(self.where.key) \
            + sum(len(v) for v in self.variants.values()) + ENTRY_OVERHEAD


class MemoryStore:
    """Entries by key, least recently used first, at most ``max_size`` bytes."""

    def __init__(self, max_size: int, stats: CacheStats) -> None:
        self.max_size = max_size
        self.stats = stats
        self.bytes = 0
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, entry: Entry) -> None:
        self.remove(entry.where.key)
        size = entry.size
        if size > self.max_size:
            return
        while self.bytes + size > self.max_size and self._entries:
            self._drop(next(iter(self._entries)))
            self.stats.evictions += 1
        self._entries[entry.where.key] = entry
        self.bytes += size
        self.stats.entries += 1
        self.stats.bytes += size

    def add_variant(self, entry: Entry, coding: str, data: bytes) -> None:
        """Keep ``entry``'s body coded with ``coding``, making room for it (not by dropping ``entry``)."""
        if self._entries.get(entry.where.key) is not entry or coding in entry.variants:
            return  # purged or replaced meanwhile
        while self.bytes + len(data) > self.max_size and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == entry.where.key:
                self._entries.move_to_end(oldest)
                continue
            self._drop(oldest)
            self.stats.evictions += 1
        if self.bytes + len(data) > self.max_size:
            return
        entry.variants[coding] = data
        self.bytes += len(data)
        self.stats.bytes += len(data)

    def remove(self, key: bytes) -> bool:
        if key not in self._entries:
            return False
        self._drop(key)
        return True

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        size = entry.size
        self.bytes -= size
        self.stats.entries -= 1
        self.stats.bytes -= size

    def purge(self, purge: Purge) -> int:
        doomed = [key for key, entry in self._entries.items() if purge.matches(entry.where, entry.tags)]
        for key in doomed:
            self._drop(key)
        self.stats.purged += len(doomed)
        return len(doomed)


def is_cacheable(policy: CachePolicy, method: bytes, resp: Response) -> bool:
    """Could a page cache with ``policy`` have stored ``resp`` (PHP's answer to ``method``)?"""
    return isinstance(storable(policy, method, resp.status, resp.headers, _body_size(resp), time.time()), Lifetime)


def _body_size(resp: Response) -> int | None:
    """The body's size if it is known whole (drained, or bytes)."""
    return resp.body.size if isinstance(resp.body, Spool) else len(resp.body) if isinstance(resp.body, bytes) else None


def _networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


def _body_bytes(body: Spool) -> bytes:
    """A drained PHP body, whole (bounded by max_entry_size by the caller)."""
    return body.getvalue() if body.in_memory else b"".join(body.chunks())


class SiteCache:
    """One site's cache (see the module docstring)."""

    def __init__(self, site: str, config: CacheConfig, stats: CacheStats, compressor: Compressor | None = None,
                 instruments: PoolInstruments | None = None) -> None:
        self.site = site
        #: the site's PHP pool's, where cacheable PHP responses are counted (the verdict)
        self.instruments = instruments
        if instruments is not None:
            instruments.cache_on = True
        #: codes hits per client, each coding once per entry (None: identity only)
        self.compressor = compressor
        self.policy = CachePolicy.build(
            ttl=config.ttl, bypass_cookies=config.bypass_cookies, bypass_paths=config.bypass_paths,
            vary=config.vary, stale_while_revalidate=config.stale_while_revalidate,
            stale_if_error=config.stale_if_error, statuses=config.statuses, max_entry_size=config.max_entry_size,
            ignore_params=config.ignore_params)
        self.header = config.header.lower().encode()
        self.lock_timeout = config.lock_timeout
        self.purge_allow = _networks(c for c in config.purge_allow if c != "unix:")
        self.purge_unix = "unix:" in config.purge_allow
        self.stats = stats
        self.store = MemoryStore(config.max_size, stats)
        #: the shared disk tier, one directory per site
        self.disk = DiskStore(os.path.join(config.disk_dir, site), config.disk_max_size) if config.disk_dir else None
        #: keys being fetched, and the event their waiters wait on
        self._fetching: dict[bytes, trio.Event] = {}
        #: keys whose last response could not be stored, until when (trio time)
        self._uncacheable: OrderedDict[bytes, float] = OrderedDict()
        #: the stampede lock's table shared with the other worker processes
        #: (``PageCaches.share_locks``); None: the lock is this process's alone
        self.locks: CacheLocks | None = None
        #: where a fetched page is left for the other processes' waiters when
        #: there is no disk tier (``app.cache_lock``'s hand-off files)
        self.handoff: DiskStore | None = None
        #: hand-off files this process wrote, by key: how many times (``_drop_handoff``)
        self._handoffs: dict[bytes, int] = {}
        #: where background refreshes run (``App.run``); None: refresh in the foreground
        self.nursery: trio.Nursery | None = None
        #: awaited for each purge a request made (PURGE, X-Cache-Purge), after
        #: this process's own, to pass it on to the other worker processes
        #: (``serve.process``) before the response goes out
        self.on_purge: Callable[[Purge], Awaitable[None]] | None = None

    # -- serving -------------------------------------------------------------------

    def unkeyed_params_out(self, req: Request, script: PhpScript) -> tuple[Request, PhpScript]:
        """``req`` and its ``script`` without the query parameters the key
        leaves out (``ignore_params``) for a GET or HEAD: what is not in the
        key must not reach PHP, or a page that echoes one would be stored
        with one visitor's value (a script) for everybody."""
        if req.method not in CACHEABLE_METHODS or not self.policy.ignore_params:
            return req, script
        path, q, query = req.target.partition(b"?")
        target = path + q + drop_params(query, self.policy.ignore_params) if q else req.target
        clean = drop_params(script.query, self.policy.ignore_params)
        if target.endswith(b"?"):
            target = target[:-1]
        if target == req.target and clean == script.query:
            return req, script
        return dataclasses.replace(req, target=target), dataclasses.replace(script, query=clean)

    @staticmethod
    def for_php(req: Request) -> Request:
        """``req`` as PHP gets it: a GET or HEAD without ``Accept-Encoding``.
        The cache stores PHP's identity body and codes it per client; a body
        PHP compressed itself (ob_gzhandler, zlib.output_compression) is not
        stored, so with gzip asked of it by most clients the page would never
        be cached (each try marking it uncacheable); and the key does not
        hold Accept-Encoding, so no PHP answer may depend on it (nginx users
        set ``fastcgi_param HTTP_ACCEPT_ENCODING ""`` for this)."""
        if req.method not in CACHEABLE_METHODS or req.header(b"accept-encoding") is None:
            return req
        return dataclasses.replace(req, headers=[(n, v) for n, v in req.headers if n != b"accept-encoding"])

    async def handle(self, req: Request, path: str, query: str, fetch: Fetch, *,
                     routed_path: str | None = None) -> Response:
        """``req``'s response from the cache or from ``fetch`` (PHP).
        ``path``: as sent (the key's); ``routed_path``: decoded, slashes
        merged, dot segments resolved, as the router found the script:
        ``bypass_paths`` are matched against both (``//wp-admin/``,
        ``/%77p-json/`` and ``/x/../wp-login.php`` run what ``/wp-admin/``,
        ``/wp-json/`` and ``/wp-login.php`` run)."""
        if req.method == b"PURGE":
            return await self.purge_request(req, path, query)
        bypass = request_bypass(self.policy, req.method, path, req.headers)
        if bypass is None and routed_path is not None and routed_path != path:
            bypass = request_bypass(self.policy, req.method, routed_path, req.headers)
        if bypass is not None:
            resp = await fetch(False)
            await self.after_php(resp, req.host)
            if bypass != "method":
                self._label(resp, "BYPASS")
                if self.instruments is not None and is_cacheable(self.policy, b"GET", resp):
                    self.instruments.cacheable += 1
                    self.instruments.cache_bypassed += 1
            return resp
        where = cache_key(self.policy, https=req.https, host=req.host, path=path, query=query, headers=req.headers)
        deadline = trio.current_time() + self.lock_timeout
        waited = False
        lead: Held | None = None
        while True:
            entry = self.store.get(where.key)
            if entry is None and self.disk is not None:
                entry = self._from_disk(where)
            state = freshness(entry.stored_at, entry.lifetime, trio.current_time()) if entry is not None else None
            if entry is not None and state is Freshness.FRESH:
                return self._not_modified(entry, req, "HIT") or await self._coded(
                    self._from_entry(entry, req.method, "HIT"), entry, req)
            if entry is not None and state is Freshness.STALE and self.nursery is not None:
                if req.method == b"GET":
                    self._refresh_in_background(where, fetch)
                return self._not_modified(entry, req, "STALE") or await self._coded(
                    self._from_entry(entry, req.method, "STALE"), entry, req)
            event = self._fetching.get(where.key)
            if req.method != b"GET" or trio.current_time() >= deadline or self._marked_uncacheable(where.key):
                break  # a HEAD, an uncacheable page, or the wait ran out: to PHP without the lock
            if event is None:
                shared = self._fresh_elsewhere(where, entry)
                if shared is not None:  # fetched by another process: its hand-off file, or the disk tier
                    return self._not_modified(shared, req, "HIT") or await self._coded(
                        self._from_entry(shared, req.method, "HIT"), shared, req)
                claim, lead = self._claim(where)
                if claim is Claim.LEAD:
                    break
                if claim is Claim.UNCACHEABLE:
                    self._mark_uncacheable(where.key)
                    break
                # another process fetches it: this request waits for it for every request of this process
                if not waited:
                    waited = True
                    self.stats.lock_waits += 1
                await self._watch(where, deadline)
                continue
            if not waited:
                waited = True
                self.stats.lock_waits += 1
            with trio.move_on_at(deadline):
                await event.wait()
        if lead is None:
            return await self._fetch(where, req.method, fetch, entry, detached=False)
        event = self._fetching[where.key] = trio.Event()
        try:
            return await self._fetch(where, req.method, fetch, entry, detached=False, lead=lead)
        finally:
            del self._fetching[where.key]
            self._release(lead)
            event.set()

    # -- the stampede lock -----------------------------------------------------------

    def _claim(self, where: CacheKey) -> tuple[Claim, Held | None]:
        """Take ``where``'s lock (this process's alone, or the shared one), or
        say why not: another process holds it, or the page is uncacheable."""
        if self.locks is None:
            return Claim.LEAD, Held(None)
        shared = self.locks.key(self.site, where.key)
        claim, lock = self.locks.claim(shared, self.lock_timeout)
        if claim is not Claim.LEAD:
            return claim, None
        assert lock is not None
        if self.handoff is not None:
            self.handoff.remove(where.key)  # (one a killed holder left)
        return claim, Held(shared, lock.token)

    def _release(self, lead: Held) -> None:
        if self.locks is not None and lead.shared is not None:
            self.locks.release(lead.shared, lead.token, lead.phase,
                               UNCACHEABLE_FOR if lead.phase == UNCACHEABLE else DONE_KEEP)

    async def _watch(self, where: CacheKey, deadline: float) -> None:
        """Wait until another process's fetch of ``where`` is over (or
        ``deadline``), this process's other requests for it waiting on this
        one; then take what it left: its entry, or its uncacheable mark."""
        assert self.locks is not None
        event = self._fetching[where.key] = trio.Event()
        try:
            lock = await self.locks.wait(self.locks.key(self.site, where.key), deadline)
            if lock is not None and lock.phase == UNCACHEABLE:
                self._mark_uncacheable(where.key)
            elif lock is not None and lock.phase == STORED and (self.disk or self.handoff) is not None:
                self._from_disk(where, self.disk or self.handoff)
        finally:
            del self._fetching[where.key]
            event.set()

    def _fresh_elsewhere(self, where: CacheKey, entry: Entry | None) -> Entry | None:
        """A fresh entry for ``where`` (kept in memory too) that another
        process stored since this one looked: on the disk tier, when this
        process has only an expired one (without one, the lookup asked the
        disk already), or in a hand-off file."""
        found = None
        if self.disk is not None and entry is not None:
            found = self._from_disk(where)
        elif self.disk is None and self.handoff is not None:
            found = self._from_disk(where, self.handoff)
        if found is None or freshness(found.stored_at, found.lifetime, trio.current_time()) is not Freshness.FRESH:
            return None
        return found

    async def _drop_handoff(self, key: bytes) -> None:
        """Remove ``key``'s hand-off file ``HANDOFF_KEEP`` seconds from now,
        unless this process wrote it again meanwhile (the newer one's timer will)."""
        assert self.handoff is not None
        mine = self._handoffs[key] = self._handoffs.get(key, 0) + 1
        try:
            await trio.sleep(HANDOFF_KEEP)
        finally:
            if self._handoffs.get(key) == mine:
                del self._handoffs[key]
                self.handoff.remove(key)

    def _from_disk(self, where: CacheKey, disk: DiskStore | None = None) -> Entry | None:
        """The disk tier's entry for ``where`` (or ``disk``'s: the hand-off
        files), kept in memory too."""
        disk = disk or self.disk
        assert disk is not None
        found = disk.get(where.key)
        if found is None:
            return None
        head, body = found
        age = max(0.0, time.time() - float(head["stored"]))
        lifetime = Lifetime(float(head["fresh"]), float(head["swr"]), float(head["sie"]))
        entry = Entry(where, int(head["status"]), str(head.get("reason", "")).encode("latin-1"),
                      head_headers(head), body, frozenset(head.get("tags", ())), lifetime,
                      trio.current_time() - age)
        self.store.put(entry)
        return entry

    def _marked_uncacheable(self, key: bytes) -> bool:
        until = self._uncacheable.get(key)
        if until is None:
            return False
        if until > trio.current_time():
            return True
        del self._uncacheable[key]
        return False

    def _mark_uncacheable(self, key: bytes) -> None:
        self._uncacheable.pop(key, None)
        self._uncacheable[key] = trio.current_time() + UNCACHEABLE_FOR
        while len(self._uncacheable) > MAX_UNCACHEABLE:
            self._uncacheable.popitem(last=False)

    def _refresh_in_background(self, where: CacheKey, fetch: Fetch) -> None:
        if where.key in self._fetching or self.nursery is None:
            return
        event = self._fetching[where.key] = trio.Event()
        self.nursery.start_soon(self._refresh, where, fetch, event)

    async def _refresh(self, where: CacheKey, fetch: Fetch, event: trio.Event) -> None:
        try:
            resp = await self._fetch(where, b"GET", fetch, None, detached=True)
            await resp.aclose()
        except Exception as exc:  # one refresh's failure is that refresh's: the entry stays stale
            log.warning("cache: refreshing %s failed: %r", where.key.decode("latin-1"), exc)
        finally:
            del self._fetching[where.key]
            event.set()

    async def _fetch(self, where: CacheKey, method: bytes, fetch: Fetch, old: Entry | None, *,
                     detached: bool, lead: Held | None = None) -> Response:
        """PHP's response, stored when it may be; a stale_if_error entry in
        place of an error. ``lead``: the lock this request holds, told how it
        ended; a page is written where other processes look (the disk tier,
        or a hand-off file) before the lock is released."""
        resp = await fetch(detached)
        if resp.status in ERROR_STATUSES and old is not None and freshness(
                old.stored_at, old.lifetime, trio.current_time()) is not Freshness.EXPIRED:
            log.info("cache: %s answered %d, serving the stale copy", where.key.decode("latin-1"), resp.status)
            await resp.aclose()
            return self._from_entry(old, method, "STALE")
        tags = tag_list(resp.headers)
        await self.after_php(resp, where.host)
        size = resp.body.size if isinstance(resp.body, Spool) else None
        lifetime = storable(self.policy, method, resp.status, resp.headers, size, time.time())
        if isinstance(lifetime, Lifetime) and self.instruments is not None and not detached:
            self.instruments.cacheable += 1
        if isinstance(lifetime, Lifetime) and isinstance(resp.body, Spool):
            body = _body_bytes(resp.body)
            resp.body.close()
            resp.body = body
            entry = Entry(where, resp.status, resp.reason, stored_headers(resp.headers), body, tags, lifetime,
                          trio.current_time())
            self.store.put(entry)
            if self.disk is not None:
                await self.disk.store(where, entry.status, entry.reason, entry.headers, body, tags, lifetime,
                                      time.time())
            elif self.handoff is not None and self.nursery is not None:  # (shared for HANDOFF_KEEP seconds)
                await self.handoff.store(where, entry.status, entry.reason, entry.headers, body, tags, lifetime,
                                         time.time())
                self.nursery.start_soon(self._drop_handoff, where.key)
            self._uncacheable.pop(where.key, None)
            if lead is not None:
                lead.phase = STORED
            elif self.locks is not None:
                self.locks.cacheable_again(self.locks.key(self.site, where.key))
        elif method == b"GET":
            log.debug("cache: %s not stored: %s", where.key.decode("latin-1"), lifetime)
            if resp.status != 304:  # (PHP's answer to a conditional request says nothing of the page)
                self._mark_uncacheable(where.key)
                if lead is not None:
                    lead.phase = UNCACHEABLE
        self._label(resp, "EXPIRED" if old is not None else "MISS")
        return resp

    def _not_modified(self, entry: Entry, req: Request, label: str) -> Response | None:
        """A 304 for a conditional request the entry satisfies, else None."""
        if entry.status != 200 or not not_modified(req.headers, entry.headers):
            return None
        age = max(0, int(trio.current_time() - entry.stored_at))
        resp = Response(304, [*((n, v) for n, v in entry.headers if n.lower() in NOT_MODIFIED_HEADERS),
                              (b"age", b"%d" % age)], from_upstream=True)
        self._label(resp, label)
        return resp

    async def _coded(self, resp: Response, entry: Entry, req: Request) -> Response:
        """A hit in the coding the client prefers (``http.encoding``'s rules),
        compressed at the first hit that asks for that coding and kept in the
        entry; identity (with Vary) otherwise. The compression filter leaves
        a coded response alone."""
        coding, vary = self._coding(entry, req)
        if coding is None:
            if vary:
                resp.headers = add_vary(resp.headers)
            return resp
        data = entry.variants.get(coding)
        if data is None:
            assert self.compressor is not None
            s = self.compressor.settings
            body = entry.body
            data = await self.compressor.run(
                lambda: compress_bytes(coding, body, br_quality=s.br_quality, gzip_level=s.gzip_level), len(body))
            self.compressor.stats.bytes_in += len(body)
            self.compressor.stats.bytes_out += len(data)
            self.store.add_variant(entry, coding, data)
        return self._coded_as(resp, req, coding, data)

    def _coding(self, entry: Entry, req: Request) -> tuple[str | None, bool]:
        """The coding a hit on ``entry`` is sent in for ``req`` (None:
        identity), and whether the answer varies on Accept-Encoding."""
        if self.compressor is None:
            return None, False
        s = self.compressor.settings
        decision = decide(status=entry.status, headers=entry.headers, length=len(entry.body),
                          accept=req.header(b"accept-encoding"), offered=s.offered, min_size=s.min_size)
        if not decision.compress or decision.coding is None:
            return None, decision.vary
        return decision.coding, True

    def _coded_as(self, resp: Response, req: Request, coding: str, data: bytes) -> Response:
        assert self.compressor is not None
        self.compressor.count_response(coding)
        resp.headers = coded_headers(resp.headers, coding, length=len(data))
        if req.method != b"HEAD":
            resp.body = data
        return resp

    def ready_entry(self, req: Request, path: str, query: str, routed_path: str) -> Entry | None:
        """The entry a hit answered at once (``app.fastpath``) is made from:
        a fresh entry of the memory tier, status below 400 (error pages may
        stand in for those), no X-Accel-Redirect to follow; nothing counted.
        None otherwise: ``handle`` then answers."""
        if req.method not in CACHEABLE_METHODS:
            return None
        policy = self.policy
        if request_bypass(policy, req.method, path, req.headers) is not None or (
                routed_path != path and request_bypass(policy, req.method, routed_path, req.headers) is not None):
            return None
        where = cache_key(policy, https=req.https, host=req.host, path=path, query=query, headers=req.headers)
        entry = self.store.get(where.key)
        if entry is None or entry.status >= 400 or freshness(
                entry.stored_at, entry.lifetime, trio.current_time()) is not Freshness.FRESH:
            return None
        if any(n.lower() in FOLLOWED for n, _ in entry.headers):
            return None
        return entry

    def answer(self, entry: Entry, req: Request) -> tuple[Response, str | None] | None:
        """The answer from ``ready_entry``'s ``entry``, counted as ``handle`` counts it, and
        the coding it is in (None: identity, or a 304); None (uncounted)
        when that coding is not kept yet."""
        not_modified = self._not_modified(entry, req, "HIT")
        if not_modified is not None:
            return not_modified, None
        coding, vary = self._coding(entry, req)
        data = entry.variants.get(coding) if coding is not None else None
        if coding is not None and data is None:
            return None  # the first hit in this coding compresses it (``_coded``)
        resp = self._from_entry(entry, req.method, "HIT")
        if coding is not None and data is not None:
            return self._coded_as(resp, req, coding, data), coding
        if vary:
            resp.headers = add_vary(resp.headers)
        return resp, None

    def _from_entry(self, entry: Entry, method: bytes, label: str) -> Response:
        age = max(0, int(trio.current_time() - entry.stored_at))
        headers = [*entry.headers, (b"content-length", b"%d" % len(entry.body)), (b"age", b"%d" % age)]
        # PHP's answer, kept: error pages and X-Accel treat it as they treat PHP's
        resp = Response(entry.status, headers, b"" if method == b"HEAD" else entry.body, reason=entry.reason,
                        from_upstream=True)
        self._label(resp, label)
        return resp

    def _label(self, resp: Response, label: str) -> None:
        self.stats.requests[label] += 1
        resp.headers.append((self.header, label.encode()))

    # -- purging -------------------------------------------------------------------

    async def after_php(self, resp: Response, host: bytes | str) -> None:
        """Carry out PHP's ``X-Cache-Purge``; take it and ``X-Cache-Tags`` out of the response."""
        items = [item for n, v in resp.headers if n.lower() == b"x-cache-purge" for item in purge_items(v)]
        if items or any(n.lower() == b"x-cache-tags" for n, _ in resp.headers):
            resp.headers = [(n, v) for n, v in resp.headers if n.lower() not in (b"x-cache-purge", b"x-cache-tags")]
        if not items:
            return
        name = host.decode("latin-1") if isinstance(host, bytes) else host
        n = 0
        for item in items:
            n += await self._purge_here_and_there(purge_item(item, name, self.policy.ignore_params))
        log.info("cache: PHP purged %s on %s: %d entries", ", ".join(items), name or "every host", n)

    def purge_allowed(self, address: str) -> bool:
        """Is ``address`` (the client, behind trusted proxies the real one;
        "unix:" for a unix socket peer) in ``purge_allow``?"""
        if address.startswith("unix:"):  # only with "unix:": a front proxy on a unix socket passes anyone's
            return self.purge_unix
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.purge_allow)

    async def purge_request(self, req: Request, path: str, query: str) -> Response:
        """``PURGE /path`` (every variant), ``/path?query``, ``/prefix/*``; 403
        from an address not in ``purge_allow``."""
        if not self.purge_allowed(req.client[0]):
            log.info("[%s] PURGE from %s refused (not in purge_allow)", req.request_id, req.client[0])
            return Response(403, [(b"content-type", b"text/plain")], b"purge not allowed from this address\n")
        target = path + ("?" + query if query else "")
        n = await self._purge_here_and_there(purge_item(target, req.host.decode("latin-1"),
                                                        self.policy.ignore_params))
        log.info("[%s] PURGE %s from %s: %d entries", req.request_id, target, req.client[0], n)
        return Response(200, [(b"content-type", b"application/json")], b'{"purged": %d}\n' % n)

    async def _purge_here_and_there(self, purge: Purge) -> int:
        purge = dataclasses.replace(purge, site=self.site)  # (the siblings: this site's entries only)
        n = await self.purge(purge)
        if self.on_purge is not None:
            await self.on_purge(purge)
        return n

    async def purge(self, purge: Purge) -> int:
        """Remove the entries ``purge`` matches, from memory and disk (and the
        hand-off files); how many (an entry in both counts once: the larger
        of the two counts)."""
        n = self.store.purge(purge)
        if self.disk is not None:
            n = max(n, await self.disk.purge_async(purge))
        if self.handoff is not None:
            await self.handoff.purge_async(purge)
        return n


#: PHP's response headers for the page cache: never sent on, cache or not.
CACHE_INSTRUCTIONS = (b"x-cache-purge", b"x-cache-tags")


class PageCaches(dict[str, SiteCache]):
    """Every site's ``SiteCache`` by site name (sites with ``[sites.X.cache]
    enabled``), and what the App asks of them all: the background nursery
    (``run``), purges, and the count of cacheable PHP responses on sites
    without a cache (the verdict's hint)."""

    def __init__(self, config: Config, pools: Mapping[str, Any], stats: CacheStats,
                 compressor: Compressor | None = None) -> None:
        super().__init__({name: SiteCache(name, site.cache, stats, compressor,
                                          pools[site.php].instruments if site.php in pools else None)
                          for name, site in config.sites.items() if site.cache.enabled})
        self.stats = stats
        stats.enabled = bool(self)
        #: what a page cache with the defaults would store (sites without one)
        self.default_policy = SiteCache("", CacheConfig(), CacheStats()).policy
        self._disk_found: dict[str, tuple[int, int]] = {}

    async def run(self) -> None:
        """Own the nursery the caches refresh stale entries and sweep their
        disk tiers in, until cancelled."""
        async with trio.open_nursery() as nursery:
            for cache in self.values():
                cache.nursery = nursery
                if cache.disk is not None:
                    nursery.start_soon(cache.disk.run_sweeper, partial(self._disk_swept, cache.site))
            try:
                await trio.sleep_forever()
            finally:
                for cache in self.values():
                    cache.nursery = None

    def _disk_swept(self, site: str, entries: int, size: int) -> None:
        """A disk tier's sweep found ``entries`` and ``size`` bytes: the stats hold every site's sum."""
        self._disk_found[site] = (entries, size)
        self.stats.disk_entries = sum(n for n, _ in self._disk_found.values())
        self.stats.disk_bytes = sum(b for _, b in self._disk_found.values())

    async def purge(self, purge: Purge, site: str | None = None) -> int:
        """Remove the entries ``purge`` matches from every site's cache (or
        ``site``'s; a purge a request made: its site's)."""
        site = purge.site if site is None else site
        return sum([await cache.purge(purge) for name, cache in self.items() if site is None or name == site])

    def share_locks(self, path: str) -> None:
        """Hold the stampede lock in the worker processes' shared table at
        ``path`` (``cache_lock.create``); before privileges drop."""
        locks = CacheLocks.open(path)
        if locks is None:
            return
        for cache in self.values():
            cache.locks = locks
            if cache.disk is None:
                cache.handoff = DiskStore(os.path.join(locks.handoff_dir, cache.site), cache.store.max_size,
                                          flat=True)  # (never swept: each file is removed by its writer)

    def uncached(self, req: Request, path: str, resp: Response, instruments: PoolInstruments | None) -> None:
        """A PHP response of a site without a cache: the cache's instructions
        taken out, and counted in ``instruments`` if a cache could keep it."""
        headers = resp.headers
        if any(n.lower() in CACHE_INSTRUCTIONS for n, _ in headers):
            resp.headers = headers = [(n, v) for n, v in headers if n.lower() not in CACHE_INSTRUCTIONS]
        if instruments is not None and would_store(self.default_policy, req.method, path, req.headers, resp.status,
                                                   headers, _body_size(resp)):
            instruments.cacheable += 1
