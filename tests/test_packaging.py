"""contrib/ and docker/ hold what an operator installs: a systemd unit that
systemd accepts, a logrotate snippet logrotate accepts, an image build that
never carries a local .venv (README "Running in production"); a default
install parses with upstream h11, h11-mypyc only as the pinned [fast] extra."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "gateway.service"
LOGROTATE = ROOT / "contrib" / "logrotate" / "gateway"


def _unit() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_reloads_with_hup_and_says_when_it_is_ready():
    unit = _unit()
    assert unit["Type"] == ["notify"] and unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["RestartPreventExitStatus"] == ["2"]  # a configuration error
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to the master only: it stops the rest in order
    caps = set(unit["CapabilityBoundingSet"][0].split())
    assert {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL"} <= caps
    assert unit["NoNewPrivileges"] == ["yes"] and unit["PrivateTmp"] == ["yes"]


def test_systemd_analyze_verifies_the_unit(tmp_path):
    # the unit's paths pointed at this checkout's venv, which exists
    unit = tmp_path / "gateway.service"
    unit.write_text(UNIT.read_text().replace("/opt/gateway/.venv", str(ROOT / ".venv")))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "gateway.service" not in out.stderr, out.stderr


def test_logrotate_reads_the_snippet(tmp_path):
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    out = subprocess.run([logrotate, "-d", "-s", str(tmp_path / "state"), str(LOGROTATE)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "error" not in out.stderr.lower(), out.stderr
    assert "kill --kill-whom=main --signal=USR1 gateway.service" in LOGROTATE.read_text()


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore pattern matches ``path`` or a directory on it (roughly Docker's rules)."""
    parts = path.rstrip("/").split("/")
    spans = {"/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)}
    return any(fnmatch.fnmatch(span, p.strip("/").removeprefix("**/")) for p in patterns for span in spans)


def test_the_image_build_never_sees_a_local_venv_and_copies_only_what_exists():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert _ignored(".venv/bin/python", patterns) and _ignored("gateway/__pycache__/x.pyc", patterns)
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    sources = [src for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE) for src in line.split()[:-1]]
    assert sources and "." not in sources
    for src in sources:
        assert (ROOT / src).exists() and not _ignored(src, patterns), src


def _requirements() -> list[Requirement]:
    # the installed metadata: what pip reads when it installs php-gateway
    return [Requirement(line) for line in importlib.metadata.requires("php-gateway") or []]


def test_a_default_install_parses_with_upstream_h11_and_h11_mypyc_is_a_pinned_opt_in():
    reqs = _requirements()
    default = {r.name: r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})}
    assert "h11-mypyc" not in default
    # 0.16 fixed CVE-2025-43859 (a chunk's closing CRLF not checked)
    assert default["h11"].specifier.contains("0.16.0") and not default["h11"].specifier.contains("0.15.0")
    fast = [r for r in reqs if r.name not in default and r.marker is not None and r.marker.evaluate({"extra": "fast"})]
    assert [(r.name, str(r.specifier)) for r in fast] == [("h11-mypyc", "==0.17.0")]


def test_setup_installs_the_extra_for_the_tests_only_and_the_image_builds_without_it():
    setup = (ROOT / "scripts" / "setup").read_text()
    assert '[ $want_test = 1 ] && extra="[test,fast]"' in setup
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"bash scripts/setup &&", dockerfile) and "--test" not in dockerfile
