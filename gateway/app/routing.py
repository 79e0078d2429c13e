"""From a request target to what serves it: static file, PHP script, redirect, error.

Pure apart from ``os.stat``/``os.path.realpath`` on the docroot: no sockets, no
trio. Rules, in the order they apply (each mirrors nginx's recommended PHP
setup; the README's nginx table gives the directive behind each):

1. The target is split into path and query; the path is percent-decoded once.
   A decoded NUL, CR or LF is a 400 (CVE-2019-11043 fed ``%0a`` into
   ``fastcgi_split_path_info``). Slashes are merged, ``.`` and ``..`` resolved;
   ``..`` above the root is a 400. Encoded dots therefore never escape.
2. A path segment starting with ``.`` (``.git``, ``.env``, ``.htaccess``,
   ``.user.ini``) is a 403, except ``/.well-known/``.
3. A path that names a PHP script (``[^/]\\.php(/|$)``) runs that script if, and
   only if, the script is an existing regular file: ``/index.php/a/b`` runs
   ``/index.php`` with PATH_INFO ``/a/b``; ``/uploads/x.jpg/y.php`` is a 404
   because no file ``/uploads/x.jpg/y.php`` exists. A missing script is a 404,
   never the front controller. Scripts under ``no_php_under`` are a 403.
4. Otherwise ``try_files``, in order: ``$uri`` (a regular file), ``$uri/`` (a
   directory: 301 to add the slash, then its index files), any other entry
   but the last a file to look for (a directory when it ends with ``/``,
   then its index files), with ``$uri``, ``$host``, ``$args``... expanded
   (``http.rewrite.Template``): ``/cache$uri/index.html``,
   ``/wp-content/cache/supercache/$host$uri/index.html``. The expanded path
   is normalised like a request path: one that climbs above the root, names
   a hidden segment, uses ``$host`` with no host, or (``symlinks =
   "within_root"``) is a link leaving the root is skipped (``$host`` is the
   validated Host: no ``/``, no ``..``). A file found is served by the
   rules of 5. The last entry is the fallback: ``=CODE``, or a URI such as
   ``/index.php?$args`` (the front controller) routed once more: a PHP
   script (``/app.php$uri`` runs ``/app.php`` with PATH_INFO), a file, or a
   directory's index; else a 404. Under an alias the fallback is a 404, as
   an nginx alias location. ``config.rewrite.check_try_files`` refuses what
   this cannot run.
Proxy sites (``proxy = BACKEND``) and ``routes`` (issue 15):

- A ``routes`` prefix (longest first) sends every request under it to its
  HTTP backend, whatever the root holds (nginx ``location /api/ {
  proxy_pass ...; }``); matched on the normalised path (an encoded ``..``
  cannot dodge it), after the ``deny`` list, before everything else.
- On a site with ``proxy``, a path naming a regular file of the root is
  served as one (rules 2 and 5 still apply); everything else, directories and
  hidden paths included, goes to the backend (nginx ``try_files $uri
  @backend``): the backend owns the URL space, the root only adds files.
- The request target goes upstream as the client sent it (no prefix stripped).

An ``internal = true`` alias (the longest alias prefix of the path decides)
is a 404 to clients, as an nginx ``internal`` location: only an internal
request (``route(..., internal=True)``: X-Accel-Redirect, an error page)
reaches it.

5. A file with a PHP extension is never served as a static file (its source
   would leak): it runs on PHP or is refused. Nor is a backup or editor copy
   (``wp-config.php~``, ``x.php.bak``, ``#x.php#``, ``x.orig``, ``x.swp``...)
   unless the site sets ``serve_backup_files``: a copy of a PHP file is its source.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field, replace
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes

from ..config import SiteConfig
from ..http.rewrite import Regex, Rule, SiteRules, Template, Vars

#: Extensions whose source must never be sent to a client.
PHP_SOURCE_EXTENSIONS = (".php", ".phtml", ".php3", ".php4", ".php5", ".php7", ".php8", ".phps", ".phar", ".inc")

#: printable ASCII but space: what a query keeps as it is
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))

_PHP_SPLIT = re.compile(r"^(.+?[^/]\.php)(/.*)?$")

#: A copy of a PHP file is its source: a PHP extension followed by anything at
#: all ("wp-config.php~", "x.php.bak", "x.php,v", "x.php1", "x.php " with a
#: trailing space; ".inc" only when a separator follows, as "x.include.js" is
#: common), or an editor or backup file of any kind ("x~", "#x#", "x.bak",
#: "x.orig", "x.save", "x.old", "x.swp", "x.swo", "x.rej").
_SOURCE_COPY = re.compile(
    r"\.(?:php\d?|phtml|phps|phar).|\.inc[^0-9a-z]|~$|^#.*#$|\.(?:bak|orig|save|old|swp|swo|rej)$",
    re.IGNORECASE | re.DOTALL,
)


def is_source_copy(name: str) -> bool:
    """Is the file name (last path segment) a backup or editor copy?"""
    return _SOURCE_COPY.search(name) is not None


class _SymlinkLeavesRoot(Exception):
    pass


class BadRequestTarget(ValueError):
    """The request target cannot be served; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class StaticFile:
    path: str  # filesystem path
    uri: str  # decoded URI path that named it
    #: reached by an internal redirect (nginx's): a directory's index or try_files' last entry
    redirected: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class PhpScript:
    script_filename: str  # filesystem path of the script
    script_name: str  # URI path of the script (SCRIPT_NAME)
    document_uri: str  # nginx $document_uri: the URI after internal redirects
    path_info: str  # "" when there is none
    query: bytes  # QUERY_STRING
    #: reached by an internal redirect (nginx's): a directory's index or try_files' last entry
    redirected: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Redirect:
    location: str
    status: int = 301


