"""Return and rewrite rules, and the ``$variable`` templates they and
``try_files`` use: sans-IO, strings in, a decision out.

Policy (the README's "Redirects and rewrites" section says it for operators):

- **Templates** (``to`` of a rule, a ``try_files`` entry) are literal text
  with ``$name`` or ``${name}``: ``$scheme`` (``http``/``https``), ``$host``
  (the validated Host name, lower case, no port), ``$request_uri`` (the
  target as the client sent it, query included, never rewritten), ``$uri``
  (the normalised, percent-*decoded* path, after rewrites), ``$args`` and
  ``$query_string`` (the raw query), ``$is_args`` (``?`` when there is a
  query, else nothing) and ``$1``...``$9`` (groups of a rule's ``regex``; an
  unmatched group is empty). A ``?`` in the text, or the one ``$is_args``
  gives, starts the query part. Decoded values (``$uri``, ``$1``...) are
  percent-encoded where the result goes on the wire (a ``Location``, the
  query part of a rewrite), kept decoded where it names a file or a path.
  A ``Location`` whose ``//`` or ``/\\`` start came from a variable (a
  client's ``//evil.example`` in ``$request_uri``) is made one path on this
  host: never a redirect to a host the client chose (an open redirect); a
  literal ``to = "//cdn.example.com/x"`` stays scheme-relative.
- **Selection** among rules of one kind: the ``regex`` rules in the order
  written, the first that matches somewhere in the path wins (as nginx's regex
  locations win over prefixes); otherwise the rule with the longest prefix
  in ``paths`` that starts the path (as ``deny``). ``methods`` limits a
  rule to those methods (HEAD counts as GET, as nginx ``limit_except``).
  Matching is on the normalised decoded path (``routing.split_target``).
- **Order**: return rules first, then rewrite rules; a rewritten URI is
  matched again against both, as nginx re-selects a location after
  ``rewrite ... last``. A rewrite whose ``to`` has a query part (a ``?``)
  sets the query, else the request's query is kept (nginx appends the old
  query instead; write ``?a=1&$args`` for that). A ``paths`` rewrite
  replaces the matched prefix: ``/old/`` -> ``/new/`` turns ``/old/a`` into
  ``/new/a`` (and ``/old/`` -> ``/index.php?page=`` into
  ``/index.php?page=a``: the rest follows ``to`` as written).
- **Loop guard**: a rewrite to a path already seen for this request, or more
  than ``MAX_REWRITES`` rewrites, is a loop: the caller answers 500 at once
  (nginx: 500 after 10 cycles). So ``regex = "^/(.*)$"`` to
  ``/index.php?q=$1`` loops on ``/index.php`` itself: write a regex the
  target does not match, ``"^/([^.]*)$"`` (no dot), or use ``try_files``.
- **Regexes are RE2** (Google's, as Go's ``regexp``), not Python's ``re``:
  the path is chosen by the client, and RE2 matches in time linear in its
  length whatever the pattern, where a backtracking engine can take minutes
  (``^/(.*)/(.*)/(.*)[.]x$`` on a 32 KiB path). RE2 has no lookaround and no
  backreferences (``config.rewrite`` refuses them). It matches the path's
  bytes (as decoded from the wire) one by one, RE2's Latin-1 mode: every
  path can match, UTF-8 or not (a rule cannot be dodged with a stray byte);
  a non-ASCII letter in the pattern matches its UTF-8 bytes, ``.`` is one
  byte (so ``[^/]+`` rather than ``.`` for one letter; non-ASCII inside
  ``[...]`` is a set of bytes, not of letters).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes

import re2  # type: ignore[import-untyped]

#: More rewrites than this for one request is a loop (nginx's bound is 10 cycles).
MAX_REWRITES = 10
#: Variable names a template may use (besides $1..$9).
VARIABLES = frozenset({"scheme", "host", "request_uri", "uri", "args", "query_string", "is_args"})
#: "$name", "${name}" or "$1".."$9"
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*|[1-9])\}|(?P<name>[A-Za-z_][A-Za-z0-9_]*|[1-9]))")
#: characters a decoded value keeps when percent-encoded into a path / a query
PATH_SAFE = "/!$&'()*+,;=:@-._~"
QUERY_SAFE = "/!$'()*,;:@-._~"


def re2_options() -> Any:
    """RE2's options for rule regexes: errors are exceptions only (not also
    lines on stderr); bytes (Latin-1 mode, see above); RE2's default memory
    bound for the program."""
    options = re2.Options()
    options.log_errors = False
    options.encoding = re2.Options.Encoding.LATIN1
    return options


class Regex:
    """A rule's regex, compiled once with RE2."""

    __slots__ = ("pattern", "groups", "_compiled")

    def __init__(self, pattern: str) -> None:
        """Raises ``ValueError`` with RE2's reason."""
        self.pattern = pattern
        try:
            self._compiled = re2.compile(pattern.encode(), options=re2_options())
        except re2.error as exc:
            reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            raise ValueError(f"{pattern!r} is not a valid RE2 regular expression: {reason}") from None
        self.groups: int = self._compiled.groups

    def search(self, path: str) -> tuple[str | None, ...] | None:
        """The groups (decoded as the path is) when the regex matches somewhere in ``path``, else None."""
        m = self._compiled.search(os.fsencode(path))
        if m is None:
            return None
        return tuple(None if g is None else os.fsdecode(g) for g in m.groups())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Regex) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


