"""Site rules that shape responses (issue 16, items 5-7): the schema of
``[sites.X.error_pages]``, ``[sites.X.aliases."/p/"]`` in its table form and
``[[sites.X.headers]]``. The handlers are ``app.error_pages``, ``app.accel``
and ``http.header_rules``; ``gateway check`` runs these validators.

Policy:
- ``error_pages``: keys are status codes written as strings (``"404"``),
  400-599, values URIs of the site (``/errors/404.html``, ``/error.php``):
  nginx's ``error_page 404 /errors/404.html``. No ``=code`` form: the status
  is kept.
- ``aliases``: a string (the directory, as before) or a table with ``path``
  and ``internal``; ``internal = true`` is nginx's ``internal``: the prefix
  answers 404 to clients and serves X-Accel-Redirect / X-Sendfile / error
  pages only.
- ``headers``: one key, two TOML forms. A table (``[sites.X.headers]``,
  name = value) is the old form: every response, a value replaces PHP's, an
  empty value removes the header; it is read as one rule ``paths = ["/"]``,
  ``always = true``. An array of tables (``[[sites.X.headers]]``) holds rules
  with ``paths``, ``add``, ``set``, ``remove``, ``always``, ``preflight``.
  Header values are single lines; Content-Length, Transfer-Encoding and
  Connection are the gateway's and cannot be configured.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from .guard import check_rule_prefix

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Set by the gateway from the body and the connection: never configured.
FRAMING_HEADERS = ("content-length", "transfer-encoding", "connection")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_rule_header_name(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    if value.lower() in FRAMING_HEADERS:
        raise ValueError(f"{value!r} is set by the gateway from the body; it cannot be configured")
    return value


#: RFC 9110 field-value, as h11 holds a response to it: visible characters
#: (and Latin-1's upper half, obs-text), spaces and tabs only between them.
_FIELD_VALUE = re.compile(r"(?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?")


def check_header_values(value: dict[str, str]) -> dict[str, str]:
    """Header names and values an operator writes: valid names, no framing
    headers, and values h11 would send: no line breaks or NULs (they would
    split the response), no other control character, no space or tab at
    either end, Latin-1 only (the bytes sent are the value's Latin-1 encoding).
    The fast path sends configured headers as written, without h11's check."""
    for name, text in value.items():
        check_rule_header_name(name)
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"the value of {name!r} contains a line break or NUL")
        if not _FIELD_VALUE.fullmatch(text):
            raise ValueError(f"the value of {name!r} ({text!r}) is not a valid header value: no control "
                             "characters, no space at either end, Latin-1 characters only")
    return value


def check_prefix(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not a URI prefix (it must start with \"/\")")
    return check_rule_prefix(value)  # and one a request path can start with


Prefix = Annotated[str, AfterValidator(check_prefix)]
HeaderMap = Annotated[dict[str, str], AfterValidator(check_header_values)]


class HeaderRule(_Model):
    """One ``[[sites.X.headers]]`` rule (nginx ``add_header``, Caddy ``header``)."""

    #: URI prefixes (or exact paths) of the requests whose responses it shapes.
    paths: list[Prefix] = ["/"]
    #: Added beside any header of the same name (nginx add_header).
    add: HeaderMap = {}
    #: Replaces every header of that name (PHP's too).
    set: HeaderMap = {}
    #: Removed (a header PHP or a backend sent, e.g. X-Powered-By).
    remove: list[Annotated[str, AfterValidator(check_rule_header_name)]] = []
    #: Also on responses other than 200/201/204/206/301/302/303/304/307/308
    #: (nginx's ``always``).
    always: bool = False
    #: Answer a CORS preflight (OPTIONS with Access-Control-Request-Method)
    #: under ``paths`` with 204 and this rule's headers, without PHP.
    preflight: bool = False


def _header_rules(value: Any) -> Any:
    """Both forms of ``headers``: a table is the old form, one rule."""
    if not isinstance(value, dict):
        return value
    for name, text in value.items():
        if not isinstance(text, str):
            raise ValueError(f"[sites.X.headers] is a table of header = \"value\" ({name!r} is not a string); "
                             "write rules with paths/add/set/remove as [[sites.X.headers]] (double brackets)")
    check_header_values(value)
    return [{"paths": ["/"], "set": {k: v for k, v in value.items() if v},
             "remove": [k for k, v in value.items() if not v], "always": True}]


HeaderRules = Annotated[list[HeaderRule], BeforeValidator(_header_rules)]


class AliasConfig(_Model):
    """``[sites.X.aliases."/protected/"]``: a directory served under a prefix."""

    path: str
    #: Reachable only through X-Accel-Redirect, X-Sendfile or an error page:
    #: a direct request gets 404 (nginx ``internal``).
    internal: bool = False


def _alias_form(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


Alias = Annotated[AliasConfig, BeforeValidator(_alias_form)]


def check_error_pages(value: dict[str, str]) -> dict[str, str]:
    for status, uri in value.items():
        if not (status.isdigit() and 400 <= int(status) <= 599):
            raise ValueError(f"{status!r} is not an error status: keys are codes from 400 to 599, "
                             "written as strings (\"404\" = \"/errors/404.html\")")
        if not uri.startswith("/") or any(c in uri for c in "\r\n\0 "):
            raise ValueError(f"{uri!r} (for {status}) is not a URI of the site like \"/errors/{status}.html\"")
    return value


ErrorPages = Annotated[dict[str, str], AfterValidator(check_error_pages)]
