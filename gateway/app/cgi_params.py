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

``CgiParams`` gives the same variables already encoded as FastCGI name-value
pairs (``fastcgi.encode_pairs``), byte for byte what ``build_params`` and the
site's ``params`` give: what is the same for every request of a site on one
listener address, scheme and HTTP version (DOCUMENT_ROOT, SERVER_SOFTWARE,
SERVER_ADDR/PORT, a configured SERVER_NAME, REDIRECT_STATUS, the site's
``params``...) is encoded once per ``Router`` and kept (a bounded table that
goes with the ``App``, so a reload starts afresh); per request only what
varies is encoded. A site whose ``params`` override a per-request variable
(or an error page's request, with its own REDIRECT_STATUS) takes
``build_params`` itself: same bytes, just not precomputed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from fastcgi import encode_length, encode_pairs

from ..http.request import Request
from .routing import PhpScript, Router


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


# -- the same, pre-encoded ----------------------------------------------------------

#: Variables that differ per request; a site ``params`` entry naming one (or
#: an ``HTTP_*`` name) sends that site's requests through ``build_params``.
_PER_REQUEST = frozenset((
    b"SCRIPT_FILENAME", b"QUERY_STRING", b"REQUEST_METHOD", b"CONTENT_TYPE", b"CONTENT_LENGTH", b"SCRIPT_NAME",
    b"REQUEST_URI", b"DOCUMENT_URI", b"REMOTE_USER", b"REMOTE_ADDR", b"REMOTE_PORT", b"PATH_INFO",
    b"PATH_TRANSLATED",
))
#: How many (site, scheme, listener address, HTTP version) encodings one ``CgiParams`` keeps.
MAX_TEMPLATES = 256
#: How many request header names' CGI names are kept (names come from clients: bounded).
MAX_HEADER_NAMES = 512

_SHORT = [bytes((n,)) for n in range(128)]


class _Template:
    """One (router, https, server, HTTP version)'s constant runs of encoded pairs,
    each minus what the site's ``params`` replace; ``name`` is None when
    SERVER_NAME is the request's Host."""

    __slots__ = ("root", "middle", "server", "name", "end", "params", "document_root")

    def __init__(self, root: bytes, middle: bytes, server: bytes, name: bytes | None, end: bytes, params: bytes,
                 document_root: bytes) -> None:
        self.root = root
        self.middle = middle
        self.server = server
        self.name = name
        self.end = end
        self.params = params
        self.document_root = document_root


#: a template's stand-in for a site whose ``params`` replace per-request variables
_BUILD = _Template(b"", b"", b"", None, b"", b"", b"")

_N_SCRIPT_FILENAME = _SHORT[15]
_N_QUERY_STRING = _SHORT[12]
_N_REQUEST_METHOD = _SHORT[14]
_EMPTY_CONTENT = b"\x0c\x00CONTENT_TYPE\x0e\x00CONTENT_LENGTH"
_N_CONTENT_TYPE = _SHORT[12]
_N_CONTENT_LENGTH = _SHORT[14]
_N_SCRIPT_NAME = _SHORT[11]
_N_REQUEST_URI = _SHORT[11]
_N_DOCUMENT_URI = _SHORT[12]
_N_REMOTE_USER = _SHORT[11]
_N_REMOTE_ADDR = _SHORT[11]
_N_REMOTE_PORT = _SHORT[11]
_N_SERVER_NAME = _SHORT[11]
_NO_PATH_INFO = b"\x09\x00PATH_INFO"
_N_PATH_INFO = _SHORT[9]
_N_PATH_TRANSLATED = _SHORT[15]
_NO_REMOTE_USER = b"\x0b\x00REMOTE_USER"


class CgiParams:
    """``encode``: one request's PARAMS as encoded pairs, from per-site runs
    encoded once. One per ``App`` (its routers' lifetime)."""

    def __init__(self, server_software: bytes) -> None:
        self.server_software = server_software
        self._templates: dict[tuple[Router, bool, tuple[str, int], bytes], _Template] = {}
        #: request header name -> its HTTP_ name, b"": not passed on
        self._names: dict[bytes, bytes] = {}

    def encode(self, req: Request, router: Router, script: PhpScript, body_length: int | None,
               extra: Mapping[bytes, bytes] | None = None) -> bytes:
        """``encode_pairs`` of ``build_params`` for ``req`` (SERVER_NAME: the
        site's first server name, else the request's host), then the site's
        ``params`` and ``extra`` (an error page's) each replacing variables of
        the same name and appended in their order."""
        key = (router, req.https, req.server, req.http_version)
        t = self._templates.get(key)
        if t is None:
            t = self._template(router, req.https, req.server, req.http_version)
        if t is _BUILD or extra:
            params = build_params(method=req.method, target=req.target, http_version=req.http_version,
                                  headers=req.headers, script=script, document_root=router.root, client=req.client,
                                  server=req.server, server_name=router.server_name or req.host,
                                  server_software=self.server_software,
                                  body_length=body_length, https=req.https)
            for more in (router.extra_params, extra):
                if more:
                    params = [(n, v) for n, v in params if n not in more]
                    params += more.items()
            return encode_pairs(params)

        short = _SHORT
        names = self._names
        content_type = remote_user = b""
        joined: dict[bytes, bytes] = {}
        for name, value in req.headers:
            if name == b"content-type":
                content_type = value
            elif name == b"authorization":
                remote_user = _basic_auth_user(value)
            cgi = names.get(name)
            if cgi is None:
                cgi = self._cgi_name(name)
            if not cgi:
                continue
            if cgi in joined:
                joined[cgi] += (b"; " if name == b"cookie" else b", ") + value
            else:
                joined[cgi] = value

        # Each pair: name length, value length, name, value (fastcgi._pairs).
        v = script.script_filename.encode("utf-8", "surrogateescape")
        out = [_N_SCRIPT_FILENAME, short[n] if (n := len(v)) < 128 else encode_length(n), b"SCRIPT_FILENAME", v]
        v = script.query
        out += (_N_QUERY_STRING, short[n] if (n := len(v)) < 128 else encode_length(n), b"QUERY_STRING", v)
        v = req.method
        out += (_N_REQUEST_METHOD, short[n] if (n := len(v)) < 128 else encode_length(n), b"REQUEST_METHOD", v)
        if content_type or body_length is not None:
            v = content_type
            out += (_N_CONTENT_TYPE, short[n] if (n := len(v)) < 128 else encode_length(n), b"CONTENT_TYPE", v)
            v = b"" if body_length is None else b"%d" % body_length
            out += (_N_CONTENT_LENGTH, short[len(v)], b"CONTENT_LENGTH", v)
        else:
            out.append(_EMPTY_CONTENT)
        v = script.script_name.encode("utf-8", "surrogateescape")
        out += (_N_SCRIPT_NAME, short[n] if (n := len(v)) < 128 else encode_length(n), b"SCRIPT_NAME", v)
        v = req.target
        out += (_N_REQUEST_URI, short[n] if (n := len(v)) < 128 else encode_length(n), b"REQUEST_URI", v)
        v = script.document_uri.encode("utf-8", "surrogateescape")
        out += (_N_DOCUMENT_URI, short[n] if (n := len(v)) < 128 else encode_length(n), b"DOCUMENT_URI", v,
                t.root, t.middle)  # DOCUMENT_ROOT, SERVER_PROTOCOL; REQUEST_SCHEME ... SERVER_SOFTWARE
        if remote_user:
            v = remote_user
            out += (_N_REMOTE_USER, short[n] if (n := len(v)) < 128 else encode_length(n), b"REMOTE_USER", v)
        else:
            out.append(_NO_REMOTE_USER)
        v = req.client[0].encode()
        out += (_N_REMOTE_ADDR, short[n] if (n := len(v)) < 128 else encode_length(n), b"REMOTE_ADDR", v)
        v = b"%d" % req.client[1] if req.client[1] else b""  # 0: none known (nginx: empty)
        out += (_N_REMOTE_PORT, short[len(v)], b"REMOTE_PORT", v, t.server)  # then SERVER_ADDR, SERVER_PORT
        if t.name is None:
            v = req.host
            out += (_N_SERVER_NAME, short[n] if (n := len(v)) < 128 else encode_length(n), b"SERVER_NAME", v)
        else:
            out.append(t.name)
        out.append(t.end)  # REDIRECT_STATUS
        if script.path_info:
            v = script.path_info.encode("utf-8", "surrogateescape")
            out += (_N_PATH_INFO, short[n] if (n := len(v)) < 128 else encode_length(n), b"PATH_INFO", v)
            v = t.document_root + v
            out += (_N_PATH_TRANSLATED, short[n] if (n := len(v)) < 128 else encode_length(n), b"PATH_TRANSLATED", v)
        else:
            out.append(_NO_PATH_INFO)
        for cgi, v in joined.items():
            out += (short[n] if (n := len(cgi)) < 128 else encode_length(n),
                    short[n] if (n := len(v)) < 128 else encode_length(n), cgi, v)
        out.append(t.params)
        return b"".join(out)

    def _cgi_name(self, name: bytes) -> bytes:
        """``name``'s HTTP_ variable, b"" for a header not passed on, remembered."""
        cgi = _header_to_cgi(name) or b""
        if len(self._names) >= MAX_HEADER_NAMES:
            self._names.clear()
        self._names[name] = cgi
        return cgi

    def _template(self, router: Router, https: bool, server: tuple[str, int], http_version: bytes) -> _Template:
        more = router.extra_params
        if more.keys() & _PER_REQUEST or any(n.startswith(b"HTTP_") for n in more):
            t = _BUILD
        else:
            def run(*pairs: tuple[bytes, bytes]) -> bytes:
                return encode_pairs((n, v) for n, v in pairs if n not in more)

            root = router.root.encode("utf-8", "surrogateescape")
            scheme = [(b"REQUEST_SCHEME", b"https" if https else b"http")]
            if https:
                scheme.append((b"HTTPS", b"on"))
            name = None
            if b"SERVER_NAME" in more:
                name = b""
            elif router.server_name:
                name = run((b"SERVER_NAME", router.server_name))
            t = _Template(
                root=run((b"DOCUMENT_ROOT", root), (b"SERVER_PROTOCOL", b"HTTP/" + http_version)),
                middle=run(*scheme, (b"GATEWAY_INTERFACE", b"CGI/1.1"), (b"SERVER_SOFTWARE", self.server_software)),
                server=run((b"SERVER_ADDR", server[0].encode()), (b"SERVER_PORT", str(server[1]).encode())),
                name=name,
                end=run((b"REDIRECT_STATUS", b"200")),
                params=encode_pairs(more.items()),
                document_root=root)
        if len(self._templates) >= MAX_TEMPLATES:
            self._templates.clear()
        self._templates[(router, https, server, http_version)] = t
        return t
