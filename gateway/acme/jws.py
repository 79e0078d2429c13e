"""Keys and signed requests (RFC 7515 JWS, RFC 7517 JWK, RFC 7638 thumbprints).

Sans-IO. ACME accounts and certificates use ECDSA P-256 keys; requests are
flattened JWS objects signed with ES256 (RFC 8555 6.2): the protected header
carries ``alg``, ``nonce``, ``url`` and either the account's ``jwk`` (before
it has an account URL) or its ``kid`` (the account URL).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

#: The members of a JWK that its thumbprint covers, per key type (RFC 7638 3.2).
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The inverse of ``b64url``; ``ValueError`` for anything else (padding,
    characters outside the URL-safe alphabet)."""
    if not all(c.isalnum() or c in "-_" for c in text) or not text.isascii() or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def json_bytes(obj: Any) -> bytes:
    """Compact JSON, as signed and sent."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: base64url(SHA-256(the required members, sorted, no whitespace))."""
    members = THUMBPRINT_MEMBERS.get(jwk.get("kty", ""))
    if members is None:
        raise ValueError(f"unsupported key type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (accounts and certificates)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from PEM; ``ValueError`` for anything else."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 private key")
    return key


class AccountKey:
    """An ACME account's key: its JWK, thumbprint, and ES256 signatures."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if key.curve.name != "secp256r1":
            raise ValueError("ACME account keys here are ECDSA P-256")
        self.key = key
        numbers = key.public_key().public_numbers()
        self.jwk: dict[str, str] = {"crv": "P-256", "kty": "EC", "x": b64url(numbers.x.to_bytes(32, "big")),
                                    "y": b64url(numbers.y.to_bytes(32, "big"))}
        self.thumbprint = jwk_thumbprint(self.jwk)

    def key_authorization(self, token: str) -> str:
        """What the CA expects for a challenge's ``token`` (RFC 8555 8.1)."""
        return f"{token}.{self.thumbprint}"

    def sign(self, payload: dict[str, Any] | None, *, url: str, nonce: str, kid: str | None = None) -> bytes:
        """The flattened JWS body of a POST to ``url``; ``payload`` None is a
        POST-as-GET (an empty payload, RFC 8555 6.3)."""
        protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
        if kid is None:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = kid
        protected_b64 = b64url(json_bytes(protected))
        payload_b64 = "" if payload is None else b64url(json_bytes(payload))
        der = self.key.sign(f"{protected_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return json_bytes({"protected": protected_b64, "payload": payload_b64, "signature": signature})
