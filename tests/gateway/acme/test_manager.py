"""What the renewal task decides from the state dir at start (no CA
contacted): reuse a stored certificate of the same CA and names, replace one
from another CA or with a key that is not its own, keep a stored backoff,
and forget the failures of other names."""

from __future__ import annotations

import datetime
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from gateway.acme.jws import new_key
from gateway.acme.manager import CertificateManager
from gateway.acme.messages import bundle_pem
from gateway.acme.policy import renew_at
from gateway.config import AcmeConfig
from gateway.tls.store import StateDir

NAMES = ["example.com", "www.example.com"]
NOW = 1_800_000_000.0
STAGING = "https://staging.example/dir"
PRODUCTION = "https://acme.example/dir"


def store(state: StateDir, *, directory: str | None, names=NAMES, key_matches: bool = True, meta: dict | None = None):
    key = new_key()
    start = datetime.datetime.fromtimestamp(NOW - 10 * 86400, datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    state.write(state.bundle("example.com").path, bundle_pem(key if key_matches else new_key(), [cert]))
    state.write(state.meta_path("example.com"), json.dumps(
        {"names": names, "directory": directory, **(meta or {})}).encode())
    return cert


def manager(state: StateDir, directory: str = PRODUCTION) -> CertificateManager:
    return CertificateManager(AcmeConfig(directory=directory), [NAMES], state, clock=lambda: NOW)


def test_a_stored_certificate_of_the_same_ca_is_reused_until_a_third_is_left(tmp_path):
    state = StateDir(str(tmp_path))
    cert = store(state, directory=PRODUCTION)
    c = manager(state).certificates[0]
    due = renew_at(cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())
    assert c.stored is not None and c.next_at == due > NOW


def test_one_from_another_ca_is_replaced_at_once_and_serves_meanwhile(tmp_path):
    state = StateDir(str(tmp_path))
    store(state, directory=STAGING)
    c = manager(state).certificates[0]
    assert c.stored is not None and c.next_at == NOW


def test_a_bundle_whose_key_is_not_the_leafs_is_not_reused(tmp_path):
    state = StateDir(str(tmp_path))
    store(state, directory=PRODUCTION, key_matches=False)
    c = manager(state).certificates[0]
    assert c.stored is None and c.next_at == NOW


def test_a_stored_backoff_holds_and_other_names_failures_do_not(tmp_path):
    state = StateDir(str(tmp_path))
    store(state, directory=None, names=["example.com"], meta={"failures": 3, "retry_at": NOW + 240})
    c = manager(state).certificates[0]  # wants NAMES, the stored one has fewer: due, failures not ours
    assert (c.failures, c.next_at) == (0, NOW)
    state.write(state.meta_path("example.com"), json.dumps(
        {"names": NAMES, "directory": None, "failures": 3, "retry_at": NOW + 240, "last_error": "x"}).encode())
    c = manager(state).certificates[0]
    assert (c.failures, c.next_at, c.last_error) == (3, NOW + 240, "x")
