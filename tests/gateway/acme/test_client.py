"""The order flow over a scripted transport (no sockets): badNonce retried
with the nonce it carried, Retry-After followed when polling, a failed
validation reported with the CA's reason and its challenge file cleaned up,
a garbage answer a clean error."""

from __future__ import annotations

import json

import pytest

from gateway.acme.client import AcmeClient
from gateway.acme.https import Answer
from gateway.acme.jws import AccountKey, b64url_decode, new_key
from gateway.acme.messages import AcmeError, AcmeProblem

CA = "https://ca.test"
DIRECTORY = {"newNonce": f"{CA}/nonce", "newAccount": f"{CA}/acct", "newOrder": f"{CA}/order"}
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


def ok(obj, status=200, **headers) -> Answer:
    return Answer(status, {"content-type": "application/json", **headers}, json.dumps(obj).encode())


def problem(kind: str, status: int = 400, **headers) -> Answer:
    return Answer(status, {"content-type": "application/problem+json", **headers},
                  json.dumps({"type": f"urn:ietf:params:acme:error:{kind}", "detail": kind + "!"}).encode())


class Script:
    """Answers in order; records (method, url, protected header) of each request."""

    def __init__(self, *answers: tuple[str, str, Answer]) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, str, dict]] = []

    async def __call__(self, method, url, body=None, content_type="application/jose+json"):
        expected_method, expected_url, answer = self.answers.pop(0)
        assert (method, url) == (expected_method, expected_url)
        header = json.loads(b64url_decode(json.loads(body)["protected"])) if body else {}
        self.seen.append((method, url, header))
        n = len(self.seen)
        return Answer(answer.status, {"replay-nonce": f"nonce{n}", **answer.headers}, answer.body)


class Solver:
    kind = "http-01"

    def __init__(self) -> None:
        self.prepared: list[tuple[str, str, str]] = []
        self.cleaned: list[str] = []

    def prepare(self, name, token, key_authorization):
        self.prepared.append((name, token, key_authorization))

    def cleanup(self, name, token):
        self.cleaned.append(token)


def client(script: Script, sleeps: list[float] | None = None) -> AcmeClient:
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    return AcmeClient(script, f"{CA}/dir", AccountKey(new_key()), poll_interval=0.5, sleep=sleep,
                      clock=lambda: 1000.0)


async def test_bad_nonce_is_retried_with_the_nonce_it_carried():
    script = Script(("GET", f"{CA}/dir", ok(DIRECTORY)),
                    ("POST", f"{CA}/acct", problem("badNonce")),
                    ("POST", f"{CA}/acct", ok({"status": "valid"}, 201, location=f"{CA}/acct/1")))
    c = client(script)
    assert await c.register("ops@example.com") == f"{CA}/acct/1"
    # the first POST used the directory answer's nonce, the retry the badNonce answer's
    assert [h.get("nonce") for _, _, h in script.seen] == [None, "nonce1", "nonce2"]
    assert script.seen[1][2]["jwk"] == c.key.jwk and c.counters.bad_nonces == 1


async def test_bad_nonce_forever_gives_up():
    script = Script(("GET", f"{CA}/dir", ok(DIRECTORY)), *[("POST", f"{CA}/acct", problem("badNonce"))] * 4)
    with pytest.raises(AcmeProblem, match="badNonce"):
        await client(script).register("")


def _order(status: str, **more) -> dict:
    return {"status": status, "identifiers": [{"type": "dns", "value": "example.com"}],
            "authorizations": [f"{CA}/authz/1"], "finalize": f"{CA}/finalize/1", **more}


def _authz(status: str, challenge_status: str = "pending", **challenge) -> dict:
    return {"status": status, "identifier": {"type": "dns", "value": "example.com"},
            "challenges": [{"type": "http-01", "url": f"{CA}/chall/1", "token": TOKEN, "status": challenge_status,
                            **challenge}]}


async def test_a_failed_validation_names_the_cas_reason_and_cleans_up():
    error = {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "got 404 from 203.0.113.1"}
    script = Script(("GET", f"{CA}/dir", ok(DIRECTORY)),
                    ("POST", f"{CA}/order", ok(_order("pending"), 201, location=f"{CA}/order/1")),
                    ("POST", f"{CA}/authz/1", ok(_authz("pending"))),
                    ("POST", f"{CA}/chall/1", ok({"status": "processing"})),
                    ("POST", f"{CA}/authz/1", ok(_authz("pending", "processing"), **{"retry-after": "3"})),
                    ("POST", f"{CA}/authz/1", ok(_authz("invalid", "invalid", error=error))))
    c = client(script, sleeps := [])
    c.kid = f"{CA}/acct/1"
    solver = Solver()
    with pytest.raises(AcmeError) as exc:
        await c.obtain(["example.com"], new_key(), solver)
    assert str(exc.value) == "http-01 validation of example.com failed: unauthorized: got 404 from 203.0.113.1"
    assert solver.prepared == [("example.com", TOKEN, f"{TOKEN}.{c.key.thumbprint}")]
    assert solver.cleaned == [TOKEN]
    assert sleeps == [3.0]  # Retry-After followed
    assert all(h["kid"] == f"{CA}/acct/1" for m, _, h in script.seen if m == "POST")


async def test_a_garbage_order_answer_is_a_clean_error():
    script = Script(("GET", f"{CA}/dir", ok(DIRECTORY)),
                    ("POST", f"{CA}/order", Answer(201, {"location": f"{CA}/order/1"}, b"<html>hi</html>")))
    c = client(script)
    c.kid = f"{CA}/acct/1"
    with pytest.raises(AcmeError, match="^order: the answer is not JSON"):
        await c.obtain(["example.com"], new_key(), Solver())


async def test_an_order_for_other_names_is_refused():
    order = _order("pending", identifiers=[{"type": "dns", "value": "evil.example"}])
    script = Script(("GET", f"{CA}/dir", ok(DIRECTORY)),
                    ("POST", f"{CA}/order", ok(order, 201, location=f"{CA}/order/1")))
    c = client(script)
    c.kid = f"{CA}/acct/1"
    with pytest.raises(AcmeError, match="ordered"):
        await c.obtain(["example.com"], new_key(), Solver())


async def test_a_rate_limit_carries_its_retry_after():
    script = Script(("GET", f"{CA}/dir", ok(DIRECTORY)),
                    ("POST", f"{CA}/order", problem("rateLimited", 429, **{"retry-after": "7200"})))
    c = client(script)
    c.kid = f"{CA}/acct/1"
    with pytest.raises(AcmeProblem) as exc:
        await c.obtain(["example.com"], new_key(), Solver())
    assert exc.value.type == "rateLimited" and exc.value.retry_after == 7200.0
