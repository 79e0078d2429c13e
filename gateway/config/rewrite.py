"""``[[sites.X.return]]`` and ``[[sites.X.rewrite]]`` rules, and the
``try_files`` entries, as ``gateway check`` validates them.

What is refused (each error names the file and the key):

- a rule with both or neither of ``paths`` and ``regex``; a prefix not
  starting with ``/``; a method that is not an upper-case token;
- a ``regex`` longer than ``MAX_REGEX`` characters, or one RE2 cannot
  compile (``regex_problem``): RE2 (``http.rewrite``) matches in linear
  time, so no pattern can be made to backtrack on a crafted path, but it has
  no lookaround and no backreferences; its program size is bounded (a
  repetition count above 1000, a program over its default ``max_mem`` of
  8 MiB, are errors here);
- a template (``to``, a ``try_files`` entry) with an unknown ``$variable``,
  with ``$1``... beyond the regex's groups (or without a regex), with
  whitespace or a control character where it goes into a URI or a header;
- a return ``code`` outside 200-599, 304, or nginx's own 444 and 499; a
  redirect code (301, 302, 303, 307, 308) without ``to``; ``to`` on 204
  (no body);
- a rewrite whose ``to`` does not start with ``/`` (it is a path).

The runtime side (matching, expansion) is ``http.rewrite``; this module may
not import it (both are layer 0), so the variable names are listed in both
and a test keeps them equal.
"""

from __future__ import annotations

import re
from typing import Any

import re2  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, model_validator

from .guard import check_rule_prefix

#: Longest regex accepted, in characters.
MAX_REGEX = 1000
#: As ``http.rewrite.VARIABLES``.
VARIABLES = frozenset({"scheme", "host", "request_uri", "uri", "args", "query_string", "is_args"})
#: What try_files entries may use (nginx's usual ones; $request_uri is not a path).
TRY_FILES_VARIABLES = frozenset({"uri", "args", "query_string", "host", "is_args"})
_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*|[0-9]))")
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]*$")


def template_variables(text: str, known: frozenset[str] = VARIABLES) -> list[str]:
    """The variable names in ``text`` ("1" for $1); ``ValueError`` for an
    unknown one or a ``$`` that starts none."""
    names: list[str] = []
    for m in _VARIABLE.finditer(text):
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if not (name in known or (len(name) == 1 and name in "123456789")):
            raise ValueError(f"${name} is not a variable here (known: {', '.join('$' + v for v in sorted(known))}"
                             + (", and $1...$9 with regex)" if known == VARIABLES else ")"))
        names.append(name)
    if text.count("$") != len(names):
        raise ValueError(f"{text!r} has a \"$\" that starts no variable (write ${{name}} or a known $name)")
    return names


