"""The renewal task: keeps a certificate for every ``acme = true`` site in the
state directory (``tls.store``), in the one process that does ACME (the
master, or the single process) and nowhere else.

At start it reads what is stored (``bundle.pem``, ``meta.json``) and asks the
CA only for what ``policy`` says is due; then it sleeps until the next due
time (at most ``MAX_SLEEP`` at a time, so a suspended host or a changed clock
is noticed). A failure is one warning line, counted and backed off in
``meta.json``; the task never dies of an expected failure (the CA down,
rate limits, a failed validation, a full disk).

Files it writes (modes from ``StateDir``): the account key (0600, only this
process signs) and ``account.json`` with the account URL; per certificate
``bundle.pem`` (key, leaf, chain; 0640, the workers' group) replaced
atomically, and ``meta.json``; HTTP-01 key authorisations while a
validation runs, removed after it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ..config import AcmeConfig, Config
from ..tls.store import StateDir, cert_name
from .client import AcmeClient, Solver, Transport
from .https import HttpsTransport, tls_context
from .jws import AccountKey, key_pem, load_key, new_key
from .messages import AcmeError, AcmeProblem, bundle_pem, dns_names
from .policy import BACKOFF_FIRST, BACKOFF_MOST, Stored, backoff, next_attempt, renew_at

log = logging.getLogger(__name__)

#: The longest the task sleeps before looking at the clock again.
MAX_SLEEP = 3600.0
#: The longest one certificate's order may take, all requests and polls included.
ORDER_TIMEOUT = 600.0


def wanted_certificates(config: Config) -> list[list[str]]:
    """One list of names per ``acme = true`` site (its ``server_names``, lower
    case, in order, without repeats); sites with the same names share one."""
    out: list[list[str]] = []
    for site in config.sites.values():
        if site.tls is not None and site.tls.acme:
            names = list(dict.fromkeys(n.lower().rstrip(".") for n in site.server_names))
            if names and names not in out:
                out.append(names)
    return out


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Http01Solver:
    """HTTP-01: the key authorisation in a file every worker's app answers
    ``/.well-known/acme-challenge/TOKEN`` from."""

    kind = "http-01"

    def __init__(self, state: StateDir) -> None:
        self.state = state

    def prepare(self, name: str, token: str, key_authorization: str) -> None:
        self.state.write(self.state.http_challenge(token), key_authorization.encode(), 0o640)

    def cleanup(self, name: str, token: str) -> None:
        try:
            os.unlink(self.state.http_challenge(token))
        except OSError:
            pass


class TlsAlpn01Solver:
    """TLS-ALPN-01 (RFC 8737): a challenge certificate the TLS listener serves
    to a client offering ALPN ``acme-tls/1`` alone for that name
    (``tls.acme_alpn``, from ``front.listen.tls_handshake``)."""

    kind = "tls-alpn-01"

    def __init__(self, state: StateDir) -> None:
        self.state = state

    def prepare(self, name: str, token: str, key_authorization: str) -> None:
        from .messages import alpn_challenge_cert

        self.state.write(self.state.alpn_challenge(name), alpn_challenge_cert(name, key_authorization), 0o640)

    def cleanup(self, name: str, token: str) -> None:
        try:
            os.unlink(self.state.alpn_challenge(name))
        except OSError:
            pass


@dataclass
class Certificate:
    """One certificate the manager keeps, and how it stands."""

    names: list[str]
    stored: Stored | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""
    next_at: float = 0.0
    #: the directory URL of the CA that issued ``stored`` ("" when unknown)
    issued_by: str = ""

    @property
    def name(self) -> str:
        return cert_name(self.names)

    def status(self) -> dict[str, Any]:
        return {"names": self.names, "not_after": _iso(self.stored.not_after) if self.stored else None,
                "renew_at": _iso(renew_at(self.stored.not_before, self.stored.not_after)) if self.stored else None,
                "next_attempt": _iso(self.next_at), "failures": self.failures, "last_error": self.last_error or None}


def read_stored(state: StateDir, name: str) -> Stored | None:
    """The stored certificate ``name`` (its leaf's names and validity), None
    when missing or unreadable."""
    try:
        with open(state.bundle(name).path, "rb") as f:
            data = f.read()
        leaf = x509.load_pem_x509_certificates(data)[0]
        key = load_key(data)  # the key is there, is one of ours, and is the leaf's
        if key.public_key().public_numbers() != leaf.public_key().public_numbers():  # type: ignore[union-attr]
            return None
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return Stored(frozenset(dns_names(leaf)), leaf.not_valid_before_utc.timestamp(),
                  leaf.not_valid_after_utc.timestamp())


class CertificateManager:
    """Obtains and renews the certificates of ``acme = true`` sites (``run``)."""

    def __init__(self, acme: AcmeConfig, wanted: list[list[str]], state: StateDir, *,
                 transport: Transport | None = None, clock: Callable[[], float] = time.time,
                 backoff_first: float = BACKOFF_FIRST, backoff_most: float = BACKOFF_MOST,
                 poll_interval: float = 1.0) -> None:
        self.acme = acme
        self.state = state
        self.transport = transport
        self.clock = clock
        self.backoff_first = backoff_first
        self.backoff_most = backoff_most
        self.poll_interval = poll_interval
        self.certificates = [self._load(names) for names in wanted]
        self.client: AcmeClient | None = None
        #: attempts made (obtained or failed), and an event set after each
        self.attempts = 0
        self._attempted = trio.Event()
        self._wake = trio.Event()

    @classmethod
    def from_config(cls, config: Config, group: int | None = None, euid: int | None = None
                    ) -> CertificateManager | None:
        """The manager for ``config``'s ``acme = true`` sites; None when there are none."""
        wanted = wanted_certificates(config)
        if not wanted:
            return None
        return cls(config.acme, wanted, StateDir(config.acme.state_path(euid), group))

    def reconfigure(self, config: Config) -> None:
        """After a reload: keep what is known of certificates still wanted, add new ones."""
        known = {tuple(c.names): c for c in self.certificates}
        if config.acme != self.acme:
            self.acme, self.client = config.acme, None
            for cert in known.values():
                self._schedule(cert)  # another CA: its certificates are due
        self.certificates = [known.get(tuple(names)) or self._load(names) for names in wanted_certificates(config)]
        self._wake.set()

    async def wait_for_attempts(self, count: int) -> None:
        """Return once ``count`` attempts (obtained or failed) have been made."""
        while self.attempts < count:
            await self._attempted.wait()

    def _attempt_done(self) -> None:
        self.attempts += 1
        self._attempted.set()
        self._attempted = trio.Event()

    def status(self) -> list[dict[str, Any]]:
        return [c.status() for c in self.certificates]

    # -- state -------------------------------------------------------------------

    def _load(self, names: list[str]) -> Certificate:
        cert = Certificate(names, read_stored(self.state, cert_name(names)))
        try:
            with open(self.state.meta_path(cert.name)) as f:
                meta = json.load(f)
            if meta.get("names") == names:  # failures of other names are not these names'
                cert.failures = int(meta.get("failures", 0))
                cert.retry_at = float(meta.get("retry_at", 0.0))
                cert.last_error = str(meta.get("last_error", ""))
            if cert.stored is not None and isinstance(meta.get("directory"), str):
                cert.issued_by = meta["directory"]
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        self._schedule(cert)
        return cert

    def _remove_stale_challenges(self) -> None:
        """Challenge files a killed predecessor left (only this process writes them)."""
        for directory in (os.path.dirname(self.state.http_challenge("x" * 16)),
                          os.path.dirname(self.state.alpn_challenge("x.example"))):
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass

    def _schedule(self, cert: Certificate) -> None:
        """``cert.next_at`` by the policy. A certificate from another CA than
        ``[acme] directory`` (say staging, before production was configured)
        is replaced at once; it serves until then."""
        stored = cert.stored if cert.issued_by in ("", self.acme.directory) else None
        cert.next_at = next_attempt(stored, cert.names, self.clock(), retry_at=cert.retry_at)

    def _save_meta(self, cert: Certificate) -> None:
        meta = {"names": cert.names, "directory": cert.issued_by or None,
                "not_before": cert.stored.not_before if cert.stored else None,
                "not_after": cert.stored.not_after if cert.stored else None,
                "failures": cert.failures, "retry_at": cert.retry_at, "last_error": cert.last_error}
        self.state.write(self.state.meta_path(cert.name), json.dumps(meta, indent=1).encode() + b"\n", 0o640)

    # -- the task ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: obtain what is due, sleep until the next is."""
        self._remove_stale_challenges()
        for cert in self.certificates:
            if cert.next_at > self.clock() and cert.stored is not None:
                log.info("ACME: certificate for %s is stored, valid until %s; renewal from %s",
                         ", ".join(cert.names), _iso(cert.stored.not_after), _iso(cert.next_at))
        task_status.started()
        while True:
            self._wake = trio.Event()
            for cert in list(self.certificates):
                if cert.next_at <= self.clock():
                    await self._renew(cert)
                    self._attempt_done()
            if not self.certificates:
                await self._wake.wait()
                continue
            delay = min(c.next_at for c in self.certificates) - self.clock()
            with trio.move_on_after(min(max(delay, 0.0), MAX_SLEEP)):
                await self._wake.wait()

    def _stored_account(self) -> tuple[AccountKey, str | None]:
        """This directory's account key (made and stored if there is none) and
        its URL when stored."""
        where = self.state.acme_dir(self.acme.directory)
        key_file, account_file = os.path.join(where, "account.key"), os.path.join(where, "account.json")
        try:
            with open(key_file, "rb") as f:
                key = load_key(f.read())
        except FileNotFoundError:
            key = new_key()
            self.state.write(key_file, key_pem(key), 0o600)
        except ValueError as exc:
            raise AcmeError(f"{key_file}: {exc}") from None
        try:
            with open(account_file) as f:
                stored = json.load(f)
            if stored.get("directory") == self.acme.directory and isinstance(stored.get("url"), str):
                return AccountKey(key), stored["url"]
        except (OSError, ValueError, AttributeError):
            pass
        return AccountKey(key), None

    async def _account(self) -> AcmeClient:
        if self.client is not None and self.client.kid is not None:
            return self.client
        directory = self.acme.directory
        account_file = os.path.join(self.state.acme_dir(directory), "account.json")
        key, kid = self._stored_account()
        transport = self.transport or HttpsTransport(tls_context(self.acme.ca_bundle))
        client = AcmeClient(transport, directory, key, kid=kid, poll_interval=self.poll_interval)
        if client.kid is None:
            kid = await client.register(self.acme.email)
            self.state.write(account_file, json.dumps({"directory": directory, "url": kid,
                                                       "email": self.acme.email}).encode() + b"\n", 0o600)
            log.info("ACME: account %s at %s", kid, directory)
        self.client = client
        return client

    def _solver(self) -> Solver:
        return TlsAlpn01Solver(self.state) if self.acme.challenge == "tls-alpn-01" else Http01Solver(self.state)

    async def _renew(self, cert: Certificate) -> None:
        what = ", ".join(cert.names)
        started = self.clock()
        try:
            with trio.fail_after(ORDER_TIMEOUT):
                certs, key = await self._order(cert)
            self.state.write(self.state.bundle(cert.name).path, bundle_pem(key, certs), 0o640)
        except trio.TooSlowError:
            self._failed(cert, AcmeError(f"not done within {ORDER_TIMEOUT:g}s"),
                         f"ACME: no certificate for {what}: not done within {ORDER_TIMEOUT:g}s")
            return
        except (AcmeError, OSError) as exc:
            self._failed(cert, exc, f"ACME: no certificate for {what}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, retried, never fatal
            log.exception("ACME: obtaining a certificate for %s failed", what)
            self._failed(cert, exc, "")
            return
        leaf = certs[0]
        cert.stored = Stored(frozenset(dns_names(leaf)), leaf.not_valid_before_utc.timestamp(),
                             leaf.not_valid_after_utc.timestamp())
        cert.failures, cert.retry_at, cert.last_error = 0, 0.0, ""
        cert.issued_by = self.acme.directory
        self._schedule(cert)
        self._write_meta(cert)
        log.info("ACME: certificate for %s obtained in %.1fs, valid until %s; renewal from %s", what,
                 self.clock() - started, _iso(cert.stored.not_after), _iso(cert.next_at))

    async def _order(self, cert: Certificate) -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey]:
        """A new key and a certificate for it (the chain, leaf first)."""
        key = new_key()
        client = await self._account()
        try:
            _, certs = await client.obtain(cert.names, key, self._solver())
        except AcmeProblem as exc:
            if exc.type != "accountDoesNotExist":
                raise
            # the CA forgot the account (a test server restarted): register again
            log.info("ACME: %s forgot account %s; registering again", self.acme.directory, client.kid)
            self.client = None
            os.unlink(os.path.join(self.state.acme_dir(self.acme.directory), "account.json"))
            client = await self._account()
            _, certs = await client.obtain(cert.names, key, self._solver())
        return certs, key

    def _failed(self, cert: Certificate, exc: Exception, line: str) -> None:
        cert.failures += 1
        wait = backoff(cert.failures, self.backoff_first, self.backoff_most)
        if isinstance(exc, AcmeProblem) and exc.retry_after:
            wait = max(wait, exc.retry_after)
        cert.retry_at = self.clock() + wait
        cert.last_error = str(exc) or type(exc).__name__
        self._schedule(cert)
        if line:
            log.warning("%s; attempt %d, next in %.0fs", line, cert.failures, wait)
        self._write_meta(cert)

    def _write_meta(self, cert: Certificate) -> None:
        try:
            self._save_meta(cert)
        except OSError as exc:
            log.warning("ACME: cannot write %s: %s", self.state.meta_path(cert.name), exc)


__all__ = ["CertificateManager", "Http01Solver", "TlsAlpn01Solver", "wanted_certificates"]
