"""The fast path: answers ``App.ready`` gives at once, byte for byte what ``App.handle`` would.

A front end asks ``App.ready(request)`` (``http.prepared``) before it runs
the full, asynchronous pipeline; two kinds of request are answered there,
the ones a busy site serves most:

- **a small static file** from the per-process file cache
  (``open_files``, nginx's ``open_file_cache``): 200 or 304 (the
  conditions checked as ``static.serve_file`` checks them), the site's
  ``static_max_age`` headers; in the coding the compression filter would
  pick (``Compressor.decision``), compressed once and kept beside the file
  (the full path compresses a small file for each request: same bytes,
  the codings are deterministic), counted per response in its coding as
  the filter counts it (bytes and CPU where it was made, as the page
  cache counts its variants);
- **a page-cache HIT** (``SiteCache.ready``): a fresh memory-tier entry,
  in identity or a coding the entry already keeps, a 304 for a
  conditional request the entry satisfies.

Both get the site's header rules, as every response does. The answer is
made by the same functions the full path calls, in the same order; what
could differ is declined (``None``, nothing counted), and the full path
answers it as before:

- methods other than GET and HEAD; a Range request (static);
- a site with per-request rules ahead of routing: rate limits, access
  lists, basic auth (``Guard``), return or rewrite rules, the ACME
  challenge path, the HTTPS redirect of a plain-HTTP request; a site with
  ``precompressed`` siblings (static); error pages that a status below
  400 could get (page cache);
- anything routing does not answer with a file or a PHP script of a site
  with a page cache; a file too big for the file cache, or one it cannot open;
- a file over ``compress.INLINE_MAX`` the filter would compress (the full
  path does that in a thread), any compression with ``server_timing`` on
  (its header says what the compression took); a hit whose coding is not
  kept yet, a bypass (cookie, path), a miss, a stale or disk-tier entry
  (page cache).

Caches, all per process and bounded (the oldest dropped first): the route
of a request target on a site (``ROUTES`` entries, target and Host of at
most ``ROUTE_TARGET_MAX`` bytes together, trusted for ``open_files.VALID``
like the files they name: a file created in the meantime is seen that
much later; the full path takes a PHP script's route from here, for the
request ``ready`` declined, ``routed``); a page-cache hit's answer, by its entry (held weakly: an
entry the page cache dropped is freed, and a purged or replaced entry's
answer is not used), method, Accept-Encoding, Age (its second) and path,
counted anew each time it is sent (``HITS`` of them); and each file's
answers, by what they depend on (method, Accept-Encoding, the path the
header rules see; the second, where ``static_max_age`` puts Expires),
dropped with the file's entry when it changes. Answers are remembered
only for a target of at most ``ROUTE_TARGET_MAX`` and an Accept-Encoding
of at most ``ACCEPT_MAX`` bytes (the keys are the client's bytes). A
conditional request is answered afresh each time.

``symlinks = "within_root"``: a route is trusted for ``VALID``, but the
file it names may be read again meanwhile (its entry due for a check, or
read for a site that follows links) through a link put in its place; so
each version of a file is checked for each such site before it serves
it (its path resolved now leads into the site's root or an alias, to
the file that was read). A link is never followed out of the root, as
under nginx's ``disable_symlinks``, which is checked at each open.
"""

from __future__ import annotations

import os
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..http.cache_policy import raw_target
from ..http.encoding import add_vary, coded_headers
from ..http.header_rules import HeaderRules
from ..http.prepared import Prepared, prepare
from ..http.request import Request
from ..http.response import Response, http_date
from .cache import Entry, SiteCache
from .compress import INLINE_MAX
from .open_files import VALID, CachedFile, FileCache, identity
from .routing import BadRequestTarget, PhpScript, Route, Router, StaticFile, split_target
from .static import content_type, file_headers, not_modified

if TYPE_CHECKING:
    from .site import App

#: Request targets whose route is remembered, per process, and the longest
#: target and Host together remembered (a flood of long random targets or
#: Hosts costs at most ~3 MB).
ROUTES = 4096
ROUTE_TARGET_MAX = 512
#: The longest Accept-Encoding an answer is remembered by (browsers send
#: ~25 bytes; a client's header may be ~32 KiB, and the keys are kept).
ACCEPT_MAX = 128
#: Answers remembered per file (method x Accept-Encoding x path, mostly a handful).
ANSWERS_PER_FILE = 16
#: Page-cache answers remembered (by entry, method, Accept-Encoding, age in seconds).
HITS = 1024
#: Request headers that make a conditional request (its answer is made afresh).
_CONDITIONS = (b"if-none-match", b"if-modified-since")
_ACME_PREFIX = "/.well-known/acme-challenge/"


@dataclass(frozen=True, slots=True)
class _Answer:
    prepared: Prepared
    #: the coding it is sent in (counted per response), None: identity
    coding: str | None


