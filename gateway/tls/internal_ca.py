"""The internal CA: ``[sites.X.tls] internal = true`` (Caddy's ``tls internal``, mkcert).

Policy: one local root CA per state dir, created once and kept
(``StateDir.ca_paths``: ``ca/root.pem`` 0644 to hand to browsers and
``update-ca-certificates``, ``ca/root.key`` 0600, only the writer signs). It
signs leaf certificates (ECDSA P-256, ``LEAF_DAYS`` days) for a site's names,
stored as ordinary bundles (``StateDir.bundle``: key + leaf + root), and
reissued when fewer than ``RENEW_DAYS`` days are left, when the names change
or when the root is not the one that signed it. The root is valid for 10 years
and has ``pathlen=0`` and a name constraint-free subject naming the host, so a
user can tell which machine's CA they trust.

Only the writer calls this (the single process, or the master before it
starts workers, before privileges drop); workers read the bundles. No sockets.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .store import Bundle, StateDir, cert_name

log = logging.getLogger(__name__)

CA_DAYS = 3650
LEAF_DAYS = 90
RENEW_DAYS = 30
#: The names of a site that has none a certificate can carry (quick mode, "_").
LOCAL_NAMES = ["localhost", "127.0.0.1", "::1"]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_ca(state: StateDir) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA, created (and logged) if the state dir has none yet."""
    cert_path, key_path = state.ca_paths()
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return cert, key
    except FileNotFoundError:
        pass
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gateway local CA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"gateway local CA on {socket.gethostname()}"[:64])])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    state.write(key_path, _key_pem(key), mode=0o600)
    state.write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("created the internal CA %s (trust it to accept the gateway's internal certificates)", cert_path)
    return cert, key


def site_names(server_names: list[str]) -> list[str]:
    """What an internal certificate for a site with ``server_names`` names."""
    names = [n.lower().rstrip(".") for n in server_names if n and n != "_"]
    return names or list(LOCAL_NAMES)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _needs_new(bundle: Bundle, names: list[str], ca: x509.Certificate) -> bool:
    try:
        with open(bundle.path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        return True
    leaf = certs[0]
    if leaf.issuer != ca.subject or leaf.not_valid_after_utc - _now() < datetime.timedelta(days=RENEW_DAYS):
        return True
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    return set(san) != {_san(n) for n in names}


def ensure_leaf(state: StateDir, server_names: list[str]) -> Bundle:
    """The bundle of the internal certificate for ``server_names``, issued
    now if missing, near expiry, for other names or from another CA."""
    names = site_names(server_names)
    bundle = state.bundle(cert_name(names))
    ca, ca_key = ensure_ca(state)
    if not _needs_new(bundle, names, ca):
        return bundle
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    dns = [n for n in names if not isinstance(_san(n), x509.IPAddress)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns or names)[0][:64])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    state.write(bundle.path, pem, mode=0o640)
    log.info("issued an internal certificate for %s (%s)", ", ".join(names), os.path.dirname(bundle.path))
    return bundle
