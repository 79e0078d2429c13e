"""The ACME server's answers are untrusted input: each malformed one is an
``AcmeError`` with one sentence, never a traceback; and what we build (CSR,
challenge certificate) says exactly what it should."""

from __future__ import annotations

import datetime
import hashlib
import json

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.acme.jws import new_key
from gateway.acme.messages import (
    ACME_IDENTIFIER_OID,
    AcmeError,
    AcmeProblem,
    Authorization,
    Directory,
    Order,
    alpn_challenge_cert,
    check_nonce,
    make_csr,
    parse_account,
    parse_chain,
    parse_retry_after,
    problem_from,
)

DIRECTORY = {"newNonce": "https://ca/nonce", "newAccount": "https://ca/acct", "newOrder": "https://ca/order",
             "meta": {"termsOfService": "https://ca/tos"}}
ORDER = {"status": "pending", "identifiers": [{"type": "dns", "value": "example.com"}],
         "authorizations": ["https://ca/authz/1"], "finalize": "https://ca/finalize/1"}
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
AUTHZ = {"status": "pending", "identifier": {"type": "dns", "value": "example.com"},
         "challenges": [{"type": "http-01", "url": "https://ca/chall/1", "token": TOKEN, "status": "pending"},
                        {"type": "dns-01", "url": "https://ca/chall/2", "token": TOKEN, "status": "pending"}]}


def j(obj) -> bytes:
    return json.dumps(obj).encode()


def test_well_formed_answers_parse():
    d = Directory.parse(j(DIRECTORY))
    assert (d.new_order, d.terms_of_service) == ("https://ca/order", "https://ca/tos")
    order = Order.parse(j(ORDER), "https://ca/order/1")
    assert order.names == {"example.com"} and order.authorizations == ("https://ca/authz/1",)
    authz = Authorization.parse(j(AUTHZ), "https://ca/authz/1")
    assert authz.challenge("http-01").token == TOKEN
    assert [c.type for c in authz.challenges] == ["http-01"]  # others are not ours to check


@pytest.mark.parametrize(("parse", "body", "says"), [
    (Directory.parse, b"<html>Bad gateway</html>", "ACME directory: the answer is not JSON: '<html>Bad gateway"),
    (Directory.parse, b"[1, 2]", "ACME directory: the answer is not a JSON object"),
    (Directory.parse, j({**DIRECTORY, "newOrder": None}), "ACME directory newOrder: not a URL"),
    (Directory.parse, j({**DIRECTORY, "newOrder": "http://ca/order"}), "is not an https URL"),
    (Directory.parse, j({**DIRECTORY, "newOrder": "javascript:alert(1)"}), "is not an https URL"),
    (Directory.parse, j({**DIRECTORY, "newOrder": "https://ca:99999/x"}), "is not a URL"),
    (Directory.parse, b"{" * 100 + b"x", "is not JSON"),
    (Directory.parse, b" " * (2 << 20), "answer over 1048576 bytes"),
    (lambda b: Order.parse(b, "https://ca/o"), j({**ORDER, "status": "done"}), "order: unknown status 'done'"),
    (lambda b: Order.parse(b, "https://ca/o"), j({**ORDER, "identifiers": [{"type": "ip", "value": "1.2.3.4"}]}),
     "an identifier is not a DNS name"),
    (lambda b: Order.parse(b, "https://ca/o"), j({**ORDER, "authorizations": "https://ca/a"}),
     "'authorizations' is missing or not a list"),
    (lambda b: Order.parse(b, "https://ca/o"), j({**ORDER, "authorizations": ["https://ca/a"] * 1000}),
     "'authorizations' is missing or not a list"),
    (lambda b: Order.parse(b, "https://ca/o"), j({**ORDER, "status": "valid"}), "order certificate: not a URL"),
    (lambda b: Authorization.parse(b, "https://ca/a"),
     j({**AUTHZ, "challenges": [{**AUTHZ["challenges"][0], "token": "../../etc/passwd"}]}),
     "the http-01 token is not 16-256 base64url characters"),
    (lambda b: Authorization.parse(b, "https://ca/a"), j({**AUTHZ, "identifier": "example.com"}),
     "the identifier is not a DNS name"),
    (lambda b: Authorization.parse(b, "https://ca/a"), j({**AUTHZ, "challenges": [7]}),
     "a challenge is not an object with a type"),
])
def test_garbage_answers_are_one_clean_error(parse, body, says):
    with pytest.raises(AcmeError) as exc:
        parse(body)
    assert says in str(exc.value)
    assert "\n" not in str(exc.value)


