"""The tree is the architecture: imports between gateway's packages point one way.

Layers (README "Layout"): L0 ``http``, ``config``, ``tls`` (certificates,
contexts, the state dir) and the pure helpers ``metrics``/``_util``; L1
``front``, ``upstream`` and ``acme``, which never import each other; L2
``app``; L3 ``observe`` and ``serve`` (``serve`` wires ``observe`` in, never
the reverse); L4 ``cli``. ``fastcgi/`` is a library of its own and imports
nothing of the gateway.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYER = {"http": 0, "config": 0, "metrics": 0, "_util": 0, "tls": 0, "front": 1, "upstream": 1, "acme": 1, "app": 2,
         "observe": 3, "serve": 3, "cli": 4, "__init__": 4, "__main__": 5}
#: imports allowed between two parts of one layer
SIDEWAYS = {("serve", "observe")}


def _part(module: str) -> str | None:
    """``gateway.front.h1`` -> ``front``; None outside the gateway package."""
    parts = module.split(".")
    if parts[0] != "gateway":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``, in functions and
    ``TYPE_CHECKING`` blocks too."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = package.removesuffix(".__init__") if path.name == "__init__.py" else package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.append((node.lineno, base))
            if node.module is None or node.level:  # "from . import x": x may be a module
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _violations() -> list[str]:
    bad = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        here = _part(".".join(path.relative_to(ROOT).with_suffix("").parts))
        assert here in LAYER, f"{path}: a new top-level part of gateway needs a layer in this test"
        for line, module in _imports(path):
            there = _part(module)
            if there is None or there == here or there not in LAYER:
                continue
            if LAYER[there] < LAYER[here] or (here, there) in SIDEWAYS:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {here} (L{LAYER[here]}) imports {module} "
                       f"(L{LAYER[there]})")
    for path in sorted((ROOT / "fastcgi").rglob("*.py")):
        bad += [f"{path.relative_to(ROOT)}:{line}: fastcgi imports {module}"
                for line, module in _imports(path) if _part(module) is not None]
    return bad


def test_imports_point_down_the_layers() -> None:
    assert _violations() == []


@pytest.mark.parametrize(("here", "module"), [
    ("front/h1.py", "from ..upstream.pool import Pool"),
    ("upstream/pool.py", "from ..front import listen"),
    ("http/request.py", "from ..app.routing import Router"),
    ("observe/monitor.py", "from ..serve.php_fpm import PhpFpmSupervisor"),
    ("app/site.py", "from gateway.cli import main"),
])
def test_an_upward_or_sideways_import_is_caught(here: str, module: str, tmp_path: Path, monkeypatch) -> None:
    # the checker itself, on a copy of the tree with one bad import added
    import shutil

    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "gateway", copy / "gateway")
    shutil.copytree(ROOT / "fastcgi", copy / "fastcgi")
    target = copy / "gateway" / here
    target.write_text(target.read_text() + f"\n{module}\n")
    monkeypatch.setattr(f"{__name__}.ROOT", copy)
    assert any(here in v for v in _violations())