@dataclass(frozen=True, slots=True)
class Refuse:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProxyPass:
    """The request goes to HTTP backend ``backend``, its target unchanged."""

    backend: str


Route = StaticFile | PhpScript | Redirect | Refuse | ProxyPass


def split_target(target: bytes) -> tuple[str, bytes]:
    """Split a raw request target into a normalised, decoded path and the raw query.

    Raises:
        BadRequestTarget: malformed encoding, control characters, or ``..``
            above the root.
    """
    if target.startswith(b"/"):
        raw_path, _, query = target.partition(b"?")
    elif target.lower().startswith((b"http://", b"https://")):
        # absolute-form (RFC 9112 3.2.2): drop scheme and authority
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        raw_path, _, query = (rest[slash:] if slash >= 0 else b"/").partition(b"?")
    else:
        raise BadRequestTarget("request target must be an absolute path")
    raw_path = raw_path.split(b"#", 1)[0]
    if re.search(rb"%(?![0-9A-Fa-f]{2})", raw_path):
        raise BadRequestTarget("malformed percent-encoding in the path")
    decoded = unquote_to_bytes(raw_path)
    if any(c in decoded for c in (0, 10, 13)):
        raise BadRequestTarget("control character in the path")
    path = os.fsdecode(decoded)
    return normalize_path(path), query


def normalize_path(path: str) -> str:
    """Merge slashes and resolve dot segments; keep a trailing slash."""
    out: list[str] = []
    segments = path.split("/")
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise BadRequestTarget("path climbs above the document root")
            out.pop()
        else:
            out.append(seg)
    result = "/" + "/".join(out)
    if len(out) and (path.endswith("/") or segments[-1] in (".", "..")):
        result += "/"
    return result


