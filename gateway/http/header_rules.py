"""Response header rules (``[[sites.X.headers]]``): add, set and remove headers
by URI prefix, as nginx's ``add_header`` and Caddy's ``header``. Sans-IO: a
path, a status and a header list in, a header list out.

Policy:
- A rule applies to a response when one of its ``paths`` is a prefix of the
  request's normalised path (the URI the client asked for, before rewrites
  and X-Accel-Redirect; ``/`` for a target that could not be parsed).
- Every matching rule applies, shortest matching prefix first, rules of one
  length in the order written; so for a header two rules both set or remove,
  the longest prefix decides. (nginx drops a server's ``add_header`` lines in
  a location with its own: the trap that loses the security headers on
  ``/wp-json/``. Here a ``/`` rule keeps applying; a longer rule ``remove``s
  what it does not want.)
- Within a rule: ``remove`` first, then ``set`` (replaces every header of
  that name, PHP's too), then ``add`` (beside any of the same name).
- Without ``always``, a rule applies only to 200, 201, 204, 206, 301, 302,
  303, 304, 307 and 308 responses (nginx ``add_header``); with it, to error
  responses too (the gateway's own and PHP's).
- ``preflight``: an ``OPTIONS`` request carrying ``Access-Control-Request-Method``
  (a CORS preflight, Fetch standard) under the rule's paths is answered 204
  by the gateway with the matching rules' headers, never reaching PHP (the
  nginx recipe ``if ($request_method = OPTIONS) { add_header ...; return 204; }``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Statuses a rule without ``always`` applies to (nginx add_header).
SUCCESS_STATUSES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class HeaderRule:
    paths: tuple[str, ...]
    #: lower-case names, latin-1 values
    add: tuple[tuple[bytes, bytes], ...] = ()
    set: tuple[tuple[bytes, bytes], ...] = ()
    remove: frozenset[bytes] = frozenset()
    always: bool = False
    preflight: bool = False

    @classmethod
    def build(cls, paths: Iterable[str], add: dict[str, str] | None = None, set: dict[str, str] | None = None,
              remove: Iterable[str] = (), always: bool = False, preflight: bool = False) -> HeaderRule:
        def enc(d: dict[str, str] | None) -> tuple[tuple[bytes, bytes], ...]:
            return tuple((k.lower().encode("ascii"), v.encode("latin-1")) for k, v in (d or {}).items())

        return cls(tuple(paths), enc(add), enc(set), frozenset(n.lower().encode("ascii") for n in remove),
                   always, preflight)

    def match_length(self, path: str) -> int:
        """The length of the longest of ``paths`` that ``path`` starts with; -1: none."""
        return max((len(p) for p in self.paths if path.startswith(p)), default=-1)


class HeaderRules:
    """One site's rules."""

    def __init__(self, rules: Iterable[HeaderRule]) -> None:
        self.rules = tuple(rules)
        self.any_preflight = any(r.preflight for r in self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def matching(self, path: str) -> list[HeaderRule]:
        """The rules for ``path``, in the order they apply."""
        found = [(n, i, r) for i, r in enumerate(self.rules) if (n := r.match_length(path)) >= 0]
        found.sort(key=lambda f: (f[0], f[1]))
        return [r for _, _, r in found]

    def apply(self, path: str, status: int, headers: Headers) -> Headers:
        """``headers`` of a ``status`` response to a request for ``path``, with
        the matching rules applied."""
        success = status in SUCCESS_STATUSES
        for rule in self.matching(path):
            if not (success or rule.always):
                continue
            drop = rule.remove | {n for n, _ in rule.set}
            if drop:
                headers = [(n, v) for n, v in headers if n.lower() not in drop]
            headers = [*headers, *rule.set, *rule.add]
        return headers

    def is_preflight(self, path: str, method: bytes, request_headers: Headers) -> bool:
        """Is this request a CORS preflight the gateway answers itself (204)?"""
        if not self.any_preflight or method != b"OPTIONS":
            return False
        if not any(n == b"access-control-request-method" for n, _ in request_headers):
            return False
        return any(r.preflight for r in self.matching(path))
