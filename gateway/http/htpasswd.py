"""htpasswd files (``[[sites.X.basic_auth]] user_file``) and the Basic scheme.

Pure: text in, users out; a password checked against a hash. No IO: the app
layer reads the file (and runs bcrypt, the slow one, in a thread).

Formats, as Apache's ``htpasswd`` writes them (and nginx's ``auth_basic``
reads them):

- ``$2y$`` (and ``$2a$``, ``$2b$``): bcrypt, ``htpasswd -B``. Checked by
  PyCA's ``bcrypt`` (C, constant time); 50-250 ms at usual costs.
- ``$apr1$``: Apache's MD5 crypt, ``htpasswd -m`` (its default); ``$1$`` is
  the same algorithm (glibc's MD5 crypt).
- ``$5$`` / ``$6$``: SHA-256 / SHA-512 crypt (Drepper's specification,
  ``htpasswd -2`` / ``-5``), with ``rounds=N$`` when given.
- ``{SHA}``: base64 of SHA-1, ``htpasswd -s`` (unsalted: weak).
- ``{PLAIN}``: plain text, as nginx accepts it; ``htpasswd -p`` writes no
  prefix, which is refused (Apache itself on Linux reads such a line as a DES
  crypt, and so does nginx, so it would never have worked there as meant).
- DES crypt (``htpasswd -d``, 13 characters) is refused: it ignores all but
  8 characters of a password.

Every comparison is ``hmac.compare_digest`` on the whole encoded hash. A line
is ``user:hash`` (more colon-separated fields after the hash are ignored, as
Apache does); blank lines and ``#`` comments are skipped. A malformed line or
an unsupported format is an error naming the line, at ``gateway check``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

_ITOA64 = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: SHA-crypt rounds (Drepper): the default, and the bounds a given value is clamped to.
ROUNDS_DEFAULT = 5000
ROUNDS_MIN = 1000
ROUNDS_MAX = 999_999_999
#: bcrypt reads this many bytes of a password (and Apache's htpasswd -B hashes
#: them; PyCA's bcrypt 5 raises beyond them instead of ignoring the rest)
BCRYPT_MAX = 72
#: Longest user name or password accepted from a client (bcrypt reads 72 bytes anyway).
MAX_CREDENTIAL = 1024


class HtpasswdError(ValueError):
    """A line of a user file that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Users:
    """A parsed user file: user name -> hash."""

    hashes: dict[bytes, bytes]

    def get(self, user: bytes) -> bytes | None:
        return self.hashes.get(user)


def scheme(hashed: bytes) -> str | None:
    """The format of a hash ("bcrypt", "apr1", "md5", "sha256", "sha512",
    "sha1", "plain"), None when unsupported."""
    if hashed[:4] in (b"$2y$", b"$2a$", b"$2b$"):
        return "bcrypt"
    for prefix, name in ((b"$apr1$", "apr1"), (b"$1$", "md5"), (b"$5$", "sha256"), (b"$6$", "sha512"),
                         (b"{SHA}", "sha1"), (b"{PLAIN}", "plain")):
        if hashed.startswith(prefix):
            return name
    return None


