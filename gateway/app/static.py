"""Static files, as nginx serves them: Content-Type, Content-Length, ETag and
Last-Modified with 304s, one byte range (206/416), HEAD. The body is a
``FileRange`` that the connection task sends with ``os.sendfile`` on plain TCP.

Multi-range requests are answered with the whole file (200), which RFC 9110
14.2 allows; nginx would send multipart/byteranges.
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import re
import stat

from ..http.response import FileRange, Response, error_response, http_date

_EXTRA_TYPES = {
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".json": "application/json",
    ".txt": "text/plain",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".avif": "image/avif",
    ".mp4": "video/mp4",
}
_RANGE = re.compile(rb"^bytes=(\d*)-(\d*)$")


def content_type(path: str) -> bytes:
    ext = os.path.splitext(path)[1].lower()
    # No charset parameter, as nginx (charset off): the file's bytes speak for themselves.
    ctype = _EXTRA_TYPES.get(ext) or mimetypes.types_map.get(ext) or "application/octet-stream"
    return ctype.encode()


def etag_for(st: os.stat_result) -> bytes:
    """nginx's format: hex mtime, hex size."""
    return b'"%x-%x"' % (int(st.st_mtime), st.st_size)


def file_headers(path: str, etag: bytes, mtime: int) -> list[tuple[bytes, bytes]]:
    """A file's headers but its length (``serve_file``'s, and ``app.fastpath``'s from the same)."""
    return [
        (b"content-type", content_type(path)),
        (b"last-modified", http_date(mtime)),
        (b"etag", etag),
        (b"accept-ranges", b"bytes"),
    ]


def not_modified(headers: dict[bytes, bytes], etag: bytes, mtime: int) -> bool:
    """Do the request's conditions (If-None-Match first, else If-Modified-Since) make it a 304?"""
    inm = headers.get(b"if-none-match")
    if inm is not None:
        tags = [t.strip().removeprefix(b"W/") for t in inm.split(b",")]
        return b"*" in tags or etag in tags
    ims = headers.get(b"if-modified-since")
    if ims is not None:
        try:
            when = email.utils.parsedate_to_datetime(ims.decode("latin-1")).timestamp()
        except (TypeError, ValueError, IndexError):
            return False
        return mtime <= when
    return False


def serve_file(path: str, method: bytes, headers: dict[bytes, bytes], *, server: bytes = b"gateway") -> Response:
    """Answer GET or HEAD for the regular file at ``path``.

    One function on purpose: open, fstat, conditionals, range, in the order
    nginx's static module checks them, with no call per step on the hot path.

    Args:
        headers: request headers, lower-cased names, last value wins.
    """
    if method not in (b"GET", b"HEAD"):
        return error_response(405, server=server, headers=[(b"allow", b"GET, HEAD")])
    try:
        f = open(path, "rb")  # noqa: SIM115 - handed to the Response, closed by the connection task
    except PermissionError:
        return error_response(403, server=server)
    except OSError:
        return error_response(404, server=server)
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            f.close()
            return error_response(404, server=server)
        size = st.st_size
        mtime = int(st.st_mtime)
        etag = etag_for(st)
        base = file_headers(path, etag, mtime)
        if not_modified(headers, etag, mtime):
            f.close()
            return Response(304, [h for h in base if h[0] != b"content-type"])
        rng = headers.get(b"range")
        if rng is not None and method == b"GET" and _if_range_ok(headers.get(b"if-range"), etag, mtime):
            m = _RANGE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):
                first, last = m.group(1), m.group(2)
                if first:
                    start = int(first)
                    end = min(int(last), size - 1) if last else size - 1
                    if start >= size or (last and int(last) < start):
                        f.close()
                        return _unsatisfiable(size, server)
                else:
                    suffix = int(last)
                    if suffix == 0:
                        f.close()
                        return _unsatisfiable(size, server)
                    start, end = max(0, size - suffix), size - 1
                length = end - start + 1
                hdrs = [*base, (b"content-range", b"bytes %d-%d/%d" % (start, end, size)),
                        (b"content-length", b"%d" % length)]
                return Response(206, hdrs, FileRange(f, start, length))
        hdrs = [*base, (b"content-length", b"%d" % size)]
        if method == b"HEAD":
            f.close()
            return Response(200, hdrs)
        return Response(200, hdrs, FileRange(f, 0, size))
    except BaseException:
        f.close()
        raise


def _if_range_ok(if_range: bytes | None, etag: bytes, mtime: int) -> bool:
    if if_range is None:
        return True
    if if_range.startswith((b'"', b"W/")):
        return if_range == etag
    return if_range == http_date(mtime)


def _unsatisfiable(size: int, server: bytes) -> Response:
    return error_response(416, server=server, headers=[(b"content-range", b"bytes */%d" % size)])
