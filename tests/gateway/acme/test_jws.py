"""JWS/JWK (sans-IO): RFC 7638's thumbprint vector, ES256 signatures that
verify, the header members RFC 8555 6.2 asks for, key authorisations."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.acme.jws import AccountKey, b64url, b64url_decode, jwk_thumbprint, key_pem, load_key, new_key

RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3o"
    "knjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHz"
    "u6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8a"
    "wapJzKnqDKgw")


def test_rfc7638_thumbprint_vector():
    # RFC 7638 3.1: members outside the required ones (alg, kid) do not count
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_ec_thumbprint_covers_crv_kty_x_y_in_order():
    key = AccountKey(new_key())
    canonical = '{"crv":"P-256","kty":"EC","x":"' + key.jwk["x"] + '","y":"' + key.jwk["y"] + '"}'
    assert key.thumbprint == b64url(hashlib.sha256(canonical.encode()).digest())
    assert len(b64url_decode(key.jwk["x"])) == 32


def _verify(key: AccountKey, body: bytes) -> tuple[dict, str]:
    jws = json.loads(body)
    raw = b64url_decode(jws["signature"])
    assert len(raw) == 64  # ES256: r || s, 32 bytes each (RFC 7518 3.4), not DER
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.key.public_key().verify(der, f"{jws['protected']}.{jws['payload']}".encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(b64url_decode(jws["protected"])), jws["payload"]


def test_a_request_before_the_account_carries_the_jwk_after_it_the_kid():
    key = AccountKey(new_key())
    header, payload = _verify(key, key.sign({"termsOfServiceAgreed": True}, url="https://ca/new-acct", nonce="n1"))
    assert header == {"alg": "ES256", "nonce": "n1", "url": "https://ca/new-acct", "jwk": key.jwk}
    assert json.loads(b64url_decode(payload)) == {"termsOfServiceAgreed": True}
    header, payload = _verify(key, key.sign(None, url="https://ca/order/1", nonce="n2", kid="https://ca/acct/7"))
    assert header == {"alg": "ES256", "nonce": "n2", "url": "https://ca/order/1", "kid": "https://ca/acct/7"}
    assert payload == ""  # POST-as-GET (RFC 8555 6.3)
    _, payload = _verify(key, key.sign({}, url="https://ca/chall/1", nonce="n3", kid="k"))
    assert payload == "e30"  # "{}": respond to a challenge


def test_key_authorization_is_token_dot_thumbprint():
    key = AccountKey(new_key())
    assert key.key_authorization("tok-EN_1") == f"tok-EN_1.{key.thumbprint}"


def test_keys_round_trip_and_other_curves_are_refused():
    key = new_key()
    assert AccountKey(load_key(key_pem(key))).jwk == AccountKey(key).jwk
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError):
        AccountKey(other)
    with pytest.raises(ValueError):
        load_key(key_pem(other))


@pytest.mark.parametrize("text", ["ab==", "a+b/", "a b", "é", "a"])
def test_b64url_decode_refuses_anything_else(text):
    with pytest.raises(ValueError):
        b64url_decode(text)
