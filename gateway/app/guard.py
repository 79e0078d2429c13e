"""Site rules that guard a site, in nginx's phase order: ``rate_limit``
(preaccess), then ``access``, the site's ``deny`` list and ``basic_auth``
(access). ``App`` makes one call, ``Guard.check``, before routing.

Policy:

- Each kind matches by URI prefix on the normalised, decoded path (the one
  routing sees); the longest prefix of a kind decides (``http.prefix``), so a
  longer rule can open what a shorter one closes. A rate limit matches the
  request's method too (``methods``; none: all); HEAD counts as GET, as in
  return rules and nginx's ``limit_except`` (PHP runs the same script for
  both: a HEAD flood must not slip past a GET limit).
- The client is the real one (``Request.client``: after ``[server]
  trusted_proxies``, as REMOTE_ADDR). A client that is no IP address (a unix
  socket peer) is not rate limited (nginx skips an empty key) and matches
  only ``"all"`` in access lists.
- Rate limit (``http.ratelimit``): over the burst, 429 with an integer
  ``Retry-After``; within it, delayed to the rate here, unless ``nodelay``.
  The delay holds the request's task and connection, no PHP worker. A 429
  is logged at debug level only: under a flood one line each would fill the
  error log (the access log shows each 429; ``gateway_rate_limited_total``
  counts them). Access and auth refusals are one info line each.
- Access (``http.access``): not permitted, 403.
- A URI an internal redirect leads to (a directory's index file, the last
  ``try_files`` entry: ``/index.php`` for a pretty permalink) is checked
  too, after routing (``check_redirect``), as nginx runs the access phase
  again in the location it selects: a rule on ``/index.php`` covers every
  page WordPress answers, and one on ``/wp-admin/index.php`` covers
  ``/wp-admin/``. Its rate limit applies only if the request's own path had
  none (a request counts once). A file an earlier ``try_files`` entry
  finds (a disk-cache page) is served under the request's path, as nginx.
- An X-Accel-Redirect's target is checked by the access rules, the deny
  list and basic auth of its path too (nginx runs its access phase again
  for the internal redirect; only subrequests skip it), not by a rate
  limit (the request met it once). Error pages are not checked: a page is
  for whoever got the error (under nginx a 401 page inside ``auth_basic``
  shows the built-in page instead, a known trap).
- Basic auth: without credentials, or with wrong ones, 401 with
  ``WWW-Authenticate: Basic realm="..."``; wrong ones count as failures of the
  client's address (missing ones are a browser's first try, and do not); an
  address with ``max_failures`` failures in ``failure_window`` gets 429 with
  ``Retry-After`` before its credentials are even checked (so a password
  guesser costs no bcrypt). An attempt with credentials counts as a failure
  as it starts, in one table step with that test, and is taken back when it
  succeeds: concurrent guesses (HTTP/2 streams, many connections) cannot all
  pass the test while the first bcrypt runs. Rate-limit and failure states are in one table
  shared by the worker processes (``app.guard_table``).
- bcrypt (50-250 ms) runs in a thread, at most ``HASH_THREADS`` at once, so the
  event loop never waits on it; a success is remembered (``CACHE_SIZE``
  entries, keyed by a SHA-256 of the Authorization value and the user file's
  identity: a changed file forgets them) so a browser's every request does not
  cost a bcrypt. An unknown user is checked against a bcrypt hash of the file
  anyway, so the answer's timing does not tell which users exist.
- The user file is read at start (and at a reload, by the new workers), and
  again when its modification time, size or inode changes; a re-read that
  fails keeps the users read before, with one error line.
- The Authorization header still reaches PHP, as under nginx: PHP's
  PHP_AUTH_USER/PHP_AUTH_PW come from it, and REMOTE_USER is the user
  (``cgi_params``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import trio

from ..config import Config, SiteConfig
from ..config.guard import BasicAuthRule, parse_network, parse_rate
from ..http import htpasswd
from ..http.access import AccessRule, AddressList
from ..http.prefix import by_length, longest
from ..http.ratelimit import Admission, Limit, address_key, admit, attempt, blocked_for, forgive, rule_id
from ..http.realip import parse_ip
from ..http.request import Request
from ..metrics import GuardStats
from .guard_table import GuardTable
from .routing import Router

log = logging.getLogger(__name__)

#: bcrypt checks running at once in threads (each takes a core for its time)
HASH_THREADS = 2
#: successful logins remembered per process
CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Refusal:
    """The gateway's answer instead of the site's."""

    status: int
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class _RateRule:
    limit: Limit
    methods: frozenset[bytes]
    id: bytes


def _access(allow: list[str], deny: list[str]) -> AccessRule:
    return AccessRule(AddressList.of([parse_network(e) for e in allow]),
                      AddressList.of([parse_network(e) for e in deny]))


def read_user_file(path: str) -> htpasswd.Users:
    """The users of an htpasswd file.

    Raises:
        ValueError: a sentence for the operator (missing, unreadable, a bad line).
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist (make it with \"htpasswd -c -B {path} USER\")") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not an htpasswd file") from None
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror}") from None
    try:
        return htpasswd.parse(text)
    except htpasswd.HtpasswdError as exc:
        raise ValueError(f"{path}: {exc}") from None


