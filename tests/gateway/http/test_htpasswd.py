"""htpasswd hashes, checked against what Apache's own htpasswd writes
(Debian's apache2-utils, installed by scripts/setup --test)."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from gateway.http import htpasswd

HTPASSWD = shutil.which("htpasswd")
needs_htpasswd = pytest.mark.skipif(HTPASSWD is None, reason="htpasswd (apache2-utils) is not installed")

FLAGS = {"-m": "apr1", "-B": "bcrypt", "-2": "sha256", "-5": "sha512", "-s": "sha1"}
PASSWORDS = ["secret", "", "x" * 100, "pässwörd €", "with:colon"]


def made_by_htpasswd(flag: str, password: str, *extra: str) -> bytes:
    assert HTPASSWD is not None
    out = subprocess.run([HTPASSWD, "-nb" + flag[1:], *extra, "user", password], capture_output=True,
                         check=True).stdout
    user, _, hashed = out.strip().partition(b":")
    assert user == b"user"
    return hashed


@needs_htpasswd
@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("password", PASSWORDS)
def test_verifies_what_htpasswd_writes(flag, password):
    hashed = made_by_htpasswd(flag, password)
    assert htpasswd.scheme(hashed) == FLAGS[flag]
    assert htpasswd.verify(password.encode(), hashed)
    if flag != "-B" or len(password.encode()) < 72:  # bcrypt reads 72 bytes (Apache's and nginx's too)
        assert not htpasswd.verify(password.encode() + b"x", hashed)
    assert not htpasswd.verify(b"wrong", hashed)


@needs_htpasswd
@pytest.mark.parametrize("flag", ["-2", "-5"])
def test_sha_crypt_with_rounds(flag):
    hashed = made_by_htpasswd(flag, "pw", "-r", "1234")
    assert b"$rounds=1234$" in hashed
    assert htpasswd.verify(b"pw", hashed) and not htpasswd.verify(b"pW", hashed)


def test_known_vectors():
    # the first of Drepper's SHA-crypt vectors; the others as `openssl passwd` makes them
    assert htpasswd.sha_crypt(b"Hello world!", b"$5$saltstring") == (
        b"$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5")
    assert htpasswd.sha_crypt(b"Hello world!", b"$6$saltstringsaltstring") == (
        b"$6$saltstringsaltst$e.3mR68CqZEpesEX1HlFZT6sEanSOjM/b5UoDyDo00a8syek2cJldMjrbtKP86.FJvzluVR7nc3DNzelAw"
        b"Txj.")
    assert htpasswd.md5_crypt(b"password", b"saltsalt", b"$1$") == b"$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"
    assert htpasswd.md5_crypt(b"password", b"saltsalt") == b"$apr1$saltsalt$yAAkm4libquA.ZWLHbSBq/"
    assert htpasswd.verify(b"secret", b"{SHA}" + base64.b64encode(bytes.fromhex(
        "e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4")))


def test_file_format():
    users = htpasswd.parse(b"# staff\n\nalice:{SHA}abc\nbob:$apr1$x$y:extra:fields\ncarol:{PLAIN}pw\r\n")
    assert users.hashes == {b"alice": b"{SHA}abc", b"bob": b"$apr1$x$y", b"carol": b"{PLAIN}pw"}
    assert htpasswd.verify(b"pw", users.hashes[b"carol"])
    assert not htpasswd.verify(b"pw2", users.hashes[b"carol"])


@pytest.mark.parametrize(("text", "words"), [
    (b"alice\n", "line 1 is not"),
    (b"ok:{SHA}x\nbob:plaintext\n", "line 2 \\(user 'bob'\\): not a supported hash"),
    (b"des:abJnggxhB/yWI\n", "line 1"),  # htpasswd -d: DES crypt, 8 characters of a password
])
def test_bad_lines_are_named_without_their_hash(text, words):
    with pytest.raises(htpasswd.HtpasswdError, match=words) as exc:
        htpasswd.parse(text)
    assert "abJnggx" not in str(exc.value)


def test_malformed_hashes_never_raise():
    for hashed in [b"$5$rounds=x$salt$abc", b"$2y$garbage", b"$apr1$", b"{SHA}", b"$6$"]:
        assert htpasswd.verify(b"pw", hashed) is False


@pytest.mark.parametrize(("value", "expected"), [
    (b"Basic " + base64.b64encode(b"alice:pa:ss"), (b"alice", b"pa:ss")),
    (b"basic  " + base64.b64encode(b"alice:"), (b"alice", b"")),
    (b"Basic " + base64.b64encode(b"nocolon"), None),
    (b"Basic !!!", None),
    (b"Bearer abc", None),
    (None, None),
    (b"Basic " + base64.b64encode(b"a:" + b"x" * 5000), None),
])
def test_basic_credentials(value, expected):
    assert htpasswd.basic_credentials(value) == expected
