"""What the ACME server says, validated; what we send it, built. Sans-IO.

The ACME server is untrusted input (a misconfigured directory URL, a proxy's
error page, a buggy or hostile CA): every answer goes through one parser here
that checks the shape it needs (JSON object, known status, https URLs, tokens
in the base64url alphabet, sizes bounded) and raises ``AcmeError`` with one
sentence otherwise. An RFC 7807 problem document becomes an ``AcmeProblem``
(``badNonce``, ``rateLimited``… by its short type). Nothing here does IO.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .jws import b64url, key_pem, new_key

#: The most of an answer we read (a certificate chain is a few KiB).
MAX_BODY = 1 << 20
#: The most identifiers, authorizations, challenges or certificates we accept in one answer.
MAX_ITEMS = 100
#: A Retry-After longer than this is taken as this (a day).
MAX_RETRY_AFTER = 86400.0
ORDER_STATUSES = ("pending", "ready", "processing", "valid", "invalid")
AUTHZ_STATUSES = ("pending", "valid", "invalid", "deactivated", "expired", "revoked")
CHALLENGE_STATUSES = ("pending", "processing", "valid", "invalid")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")
_PROBLEM_PREFIX = "urn:ietf:params:acme:error:"
#: RFC 8737: the acmeIdentifier certificate extension of a TLS-ALPN-01 challenge certificate.
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


class AcmeError(Exception):
    """The ACME exchange failed; ``str()`` is one sentence for the log."""


class AcmeProblem(AcmeError):
    """The server answered with a problem document (RFC 8555 6.7)."""

    def __init__(self, status: int, type_: str, detail: str, retry_after: float | None = None) -> None:
        self.status = status
        #: the short type ("badNonce", "rateLimited"...); the full URN if not an ACME one
        self.type = type_.removeprefix(_PROBLEM_PREFIX)
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(f"{self.type}: {detail}" if detail else f"{self.type} (HTTP {status})")


def _clip(text: str, most: int = 300) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= most else text[:most] + "…"


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    """``body`` as a JSON object, else ``AcmeError`` naming ``what``."""
    if len(body) > MAX_BODY:
        raise AcmeError(f"{what}: answer over {MAX_BODY} bytes")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AcmeError(f"{what}: the answer is not JSON: {_clip(body[:120].decode('latin-1'))!r}") from None
    if not isinstance(obj, dict):
        raise AcmeError(f"{what}: the answer is not a JSON object")
    return obj


def _str(obj: dict[str, Any], key: str, what: str, *, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or len(value) > 8192:
        raise AcmeError(f"{what}: {key!r} is missing or not a string")
    return value


def check_url(value: Any, what: str) -> str:
    """An https URL (http only to a loopback host, for local test servers)."""
    if not isinstance(value, str) or len(value) > 2048:
        raise AcmeError(f"{what}: not a URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise AcmeError(f"{what}: {_clip(value)!r} is not a URL") from None
    if parts.scheme != "https" or not parts.hostname or any(c.isspace() or not c.isprintable() for c in value):
        raise AcmeError(f"{what}: {_clip(value)!r} is not an https URL")
    return value


def _url(obj: dict[str, Any], key: str, what: str) -> str:
    return check_url(obj.get(key), f"{what} {key}")


def _list(obj: dict[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise AcmeError(f"{what}: {key!r} is missing or not a list")
    return value


def _status(obj: dict[str, Any], known: tuple[str, ...], what: str) -> str:
    status = obj.get("status")
    if status not in known:
        raise AcmeError(f"{what}: unknown status {_clip(str(status))!r}")
    assert isinstance(status, str)
    return status


def problem_from(status: int, content_type: str, body: bytes, retry_after: float | None = None) -> AcmeError:
    """The error for an answer with an error status: an ``AcmeProblem`` when it
    is a problem document, else an ``AcmeError`` quoting the start of it."""
    if "json" in content_type:
        try:
            obj = json.loads(body[:MAX_BODY])
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            detail = obj.get("detail")
            return AcmeProblem(status, _clip(obj["type"], 120), _clip(detail if isinstance(detail, str) else ""),
                               retry_after)
    snippet = _clip(body[:120].decode("latin-1").strip())
    return AcmeError(f"HTTP {status} from the ACME server" + (f": {snippet!r}" if snippet else ""))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date),
    between 0 and ``MAX_RETRY_AFTER``; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, min(when.timestamp() - now, MAX_RETRY_AFTER))


@dataclass(frozen=True)
class Directory:
    new_nonce: str
    new_account: str
    new_order: str
    terms_of_service: str = ""

    @classmethod
    def parse(cls, body: bytes) -> Directory:
        what = "ACME directory"
        obj = parse_json(body, what)
        meta = obj.get("meta")
        terms = meta.get("termsOfService") if isinstance(meta, dict) else None
        return cls(_url(obj, "newNonce", what), _url(obj, "newAccount", what), _url(obj, "newOrder", what),
                   terms if isinstance(terms, str) else "")


def check_nonce(value: str | None) -> str:
    """A Replay-Nonce header's value (base64url, RFC 8555 6.5.1)."""
    if not value or not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value):
        raise AcmeError("the ACME server sent no valid Replay-Nonce")
    return value


