"""The request handler: virtual host, route, then static file, PHP or an error.

``App.handle`` takes a fully read ``Request`` and returns a ``Response``; it does
no client IO, so it is the same whether the client is a socket or a test's
memory stream.

Edge policy, in the order it applies to a request of a site:

0. ACME HTTP-01 (``acme_challenge``): when a site has ``[sites.X.tls] acme =
   true``, ``GET /.well-known/acme-challenge/TOKEN`` is answered on every site,
   before routing (so before any redirect, deny rule or PHP), from the key
   authorisation the ACME task (another process) wrote to the state dir. A token
   with no file there goes on to routing as any other path, so a site's own
   files under that prefix still work.
1. ``redirect_to_https``: a plain-HTTP request is answered 308 to the same
   target over HTTPS (``http.https_redirect``), before routing; the ACME
   challenge path is routed as usual.
   Then ``[[sites.X.return]]`` and ``[[sites.X.rewrite]]`` (``app.rewrite``,
   nginx's rewrite phase): a return rule answers at once; a rewrite changes
   the path (and query) that routing and the later steps see.
2. ``[[sites.X.rate_limit]]``, ``[[sites.X.access]]``, the ``deny`` list,
   ``[[sites.X.basic_auth]]`` (``app.guard``): 429, 403 or 401 instead of
   the site's answer, or a rate limit's delay; checked again after routing
   for the URI a directory index or try_files' fallback led to.
3. The route's answer; a static file may be a precompressed sibling
   (``precompressed``: ``x.css.br``/``x.css.gz`` beside ``x.css``, chosen by
   Accept-Encoding like a dynamic coding, served with the original's
   Content-Type, the sibling's ETag and Last-Modified, ``Vary``; a Range
   request gets the original's bytes as before).
4. X-Accel-Redirect / X-Sendfile on a PHP or proxied response: replaced by
   the file it names (``accel``), before compression; the target's access
   rules and basic auth apply (``Guard.check(internal=True)``).
5. Error pages (``error_pages``): an error response, the gateway's own or,
   with ``intercept_errors``, a backend's (before compression: its body is
   discarded uncompressed), replaced by the site's page for its status,
   fetched as an internal request (never a page for a page) and compressed
   as any response.
6. Compression (``compress``) of static and PHP responses alike (with a
   502/504 page in their place); the gateway's own small pages for a refused
   route, a bad target or a redirect are sent as they are.
7. Header rules (``http.header_rules``, ``[[sites.X.headers]]`` and the
   table form ``[sites.X.headers]``) on every response of the site, error
   pages and redirects included; a rule with ``preflight`` answers a CORS
   preflight 204 right after the HTTPS redirect, before routing.

``App.ready`` answers the commonest requests at once, before the front end
builds the machinery above (``app.fastpath``): a small file from the
per-process file cache, a page-cache HIT; it runs the same steps in the
same order and declines (None) wherever one of them would need IO, a rule
that depends on the client, or work it cannot repeat exactly. A PHP script
it routed and declined (a site without a page cache, rules ahead of routing
or ``symlinks = "within_root"``) is not routed again: ``handle`` takes that
route (``FastPath.routed``), trusted for ``open_files.VALID`` as the fast
path trusts it (a script created or removed meanwhile is seen that much later).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import trio

from ..config import Config
from ..config.addresses import parse_listen
from ..http import https_redirect
from ..http.cache_policy import Purge, raw_target
from ..http.encoding import add_vary, choose_coding
from ..http.errors import ClientGone, GatewayError
from ..http.header_rules import HeaderRule, HeaderRules
from ..http.prepared import Prepared
from ..http.realip import TrustedProxies
from ..http.request import IDEMPOTENT_METHODS, Request
from ..http.response import Response, error_response, http_date
from ..http.rewrite import Routed
from ..metrics import CacheStats, CompressionStats, GuardStats
from ..tls.store import StateDir
from ..upstream import cgi
from ..upstream.exchange import UpstreamBody, UpstreamResponse, run_php
from ..upstream.fastcgi import FastCgiConn, PhpSettings
from ..upstream.pool import Pool
from . import accel, error_pages
from .cache import PageCaches
from .cgi_params import CgiParams
from .compress import CompressionSettings, Compressor
from .error_pages import ErrorPages, page_headers, page_ok
from .fastpath import FastPath
from .guard import Guard
from .guard_table import GuardTable
from .proxy import Proxy, ProxyBackend, exchange_failed, frame_body
from .rewrite import apply_rules, upstream_request
from .routing import (
    BadRequestTarget,
    PhpScript,
    ProxyPass,
    Redirect,
    Refuse,
    Router,
    StaticFile,
    VirtualHosts,
    redirected_uri,
    split_target,
)
from .static import content_type, serve_file

#: Precompressed siblings, in the server's order of preference, and their suffix.
PRECOMPRESSED = (("br", ".br"), ("gzip", ".gz"))

log = logging.getLogger(__name__)

ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
#: A key authorisation is a token, a dot and a thumbprint: well under this.
MAX_KEY_AUTHORIZATION = 1024


@dataclass(frozen=True, slots=True)
class _SiteBackend:
    pool: Pool[FastCgiConn]
    settings: PhpSettings


def tls_port(config: Config) -> int:
    """The port of the first ``tls`` listener in ``[server] listen`` (443 when none is)."""
    for entry in config.server.listen:
        spec = parse_listen(entry)
        if spec.tls and spec.where.kind == "tcp":
            return spec.where.port
    return 443


#: PHP's headers the client never sees; X-Accel-Redirect and X-Sendfile stay
#: until ``_accel`` follows them.
_PHP_HIDDEN = cgi.GATEWAY_ONLY_HEADERS - accel.FOLLOWED

#: Request headers an error page's internal GET does not carry: it has no
#: body, and the client's conditions are about the URI it asked for.
_NOT_FOR_PAGES = frozenset({b"content-length", b"content-type", b"transfer-encoding", b"range", b"if-range",
                            b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since"})


def rule_path(target: bytes) -> str:
    """The path header rules match: the normalised one, "/" for a bad target."""
    try:
        return split_target(target)[0]
    except BadRequestTarget:
        return "/"


class App:
    """``pools``: each backend's, by name (a FastCGI pool for a PHP backend,
    an HTTP/1.1 one for a ``type = "http"`` backend)."""

    def __init__(self, config: Config, pools: dict[str, Pool[Any]],
                 compression: CompressionStats | None = None, guard: GuardStats | None = None,
                 guard_table: str = "", cache_stats: CacheStats | None = None) -> None:
        self.config = config
        #: rate_limit, access, basic_auth (``guard_table``: the workers' shared table, ``guard_table.create``)
        self.guard = Guard(config, guard, GuardTable.open(guard_table) if guard_table else None)
        self.compressor = Compressor(CompressionSettings.from_config(config), compression)
        self.tls_port = tls_port(config)
        self.header_rules = {name: HeaderRules(HeaderRule.build(**rule.model_dump()) for rule in site.headers)
                             for name, site in config.sites.items()}
        self.error_pages = {name: ErrorPages(site.error_pages, site.intercept_errors)
                            for name, site in config.sites.items()}
        #: the sites that have header rules / error pages (a lookup per
        #: request, no ``__bool__`` call for the sites without)
        self._rules_of = {name: rules for name, rules in self.header_rules.items() if rules}
        self._pages_of = {name: pages for name, pages in self.error_pages.items() if pages}
        self.server_software = config.server.server_software.encode()
        #: PHP's FastCGI params, what is the same per site encoded once (goes with this App on a reload)
        self.cgi_params = CgiParams(self.server_software)
        self.server_timing = config.server.server_timing
        self.vhosts = VirtualHosts(config.sites)
        self.pools = pools
        #: where HTTP-01 key authorisations are, when any site uses ACME
        self.acme_state = (StateDir(config.acme.state_path())
                           if any(site.tls is not None and site.tls.acme for site in config.sites.values()) else None)
        self._backends: dict[str, _SiteBackend] = {}
        proxied: dict[str, ProxyBackend] = {}
        for name, backend in config.backends.items():
            if name not in pools:
                continue
            if backend.type == "http":
                proxied[name] = ProxyBackend.from_config(pools[name], backend, config.server)
            else:
                self._backends[name] = _SiteBackend(pools[name], PhpSettings.from_config(backend, config.server))
        #: page caches by site name (``[sites.X.cache] enabled``)
        self.cache_stats = cache_stats if cache_stats is not None else CacheStats()
        self.caches = PageCaches(config, pools, self.cache_stats, self.compressor)
        self.proxy = Proxy(proxied, trusted=TrustedProxies.parse(config.server.trusted_proxies),
                           via=self.server_software, error=self.error)
        #: answers at hand at once: small files, page-cache hits (``ready``)
        self.fastpath = FastPath(self)

    def ready(self, req: Request) -> Prepared | None:
        """``handle``'s answer to ``req`` if it is at hand now, byte for byte
        (``app.fastpath``; ``http.prepared``); None: await ``handle``."""
        return self.fastpath.ready(req)

    async def run(self) -> None:
        """The page caches' background work (``PageCaches.run``), until cancelled."""
        await self.caches.run()

    async def purge(self, purge: Purge, site: str | None = None) -> int:
        return await self.caches.purge(purge, site)

    def error(self, status: int, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
        return error_response(status, server=self.server_software, headers=headers)

    async def handle(self, req: Request) -> Response:
        """The response to ``req`` (the full pipeline; the module docstring)."""
        router = self.vhosts.lookup(req.host)
        try:
            resp = await self._handle(req, router)
        except ClientGone:
            raise
        except GatewayError as exc:
            log.error("[%s] %s %s -> %d: %s", req.request_id, req.method.decode(), req.target.decode("latin-1"),
                      exc.status, exc)
            resp = self.error(exc.status, list(exc.headers))
        except Exception:
            # a bug: the front end would answer 500 too, without the site's headers
            log.exception("[%s] unhandled error while handling %s %s", req.request_id, req.method.decode(),
                          req.target.decode("latin-1"))
            resp = self.error(500)
        pages = self._pages_of.get(router.name)
        if pages is not None and resp.status >= 400 and not resp.from_upstream:
            resp = await self._error_page(req, router, pages, resp)
        rules = self._rules_of.get(router.name)
        if rules is not None:
            resp.headers = rules.apply(rule_path(req.target), resp.status, resp.headers)
        return resp

    #: the App is the front end's handler: ``handle`` awaited, ``ready`` asked first
    __call__ = handle

    async def _handle(self, req: Request, router: Router) -> Response:
        rules: Routed | None = None
        routed = self.fastpath.routed(req)
        if routed is not None:
            # ``ready`` routed it and declined: a site with no rules ahead of
            # routing (no HTTPS redirect, return, rewrite or guard rule, not
            # the ACME path), so its route is the one the steps below give
            path, route = routed
            hrules = self._rules_of.get(router.name)
            if hrules is not None and hrules.is_preflight(path, req.method, req.headers):
                return Response(204)  # a CORS preflight: the header rules add its headers
        else:
            try:
                path, query = split_target(req.target)
            except BadRequestTarget as exc:
                log.info("[%s] %s: %s", req.request_id, exc.status, exc)
                return self.error(exc.status)
            if self.acme_state is not None and path.startswith(ACME_CHALLENGE_PREFIX):
                answer = self.acme_challenge(req, path[len(ACME_CHALLENGE_PREFIX):])
                if answer is not None:
                    return answer
            if router.site.redirect_to_https and not req.https and not https_redirect.exempt(path):
                name = req.host or router.server_name or req.server[0].encode()
                return self.error(308, [(b"location", https_redirect.location(name, req.target, self.tls_port))])
            hrules = self._rules_of.get(router.name)
            if hrules is not None and hrules.is_preflight(path, req.method, req.headers):
                return Response(204)  # a CORS preflight: the header rules add its headers
            applied = apply_rules(req, router, path, query, self.error)  # 2-3: return, rewrite
            if isinstance(applied, Response):
                return applied
            rules = applied
            path, query = rules.path, rules.query
            refusal = await self.guard.check(req, router, path)  # 4-5: rate_limit, access, basic_auth
            if refusal is not None:
                return self.error(refusal.status, refusal.headers)
            route = router.route(path, query, req.host)
            again = redirected_uri(route)  # an index or the front controller: its rules too
            if again is not None and (refusal := await self.guard.check_redirect(req, router, path, again)) is not None:
                return self.error(refusal.status, refusal.headers)
        if isinstance(route, PhpScript):  # (the commonest answer: tested first)
            resp = await self._php(req, router, route)
        elif isinstance(route, Refuse):
            log.debug("[%s] %d: %s", req.request_id, route.status, route.reason)
            return self.error(route.status)
        elif isinstance(route, Redirect):
            host = req.header(b"host")
            location = route.location.encode("utf-8", "surrogateescape")
            if host:
                location = (b"https://" if req.https else b"http://") + host + location
            return self.error(route.status, [(b"location", location)])
        elif isinstance(route, StaticFile):
            resp = self._static(req, router, route)
            if (router.static_max_age and resp.status in (200, 206, 304)
                    and route.uri.lower().endswith(router.static_cache_extensions)):
                # as nginx's "expires": both headers
                resp.headers.append((b"expires", http_date(time.time() + router.static_max_age)))
                resp.headers.append((b"cache-control", b"max-age=%d" % router.static_max_age))
            return await self.compressor.apply(req.method, req.header(b"accept-encoding"), resp,
                                               content_type=content_type(route.path))
        else:
            assert isinstance(route, ProxyPass)
            force = bool(router.unbuffered) and path.startswith(router.unbuffered)
            proxied = upstream_request(req, rules) if rules is not None else req  # (None: no rules)
            resp = await self.proxy.handle(proxied, route.backend, force_stream=force)
        if resp.from_upstream and accel.find(resp.headers) is not None:  # (``_accel``'s test: no await without one)
            resp = await self._accel(req, router, resp)
        # A PHP or proxy answer, compressed; or, for a backend's own error with
        # ``intercept_errors``, the site's page in its place (its body never compressed
        # for nothing). The gateway's own errors get their pages in ``handle``.
        pages = self._pages_of.get(router.name)
        if pages is not None and resp.from_upstream and pages.page_for(resp.status, from_upstream=True) is not None:
            return await self._error_page(req, router, pages, resp)
        accept = req.header(b"accept-encoding")
        # (most answers are not compressed: no await for those)
        return self.compressor.unchanged(req.method, accept, resp) or await self.compressor.apply(
            req.method, accept, resp)

    async def _accel(self, req: Request, router: Router, resp: Response) -> Response:
        """A backend's response, or the file its X-Accel-Redirect / X-Sendfile
        names (``accel``), its body closed first (the slot freed)."""
        if not resp.from_upstream:
            return resp
        found = accel.find(resp.headers)
        if found is None:
            return resp
        await resp.aclose()
        what = f"{found.header.decode()} {found.value[:200].decode('latin-1')!r}"
        try:
            path, query = split_target(accel.target(found, router.internal_dirs, os.path.realpath))
        except (accel.AccelRefused, BadRequestTarget) as exc:
            log.error("[%s] %s %s: %s: 502", req.request_id, req.method.decode(), req.target.decode("latin-1"), exc)
            out = self.error(502)
        else:
            refusal = await self.guard.check(req, router, path, internal=True)
            route = router.route(path, query, req.host, internal=True) if refusal is None else None
            if refusal is not None:
                log.info("[%s] %s: %d from the rules of %s", req.request_id, what, refusal.status, path)
                out = self.error(refusal.status, refusal.headers)
            elif isinstance(route, StaticFile):
                method = b"HEAD" if req.method == b"HEAD" else b"GET"
                out = serve_file(route.path, method, req.header_map(), server=self.server_software)
                if out.status in accel.FILE_OK:
                    out.headers = accel.merge(resp.headers, out.headers)
            elif isinstance(route, Refuse):
                log.info("[%s] %s: %d: %s", req.request_id, what, route.status, route.reason)
                out = self.error(route.status)
            elif isinstance(route, PhpScript) and route.script_name != path:
                log.info("[%s] %s: 404: no such file (try_files would run %s)", req.request_id, what,
                         route.script_name)
                out = self.error(404)
            else:
                log.error("[%s] %s is not a static file (PHP, a backend or a directory): 502", req.request_id, what)
                out = self.error(502)
        out.upstream, out.timing = resp.upstream, resp.timing
        return out

    async def _error_page(self, req: Request, router: Router, pages: ErrorPages, resp: Response) -> Response:
        """``resp``, or the site's page for its status (``error_pages``),
        compressed as any response. The page of a backend's error says
        ``from_upstream`` too: it is not paged again."""
        uri = pages.page_for(resp.status, resp.from_upstream)
        if uri is None:
            return resp
        status = resp.status
        await resp.aclose()  # an intercepted body goes now, and its upstream slot with it
        page = None
        try:
            page = await self._fetch_page(req, router, uri, status)
        except ClientGone:
            raise
        except Exception:
            log.exception("[%s] error page %s for %d failed", req.request_id, uri.decode("latin-1"), status)
        if page is None:
            page = self.error(status, [(n, v) for n, v in resp.headers if n.lower() in error_pages.KEPT])
        else:
            page.status, page.reason = status, b""
            page.headers = page_headers(resp.headers, page.headers)
            page = await self.compressor.apply(req.method, req.header(b"accept-encoding"), page)
        page.upstream, page.timing, page.from_upstream = resp.upstream, resp.timing, resp.from_upstream
        return page

    async def _fetch_page(self, req: Request, router: Router, uri: bytes, status: int) -> Response | None:
        """The page at ``uri`` for a ``status`` error, None when it fails (logged)."""
        try:
            path, query = split_target(uri)
        except BadRequestTarget as exc:
            log.error("[%s] error page %s for %d: %s", req.request_id, uri.decode("latin-1"), status, exc)
            return None
        route = router.route(path, query, req.host, internal=True)
        method = b"HEAD" if req.method == b"HEAD" else b"GET"
        page: Response
        if isinstance(route, StaticFile):
            page = serve_file(route.path, method, {}, server=self.server_software)
            if page.status == 200:
                return page
        elif isinstance(route, PhpScript):
            sub = replace(req, method=method, body=None,
                          headers=[(n, v) for n, v in req.headers if n not in _NOT_FOR_PAGES])
            page = await self._php(sub, router, route, extra={b"REDIRECT_STATUS": b"%d" % status})
            if page.from_upstream and page_ok(status, page.status):
                return page
        else:
            log.error("[%s] error page %s for %d is neither a file nor a PHP script", req.request_id,
                      uri.decode("latin-1"), status)
            return None
        await page.aclose()
        log.error("[%s] error page %s for %d answered %d: the built-in page instead", req.request_id,
                  uri.decode("latin-1"), status, page.status)
        return None

    def _static(self, req: Request, router: Router, route: StaticFile) -> Response:
        """The file, or its precompressed sibling for a client that accepts it."""
        headers = req.header_map()
        if not router.site.precompressed or req.method not in (b"GET", b"HEAD"):
            return serve_file(route.path, req.method, headers, server=self.server_software)
        siblings = {coding: route.path + suffix for coding, suffix in PRECOMPRESSED
                    if router.is_regular_file(route.path + suffix)}
        if not siblings:
            return serve_file(route.path, req.method, headers, server=self.server_software)
        coding = None
        if b"range" not in headers:  # a range is of the original's bytes, as before
            coding = choose_coding(headers.get(b"accept-encoding"), tuple(siblings))
        if coding is None:
            resp = serve_file(route.path, req.method, headers, server=self.server_software)
            resp.headers = add_vary(resp.headers)
            return resp
        resp = serve_file(siblings[coding], req.method, headers, server=self.server_software)
        if resp.status not in (200, 304):
            # the sibling vanished or is unreadable: the original, as if there were none
            resp.close()
            resp = serve_file(route.path, req.method, headers, server=self.server_software)
            resp.headers = add_vary(resp.headers)
            return resp
        out = [(n, v) for n, v in resp.headers if n not in (b"content-type", b"accept-ranges")]
        if resp.status == 200:
            self.compressor.stats.precompressed[coding] = self.compressor.stats.precompressed.get(coding, 0) + 1
            out.insert(0, (b"content-type", content_type(route.path)))
            out.append((b"content-encoding", coding.encode()))
        resp.headers = add_vary(out)
        return resp

    def acme_challenge(self, req: Request, token: str) -> Response | None:
        """The HTTP-01 answer for ``token`` (RFC 8555 8.3), None when no
        validation of that token is under way."""
        assert self.acme_state is not None
        if req.method not in (b"GET", b"HEAD"):
            return None
        try:
            with open(self.acme_state.http_challenge(token), "rb") as f:
                body = f.read(MAX_KEY_AUTHORIZATION)
        except (ValueError, OSError):  # not a token, or not one being validated
            return None
        log.info("[%s] ACME HTTP-01 challenge %s answered", req.request_id, token)
        return Response(200, [(b"content-type", b"application/octet-stream"), (b"cache-control", b"no-store")], body)

    async def _php(self, req: Request, router: Router, script: PhpScript,
                   extra: dict[bytes, bytes] | None = None) -> Response:
        cache = self.caches.get(router.name)
        path, query = raw_target(req.target)
        if cache is None or extra is not None:  # (an error page's request: neither cached nor counted)
            resp = await self._php_run(req, router, script, extra)
            backend = self._backends.get(router.site.php)
            self.caches.uncached(req, path, resp,
                                 backend.pool.instruments if backend is not None and extra is None else None)
            return resp
        req, script = cache.unkeyed_params_out(req, script)
        php_req = cache.for_php(req)  # (``req`` keeps the client's Accept-Encoding: a hit is coded for it)
        return await cache.handle(req, path, query,
                                  lambda detached: self._php_run(php_req, router, script, detached=detached),
                                  routed_path=split_target(req.target)[0])

    async def _php_run(self, req: Request, router: Router, script: PhpScript,
                       extra: dict[bytes, bytes] | None = None, *, detached: bool = False) -> Response:
        """PHP's response; ``extra``: FastCGI params of an error page's request;
        ``detached``: a cache refresh nobody waits for (no client to watch, no
        request body)."""
        backend_name = router.site.php
        backend = self._backends.get(backend_name)
        if backend is None:
            log.error("[%s] backend %s has no pool", req.request_id, backend_name)
            return self.error(502)
        params = self.cgi_params.encode(req, router, script,
                                        req.body.size if req.body is not None and not detached else None, extra)
        t0 = trio.current_time() if self.server_timing else 0.0  # (only Server-Timing reads it)
        force = bool(router.unbuffered) and script.document_uri.startswith(router.unbuffered)
        pool = backend.pool
        try:
            result = await run_php(pool, params, None if detached else req.body, backend.settings,
                                   request_id=req.request_id, retry_safe=req.method in IDEMPOTENT_METHODS,
                                   client_left=None if detached else req.client_left,
                                   force_stream=force,
                                   key=req.client[0].encode() if pool.balance == "ip_hash" else None)
        except GatewayError as exc:
            return exchange_failed(req, pool, exc, self.error)
        return self._php_response(req, result, trio.current_time() - t0 if self.server_timing else 0.0)

    def _php_response(self, req: Request, result: UpstreamResponse, head_time: float) -> Response:
        head = result.head
        timing = result.timing
        headers = [(n, v) for n, v in head.headers if n.lower() not in _PHP_HIDDEN]
        if isinstance(result.body, UpstreamBody) and self.server_timing:
            # streamed: only the time until PHP's headers is known now
            headers.append((b"server-timing", b"headers;dur=%.1f" % (head_time * 1000)))
        body = frame_body(req, result, headers)
        if self.server_timing and not isinstance(result.body, UpstreamBody):
            headers.append((b"server-timing", b"queue;dur=%.1f, php;dur=%.1f" % (
                timing.queue_wait * 1000, (timing.upstream_time or 0.0) * 1000)))
        return Response(head.status, headers, body, reason=head.reason, upstream=result.upstream, timing=timing,
                        from_upstream=True)