@dataclass(frozen=True, slots=True)
class Vars:
    """What a template's variables stand for in one request. ``uri`` and the
    groups are decoded text (``os.fsdecode``); ``args`` and ``request_uri``
    the raw wire text (latin-1)."""

    scheme: str = "http"
    host: str = ""
    request_uri: str = "/"
    uri: str = "/"
    args: str = ""
    groups: tuple[str | None, ...] = ()


def _encode(value: str, safe: str) -> str:
    return quote_from_bytes(os.fsencode(value), safe=safe)


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal strings and variable names (``"1"`` for
    ``$1``), alternating as ``re.split`` leaves them."""

    text: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Raises ``ValueError`` naming an unknown variable."""
        pieces: list[str] = []
        pos = 0
        for m in VARIABLE.finditer(text):
            name = m.group("braced") or m.group("name")
            if not name.isdigit() and name not in VARIABLES:
                raise ValueError(f"${name} is not a variable here (known: "
                                 f"{', '.join('$' + v for v in sorted(VARIABLES))}, and $1...$9 with regex)")
            pieces += [text[pos:m.start()], name]
            pos = m.end()
        pieces.append(text[pos:])
        return cls(text, tuple(pieces))

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def group_numbers(self) -> Iterable[int]:
        return (int(n) for n in self.names if n.isdigit())

    def expand(self, v: Vars, *, wire: bool) -> tuple[str, str | None]:
        """``(path part, query part or None when there is no "?")``. ``wire``:
        decoded values are percent-encoded in the path part too (a Location);
        else they stay decoded there (a path to route or a file to check).
        In the query part they are always encoded."""
        path: list[str] = []
        query: list[str] | None = None
        for i, part in enumerate(self.parts):
            if i % 2 == 0:
                if query is None and "?" in part:
                    before, _, after = part.partition("?")
                    path.append(before)
                    query = [after]
                else:
                    (path if query is None else query).append(part)
                continue
            if part == "is_args":
                if v.args and query is None:
                    query = []
                elif v.args and query is not None:
                    query.append("?")
                continue
            raw, decoded = _value(part, v)
            if raw is not None:
                (path if query is None else query).append(raw)
            elif query is not None:
                query.append(_encode(decoded, QUERY_SAFE))
            else:
                path.append(_encode(decoded, PATH_SAFE) if wire else decoded)
        return "".join(path), (None if query is None else "".join(query))


def _value(name: str, v: Vars) -> tuple[str | None, str]:
    """(raw wire text, None) or (None, decoded text) for one variable."""
    if name.isdigit():
        n = int(name)
        return None, (v.groups[n - 1] or "") if n <= len(v.groups) else ""
    if name == "uri":
        return None, v.uri
    if name == "scheme":
        return v.scheme, ""
    if name == "host":
        return v.host, ""
    if name == "request_uri":
        return v.request_uri, ""
    return v.args, ""  # args, query_string


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[sites.X.return]]`` (``code`` set) or ``[[sites.X.rewrite]]``
    (``code`` 0). ``name`` says which in a log line (``return[2]``)."""

    name: str
    prefixes: tuple[str, ...] = ()
    regex: Regex | None = None
    methods: frozenset[str] = frozenset()
    code: int = 0
    to: Template | None = None

    def applies_to(self, method: str) -> bool:
        if not self.methods:
            return True
        return method in self.methods or (method == "HEAD" and "GET" in self.methods)


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that matched: the prefix it matched or its regex's groups."""

    rule: Rule
    prefix: str = ""
    groups: tuple[str | None, ...] = ()