def new_account_payload(email: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"termsOfServiceAgreed": True}
    if email:
        payload["contact"] = [f"mailto:{email}"]
    return payload


def parse_account(status: int, location: str | None, body: bytes) -> str:
    """The account URL (the ``kid``) from newAccount's answer."""
    what = "newAccount"
    obj = parse_json(body, what)
    if obj.get("status", "valid") != "valid":
        raise AcmeError(f"{what}: the account is {_clip(str(obj.get('status')))!r}")
    if status not in (200, 201):
        raise AcmeError(f"{what}: HTTP {status}")
    return check_url(location, f"{what} Location")


def new_order_payload(names: list[str]) -> dict[str, Any]:
    return {"identifiers": [{"type": "dns", "value": name} for name in names]}


@dataclass(frozen=True)
class Order:
    url: str
    status: str
    names: frozenset[str]
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str = ""
    error: str = ""

    @classmethod
    def parse(cls, body: bytes, url: str) -> Order:
        what = "order"
        obj = parse_json(body, what)
        status = _status(obj, ORDER_STATUSES, what)
        names = set()
        for ident in _list(obj, "identifiers", what):
            if not isinstance(ident, dict) or ident.get("type") != "dns" or not isinstance(ident.get("value"), str):
                raise AcmeError(f"{what}: an identifier is not a DNS name")
            names.add(ident["value"].lower())
        authzs = tuple(check_url(a, f"{what} authorization") for a in _list(obj, "authorizations", what))
        cert = _url(obj, "certificate", what) if status == "valid" else ""
        error = obj.get("error")
        detail = ""
        if isinstance(error, dict):
            detail = _clip(f"{error.get('type', '')}: {error.get('detail', '')}".removeprefix(_PROBLEM_PREFIX))
        return cls(check_url(url, f"{what} URL"), status, frozenset(names), authzs, _url(obj, "finalize", what),
                   cert, detail)

    def check_names(self, wanted: list[str]) -> None:
        """The CA must order exactly what we asked for."""
        if self.names != {n.lower() for n in wanted}:
            raise AcmeError(f"order: the server ordered {sorted(self.names)}, not {sorted(wanted)}")


@dataclass(frozen=True)
class Challenge:
    type: str
    url: str
    token: str
    status: str
    error: str = ""