def _no_space(text: str, what: str) -> None:
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text) or "#" in text:
        raise ValueError(f"{what} contains whitespace, a control character or \"#\"; percent-encode it")


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused (see the module docstring), or None."""
    if len(pattern) > MAX_REGEX:
        return f"is {len(pattern)} characters long; at most {MAX_REGEX}"
    try:
        _compile(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        hint = (": RE2 has no lookaround ((?=...), (?!...)) or backreferences (\\1)"
                if "invalid perl operator" in str(reason) or "escape sequence" in str(reason) else "")
        return f"{pattern!r} is not a valid RE2 regular expression: {reason}{hint}"
    return None


def _compile(pattern: str) -> Any:
    """As ``http.rewrite.Regex`` compiles it."""
    options = re2.Options()
    options.log_errors = False
    options.encoding = re2.Options.Encoding.LATIN1
    return re2.compile(pattern.encode(), options=options)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: URI prefixes (like deny); the longest that starts the path decides.
    paths: list[str] = []
    #: A Python regular expression searched in the decoded path; $1... in ``to``.
    regex: str = ""

    def _check_match(self) -> int:
        """The number of groups ``to`` may use."""
        if bool(self.paths) == bool(self.regex):
            raise ValueError("give either paths (URI prefixes) or regex, not both" if self.paths
                             else "give paths (URI prefixes like [\"/old/\"]) or regex")
        for prefix in self.paths:
            if not prefix.startswith("/"):
                raise ValueError(f"paths: {prefix!r} must start with \"/\"")
            check_rule_prefix(prefix)  # one a (normalised, decoded) request path can start with
        if not self.regex:
            return 0
        problem = regex_problem(self.regex)
        if problem:
            raise ValueError(f"regex {problem}")
        groups: int = _compile(self.regex).groups
        return groups

    def _check_to(self, to: str, groups: int) -> None:
        for name in template_variables(to):
            if name.isdigit() and int(name) > groups:
                raise ValueError(f"to uses ${name} but " + (f"the regex has {groups} group(s)" if self.regex
                                                          else "$1...$9 need a regex with groups"))


class ReturnRule(_Rule):
    """nginx ``return CODE [to]``."""

    #: Only these methods (empty: all); HEAD is matched by GET.
    methods: list[str] = []
    code: int
    #: A redirect's Location, or the body text of another code.
    to: str = ""

    @model_validator(mode="after")
    def _check(self) -> ReturnRule:
        groups = self._check_match()
        for method in self.methods:
            if not _METHOD.match(method):
                raise ValueError(f"methods: {method!r} is not a method name (write it in capitals: \"POST\")")
        if not (200 <= self.code <= 599) or self.code in (304, 444, 499):
            raise ValueError(f"code {self.code}: give a status from 200 to 599 (not 304); 444 (close the connection) "
                             "and 499 are nginx's own and not supported")
        if self.code in REDIRECT_CODES:
            if not self.to:
                raise ValueError(f"code {self.code} is a redirect: give to = \"$scheme://example.com$request_uri\" "
                                 "(where it leads)")
            _no_space(self.to, f"to {self.to!r}")
            if not self.to.isascii():
                raise ValueError(f"to {self.to!r} is a Location: percent-encode what is not ASCII")
        elif self.to and self.code == 204:
            raise ValueError("code 204 has no body: remove to")
        elif "\0" in self.to:
            raise ValueError("to contains a NUL character")
        self._check_to(self.to, groups)
        return self


class RewriteRule(_Rule):
    """nginx ``rewrite REGEX REPLACEMENT last``: internal, re-matched."""

    #: The new path (a ``paths`` rule: what replaces the prefix), "?" to set the query.
    to: str

    @model_validator(mode="after")
    def _check(self) -> RewriteRule:
        groups = self._check_match()
        if not self.to.startswith("/"):
            raise ValueError(f"to {self.to!r} must start with \"/\" (a path on this site; a redirect elsewhere is "
                             "a [[sites.X.return]] rule)")
        _no_space(self.to, f"to {self.to!r}")
        self._check_to(self.to, groups)
        return self


#: What the router (``app.routing``) does with try_files, said once for errors.
TRY_FILES_SUPPORTED = (
    'every entry but the last is a file to look for, or a directory when it ends with "/" (a path starting with '
    '"/" or "$uri", using $uri, $host, $args, $query_string, $is_args; no "?"); the last is "=CODE" (400-599) or '
    'the URI to go to (a path, a "?" before its query, the same variables)'
)


def check_try_files(entries: list[str] | None) -> list[str] | None:
    """``try_files`` as the router runs it (see ``TRY_FILES_SUPPORTED``)."""
    if entries is None:
        return None
    if not entries:
        raise ValueError(f"is empty; {TRY_FILES_SUPPORTED}")
    for i, entry in enumerate(entries):
        last = i == len(entries) - 1
        where = "the last entry" if last else f"entry {i + 1} of {len(entries)}"
        if last and entry.startswith("="):
            code = entry[1:]
            if code.isdigit() and 400 <= int(code) <= 599:
                continue
            raise ValueError(f"{where}, {entry!r}, is not supported: {TRY_FILES_SUPPORTED}")
        ok = entry.startswith(("/", "$uri", "${uri}")) and (last or "?" not in entry)
        try:
            _no_space(entry, "it")
            names = template_variables(entry, TRY_FILES_VARIABLES)
        except ValueError as exc:
            raise ValueError(f"{where}, {entry!r}: {exc}; {TRY_FILES_SUPPORTED}") from None
        if not ok or any(n.isdigit() for n in names):
            raise ValueError(f"{where}, {entry!r}, is not supported: {TRY_FILES_SUPPORTED}")
    return entries


def covers_everything(rules: list[ReturnRule]) -> bool:
    """Does some return rule answer every request (``paths = ["/"]``, all
    methods)? Then a site needs no root."""
    return any("/" in rule.paths and not rule.methods for rule in rules)
