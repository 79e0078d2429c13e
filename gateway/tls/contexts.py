"""Server TLS contexts from the configuration, and SNI: which certificate a handshake gets.

Policy:

- Every context is Mozilla "intermediate": TLS 1.2 and 1.3 only, ECDHE with
  AES-GCM or ChaCha20-Poly1305 for TLS 1.2 (TLS 1.3's suites are all fine),
  no compression, no renegotiation, server cipher preference, ALPN
  ``h2`` then ``http/1.1`` (``http/1.1`` only when ``[server] http2 = false``;
  the listener serves what the handshake chose). Session resumption is on
  (tickets; ``ticket_keys`` shared by the worker processes, see
  ``ticket_keys``).
- A site's certificate comes from ``[sites.X.tls]``: ``cert`` + ``key`` PEM
  files (chain after the leaf), the ACME bundle ``StateDir.bundle(
  cert_name(server_names))`` (``acme = true``; none until the ACME writer
  has made it), or the internal CA's bundle (``internal = true``; issued by
  the writer process, ``internal_ca``). Files are read when the ``TlsSites``
  is built (start, reload); bundles are re-read when their ``stamp`` changes,
  looked at on a handshake at most every ``RECHECK_SECONDS`` (one stat per
  bundle), so a renewal needs no reload; a bundle still missing is looked
  for on each handshake that would use it, so a first certificate serves at
  once.
- Every connection starts on ``front`` (no certificate of its own: it holds the
  ticket keys, the SNI callback and the handshake timer), except a CA's
  TLS-ALPN-01 validation, which the listener recognises in the ClientHello
  before the handshake (``acme_alpn``, only when ``TlsSites.acme_alpn``);
  ``select`` (the one place that maps a name to a site's context) picks
  the site: exact server_names first, then ``*.suffix`` wildcards (longest
  first), as the HTTP router does; an unknown or missing name gets the default
  site's certificate (the site marked ``default``, else the first, as for
  HTTP), and when that has none the handshake ends with an
  ``unrecognized_name`` alert, counted as ``no_certificate``.
- Handshake CPU: ``front.sslobject_class`` is a subclass of ``ssl.SSLObject``
  whose ``do_handshake`` hands each step's ``time.thread_time()`` to the
  caller's ``add_cpu`` (``metrics.TlsStats``).

No sockets here: ``front.listen`` runs the handshake.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .internal_ca import ensure_leaf, site_names
from .store import Bundle, StateDir, cert_name
from .ticket_keys import install_problem

log = logging.getLogger(__name__)

#: Mozilla "intermediate" for TLS 1.2, ECDHE only.
CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
ALPN = ["h2", "http/1.1"]
ALPN_HTTP1 = ["http/1.1"]
#: How often (at most) a handshake looks whether a bundle file changed.
RECHECK_SECONDS = 5.0


class TlsError(Exception):
    """A certificate could not be loaded; ``str()`` is one line naming the site and file."""


def server_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    """A server context with the policy above and no certificate yet;
    ``alpn``: the protocols offered, in preference order (default ``ALPN``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.options &= ~ssl.OP_NO_TICKET
    ctx.set_alpn_protocols(ALPN if alpn is None else alpn)
    return ctx


@dataclass(frozen=True)
class SiteTls:
    """One site's ``[sites.X.tls]`` as the TLS layer needs it (the caller maps
    the configuration; ``tls`` is L0 and reads no config)."""

    site: str
    server_names: list[str]
    default: bool = False
    cert: str = ""
    key: str = ""
    acme: bool = False
    internal: bool = False


@dataclass
class SiteCert:
    """Where one site's certificate comes from, and its context once loaded."""

    site: str
    names: list[str]
    #: cert + key files, or one bundle (acme, internal)
    cert: str
    key: str | None
    watched: bool
    context: ssl.SSLContext | None = None
    stamp: Any = None


def _sources(sites: list[SiteTls], state: StateDir) -> list[SiteCert]:
    out = []
    for site in sites:
        if site.cert:
            out.append(SiteCert(site.site, site.server_names, site.cert, site.key, watched=False))
        elif site.acme:
            names = [n for n in site.server_names if n != "_"]
            if not names:
                log.warning("site %s: acme = true needs server_names; it has no certificate", site.site)
                continue
            out.append(SiteCert(site.site, site.server_names, state.bundle(cert_name(names)).path, None,
                                watched=True))
        elif site.internal:
            path = state.bundle(cert_name(site_names(site.server_names))).path
            out.append(SiteCert(site.site, site.server_names, path, None, watched=True))
    return out


def prepare_internal(sites: list[SiteTls], state: StateDir) -> list[Bundle]:
    """The writer's part (single process, or master before its workers start,
    before privileges drop): the internal CA and a fresh-enough certificate for
    every ``internal = true`` site."""
    return [ensure_leaf(state, site.server_names) for site in sites if site.internal]


def _timed_sslobject(add_cpu: Callable[[float], None]) -> type[ssl.SSLObject]:
    class TimedSSLObject(ssl.SSLObject):
        """Adds the thread CPU time of each handshake step (``add_cpu``)."""

        def do_handshake(self) -> None:
            start = time.thread_time()
            try:
                super().do_handshake()
            finally:
                add_cpu(time.thread_time() - start)

    return TimedSSLObject


@dataclass
class TlsSites:
    """What a ``tls`` listener serves: ``front`` for every handshake, and the
    sites' contexts it switches to by SNI."""

    state: StateDir
    add_cpu: Callable[[float], None]
    ticket_keys: bytes | None = None
    certs: list[SiteCert] = field(default_factory=list)
    front: ssl.SSLContext = field(default_factory=server_context)
    exact: dict[str, SiteCert] = field(default_factory=dict)
    wildcards: list[tuple[str, SiteCert]] = field(default_factory=list)
    default: SiteCert | None = None
    clock: Callable[[], float] = time.monotonic
    #: answer ACME TLS-ALPN-01 validations (``acme_alpn``): the listener looks
    #: at each ClientHello before the handshake, which it does only then
    acme_alpn: bool = False
    #: ALPN offers ``h2`` (``[server] http2``)
    http2: bool = True
    _checked: float = 0.0

    @classmethod
    def load(cls, sites: list[SiteTls], state: StateDir, add_cpu: Callable[[float], None], *,
             ticket_keys: bytes | None = None, acme_alpn: bool = False, http2: bool = True) -> TlsSites:
        """Load every site's certificate (``TlsError`` for a file that does
        not load; a missing bundle is only logged). ``sites``: all sites, in
        configuration order (the default is the one marked so, else the first);
        ``add_cpu``: gets each handshake step's CPU seconds; ``acme_alpn``:
        ``[acme] challenge = "tls-alpn-01"`` and a site has ``acme = true``;
        ``http2``: offer ``h2`` in ALPN."""
        self = cls(state, add_cpu, ticket_keys, acme_alpn=acme_alpn, http2=http2)
        self.front = server_context(self.alpn)
        self.certs = _sources(sites, self.state)
        self._configure(self.front)
        self.front.sslobject_class = _timed_sslobject(add_cpu)
        self.front.sni_callback = self._on_sni
        for sc in self.certs:
            self._load(sc, initial=True)
        by_site = {sc.site: sc for sc in self.certs}
        default_name = next((s.site for s in sites if s.default), sites[0].site if sites else None)
        self.default = by_site.get(default_name) if default_name else None
        wildcards = []
        for sc in self.certs:
            for host in sc.names:
                host = host.lower()
                if host.startswith("*."):
                    wildcards.append((host[1:], sc))
                elif host != "_":
                    self.exact.setdefault(host, sc)
        self.wildcards = sorted(wildcards, key=lambda w: -len(w[0]))
        self._checked = self.clock()
        return self

    def _configure(self, ctx: ssl.SSLContext) -> None:
        if self.ticket_keys is not None:
            problem = install_problem(ctx, self.ticket_keys)
            if problem is not None:
                log.warning("TLS session tickets work within each process only: %s", problem)
                self.ticket_keys = None

    def _load(self, sc: SiteCert, initial: bool = False) -> None:
        stamp = Bundle(sc.cert).stamp() if sc.watched else None
        if sc.watched and stamp is None:
            if initial:
                log.warning("site %s: no certificate yet (%s); its names get the default certificate until "
                            "it appears", sc.site, sc.cert)
            sc.context, sc.stamp = None, None
            return
        ctx = server_context(self.alpn)
        self._configure(ctx)
        try:
            ctx.load_cert_chain(sc.cert, sc.key)
        except (OSError, ssl.SSLError) as exc:
            message = f"site {sc.site}: cannot load the certificate {sc.cert}" + (f" / {sc.key}" if sc.key else "") \
                + f": {getattr(exc, 'strerror', None) or exc}"
            if initial:
                raise TlsError(message) from None
            log.warning("%s; keeping the one loaded before", message)
            sc.stamp = stamp  # not again until it changes
            return
        if not initial:
            log.info("site %s: loaded the new certificate %s", sc.site, sc.cert)
        sc.context, sc.stamp = ctx, stamp

    @property
    def alpn(self) -> list[str]:
        return ALPN if self.http2 else ALPN_HTTP1

    def refresh(self, force: bool = False) -> None:
        """Reload bundles whose file changed; at most every ``RECHECK_SECONDS``."""
        now = self.clock()
        if not force and now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        for sc in self.certs:
            if sc.watched and Bundle(sc.cert).stamp() != sc.stamp:
                self._load(sc)

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for a ClientHello's SNI ``server_name`` (None: the
        client sent none); None: no certificate for it."""
        self.refresh()
        sc: SiteCert | None = None
        if server_name:
            name = server_name.lower().rstrip(".")
            sc = self.exact.get(name)
            if sc is None:
                sc = next((w for suffix, w in self.wildcards if name.endswith(suffix) and len(name) > len(suffix)),
                          None)
            if sc is not None and self._context(sc) is None:
                sc = None  # that site's certificate is not there (yet): as an unknown name
        if sc is None:
            sc = self.default
        return None if sc is None else self._context(sc)

    def _context(self, sc: SiteCert) -> ssl.SSLContext | None:
        """``sc``'s context; a bundle that was missing is looked for at once
        (one stat), so a first certificate (ACME, just issued) serves from
        the next handshake, not ``RECHECK_SECONDS`` later."""
        if sc.context is None and sc.watched:
            stamp = Bundle(sc.cert).stamp()
            if stamp is not None and stamp != sc.stamp:
                self._load(sc)
        return sc.context

    def _on_sni(self, sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        ctx = self.select(server_name)
        if ctx is None:
            sslobj.gateway_no_certificate = True
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = ctx
        return None

    @property
    def has_certificates(self) -> bool:
        return any(sc.context is not None for sc in self.certs)


def failure_reason(exc: BaseException, ssl_object: Any) -> str:
    """``TlsStats.failures``' key for a handshake that raised ``exc``."""
    if getattr(ssl_object, "gateway_no_certificate", False):
        return "no_certificate"
    return "protocol"


def describe(exc: BaseException) -> str:
    """One short phrase for a failed handshake's log line."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause) or type(cause).__name__