@dataclass(frozen=True)
class Authorization:
    url: str
    status: str
    name: str
    wildcard: bool
    challenges: tuple[Challenge, ...] = field(default=())
    error: str = ""

    @classmethod
    def parse(cls, body: bytes, url: str) -> Authorization:
        what = "authorization"
        obj = parse_json(body, what)
        status = _status(obj, AUTHZ_STATUSES, what)
        ident = obj.get("identifier")
        if not isinstance(ident, dict) or ident.get("type") != "dns" or not isinstance(ident.get("value"), str):
            raise AcmeError(f"{what}: the identifier is not a DNS name")
        challenges = []
        errors = []
        for ch in _list(obj, "challenges", what):
            if not isinstance(ch, dict) or not isinstance(ch.get("type"), str):
                raise AcmeError(f"{what}: a challenge is not an object with a type")
            if ch["type"] not in ("http-01", "tls-alpn-01"):
                continue  # dns-01 and others: not ours to answer, not ours to check
            token = _str(ch, "token", f"{what} {ch['type']} challenge")
            if not _TOKEN.match(token):
                raise AcmeError(f"{what}: the {ch['type']} token is not 16-256 base64url characters")
            err = ch.get("error")
            text = ""
            if isinstance(err, dict):
                text = _clip(f"{err.get('type', '')}: {err.get('detail', '')}".removeprefix(_PROBLEM_PREFIX))
                errors.append(text)
            challenges.append(Challenge(ch["type"], _url(ch, "url", f"{what} challenge"), token,
                                        _status(ch, CHALLENGE_STATUSES, f"{what} challenge"), text))
        return cls(check_url(url, f"{what} URL"), status, ident["value"].lower(), obj.get("wildcard") is True,
                   tuple(challenges), "; ".join(errors))

    def challenge(self, kind: str) -> Challenge:
        for ch in self.challenges:
            if ch.type == kind:
                return ch
        offered = ", ".join(c.type for c in self.challenges) or "none we can answer"
        raise AcmeError(f"authorization for {self.name}: no {kind} challenge offered (offered: {offered})")


def parse_challenge(body: bytes) -> str:
    """The status of a challenge after we responded to it."""
    return _status(parse_json(body, "challenge"), CHALLENGE_STATUSES, "challenge")


def make_csr(key: ec.EllipticCurvePrivateKey, names: list[str]) -> bytes:
    """A DER CSR for ``names`` (all as SANs, the first also as CN), signed by ``key``."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]) if len(names[0]) <= 64 else x509.Name([])
    ).add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def finalize_payload(csr_der: bytes) -> dict[str, Any]:
    return {"csr": b64url(csr_der)}


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def parse_chain(pem: bytes, key: ec.EllipticCurvePrivateKey, names: list[str]) -> list[x509.Certificate]:
    """The downloaded chain, leaf first; ``AcmeError`` unless it is PEM
    certificates whose leaf carries our public key and exactly our names."""
    if len(pem) > MAX_BODY:
        raise AcmeError("certificate chain: over 1 MiB")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise AcmeError("certificate chain: not PEM certificates") from None
    if not certs or len(certs) > MAX_ITEMS:
        raise AcmeError("certificate chain: no certificate in it")
    leaf = certs[0]
    ours = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo) != ours:
        raise AcmeError("certificate chain: the certificate is not for our key")
    if set(dns_names(leaf)) != {n.lower() for n in names}:
        raise AcmeError(f"certificate chain: the certificate names {sorted(dns_names(leaf))}, not {sorted(names)}")
    return certs


def bundle_pem(key: ec.EllipticCurvePrivateKey, certs: list[x509.Certificate]) -> bytes:
    """The state dir's ``bundle.pem``: key, then leaf, then chain."""
    return key_pem(key) + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def alpn_challenge_cert(domain: str, key_authorization: str) -> bytes:
    """RFC 8737: a self-signed certificate for ``domain`` with the critical
    acmeIdentifier extension (the SHA-256 of the key authorisation), key first, as PEM."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(key_authorization.encode())
    value = b"\x04\x20" + digest.finalize()  # DER OCTET STRING of 32 bytes
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME challenge")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, value), critical=True)
            .sign(key, hashes.SHA256()))
    return key_pem(key) + cert.public_bytes(serialization.Encoding.PEM)
