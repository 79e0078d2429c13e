"""Steps 2 and 3 of ``App._handle``: a site's return and rewrite rules, as
responses (the matching and templates are ``http.rewrite``'s).

- A redirect (301, 302, 303, 307, 308) goes out with ``Location`` and the
  gateway's small page for the status; a ``Location`` that is a path
  (``to = "/new"``) is made absolute with the request's scheme and Host, as
  nginx's ``absolute_redirect on``.
- Another code with ``to``: ``to`` is the body, ``text/plain; charset=utf-8``
  (nginx ``return 403 "text"``); without ``to``: the gateway's page for the
  status (an empty body for 2xx), so error pages and header rules apply as
  to any response of the site.
- A rewrite loop is one error line naming the paths and rules, and a 500.
- A rewritten request keeps ``REQUEST_URI`` (nginx ``$request_uri``) for
  PHP; a proxied one goes upstream with the rewritten target (nginx
  ``proxy_pass`` without a URI part after a rewrite).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from urllib.parse import quote_from_bytes

from ..http.request import Request
from ..http.response import Response
from ..http.rewrite import PATH_SAFE, Answer, Loop, Routed, Vars
from .routing import BadRequestTarget, Router, normalize_path

log = logging.getLogger(__name__)

ErrorPage = Callable[..., Response]


def apply_rules(req: Request, router: Router, path: str, query: bytes, error: ErrorPage) -> Response | Routed:
    """The response a return rule gives, or where routing goes on (rewritten or not)."""
    if not router.rules:
        return Routed(path, query)
    host = req.host.decode("ascii", "replace") or router.server_name.decode()
    base = Vars(scheme="https" if req.https else "http", host=host, request_uri=req.target.decode("latin-1"))
    try:
        outcome = router.rules.apply(req.method.decode("latin-1"), path, query, base, normalize_path)
    except BadRequestTarget as exc:
        log.info("[%s] 400: a rewrite of %s: %s", req.request_id, path, exc)
        return error(400)
    if isinstance(outcome, Loop):
        log.error("[%s] rewrite loop: %s (%s) -> 500", req.request_id, " -> ".join(outcome.trail),
                  ", ".join(outcome.rules))
        return error(500)
    if isinstance(outcome, Routed):
        if outcome.rewrites:
            log.debug("[%s] rewritten to %s by %s", req.request_id, outcome.path, ", ".join(outcome.rewrites))
        return outcome
    return answer(req, outcome, error)


def answer(req: Request, outcome: Answer, error: ErrorPage) -> Response:
    if outcome.location is not None:
        location = outcome.location.encode("latin-1")
        host = req.header(b"host")
        if location.startswith(b"/") and not location.startswith(b"//") and host:
            location = (b"https://" if req.https else b"http://") + host + location
        return error(outcome.status, [(b"location", location)])
    if outcome.body is not None:
        return Response(outcome.status, [(b"content-type", b"text/plain; charset=utf-8")],
                        outcome.body.encode("utf-8", "surrogateescape"))
    if outcome.status < 300:
        return Response(outcome.status, [], b"")
    return error(outcome.status)


def upstream_request(req: Request, routed: Routed) -> Request:
    """``req`` with the rewritten target, for a proxied backend; ``req`` itself
    when no rewrite applied."""
    if not routed.rewrites:
        return req
    target = quote_from_bytes(os.fsencode(routed.path), safe=PATH_SAFE).encode("ascii")
    return dataclasses.replace(req, target=target + (b"?" + routed.query if routed.query else b""))