def user_file_problems(config: Config) -> list[tuple[tuple[str, ...], str]]:
    """(key, message) for each ``basic_auth`` ``user_file`` that cannot be
    read or parsed (a ``config.Check``: ``gateway check``, start, reload)."""
    out: list[tuple[tuple[str, ...], str]] = []
    for name, site in config.sites.items():
        for i, rule in enumerate(site.basic_auth):
            if rule.realm != "off":
                try:
                    read_user_file(rule.user_file)
                except ValueError as exc:
                    out.append((("sites", name, "basic_auth", str(i), "user_file"), str(exc)))
    return out


class UserFile:
    """An htpasswd file, re-read when it changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity: tuple[int, int, int] | None = None
        self.users = htpasswd.Users({})
        #: a bcrypt hash of the file, to check unknown users against
        self.decoy: bytes | None = None
        self.current()

    def current(self) -> htpasswd.Users:
        """The users, re-read first if the file changed."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self.identity is not None:
                log.error("basic_auth user_file %s: %s; keeping the users read before", self.path, exc.strerror)
                self.identity = None
            return self.users
        identity = (st.st_mtime_ns, st.st_size, st.st_ino)
        if identity != self.identity:
            self.identity = identity
            try:
                self.users = read_user_file(self.path)
            except ValueError as exc:
                log.error("basic_auth user_file: %s; keeping the users read before", exc)
                return self.users
            self.decoy = next((h for h in self.users.hashes.values() if htpasswd.is_slow(h)), None)
        return self.users


@dataclass(frozen=True, slots=True)
class _AuthRule:
    header: bytes  # the WWW-Authenticate value
    users: UserFile
    max_failures: int
    window: float
    id: bytes


class _SiteRules:
    def __init__(self, name: str, site: SiteConfig, files: dict[str, UserFile]) -> None:
        rates = []
        for i, r in enumerate(site.rate_limit):
            rule = _RateRule(Limit(parse_rate(r.rate), r.burst, r.nodelay), frozenset(m.encode() for m in r.methods),
                             rule_id(name, "rate_limit", str(i), r.rate, str(r.burst)))
            rates += [(prefix, rule) for prefix in r.paths]
        self.rate = by_length(rates)
        self.access = by_length((prefix, _access(r.allow, r.deny)) for r in site.access for prefix in r.paths)
        auths: list[tuple[str, _AuthRule | None]] = []
        for i, a in enumerate(site.basic_auth):
            auths += [(prefix, self._auth(name, i, a, files)) for prefix in a.paths]
        self.auth = by_length(auths)

    @property
    def without_rate(self) -> _SiteRules:
        out = object.__new__(_SiteRules)
        out.rate, out.access, out.auth = (), self.access, self.auth
        return out

    @staticmethod
    def _auth(name: str, i: int, rule: BasicAuthRule, files: dict[str, UserFile]) -> _AuthRule | None:
        if rule.realm == "off":
            return None
        if rule.user_file not in files:
            files[rule.user_file] = UserFile(rule.user_file)
        return _AuthRule(b'Basic realm="%s"' % rule.realm.encode(), files[rule.user_file], rule.max_failures,
                         rule.failure_window, rule_id(name, "basic_auth", str(i)))