class Router:
    """Routing for one site, with per-site values computed once."""

    def __init__(self, site: SiteConfig, name: str = "") -> None:
        self.site = site
        #: the site's name, its key in [sites]
        self.name = name
        #: "": a site that only answers with return rules (no file is ever looked up)
        self.root = os.path.realpath(site.root) if site.root else ""
        self.try_files = [(entry, Template.parse(entry)) for entry in site.effective_try_files()]
        #: [[sites.X.return]] and [[sites.X.rewrite]], compiled
        self.rules = SiteRules(
            tuple(Rule(f"return[{i}]", tuple(r.paths), Regex(r.regex) if r.regex else None,
                       frozenset(r.methods), r.code, Template.parse(r.to) if r.to else None)
                  for i, r in enumerate(site.return_)),
            tuple(Rule(f"rewrite[{i}]", tuple(r.paths), Regex(r.regex) if r.regex else None,
                       to=Template.parse(r.to))
                  for i, r in enumerate(site.rewrite)))
        self.php_enabled = bool(site.php)
        #: the HTTP backend everything that is not a file goes to ("": none)
        self.proxy = site.proxy
        #: [sites.X.routes], longest prefix first
        self.routes = sorted(site.routes.items(), key=lambda r: -len(r[0]))
        self.no_php_under = tuple(p if p.endswith("/") else p + "/" for p in site.no_php_under)
        self.unbuffered = tuple(site.unbuffered)
        self.deny = tuple(site.deny)
        self.extra_params = {k.encode(): v.encode() for k, v in site.params.items()}
        self.static_max_age = int(site.static_max_age)
        self.static_cache_extensions = tuple("." + e.lower().lstrip(".") for e in site.static_cache_extensions)
        # nginx "location /prefix/ { alias /dir/; }": longest prefix first
        self.aliases = sorted(((prefix, os.path.realpath(alias.path) + ("/" if prefix.endswith("/") else ""))
                               for prefix, alias in site.aliases.items()), key=lambda a: -len(a[0]))
        #: prefixes of ``internal = true`` aliases: 404 to clients (nginx ``internal``)
        self.internal = frozenset(prefix for prefix, alias in site.aliases.items() if alias.internal)
        #: (prefix, directory + "/") of those, as configured and as resolved:
        #: where X-Sendfile may point
        self.internal_dirs = sorted({(prefix, d.rstrip("/") + "/") for prefix, alias in site.aliases.items()
                                     if alias.internal
                                     for d in (os.path.normpath(alias.path), os.path.realpath(alias.path))},
                                    key=lambda a: -len(a[1]))
        #: where symlinks may lead with symlinks = "within_root"
        self.allowed_dirs = (self.root, *(t.rstrip("/") for _, t in self.aliases))
        #: SERVER_NAME: the first exact server name, as nginx's $server_name.
        self.server_name = next((n for n in site.server_names if not n.startswith("*") and n != "_"), "").encode()

    # -- filesystem helpers ----------------------------------------------------

    def _fs(self, uri: str) -> str:
        for prefix, target in self.aliases:
            if uri.startswith(prefix):
                return target + uri[len(prefix):]
        return self.root + uri


    def _stat(self, fs_path: str) -> os.stat_result | None:
        try:
            st = os.stat(fs_path)
        except (OSError, ValueError):
            return None
        if self.site.symlinks == "within_root" and not self.within(os.path.realpath(fs_path)):
            raise _SymlinkLeavesRoot(fs_path)
        return st

    def within(self, real: str) -> bool:
        """Is ``real`` (a path with no symbolic link left in it) where
        ``symlinks = "within_root"`` lets a link lead: the root or an alias's directory?"""
        return any(real == d or real.startswith(d + os.sep) for d in self.allowed_dirs)

    def _is_file(self, uri: str) -> bool:
        st = self._stat(self._fs(uri))
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_regular_file(self, fs_path: str) -> bool:
        """Is ``fs_path`` (a file system path under this site) a regular file
        the site may serve (``symlinks`` observed)?"""
        try:
            st = self._stat(fs_path)
        except _SymlinkLeavesRoot:
            return False
        return st is not None and stat.S_ISREG(st.st_mode)

    def _is_dir(self, uri: str) -> bool:
        st = self._stat(self._fs(uri))
        return st is not None and stat.S_ISDIR(st.st_mode)

    # -- routing ---------------------------------------------------------------

    def route(self, path: str, query: bytes, host: bytes = b"", *, internal: bool = False) -> Route:
        """Decide what serves the normalised ``path`` (from :func:`split_target`);
        ``host``: the request's validated host name (try_files' ``$host``; b"":
        the site's server name). ``internal``: an internal request
        (X-Accel-Redirect, an error page), which may reach ``internal = true``
        aliases."""
        if not self.root:
            return Refuse(404, "the site has no root")
        if self.internal and not internal:
            prefix = next((p for p, _ in self.aliases if path.startswith(p)), None)
            if prefix in self.internal:  # the longest alias prefix decides
                return Refuse(404, f"{prefix} is an internal alias (X-Accel-Redirect and error pages only)")
        try:
            return self._route(path, query, host.decode("ascii", "replace") or self.server_name.decode())
        except _SymlinkLeavesRoot:
            return Refuse(403, "symbolic link leaves the document root (symlinks = within_root)")

    def _route(self, path: str, query: bytes, host: str) -> Route:
        if self.deny and path.startswith(self.deny):
            return Refuse(403, "denied by the site's deny list")
        for prefix, backend in self.routes:
            if path.startswith(prefix):
                return ProxyPass(backend)
        for seg in path.split("/"):
            if seg.startswith(".") and seg != ".well-known":
                if self.proxy:
                    return ProxyPass(self.proxy)  # never a file of the root; the backend's to answer
                return Refuse(403, f"hidden path segment {seg!r}")
        if self.proxy:
            if not path.endswith("/") and self._is_file(path):
                return self._file(path, query)
            return ProxyPass(self.proxy)
        m = _PHP_SPLIT.match(path)
        if m:
            return self._php(m.group(1), m.group(2) or "", path, query)
        variables = Vars(host=host, uri=path, args=query.decode("latin-1"))
        for i, (entry, template) in enumerate(self.try_files):
            last = i == len(self.try_files) - 1
            if entry == "$uri":
                if not path.endswith("/") and self._is_file(path):
                    return self._file(path, query)
            elif entry == "$uri/":
                if self._is_dir(path):
                    if not path.endswith("/"):
                        # the decoded path goes back on the wire: percent-encode it again
                        location = quote_from_bytes(os.fsencode(path + "/"), safe="/!$&'()*+,;=:@-._~")
                        return Redirect(location + ("?" + query.decode("latin-1") if query else ""))
                    return self._index(path, query)
            elif not last:
                found = self._try(template, variables, query)
                if found is not None:
                    return found
            elif entry.startswith("="):
                return Refuse(int(entry[1:]), "try_files ended in " + entry)
            else:
                if any(path.startswith(prefix) for prefix, _ in self.aliases):
                    # as an nginx alias location: its files or a 404, never the front controller
                    return Refuse(404, "no such file under an alias")
                return self._fallback(template, variables)
        return Refuse(404, "no file matched try_files")

    def _index(self, directory: str, query: bytes) -> Route:
        for index in self.site.index:
            if self._is_file(directory + index):
                return _redirected(self._file(directory + index, query, document_uri=directory + index))
        return Refuse(403, "directory has no index file (directory listing is off)")

    @staticmethod
    def _expanded_path(text: str) -> str | None:
        """A try_files path as a request path would be (normalised, no hidden
        segment), or None when it cannot be one."""
        if not text.startswith("/") or "\0" in text:
            return None
        try:
            path = normalize_path(text)
        except BadRequestTarget:
            return None
        if any(seg.startswith(".") and seg != ".well-known" for seg in path.split("/")):
            return None
        return path

    def _try(self, template: Template, variables: Vars, query: bytes) -> Route | None:
        """A try_files entry before the last: the file (or directory) it names, or None."""
        if not variables.host and "host" in template.names:
            return None
        text, _ = template.expand(variables, wire=False)
        path = self._expanded_path(text)
        if path is None:
            return None
        try:
            if text.endswith("/"):
                return self._index(path, query) if self._is_dir(path) else None
            return self._file(path, query) if self._is_file(path) else None
        except _SymlinkLeavesRoot:  # as nginx's disable_symlinks: this entry is not there, try the next
            return None

    def _fallback(self, template: Template, variables: Vars) -> Route:
        """The last try_files entry, a URI: routed as a PHP script, a file or a directory."""
        text, args = template.expand(variables, wire=False)
        uri = self._expanded_path(text)
        if uri is None:
            return Refuse(404, f"try_files fallback {text!r} is not a path of the site")
        # the query as it goes to PHP: what is not printable ASCII percent-encoded (UTF-8)
        new_query = b"" if args is None else quote(args, safe=_PRINTABLE).encode("ascii")
        m = _PHP_SPLIT.match(uri)
        if m:
            return _redirected(self._php(m.group(1), m.group(2) or "", uri, new_query))
        if uri.endswith("/") and self._is_dir(uri):
            return self._index(uri, new_query)
        if self._is_file(uri):
            return _redirected(self._file(uri, new_query))
        return Refuse(404, f"try_files fallback {uri} does not exist")

    def _php(self, script: str, path_info: str, document_uri: str, query: bytes) -> Route:
        if not self.php_enabled:
            return Refuse(403 if self._is_file(script) else 404, "PHP is not enabled for this site")
        if script.startswith(self.no_php_under):
            return Refuse(403, "PHP does not run under " + next(p for p in self.no_php_under if script.startswith(p)))
        if not self._is_file(script):
            return Refuse(404, f"no PHP script {script}")
        return PhpScript(self._fs(script), script, document_uri, path_info, query)

    def _file(self, uri: str, query: bytes, *, document_uri: str | None = None) -> Route:
        if uri.lower().endswith(".php"):
            return self._php(uri, "", document_uri or uri, query)
        if uri.lower().endswith(PHP_SOURCE_EXTENSIONS):
            return Refuse(403, "PHP source is never served")
        if not self.site.serve_backup_files and is_source_copy(uri.rsplit("/", 1)[-1]):
            return Refuse(403, "backup or editor copy (serve_backup_files is off)")
        return StaticFile(self._fs(uri), uri)


