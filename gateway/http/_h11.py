"""Which HTTP/1.1 parser this process runs: upstream h11, or ``h11-mypyc``
where the operator opted in.

Policy:

- The default install parses untrusted requests with upstream h11
  (python-hyper's). ``h11-mypyc`` (a fork of h11 compiled with mypyc, kept by
  one person, alpha) is an opt-in extra, ``pip install 'php-gateway[fast]'``,
  pinned to a version the differential test
  (tests/gateway/front/test_h11_differential.py) found to behave like
  upstream on the same inputs.
- ``GATEWAY_H11`` chooses: ``h11`` forces upstream h11 even where the extra is
  installed, and so does leaving it unset: installing the extra (the test set-up
  does, into the same venv) never switches the parser by itself; ``h11-mypyc``
  requires the extra (a start-up error without it); ``auto``: the extra where
  it is installed, else upstream. Any other
  value is a start-up error (exit status 2, one line naming the variable), never
  a silent fallback. Worker processes inherit the variable, so every process of
  one gateway runs the same parser.
- ``gateway --version`` and ``/status`` (``http1_parser``) say which one runs.
- Every module that speaks HTTP/1.1 to clients, and the master's and ACME's
  client side, import it from here, so one process never mixes the two (their
  event classes differ). So does the proxy's upstream client
  (``upstream/http1.py``): with the extra chosen it parses backend responses
  with it too (about 20 us of h11 per proxied request instead of 60). The
  health checks (``upstream/checks.py``) always use upstream h11: their events
  never meet these.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

#: the environment variable that chooses the parser
ENV = "GATEWAY_H11"
UPSTREAM = "h11"
COMPILED = "h11-mypyc"
CHOICES = (UPSTREAM, COMPILED, "auto")


class ParserChoiceError(ValueError):
    """``GATEWAY_H11`` names no parser, or one that is not installed."""


def choose(value: str | None, compiled_installed: bool) -> str:
    """The parser (``UPSTREAM`` or ``COMPILED``) for ``GATEWAY_H11=value``.

    Raises ParserChoiceError for an unknown value, or for ``h11-mypyc`` when
    it is not installed."""
    if value == "auto":
        return COMPILED if compiled_installed else UPSTREAM
    if value is None or value in ("", UPSTREAM):
        return UPSTREAM
    if value == COMPILED:
        if not compiled_installed:
            raise ParserChoiceError(f"{ENV}={COMPILED}: h11-mypyc is not installed "
                                    "(pip install 'php-gateway[fast]', or unset it for upstream h11)")
        return COMPILED
    raise ParserChoiceError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")


if TYPE_CHECKING:
    import h11 as h11
else:
    _value = os.environ.get(ENV)
    _compiled = None
    if _value in (COMPILED, "auto"):  # upstream h11 never loads the compiled module
        try:
            import h11_mypyc as _compiled
        except ImportError:
            pass
    try:
        PARSER = choose(_value, _compiled is not None)
    except ParserChoiceError as exc:
        # a configuration mistake: one line and exit status 2, as `gateway check` reports one
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if PARSER == COMPILED:
        h11 = _compiled
    else:
        import h11
    del _compiled, _value

#: "h11" or "h11-mypyc"
PARSER: str


def describe() -> dict[str, str]:
    """The parser in use and its version (``/status``'s ``http1_parser``)."""
    return {"package": PARSER, "version": str(getattr(h11, "__version__", "unknown"))}


def summary() -> str:
    """One line for ``gateway --version``."""
    extra = " (the [fast] extra)" if PARSER == COMPILED else ""
    return f"HTTP/1.1 parser {PARSER} {describe()['version']}{extra}"


__all__ = ["h11", "PARSER", "describe", "summary"]
