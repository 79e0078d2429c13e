"""php-fpm is found whatever its Debian/Ubuntu version: newest ``php-fpmX.Y`` first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.serve.php_fpm import SupervisorError, find_php_fpm, fpm_candidates


def _exe(path: Path) -> str:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_newest_versioned_binary_first(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _exe(a / "php-fpm8.2")
    newest = _exe(b / "php-fpm8.4")
    _exe(b / "php-fpm8.3")
    plain = _exe(a / "php-fpm")
    (a / "php-fpm7.4").write_text("not executable")
    _exe(a / "php-fpm-wrapper")  # not a php-fpm name
    found = fpm_candidates([str(a), str(b)])
    assert found[0] == newest and found[-1] == plain
    assert [os.path.basename(p) for p in found] == ["php-fpm8.4", "php-fpm8.3", "php-fpm8.2", "php-fpm"]


def test_not_found_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("gateway.serve.php_fpm.FPM_DIRS", ())
    with pytest.raises(SupervisorError, match=str(tmp_path)):
        find_php_fpm()


def test_the_configured_binary_wins(tmp_path: Path):
    mine = _exe(tmp_path / "my-fpm")
    assert find_php_fpm(mine) == mine
    with pytest.raises(SupervisorError, match="not an executable"):
        find_php_fpm(str(tmp_path / "missing"))
