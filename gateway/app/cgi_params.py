"""CGI/1.1 request parameters for PHP (RFC 3875 4.1), as nginx's fastcgi.conf.

Pure: bytes in and bytes out. ``build_params`` gives the same variables as
nginx's ``fastcgi.conf`` plus Debian's ``snippets/fastcgi-php.conf``
(PATH_INFO), so a PHP app sees the same ``$_SERVER`` it sees under nginx +
php-fpm. Differences are listed in the README. Every request header becomes
``HTTP_*`` except ``Proxy`` (httpoxy, CVE-2016-5385) and names containing
``_``, which nginx drops (``ignore_invalid_headers``): otherwise
``X-Forwarded_For`` could pose as ``X-Forwarded-For``. Clients can never set
``PHP_VALUE``/``PHP_ADMIN_VALUE``: only ``HTTP_``-prefixed names come from the
client.
"""

from __future__ import annotations

import base64
import binascii

from .routing import PhpScript


def _header_to_cgi(name: bytes) -> bytes | None:
    if b"_" in name or name == b"proxy":
        return None
    return b"HTTP_" + name.upper().replace(b"-", b"_")


def _basic_auth_user(value: bytes) -> bytes:
    """nginx's $remote_user: the user name of a Basic Authorization header."""
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return b""
    try:
        return base64.b64decode(token.strip(), validate=True).partition(b":")[0]
    except (binascii.Error, ValueError):
        return b""


def build_params(
    *,
    method: bytes,
    target: bytes,
    http_version: bytes,
    headers: list[tuple[bytes, bytes]],
    script: PhpScript,
    document_root: str,
    client: tuple[str, int],
    server: tuple[str, int],
    server_name: bytes,
    server_software: bytes,
    body_length: int | None,
    https: bool = False,
) -> list[tuple[bytes, bytes]]:
    """The FastCGI PARAMS for one request, in nginx's fastcgi.conf order.

    One long function on purpose: it is that table, in that order, read top
    to bottom against nginx's file (and one call per PHP request: no helpers).

    Args:
        headers: lower-cased names, as h11 gives them.
        body_length: the length of the buffered body, or None if the request
            had none (CONTENT_LENGTH is then empty, as under nginx).
    """
    content_type = b""
    remote_user = b""
    joined: dict[bytes, bytes] = {}
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b"authorization":
            remote_user = _basic_auth_user(value)
        cgi = _header_to_cgi(name)
        if cgi is None:
            continue
        if cgi in joined:
            joined[cgi] += (b"; " if name == b"cookie" else b", ") + value
        else:
            joined[cgi] = value
    enc = str.encode
    params = [
        (b"SCRIPT_FILENAME", enc(script.script_filename, "utf-8", "surrogateescape")),
        (b"QUERY_STRING", script.query),
        (b"REQUEST_METHOD", method),
        (b"CONTENT_TYPE", content_type),
        (b"CONTENT_LENGTH", b"" if body_length is None else str(body_length).encode()),
        (b"SCRIPT_NAME", enc(script.script_name, "utf-8", "surrogateescape")),
        (b"REQUEST_URI", target),
        (b"DOCUMENT_URI", enc(script.document_uri, "utf-8", "surrogateescape")),
        (b"DOCUMENT_ROOT", enc(document_root, "utf-8", "surrogateescape")),
        (b"SERVER_PROTOCOL", b"HTTP/" + http_version),
        (b"REQUEST_SCHEME", b"https" if https else b"http"),
    ]
    if https:
        params.append((b"HTTPS", b"on"))
    params += [
        (b"GATEWAY_INTERFACE", b"CGI/1.1"),
        (b"SERVER_SOFTWARE", server_software),
        (b"REMOTE_USER", remote_user),
        (b"REMOTE_ADDR", client[0].encode()),
        (b"REMOTE_PORT", str(client[1]).encode() if client[1] else b""),  # 0: none known (nginx: empty)
        (b"SERVER_ADDR", server[0].encode()),
        (b"SERVER_PORT", str(server[1]).encode()),
        (b"SERVER_NAME", server_name),
        (b"REDIRECT_STATUS", b"200"),
    ]
    # Debian's snippets/fastcgi-php.conf always sends PATH_INFO (empty when the
    # URI has none); PATH_TRANSLATED only makes sense with one.
    path_info = enc(script.path_info, "utf-8", "surrogateescape")
    params.append((b"PATH_INFO", path_info))
    if path_info:
        params.append((b"PATH_TRANSLATED", enc(document_root, "utf-8", "surrogateescape") + path_info))
    params += joined.items()
    return params