def select(rules: Sequence[Rule], path: str, method: str) -> Hit | None:
    """The rule for ``path``: the first regex rule that matches, else the
    longest matching prefix (the first rule written on a tie)."""
    best: Hit | None = None
    for rule in rules:
        if not rule.applies_to(method):
            continue
        if rule.regex is not None:
            groups = rule.regex.search(path)
            if groups is not None:
                return Hit(rule, groups=groups)
            continue
        for prefix in rule.prefixes:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best.prefix)):
                best = Hit(rule, prefix=prefix)
    return best


@dataclass(frozen=True, slots=True)
class Answer:
    """A return rule's response: ``location`` for a redirect code, else
    ``body`` (None: the gateway's own page for the status)."""

    status: int
    rule: str
    location: str | None = None
    body: str | None = None


@dataclass(frozen=True, slots=True)
class Routed:
    """Go on to routing with this path and raw query (rewritten or not)."""

    path: str
    query: bytes
    rewrites: tuple[str, ...] = ()  # names of the rules applied, in order


@dataclass(frozen=True, slots=True)
class Loop:
    """The rewrites went round: answer 500."""

    trail: tuple[str, ...]  # the paths, in order
    rules: tuple[str, ...]


REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class SiteRules:
    returns: tuple[Rule, ...] = ()
    rewrites: tuple[Rule, ...] = field(default=())

    def __bool__(self) -> bool:
        return bool(self.returns or self.rewrites)

    def apply(self, method: str, path: str, query: bytes, base: Vars,
              normalize: Callable[[str], str]) -> Answer | Routed | Loop:
        """Run the rules for a request. ``base`` holds scheme, host and
        request_uri (``uri``, ``args`` and groups are filled in here);
        ``normalize`` is the router's path normaliser (it raises for a path
        above the root, which the caller answers 400)."""
        seen = [path]
        applied: list[str] = []
        while True:
            v = Vars(base.scheme, base.host, base.request_uri, path, query.decode("latin-1"))
            hit = select(self.returns, path, method)
            if hit is not None:
                return self._answer(hit, v)
            hit = select(self.rewrites, path, method)
            if hit is None:
                return Routed(path, query, tuple(applied))
            assert hit.rule.to is not None
            applied.append(hit.rule.name)
            new_path, new_query = hit.rule.to.expand(_with_groups(v, hit.groups), wire=False)
            if hit.rule.regex is None:  # the prefix replaced: the rest follows ``to``, in its query if it has one
                rest = path[len(hit.prefix):]
                if new_query is None:
                    new_path += rest
                else:
                    new_query += _encode(rest, QUERY_SAFE)
            path = normalize(new_path)
            if new_query is not None:
                query = new_query.encode("latin-1", "replace")
            if path in seen or len(applied) > MAX_REWRITES:
                return Loop((*seen, path), tuple(applied))
            seen.append(path)

    @staticmethod
    def _answer(hit: Hit, v: Vars) -> Answer:
        rule = hit.rule
        if rule.to is None:
            return Answer(rule.code, rule.name)
        v = _with_groups(v, hit.groups)
        if rule.code in REDIRECT_CODES:
            path, query = rule.to.expand(v, wire=True)
            if path[:2] in ("//", "/\\") and rule.to.parts[0][:2] not in ("//", "/\\"):
                # a client's "//evil.example" through $request_uri: a path on this host, never another
                # host's (browsers read a slash and a slash or backslash as a scheme-relative URL)
                path = "/" + path.lstrip("/\\")
            return Answer(rule.code, rule.name, location=path if query is None else f"{path}?{query}")
        # a body: the text as written with the values as they are
        return Answer(rule.code, rule.name, body="".join(
            part if i % 2 == 0 else _text(part, v) for i, part in enumerate(rule.to.parts)))


def _text(name: str, v: Vars) -> str:
    """A variable's value as plain text (a response body)."""
    if name == "is_args":
        return "?" if v.args else ""
    raw, decoded = _value(name, v)
    return decoded if raw is None else raw


def _with_groups(v: Vars, groups: tuple[str | None, ...]) -> Vars:
    return Vars(v.scheme, v.host, v.request_uri, v.uri, v.args, groups)