class Guard:
    """Every site's guarding rules, the shared state table, and the stats."""

    def __init__(self, config: Config, stats: GuardStats | None = None, table: GuardTable | None = None) -> None:
        self.stats = stats if stats is not None else GuardStats()
        files: dict[str, UserFile] = {}
        self.sites = {name: _SiteRules(name, site, files) for name, site in config.sites.items()
                      if site.rate_limit or site.access or site.basic_auth}
        self.table = table if table is not None or not self.sites else GuardTable.memory()
        self.limiter = trio.CapacityLimiter(HASH_THREADS)
        self.cache: OrderedDict[bytes, None] = OrderedDict()

    async def check(self, req: Request, router: Router, path: str, *, internal: bool = False) -> Refusal | None:
        """The refusal for ``req`` to ``path`` of ``router``'s site, or None:
        go on (possibly after a rate limit's delay). ``internal``: an
        X-Accel-Redirect's target, checked by access and basic auth only (the
        request met its rate limit already; nginx's limit_req too counts a
        request once)."""
        rules = self.sites.get(router.name)
        if rules is None:
            return None
        ip = parse_ip(req.client[0])
        if internal:
            rules = rules.without_rate
        # HEAD counts as GET (as nginx's limit_except and the return rules): PHP runs the same script for both
        method = b"GET" if req.method == b"HEAD" else req.method
        rate = longest(path, rules.rate, lambda r: not r.methods or method in r.methods) if rules.rate else None
        if rate is not None and ip is not None:
            assert self.table is not None
            limit = rate.limit
            answer: Admission = self.table.update(address_key(ip.packed, rate.id),
                                                  lambda state, now: admit(limit, state, now))
            self._count_evictions()
            if not answer.allowed:
                self.stats.bump(self.stats.rate_limited, router.name)
                # debug: a flood would fill the error log (the access log has each 429, the metric counts them)
                log.debug("[%s] 429: %s over the rate limit of %s", req.request_id, req.client[0], path)
                return Refusal(429, [(b"retry-after", b"%d" % answer.retry_after)])
            if answer.delay > 0:
                self.stats.bump(self.stats.delayed, router.name)
                await trio.sleep(answer.delay)
        access = longest(path, rules.access) if rules.access else None
        if access is not None and not access.permits(req.client[0]):
            self.stats.bump(self.stats.access_denied, router.name)
            log.info("[%s] 403: %s is not allowed under %s", req.request_id, req.client[0], path)
            return Refusal(403, [])
        if router.deny and path.startswith(router.deny):
            return None  # routing answers 403 (the deny list comes before basic auth)
        auth = longest(path, rules.auth) if rules.auth else None
        if auth is None:
            return None
        return await self._authenticate(req, router.name, auth, ip.packed if ip is not None else None)

    async def check_redirect(self, req: Request, router: Router, path: str, uri: str) -> Refusal | None:
        """``check`` for the URI an internal redirect (a directory's index,
        try_files' last entry) led ``path`` to, as nginx runs the access phase
        again in the location ``uri`` selects; its rate limit only when
        ``path`` had none (nginx's limit_req counts a request once)."""
        rules = self.sites.get(router.name)
        if rules is None or uri == path:
            return None
        method = b"GET" if req.method == b"HEAD" else req.method
        limited = longest(path, rules.rate, lambda r: not r.methods or method in r.methods) is not None
        return await self.check(req, router, uri, internal=limited)

    async def _authenticate(self, req: Request, site: str, rule: _AuthRule, packed: bytes | None) -> Refusal | None:
        key = address_key(packed, rule.id) if packed is not None else None
        if key is not None:
            assert self.table is not None
            wait = self.table.update(key, lambda state, now: (
                blocked_for(state, now, rule.max_failures, rule.window), None))
            if wait:
                return self._blocked(req, site, rule, wait)
        challenge = Refusal(401, [(b"www-authenticate", rule.header)])
        value = req.header(b"authorization")
        credentials = htpasswd.basic_credentials(value)
        if credentials is None or value is None:
            return challenge
        users = rule.users.current()
        remembered = hashlib.sha256(b"%r\0%s\0" % (rule.users.identity, rule.users.path.encode()) + value).digest()
        if remembered in self.cache:
            self.cache.move_to_end(remembered)
            return None
        if key is not None:
            # counted as a failure now, taken back on success: concurrent guesses meet the limit too
            assert self.table is not None
            wait = self.table.update(key, lambda state, now: attempt(state, now, rule.max_failures, rule.window))
            self._count_evictions()
            if wait:
                return self._blocked(req, site, rule, wait)
        user, password = credentials
        hashed = users.get(user)
        ok = False
        if hashed is None:
            if rule.users.decoy is not None:  # the same time as a known user's check
                await trio.to_thread.run_sync(htpasswd.verify, password, rule.users.decoy, limiter=self.limiter)
        elif htpasswd.is_slow(hashed):
            ok = await trio.to_thread.run_sync(htpasswd.verify, password, hashed, limiter=self.limiter)
        else:
            ok = htpasswd.verify(password, hashed)
        if ok:
            self.cache[remembered] = None
            if len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
            if key is not None:
                assert self.table is not None
                window = rule.window
                self.table.update(key, lambda state, now: (None, forgive(state, window)))
            return None
        self.stats.bump(self.stats.auth_failures, site)
        log.info("[%s] 401: wrong credentials for user %r from %s", req.request_id, user.decode("utf-8", "replace"),
                 req.client[0])
        return challenge

    def _blocked(self, req: Request, site: str, rule: _AuthRule, wait: int) -> Refusal:
        self.stats.bump(self.stats.auth_blocked, site)
        log.info("[%s] 429: %s failed basic auth %d times", req.request_id, req.client[0], rule.max_failures)
        return Refusal(429, [(b"retry-after", b"%d" % wait)])

    def _count_evictions(self) -> None:
        assert self.table is not None
        self.stats.evictions = self.table.evictions