def parse(text: bytes) -> Users:
    """The users of a user file's content.

    Raises:
        HtpasswdError: naming the first bad line (by number, never its hash).
    """
    hashes: dict[bytes, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, rest = line.partition(b":")
        hashed = rest.split(b":", 1)[0]
        if not sep or not user or not hashed:
            raise HtpasswdError(f"line {number} is not \"user:hash\"")
        if scheme(hashed) is None:
            raise HtpasswdError(f"line {number} (user {user.decode('utf-8', 'replace')!r}): not a supported hash "
                                "(bcrypt $2y$, $apr1$, $5$, $6$, {SHA} or {PLAIN}); make it with "
                                "\"htpasswd -B\"")
        hashes[user] = hashed
    return Users(hashes)


def is_slow(hashed: bytes) -> bool:
    """Is checking this hash too slow for the event loop (bcrypt)?"""
    return scheme(hashed) == "bcrypt"


def verify(password: bytes, hashed: bytes) -> bool:
    """Does ``password`` match ``hashed`` (any format ``scheme`` knows)?
    Slow for bcrypt (``is_slow``); never raises for a malformed hash."""
    kind = scheme(hashed)
    try:
        if kind == "bcrypt":
            import bcrypt  # (PyCA's; imported here: only sites with bcrypt users need it)

            return bcrypt.checkpw(password[:BCRYPT_MAX], hashed)
        if kind == "sha1":
            return hmac.compare_digest(b"{SHA}" + base64.b64encode(hashlib.sha1(password).digest()), hashed)
        if kind == "plain":
            return hmac.compare_digest(b"{PLAIN}" + password, hashed)
        if kind in ("apr1", "md5"):
            magic = b"$apr1$" if kind == "apr1" else b"$1$"
            salt = hashed[len(magic):].split(b"$", 1)[0]
            return hmac.compare_digest(md5_crypt(password, salt, magic), hashed)
        if kind in ("sha256", "sha512"):
            return hmac.compare_digest(sha_crypt(password, hashed), hashed)
    except ValueError:
        return False
    return False


def _b64_from_24bit(b2: int, b1: int, b0: int, n: int) -> bytes:
    w = (b2 << 16) | (b1 << 8) | b0
    out = bytearray()
    for _ in range(n):
        out.append(_ITOA64[w & 0x3F])
        w >>= 6
    return bytes(out)


def md5_crypt(password: bytes, salt: bytes, magic: bytes = b"$apr1$") -> bytes:
    """Poul-Henning Kamp's MD5 crypt (``$1$``), Apache's ``$apr1$`` variant
    when ``magic`` says so: the full hash string."""
    salt = salt[:8]
    ctx = hashlib.md5(password + magic + salt)
    alt = hashlib.md5(password + salt + password).digest()
    n = len(password)
    while n > 0:
        ctx.update(alt[:min(16, n)])
        n -= 16
    i = len(password)
    while i:
        ctx.update(b"\0" if i & 1 else password[:1])
        i >>= 1
    final = ctx.digest()
    for r in range(1000):
        c = hashlib.md5(password if r & 1 else final)
        if r % 3:
            c.update(salt)
        if r % 7:
            c.update(password)
        c.update(final if r & 1 else password)
        final = c.digest()
    out = b"".join(_b64_from_24bit(final[a], final[b], final[c], 4)
                   for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)))
    out += _b64_from_24bit(0, 0, final[11], 2)
    return magic + salt + b"$" + out


_SHA256_ORDER = ((0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26),
                 (27, 7, 17), (18, 28, 8), (9, 19, 29))
_SHA512_ORDER = ((0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
                 (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
                 (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41))


def sha_crypt(password: bytes, setting: bytes) -> bytes:
    """SHA-256/512 crypt (``$5$``/``$6$``, Drepper's "Unix crypt using
    SHA-256 and SHA-512") of ``password`` with the salt and rounds of
    ``setting`` (a full hash or just ``$6$[rounds=N$]salt``): the full hash.

    Raises:
        ValueError: ``setting`` is not a SHA-crypt setting.
    """
    magic = setting[:3]
    if magic not in (b"$5$", b"$6$"):
        raise ValueError("not a SHA-crypt hash")
    new: Callable[..., hashlib._Hash] = hashlib.sha256 if magic == b"$5$" else hashlib.sha512
    size = 32 if magic == b"$5$" else 64
    rest = setting[3:]
    rounds = ROUNDS_DEFAULT
    custom = False
    if rest.startswith(b"rounds="):
        text, sep, rest = rest[7:].partition(b"$")
        if not sep or not text.isdigit():
            raise ValueError("bad rounds")
        rounds = min(max(int(text), ROUNDS_MIN), ROUNDS_MAX)
        custom = True
    salt = rest.split(b"$", 1)[0][:16]
    plen = len(password)
    b = new(password + salt + password).digest()
    a = new(password + salt)
    i = plen
    while i > size:
        a.update(b)
        i -= size
    a.update(b[:i])
    i = plen
    while i > 0:
        a.update(b if i & 1 else password)
        i >>= 1
    c = a.digest()
    dp = new(password * plen).digest()
    p = (dp * (plen // size + 1))[:plen]
    ds = new(salt * (16 + c[0])).digest()
    s = (ds * (len(salt) // size + 1))[:len(salt)]
    for r in range(rounds):
        ctx = new(p if r & 1 else c)
        if r % 3:
            ctx.update(s)
        if r % 7:
            ctx.update(p)
        ctx.update(c if r & 1 else p)
        c = ctx.digest()
    if size == 32:
        out = b"".join(_b64_from_24bit(c[x], c[y], c[z], 4) for x, y, z in _SHA256_ORDER)
        out += _b64_from_24bit(0, c[31], c[30], 3)
    else:
        out = b"".join(_b64_from_24bit(c[x], c[y], c[z], 4) for x, y, z in _SHA512_ORDER)
        out += _b64_from_24bit(0, 0, c[63], 2)
    head = magic + (b"rounds=%d$" % rounds if custom else b"")
    return head + salt + b"$" + out


def basic_credentials(value: bytes | None) -> tuple[bytes, bytes] | None:
    """(user, password) of an ``Authorization: Basic ...`` value (RFC 7617),
    None when there is none or it is malformed (too long, not base64, no colon)."""
    if value is None:
        return None
    auth_scheme, _, token = value.strip().partition(b" ")
    if auth_scheme.lower() != b"basic" or len(token) > 4 * MAX_CREDENTIAL:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password
