"""X-Accel-Redirect and X-Sendfile: PHP (or a proxied backend) authorises a
download, the gateway sends the file. Pure decisions here; ``site.App``
does the serving (step 7 of its pipeline).

Policy (nginx's X-Accel, Apache mod_xsendfile's X-Sendfile restricted as
its ``XSendFilePath``):
- A response carrying ``X-Accel-Redirect: /protected/f.zip`` (any status)
  is replaced by an internal GET of that URI (HEAD stays HEAD; the client's
  Range and If-* headers apply to the file). The URI is decoded and
  normalised as a request target is (``routing.split_target``; its query is
  ignored); it may name an ``internal = true`` alias, which clients cannot
  fetch. Only a static file is served: a missing file is a 404 (also where
  try_files would fall back to the front controller), a URI that names a
  PHP script, or routes to a backend or a directory, a 502 (one log line).
- ``X-Sendfile: /abs/path`` (Apache, lighttpd) is honoured only for a file
  inside an ``internal = true`` alias's directory, and served as the URI
  that alias maps it to (so with the same rules; a path through a symbolic
  link counts where it leads); any other path is a 502
  with one log line naming the path: an application must not make the
  gateway send ``/etc/shadow``. A relative path, or one with ``..``, is a 502.
- The backend's body is discarded and its slot freed before the file is
  sent: a drained body is already off the worker; a streamed one is closed
  (its slot released) first.
- As nginx, the backend's Content-Type, Content-Disposition, Accept-Ranges,
  Set-Cookie, Cache-Control and Expires are kept on the file's response
  (a file response's own of the same name are dropped); every other header
  of the backend (its ETag, Last-Modified, X-Accel-*) is dropped. A file
  answer other than 200/206/304 (404, 416) is the gateway's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

#: Response headers the gateway follows (never passed to a client).
FOLLOWED = frozenset({b"x-accel-redirect", b"x-sendfile"})
#: The backend's headers kept on the file's response (nginx's list).
KEPT = frozenset({b"content-type", b"content-disposition", b"accept-ranges", b"set-cookie", b"cache-control",
                  b"expires"})
#: File responses that carry the backend's headers.
FILE_OK = frozenset({200, 206, 304})


class AccelRefused(ValueError):
    """The backend asked for something the gateway will not send (502)."""


@dataclass(frozen=True, slots=True)
class AccelRequest:
    #: b"x-accel-redirect" or b"x-sendfile"
    header: bytes
    value: bytes


def find(headers: list[tuple[bytes, bytes]]) -> AccelRequest | None:
    """The X-Accel-Redirect (preferred) or X-Sendfile the backend sent, if any."""
    found = None
    for name, value in headers:
        lname = name.lower()
        if lname == b"x-accel-redirect":
            return AccelRequest(lname, value.strip())
        if lname == b"x-sendfile" and found is None:
            found = AccelRequest(lname, value.strip())
    return found


def target(req: AccelRequest, internal_dirs: list[tuple[str, str]],
           resolve: Callable[[str], str] | None = None) -> bytes:
    """The request target to serve for ``req``. ``internal_dirs``: (URI
    prefix, directory ending in "/") of the internal aliases. ``resolve``
    (``os.path.realpath``): tried on an X-Sendfile path outside them, for a
    path through a symbolic link.

    Raises:
        AccelRefused: an empty header, or an X-Sendfile path outside every
            internal alias.
    """
    if not req.value:
        raise AccelRefused(f"empty {req.header.decode()}")
    if req.header == b"x-accel-redirect":
        if not req.value.startswith(b"/"):
            raise AccelRefused(f"X-Accel-Redirect {req.value[:80]!r} is not a URI path")
        return req.value
    path = os.fsdecode(req.value)
    if not path.startswith("/") or "\0" in path or "/../" in path + "/" or "/./" in path + "/":
        raise AccelRefused(f"X-Sendfile {path[:200]!r} is not a normalised absolute path")
    for candidate in (path, resolve(path) if resolve else path):
        for prefix, directory in internal_dirs:
            if candidate.startswith(directory):
                rest = candidate[len(directory):]
                return (prefix.rstrip("/") + "/" + quote(rest, safe="/")).encode("utf-8", "surrogateescape")
    raise AccelRefused(f"X-Sendfile {path[:200]!r} is outside every internal alias's directory "
                       "(add [sites.X.aliases.\"/prefix/\"] path = DIR, internal = true)")


def merge(backend: list[tuple[bytes, bytes]], file: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The file response's headers with the backend's ``KEPT`` ones in place
    of its own of the same name."""
    kept = [(n, v) for n, v in backend if n.lower() in KEPT]
    names = {n.lower() for n, _ in kept}
    return kept + [(n, v) for n, v in file if n.lower() not in names]