def _redirected(route: Route) -> Route:
    """``route`` marked as reached by an internal redirect (the guard rules check its URI too)."""
    if isinstance(route, (StaticFile, PhpScript)):
        return replace(route, redirected=True)
    return route


def redirected_uri(route: Route) -> str | None:
    """The URI an internal redirect (a directory's index, try_files' last
    entry) led to, None when the route is the request's own path."""
    if isinstance(route, StaticFile) and route.redirected:
        return route.uri
    if isinstance(route, PhpScript) and route.redirected:
        return route.script_name
    return None


class VirtualHosts:
    """Pick the site for a Host header: exact names, then ``*.suffix`` wildcards
    (longest first), then the default site (the one marked ``default``, else the
    first)."""

    def __init__(self, sites: dict[str, SiteConfig]) -> None:
        self.routers = {name: Router(site, name) for name, site in sites.items()}
        self.exact: dict[str, Router] = {}
        wildcards: list[tuple[str, Router]] = []
        default = None
        for name, site in sites.items():
            router = self.routers[name]
            for host in site.server_names:
                host = host.lower()
                if host.startswith("*."):
                    wildcards.append((host[1:], router))
                elif host != "_":
                    self.exact.setdefault(host, router)
            if site.default:
                default = router
        self.wildcards = sorted(wildcards, key=lambda w: -len(w[0]))
        self.default = default or next(iter(self.routers.values()))

    def lookup(self, host: bytes) -> Router:
        """The site for ``host``, a host name as ``request_head.parse_host`` gives
        it (validated, lower case, no port); ``b""`` (no Host) gives the default."""
        if not host:
            return self.default
        name = host.decode("latin-1")
        router = self.exact.get(name)
        if router:
            return router
        for suffix, router in self.wildcards:
            if name.endswith(suffix) and len(name) > len(suffix):
                return router
        return self.default