def test_no_challenge_we_can_answer_says_what_was_offered():
    authz = Authorization.parse(j({**AUTHZ, "challenges": AUTHZ["challenges"][1:]}), "https://ca/a")
    with pytest.raises(AcmeError, match=r"no http-01 challenge offered \(offered: none we can answer\)"):
        authz.challenge("http-01")


def test_the_ca_must_order_what_we_asked_for():
    order = Order.parse(j(ORDER), "https://ca/order/1")
    order.check_names(["EXAMPLE.com"])
    with pytest.raises(AcmeError, match="ordered"):
        order.check_names(["example.com", "evil.example"])


def test_problem_documents_become_typed_errors():
    problem = problem_from(400, "application/problem+json",
                           j({"type": "urn:ietf:params:acme:error:badNonce", "detail": "stale\nnonce"}))
    assert isinstance(problem, AcmeProblem) and problem.type == "badNonce"
    assert str(problem) == "badNonce: stale?nonce"  # control characters never reach the log
    limited = problem_from(429, "application/problem+json",
                           j({"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many"}), 3600.0)
    assert isinstance(limited, AcmeProblem) and limited.retry_after == 3600.0
    html = problem_from(502, "text/html", b"<html><body>Bad Gateway</body></html>")
    assert not isinstance(html, AcmeProblem) and str(html).startswith("HTTP 502 from the ACME server: '<html>")


def test_retry_after_seconds_dates_and_nonsense():
    assert parse_retry_after("120", now=0.0) == 120.0
    assert parse_retry_after("99999999", now=0.0) == 86400.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0) == 30.0
    assert parse_retry_after("soon", now=0.0) is None
    assert parse_retry_after(None, now=0.0) is None


def test_nonces_and_account_answers_are_checked():
    assert check_nonce("abc_-09") == "abc_-09"
    for bad in (None, "", "a b", "x" * 300):
        with pytest.raises(AcmeError):
            check_nonce(bad)
    assert parse_account(201, "https://ca/acct/1", j({"status": "valid"})) == "https://ca/acct/1"
    with pytest.raises(AcmeError, match="deactivated"):
        parse_account(200, "https://ca/acct/1", j({"status": "deactivated"}))
    with pytest.raises(AcmeError, match="Location"):
        parse_account(201, None, j({"status": "valid"}))


def test_csr_names_every_name_and_is_signed_by_the_key():
    key = new_key()
    csr = x509.load_der_x509_csr(make_csr(key, ["example.com", "www.example.com"]))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.com", "www.example.com"]
    assert csr.subject.rfc4514_string() == "CN=example.com"
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()


def test_a_downloaded_chain_must_be_for_our_key_and_names():
    ca = trustme.CA()
    issued = ca.issue_cert("example.com")
    pem = b"".join(p.bytes() for p in issued.cert_chain_pems)
    theirs = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    assert len(parse_chain(pem, theirs, ["example.com"])) >= 1
    with pytest.raises(AcmeError, match="not for our key"):
        parse_chain(pem, new_key(), ["example.com"])
    with pytest.raises(AcmeError, match="names"):
        parse_chain(pem, theirs, ["example.com", "www.example.com"])
    with pytest.raises(AcmeError, match="not PEM certificates|no certificate"):
        parse_chain(b"<html>oops</html>", theirs, ["example.com"])


def test_tls_alpn_01_certificate_carries_the_key_authorization_digest():
    pem = alpn_challenge_cert("example.com", "token.thumb")
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    cert = x509.load_pem_x509_certificates(pem)[0]
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.com"]
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