@dataclass(frozen=True, slots=True)
class _Hit:
    #: the page-cache entry it was made from (a purged or replaced one is
    #: not it), held weakly: what the page cache dropped is freed
    entry: weakref.ref[Entry]
    #: the answer without its body (the entry's, or its ``coding``'s variant)
    prepared: Prepared
    coding: str | None
    with_body: bool

    def answer(self, entry: Entry) -> Prepared:
        """The answer, its body taken from ``entry`` (the one it was made from)."""
        p = self.prepared
        if not self.with_body:
            return p
        body = entry.body if self.coding is None else entry.variants[self.coding]
        return Prepared(p.status, p.reason, p.headers, p.fields, body, p.ours)


@dataclass(frozen=True, slots=True)
class _Site:
    router: Router
    rules: HeaderRules | None
    #: static files may be answered here
    files: bool
    #: its page cache, when hits may be answered here
    cache: SiteCache | None


class FastPath:
    """``App.ready``'s work (see the module docstring)."""

    def __init__(self, app: App, *, valid: float = VALID) -> None:
        self.app = app
        self.valid = valid
        self.files = FileCache(valid=valid, clock=trio.current_time)
        self._sites: dict[str, _Site | None] = {}
        #: (site, host, target) -> (trusted until, path, route)
        self._routes: OrderedDict[tuple[str, bytes, bytes], tuple[float, str, Route]] = OrderedDict()
        self._hits: OrderedDict[tuple[object, ...], _Hit] = OrderedDict()
        #: the request ``ready`` last routed and declined, its path and route
        #: (``routed``: the full path's routing of that same request)
        self._declined: tuple[Request, str, Route] | None = None

    def routed(self, req: Request) -> tuple[str, Route] | None:
        """The normalised path and route ``ready`` found for ``req`` as it
        declined it, once (None: it did not route ``req``). Only a site without
        rules ahead of routing (return, rewrite, rate limit, access, basic auth,
        the ACME path, the HTTPS redirect) is routed there, so that is the
        route the full path's own routing would give (trusted, as every route
        here, for ``VALID``)."""
        declined = self._declined
        if declined is None or declined[0] is not req:
            return None
        self._declined = None
        return declined[1], declined[2]

    def ready(self, req: Request) -> Prepared | None:
        if req.method != b"GET" and req.method != b"HEAD":
            return None
        app = self.app
        router = app.vhosts.lookup(req.host)
        try:
            site = self._sites[router.name]
        except KeyError:
            site = self._sites[router.name] = self._site(router)
        if site is None or (router.site.redirect_to_https and not req.https):
            return None
        found = self._route(router, req)
        if found is None:
            return None
        path, route = found
        if type(route) is StaticFile:
            return self._file(site, req, path, route) if site.files else None
        if type(route) is PhpScript:
            if site.cache is not None:
                return self._hit(site, site.cache, req, path)
            if router.site.symlinks == "follow":
                # kept for ``routed`` (under "within_root" the full path routes
                # again: a link put in the script's place is seen at once)
                self._declined = (req, path, route)
        return None

    def _site(self, router: Router) -> _Site | None:
        """What may be answered here for ``router``'s site; None: nothing."""
        app = self.app
        if not router.root or router.rules or router.name in app.guard.sites:
            return None
        cache = app.caches.get(router.name)
        pages = app.error_pages.get(router.name)
        if cache is not None and pages and pages.intercept and any(status < 400 for status in pages.pages):
            cache = None
        return _Site(router, app.header_rules.get(router.name) or None, not router.site.precompressed, cache)

    def _route(self, router: Router, req: Request) -> tuple[str, Route] | None:
        """The normalised path and the route of ``req``'s target (remembered
        for ``valid`` seconds); None for a target routing refuses."""
        key = (router.name, req.host, req.target)
        now = trio.current_time()
        found = self._routes.get(key)
        if found is not None and found[0] > now:
            return found[1], found[2]
        try:
            path, query = split_target(req.target)
        except BadRequestTarget:
            return None
        if self.app.acme_state is not None and path.startswith(_ACME_PREFIX):
            return None
        route = router.route(path, query, req.host)
        if len(req.target) + len(req.host) <= ROUTE_TARGET_MAX:
            self._routes[key] = (now + self.valid, path, route)
            self._routes.move_to_end(key)
            if len(self._routes) > ROUTES:
                self._routes.popitem(last=False)
        return path, route

    def _file(self, site: _Site, req: Request, path: str, route: StaticFile) -> Prepared | None:
        """``App._static`` and what follows it, for a file the cache keeps."""
        headers = req.header_map()
        if b"range" in headers:
            return None
        f = self.files.get(route.path)
        if f is None or f.body is None:
            return None
        router = site.router
        if router.site.symlinks == "within_root" and router.name not in f.within and not _lies_within(router, f):
            return None
        expires = bool(router.static_max_age) and route.uri.lower().endswith(router.static_cache_extensions)
        accept = headers.get(b"accept-encoding")
        key: tuple[object, ...] | None = None
        if not any(c in headers for c in _CONDITIONS) and _keyable(req, accept):
            key = (router.name, path, route.uri, req.method, accept, int(time.time()) if expires else 0)
            kept = f.answers.get(key)
            if kept is not None:
                assert isinstance(kept, _Answer)
                answer = kept
                if answer.coding is not None:
                    self.app.compressor.count_response(answer.coding)
                return answer.prepared
        made = self._file_answer(site, req, path, route, f, headers, accept, expires)
        if made is None:
            return None
        if made.coding is not None:
            self.app.compressor.count_response(made.coding)
        if key is not None:
            if len(f.answers) >= ANSWERS_PER_FILE:
                f.answers.clear()
            f.answers[key] = made
        return made.prepared

    def _file_answer(self, site: _Site, req: Request, path: str, route: StaticFile, f: CachedFile,
                     headers: dict[bytes, bytes], accept: bytes | None, expires: bool) -> _Answer | None:
        assert f.body is not None
        base = file_headers(route.path, f.etag, f.mtime)
        if not_modified(headers, f.etag, f.mtime):
            resp = Response(304, [h for h in base if h[0] != b"content-type"])
        else:
            resp = Response(200, [*base, (b"content-length", b"%d" % len(f.body))],
                            f.body if req.method == b"GET" else b"")
        router = site.router
        if expires:
            resp.headers.append((b"expires", http_date(time.time() + router.static_max_age)))
            resp.headers.append((b"cache-control", b"max-age=%d" % router.static_max_age))
        compressor = self.app.compressor
        decision = compressor.decision(req.method, accept, resp, content_type=content_type(route.path))
        coding = decision.coding if decision.compress else None
        if coding is not None:  # (``Compressor.apply``'s steps, its bytes kept)
            if compressor.settings.server_timing:
                return None  # its Server-Timing says what this compression took
            if req.method == b"HEAD":
                resp.headers = coded_headers(resp.headers, coding)
            else:
                data = f.variants.get(coding)
                if data is None:
                    if len(f.body) > INLINE_MAX:
                        return None  # the full path compresses it in a thread
                    data = compressor.compress_now(coding, f.body)
                    self.files.add_variant(f, coding, data)
                resp.headers = coded_headers(resp.headers, coding, length=len(data))
                resp.body = data
        elif decision.vary:
            resp.headers = add_vary(resp.headers)
        prepared = self._finish(site, req, path, resp)
        return _Answer(prepared, coding) if prepared is not None else None

    def _hit(self, site: _Site, cache: SiteCache, req: Request, path: str) -> Prepared | None:
        """``App._php`` and what follows it, for a page-cache HIT."""
        raw_path, raw_query = raw_target(req.target)
        entry = cache.ready_entry(req, raw_path, raw_query, path)
        if entry is None:
            return None
        key: tuple[object, ...] | None = None
        accept = req.header(b"accept-encoding")
        if not any(n in _CONDITIONS for n, _ in req.headers) and _keyable(req, accept):
            age = max(0, int(trio.current_time() - entry.stored_at))
            key = (site.router.name, entry.where.key, req.method, accept, age, path)
            kept = self._hits.get(key)
            if kept is not None and kept.entry() is entry:
                cache.stats.requests["HIT"] += 1  # (``SiteCache._label``'s count; the header is in the answer)
                if kept.coding is not None:
                    self.app.compressor.count_response(kept.coding)
                return kept.answer(entry)
        answer = cache.answer(entry, req)
        if answer is None:
            return None
        resp, coding = answer
        # (the compression filter after it: a coded hit is left alone, an
        # identity one gets the Vary the cache's own decision gave it)
        decision = self.app.compressor.decision(req.method, accept, resp)
        if decision.vary and not decision.compress:
            resp.headers = add_vary(resp.headers)
        prepared = self._finish(site, req, path, resp)
        if prepared is not None and key is not None:
            head = Prepared(prepared.status, prepared.reason, prepared.headers, prepared.fields, b"", prepared.ours)
            self._hits[key] = _Hit(weakref.ref(entry), head, coding, bool(prepared.body))
            if len(self._hits) > HITS:
                self._hits.popitem(last=False)
        return prepared

    @staticmethod
    def _finish(site: _Site, req: Request, path: str, resp: Response) -> Prepared | None:
        """``App.handle``'s last step (header rules), and the answer made ready to send."""
        if site.rules is not None:
            resp.headers = site.rules.apply(path, resp.status, resp.headers)
        return prepare(resp, head_only=req.method == b"HEAD")


def _keyable(req: Request, accept: bytes | None) -> bool:
    """May an answer to ``req`` be remembered by its target and ``accept``
    (both short enough: the keys are the client's bytes)?"""
    return len(req.target) <= ROUTE_TARGET_MAX and (accept is None or len(accept) <= ACCEPT_MAX)


def _lies_within(router: Router, f: CachedFile) -> bool:
    """Is the file ``f`` holds (read through its path, maybe for a site
    that follows links) where ``router``'s site lets a link lead? Its path
    resolved now, and the file there the one that was read: the route said
    so when it was made, but the file may have been read again since,
    through a link put in its place (``f.within`` remembers a yes)."""
    try:
        real = os.path.realpath(f.path)
        same = identity(os.stat(real)) == f.identity
    except (OSError, ValueError):
        return False
    if not same or not router.within(real):
        return False
    f.within.add(router.name)
    return True
