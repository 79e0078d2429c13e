"""Configuration errors as an operator reads them: one line each, naming the
file, the dotted key and, where it can be found, the line.

Policy:
- pydantic's wording never reaches the operator: ``describe`` turns each
  error type into a sentence ("must be a whole number", "must be 1 or more",
  "must be one of: ...") and anything it does not know loses the
  "Input should be" phrasing at least.
- TOML parsers give no positions, so ``find_line`` searches the file's text:
  the line of the deepest table header or ``key =`` assignment that is a
  prefix of the key (``[sites.a]`` for a missing ``sites.a.root``). Not found
  (a flag, an inline table it cannot follow): no line, never a wrong guess
  on purpose.
- ``format_problem`` is the one spelling: ``FILE: KEY: message (line N)``.

Pure: no imports from the rest of the gateway.
"""

from __future__ import annotations

import re
from typing import Any

_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_HEADER = re.compile(rf"^\[\[?\s*({_DOTTED})\s*\]\]?")
_ASSIGN = re.compile(rf"^({_DOTTED})\s*=")
_PART = re.compile(_BARE_OR_QUOTED)


def _split(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _PART.findall(dotted))


def find_line(text: str, key: tuple[str, ...]) -> int | None:
    """The 1-based line in TOML ``text`` that sets ``key`` (or the deepest
    table holding it), or None."""
    table: tuple[str, ...] = ()
    best, line_no = 0, None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        header = _HEADER.match(line)
        if header:
            table = _split(header.group(1))
            path = table
        else:
            assign = _ASSIGN.match(line)
            if not assign:
                continue
            path = table + _split(assign.group(1))
        if len(path) > best and key[:len(path)] == path:
            best, line_no = len(path), n
    return line_no


def format_problem(source: str, key: tuple[str, ...], message: str, line: int | None = None) -> str:
    """``FILE: KEY: message (line N)``, one line."""
    where = f" (line {line})" if line else ""
    message = " ".join(message.split())
    return f"{source}: {'.'.join(key) or '(top level)'}: {message}{where}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(err: Any) -> str:
    """A sentence for one pydantic error (an ``ErrorDetails`` mapping)."""
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    if kind == "missing":
        return "is required: set it"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling against the README's configuration reference)"
    if kind in ("value_error", "assertion_error"):
        return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{_shown(value)} is not a whole number"
    if kind in ("float_type", "float_parsing"):
        return f"{_shown(value)} is not a number"
    if kind in ("bool_type", "bool_parsing"):
        return f"{_shown(value)} is not true or false (write true or false, without quotes)"
    if kind in ("string_type", "string_unicode"):
        return f"{_shown(value)} is not a string (write it in quotes)"
    if kind in ("list_type", "tuple_type", "set_type"):
        return f'{_shown(value)} is not a list (write ["a", "b"], even for one entry)'
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"{_shown(value)} is not a table (write [its.name] or {{ key = value }})"
    if kind == "greater_than_equal":
        return f"{_shown(value)} is too small: it must be {ctx.get('ge')} or more"
    if kind == "greater_than":
        return f"{_shown(value)} is too small: it must be more than {ctx.get('gt')}"
    if kind == "less_than_equal":
        return f"{_shown(value)} is too large: it must be {ctx.get('le')} or less"
    if kind == "less_than":
        return f"{_shown(value)} is too large: it must be less than {ctx.get('lt')}"
    if kind == "literal_error":
        return f"{_shown(value)} is not allowed: write {ctx.get('expected')}"
    if kind in ("too_short", "too_long"):
        return f"has {ctx.get('actual_length')} entries; {_bounds(ctx)}"
    msg = str(err["msg"])
    return msg.replace("Input should be", "must be").replace("Input", "the value")


def _bounds(ctx: dict[str, Any]) -> str:
    if "min_length" in ctx:
        return f"give at least {ctx['min_length']}"
    return f"give at most {ctx.get('max_length')}"
