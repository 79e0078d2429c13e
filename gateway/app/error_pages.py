"""Custom error pages (``[sites.X.error_pages]``, nginx ``error_page``): which
error gets which page, and what the page's response keeps. Pure decisions;
``site.App`` fetches the page (step 8 of its pipeline).

Policy:
- The gateway's own errors (a refused route 403/404, 400 for a bad target,
  429 from a rate limit, 401/403 from access rules, 500 on a bug, 502/503/504
  when a backend fails) get the page configured for their status. A backend's
  own error response (PHP's 404, a proxied server's 500) gets it only with
  ``intercept_errors = true`` (nginx ``fastcgi_intercept_errors``); its body
  is then discarded and its upstream slot freed at once.
- The page is an internal request for its URI (an ``internal = true`` alias
  is reachable): a static file, or a PHP script run with GET (HEAD stays
  HEAD), no request body, the client's headers and REQUEST_URI (as nginx's
  ``$request_uri``), ``REDIRECT_STATUS`` set to the original status (as
  Apache's ErrorDocument does) and the page URI's own query string.
- The response keeps the original status (nginx ``error_page 404 /x``,
  without ``=``), and of the original's headers only WWW-Authenticate,
  Retry-After, Allow and Content-Range (what a client needs to act on the
  error); a static page loses its ETag, Last-Modified and Accept-Ranges,
  which describe the page's file, not the error.
- A page that fails (missing, routed to neither a file nor PHP, PHP
  unreachable, or PHP answering other than 2xx or the original status) is
  replaced by the gateway's built-in page for the original status, with one
  log line. Pages are never applied to a page: no recursion.
- HEAD gets the page's headers and no body.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import accel

#: Headers of the original error kept on its page.
KEPT = frozenset({b"www-authenticate", b"retry-after", b"allow", b"content-range"})
#: A page's headers that describe its file (or ask for one), not the error.
FILE_ONLY = frozenset({b"etag", b"last-modified", b"accept-ranges", b"content-range"}) | accel.FOLLOWED


class ErrorPages:
    """One site's pages: status -> URI."""

    def __init__(self, pages: Mapping[str, str], intercept: bool) -> None:
        self.pages = {int(status): uri.encode("utf-8") for status, uri in pages.items()}
        self.intercept = intercept

    def __bool__(self) -> bool:
        return bool(self.pages)

    def page_for(self, status: int, from_upstream: bool) -> bytes | None:
        """The page URI (a request target) for an error response, if any."""
        if from_upstream and not self.intercept:
            return None
        return self.pages.get(status)


def page_ok(status: int, page_status: int) -> bool:
    """May a page answered ``page_status`` stand in for a ``status`` error?"""
    return 200 <= page_status < 300 or page_status == status


def page_headers(original: list[tuple[bytes, bytes]], page: list[tuple[bytes, bytes]]
                 ) -> list[tuple[bytes, bytes]]:
    """The page's headers without its file's validators, with the
    original's ``KEPT`` ones."""
    out = [(n, v) for n, v in page if n.lower() not in FILE_ONLY]
    return out + [(n, v) for n, v in original if n.lower() in KEPT]
