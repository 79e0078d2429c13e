"""The RFC 8555 order flow over a transport (``https.HttpsTransport``, or a
test's stand-in): directory, nonces, account, order, challenges, finalize,
download. Each answer is validated by ``messages``; this module only sequences.

Nonces: the last ``Replay-Nonce`` seen is used next, else one from
``newNonce``; a ``badNonce`` problem is retried with the nonce it carries (at
most ``NONCE_RETRIES`` times). Polling follows ``Retry-After`` (bounded by
``poll_interval`` below and ``poll_timeout`` overall).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .https import Answer
from .jws import AccountKey
from .messages import (
    AcmeError,
    AcmeProblem,
    Authorization,
    Directory,
    Order,
    check_nonce,
    check_url,
    finalize_payload,
    make_csr,
    new_account_payload,
    new_order_payload,
    parse_account,
    parse_chain,
    parse_challenge,
    parse_retry_after,
    problem_from,
)

log = logging.getLogger(__name__)

NONCE_RETRIES = 3


class Transport(Protocol):
    async def __call__(self, method: str, url: str, body: bytes | None = None,
                       content_type: str = "application/jose+json") -> Answer: ...


class Solver(Protocol):
    """Makes the CA's validation of one challenge succeed (a file for HTTP-01,
    a certificate for TLS-ALPN-01) and cleans up after it."""

    kind: str

    def prepare(self, name: str, token: str, key_authorization: str) -> None: ...

    def cleanup(self, name: str, token: str) -> None: ...


@dataclass
class Counters:
    """What this client asked of the CA (for tests and /status)."""

    accounts: int = 0
    orders: int = 0
    certificates: int = 0
    requests: int = 0
    bad_nonces: int = 0


@dataclass
class AcmeClient:
    transport: Transport
    directory_url: str
    key: AccountKey
    #: the account URL, once known (stored with the key)
    kid: str | None = None
    poll_interval: float = 1.0
    poll_timeout: float = 120.0
    counters: Counters = field(default_factory=Counters)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = trio.sleep
    _directory: Directory | None = None
    _nonce: str | None = None

    async def directory(self) -> Directory:
        if self._directory is None:
            answer = await self._call("GET", check_url(self.directory_url, "[acme] directory"))
            if answer.status != 200:
                raise problem_from(answer.status, answer.header("content-type") or "", answer.body)
            self._directory = Directory.parse(answer.body)
        return self._directory

    async def _call(self, method: str, url: str, body: bytes | None = None) -> Answer:
        self.counters.requests += 1
        answer = await self.transport(method, url, body)
        nonce = answer.header("replay-nonce")
        if nonce:
            try:
                self._nonce = check_nonce(nonce)
            except AcmeError:
                self._nonce = None
        return answer

    async def _fresh_nonce(self) -> str:
        if self._nonce is not None:
            nonce, self._nonce = self._nonce, None
            return nonce
        answer = await self._call("HEAD", (await self.directory()).new_nonce)
        if answer.status not in (200, 204):
            raise problem_from(answer.status, answer.header("content-type") or "", answer.body)
        nonce = check_nonce(answer.header("replay-nonce"))
        self._nonce = None
        return nonce

    async def post(self, url: str, payload: dict[str, Any] | None, *, use_jwk: bool = False) -> Answer:
        """A signed POST (``payload`` None: POST-as-GET); an error status
        raises (``AcmeProblem`` for a problem document), after retrying
        ``badNonce``."""
        if not use_jwk and self.kid is None:
            raise AcmeError("no ACME account yet")
        for attempt in range(NONCE_RETRIES + 1):
            nonce = await self._fresh_nonce()
            body = self.key.sign(payload, url=url, nonce=nonce, kid=None if use_jwk else self.kid)
            answer = await self._call("POST", url, body)
            if answer.status < 400:
                return answer
            error = problem_from(answer.status, answer.header("content-type") or "", answer.body,
                                 parse_retry_after(answer.header("retry-after"), self.clock()))
            if isinstance(error, AcmeProblem) and error.type == "badNonce" and attempt < NONCE_RETRIES:
                self.counters.bad_nonces += 1
                log.debug("ACME: badNonce, retrying with the nonce it carried")
                continue
            raise error
        raise AssertionError("unreachable")

    async def register(self, email: str) -> str:
        """newAccount (terms agreed; found again if the key has one): the account URL."""
        directory = await self.directory()
        answer = await self.post(directory.new_account, new_account_payload(email), use_jwk=True)
        self.kid = parse_account(answer.status, answer.header("location"), answer.body)
        self.counters.accounts += 1
        return self.kid

    async def _get(self, url: str) -> Answer:
        return await self.post(url, None)

    async def _wait(self, answer: Answer, started: float, what: str) -> None:
        if self.clock() - started > self.poll_timeout:
            raise AcmeError(f"{what}: still not done after {self.poll_timeout:g}s")
        delay = parse_retry_after(answer.header("retry-after"), self.clock())
        await self.sleep(max(self.poll_interval, min(delay or 0.0, self.poll_timeout)))

    async def obtain(self, names: list[str], cert_key: ec.EllipticCurvePrivateKey, solver: Solver
                     ) -> tuple[bytes, list[x509.Certificate]]:
        """A certificate for ``names`` with ``cert_key``: (chain PEM, the
        parsed certificates, leaf first). Raises ``AcmeError``."""
        directory = await self.directory()
        answer = await self.post(directory.new_order, new_order_payload(names))
        self.counters.orders += 1
        order = Order.parse(answer.body, check_url(answer.header("location"), "newOrder Location"))
        order.check_names(names)
        log.info("ACME: order %s for %s is %s", order.url, ", ".join(names), order.status)
        for authz_url in order.authorizations:
            await self._authorize(authz_url, solver)
        order = await self._poll_order(order, ("ready", "valid"))
        if order.status == "ready":
            answer = await self.post(order.finalize, finalize_payload(make_csr(cert_key, names)))
            order = Order.parse(answer.body, order.url)
            order = await self._poll_order(order, ("valid",))
        answer = await self._get(order.certificate)
        certs = parse_chain(answer.body, cert_key, names)
        self.counters.certificates += 1
        return answer.body, certs

    async def _poll_order(self, order: Order, done: tuple[str, ...]) -> Order:
        started = self.clock()
        while order.status not in done:
            if order.status == "invalid":
                raise AcmeError(f"order for {', '.join(sorted(order.names))} is invalid"
                                + (f": {order.error}" if order.error else ""))
            answer = await self._get(order.url)
            order = Order.parse(answer.body, order.url)
            if order.status not in done and order.status != "invalid":
                await self._wait(answer, started, "order")
        return order

    async def _authorize(self, url: str, solver: Solver) -> None:
        answer = await self._get(url)
        authz = Authorization.parse(answer.body, url)
        if authz.status == "valid":
            return  # the CA remembers an earlier validation
        if authz.status != "pending":
            raise AcmeError(f"authorization for {authz.name} is {authz.status}")
        if authz.wildcard:
            raise AcmeError(f"authorization for *.{authz.name}: a wildcard needs dns-01, which is not supported")
        challenge = authz.challenge(solver.kind)
        solver.prepare(authz.name, challenge.token, self.key.key_authorization(challenge.token))
        try:
            if challenge.status == "pending":
                parse_challenge((await self.post(challenge.url, {})).body)
            started = self.clock()
            while True:
                answer = await self._get(url)
                authz = Authorization.parse(answer.body, url)
                if authz.status == "valid":
                    return
                if authz.status != "pending":
                    error = next((c.error for c in authz.challenges if c.url == challenge.url and c.error), "")
                    raise AcmeError(f"{solver.kind} validation of {authz.name} failed"
                                    + (f": {error}" if error else f" (authorization {authz.status})"))
                await self._wait(answer, started, f"authorization for {authz.name}")
        finally:
            solver.cleanup(authz.name, challenge.token)
