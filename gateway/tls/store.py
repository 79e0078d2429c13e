"""The state directory: where certificates the gateway obtains or makes live.

One layout, shared by the process that writes (the ACME client, the internal
CA; in the master, or the single process) and every worker that reads (the
TLS listener, the HTTP-01 answer), so they never talk: a worker notices a new
certificate by its file changing (``Bundle.changed``).

Layout under ``[acme] state_dir`` (``AcmeConfig.state_path``)::

    certificates/NAME/bundle.pem   private key, leaf, chain (one file: replaced
                                   atomically, never a new cert with an old key)
    certificates/NAME/meta.json    what the writer wants to remember (the ACME
                                   order's names, when to renew)
    acme/account.json, account.key the ACME account (per directory URL: one
                                   subdirectory per server, see ``acme_dir``)
    acme/http-01/TOKEN             key authorisations being validated
    acme/tls-alpn-01/DOMAIN.pem    challenge certificates being validated
    ca/root.pem, ca/root.key       the internal CA (``internal = true``)

NAME is a certificate's first DNS name, lower case (``cert_name``). Modes:
directories 0750 and private keys 0640, group ``group`` (the workers' group
when run as root, so a dropped worker reads them and nobody else does);
``root.key`` 0600 (only the writer signs).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass

_NAME = re.compile(r"^[a-z0-9*][a-z0-9.*-]{0,252}$")


def cert_name(names: list[str]) -> str:
    """The directory a certificate for ``names`` lives in: its first name
    ("*" kept as "_wildcard_"); ``ValueError`` for what cannot be a DNS name."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    first = names[0].strip().lower().rstrip(".")
    if not _NAME.match(first) or ".." in first or first.startswith("."):
        raise ValueError(f"{names[0]!r} is not a DNS name")
    return first.replace("*", "_wildcard_")


@dataclass(frozen=True)
class Bundle:
    """One certificate's files; ``stamp`` says whether they changed."""

    path: str

    def stamp(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime_ns) of ``bundle.pem``, None if missing: a
        reader reloads when it differs from what it loaded."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns


class StateDir:
    """Paths in a state directory, and atomic writes with the right modes."""

    def __init__(self, root: str, group: int | None = None) -> None:
        self.root = root
        #: gid the workers run as (readable keys); None: the process's own
        self.group = group

    # -- paths -----------------------------------------------------------------------

    def bundle(self, name: str) -> Bundle:
        return Bundle(os.path.join(self.root, "certificates", name, "bundle.pem"))

    def meta_path(self, name: str) -> str:
        return os.path.join(self.root, "certificates", name, "meta.json")

    def acme_dir(self, directory_url: str) -> str:
        """The account of one ACME server (a test server's and production's
        never mix): ``acme/<host>-<hash>``."""
        host = re.sub(r"[^a-z0-9.-]", "_", directory_url.split("//", 1)[-1].split("/", 1)[0].lower())
        digest = hashlib.sha256(directory_url.encode()).hexdigest()[:8]
        return os.path.join(self.root, "acme", f"{host}-{digest}")

    def http_challenge(self, token: str) -> str:
        """Where the key authorisation for HTTP-01 ``token`` is kept while
        the CA validates; ``ValueError`` for a token that is not base64url."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", token):
            raise ValueError("not an ACME token")
        return os.path.join(self.root, "acme", "http-01", token)

    def alpn_challenge(self, domain: str) -> str:
        return os.path.join(self.root, "acme", "tls-alpn-01", cert_name([domain]) + ".pem")

    def ca_paths(self) -> tuple[str, str]:
        """The internal CA's certificate (give it to browsers) and key."""
        return os.path.join(self.root, "ca", "root.pem"), os.path.join(self.root, "ca", "root.key")

    # -- writing -------------------------------------------------------------------

    def make_dirs(self, path: str) -> None:
        """``path``'s directory and its parents up to the root: 0750, group."""
        directory = os.path.dirname(path)
        todo = []
        while directory.startswith(self.root) and not os.path.isdir(directory):
            todo.append(directory)
            directory = os.path.dirname(directory)
        for d in reversed(todo):
            os.makedirs(d, mode=0o750, exist_ok=True)
            self._own(d, 0o750)
        if not todo:
            os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)

    def write(self, path: str, data: bytes, mode: int = 0o640) -> None:
        """Replace ``path`` atomically (a reader sees the old file or the new,
        never half), created with ``mode`` before a byte is written."""
        self.make_dirs(path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            os.fchmod(fd, mode)
            if self.group is not None:
                os.fchown(fd, -1, self.group)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _own(self, path: str, mode: int) -> None:
        os.chmod(path, mode)
        if self.group is not None:
            try:
                os.chown(path, -1, self.group)
            except PermissionError:
                pass
