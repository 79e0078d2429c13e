"""[[sites.X.rate_limit]], [[sites.X.access]], [[sites.X.basic_auth]]: what
loads, and what ``gateway check`` says of a malformed rule (file and key)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_dir

SITE = '[sites.a]\nroot = "/srv"\n'
GATEWAY = [sys.executable, "-m", "gateway"]


def load(tmp_path, text: str):
    (tmp_path / "00.toml").write_text(text)
    return load_dir(tmp_path, check_paths=False)


def load_error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    return str(exc.value)


def test_the_rules_load(tmp_path):
    cfg = load(tmp_path, SITE + """
[[sites.a.rate_limit]]
paths = ["/wp-login.php", "/xmlrpc.php"]
methods = ["POST"]
rate = "30r/m"
burst = 5
nodelay = true

[[sites.a.access]]
paths = ["/wp-admin/"]
allow = ["192.0.2.0/24", "2001:db8::/32"]
deny = ["all"]

[[sites.a.access]]
paths = ["/wp-admin/admin-ajax.php"]
allow = ["all"]

[[sites.a.basic_auth]]
realm = "Staging"
user_file = "staging.htpasswd"
failure_window = "5m"

[[sites.a.basic_auth]]
paths = ["/feed/"]
realm = "off"
""")
    site = cfg.sites["a"]
    assert site.rate_limit[0].rate == "30r/m" and site.rate_limit[0].burst == 5 and site.rate_limit[0].nodelay
    assert [r.paths for r in site.access] == [["/wp-admin/"], ["/wp-admin/admin-ajax.php"]]
    auth = site.basic_auth[0]
    assert (auth.paths, auth.max_failures, auth.failure_window) == (["/"], 5, 300.0)
    # relative to the configuration directory's parent, as a site root
    assert auth.user_file == str(tmp_path.resolve().parent / "staging.htpasswd")
    assert site.basic_auth[1].user_file == ""


@pytest.mark.parametrize(("rule", "key", "words"), [
    ('[[sites.a.rate_limit]]\nrate = "10"', "sites.a.rate_limit.0.rate", "is not a rate"),
    ('[[sites.a.rate_limit]]\nrate = "0r/s"', "sites.a.rate_limit.0.rate", "more than 0"),
    ('[[sites.a.rate_limit]]\nrate = "5r/h"', "sites.a.rate_limit.0.rate", "\"30r/m\""),
    ('[[sites.a.rate_limit]]\nburst = 3', "sites.a.rate_limit.0.rate", "is required"),
    ('[[sites.a.rate_limit]]\nrate = "1r/s"\nburst = -1', "sites.a.rate_limit.0.burst", ""),
    ('[[sites.a.rate_limit]]\nrate = "1r/s"\nmethods = ["post"]', "sites.a.rate_limit.0.methods.0", "capitals"),
    ('[[sites.a.rate_limit]]\nrate = "1r/s"\npaths = ["wp-login.php"]', "sites.a.rate_limit.0.paths.0",
     "must start with"),
    ('[[sites.a.rate_limit]]\nrate = "1r/s"\npaths = []', "sites.a.rate_limit.0.paths", ""),
    # prefixes no (normalised, decoded) request path starts with: a rule that would protect nothing
    ('[[sites.a.rate_limit]]\nrate = "1r/s"\npaths = ["/wp-login.php?action=lostpassword"]',
     "sites.a.rate_limit.0.paths.0", "has a query"),
    ('[[sites.a.access]]\ndeny = ["all"]\npaths = ["/wp%2Dadmin/"]', "sites.a.access.0.paths.0", "%-escape"),
    ('[[sites.a.access]]\ndeny = ["all"]\npaths = ["/wp-admin//"]', "sites.a.access.0.paths.0", "not a normalised"),
    ('[[sites.a.basic_auth]]\nuser_file = "/f"\npaths = ["/staging/./wp-admin/"]', "sites.a.basic_auth.0.paths.0",
     "not a normalised"),
    # the site's deny and no_php_under lists are prefixes too (a deny that never matches protects nothing)
    ('deny = ["/wp-config.php", "/wp-config.php?x=1"]', "sites.a.deny.1", "has a query"),
    ('deny = ["/wp-config%2Ephp"]', "sites.a.deny.0", "%-escape"),
    ('deny = ["wp-config.php"]', "sites.a.deny.0", "must start with"),
    ('no_php_under = ["/wp-content//uploads/"]', "sites.a.no_php_under.0", "not a normalised"),
    ('no_php_under = ["/wp-content/../uploads/"]', "sites.a.no_php_under.0", "not a normalised"),
    ('[[sites.a.rate_limit]]\nrate = "1r/s"\nburts = 3', "sites.a.rate_limit.0.burts", "unknown key"),
    ('[[sites.a.access]]\ndeny = ["10.0.0.1/8"]', "sites.a.access.0.deny", "host bits are set"),
    ('[[sites.a.access]]\nallow = ["office"]', "sites.a.access.0.allow", "not \"all\""),
    ('[[sites.a.access]]\npaths = ["/x/"]', "sites.a.access.0", "neither allow nor deny"),
    ('[[sites.a.basic_auth]]\nrealm = "x"', "sites.a.basic_auth.0", "user_file is required"),
    ('[[sites.a.basic_auth]]\nuser_file = "/f"\nrealm = "a \\"b\\""', "sites.a.basic_auth.0.realm", "quotes"),
    ('[[sites.a.basic_auth]]\nuser_file = "/f"\nmax_failures = 0', "sites.a.basic_auth.0.max_failures", ""),
    ('[[sites.a.basic_auth]]\nuser_file = "/f"\nfailure_window = "soon"', "sites.a.basic_auth.0.failure_window",
     "not a duration"),
])
def test_malformed_rules_name_file_and_key(tmp_path, rule, key, words):
    err = load_error(tmp_path, SITE + rule + "\n")
    line = next(line for line in err.splitlines() if f": {key}:" in line)
    assert line.startswith(f"{tmp_path / '00.toml'}: {key}: ")
    assert words in line


def check(tmp_path, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conf").mkdir(exist_ok=True)
    # (user root: the test's tmp dir is not www-data's to read)
    (tmp_path / "conf" / "00.toml").write_text(f'[server]\nuser = "root"\n[sites.a]\nroot = "{tmp_path}"\n' + text)
    return subprocess.run([*GATEWAY, "check", "--config", str(tmp_path / "conf")], capture_output=True, text=True)


def test_check_reads_the_user_file(tmp_path):
    (tmp_path / "users").write_text("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    assert check(tmp_path, '[[sites.a.basic_auth]]\nuser_file = "users"\n').returncode == 0


@pytest.mark.parametrize(("content", "words"), [
    (None, "does not exist (make it with \"htpasswd -c -B"),
    ("alice:plain-text\n", "line 1 (user 'alice'): not a supported hash"),
    ("", None),  # a directory
])
def test_check_refuses_a_user_file_serve_could_not_use(tmp_path, content, words):
    path = tmp_path / "users"
    if content == "":
        path.mkdir()
        words = "is a directory"
    elif content is not None:
        path.write_text(content)
    out = check(tmp_path, '[[sites.a.basic_auth]]\nuser_file = "users"\n')
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{tmp_path / 'conf' / '00.toml'}: sites.a.basic_auth.0.user_file: {path}")
    assert words in line
    assert "Traceback" not in out.stderr
