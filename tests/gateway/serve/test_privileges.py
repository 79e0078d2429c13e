"""Who runs as whom (``serve.privileges``): the pure decisions, with made-up
users and permission bits; the real processes are in
``tests/integration/test_privileges.py``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.config import validate
from gateway.serve.php_fpm import write_pool_config
from gateway.serve.privileges import (
    Account,
    FpmUsers,
    Plan,
    PrivilegeError,
    bits_allow,
    can_use_dir,
    plan,
    problems,
)

USERS = {
    "root": Account("root", 0, 0, "root", (0,)),
    "www-data": Account("www-data", 33, 33, "www-data", (33,)),
    "wp": Account("wp", 1001, 1001, "wp", (1001, 33)),
    "gw": Account("gw", 999, 999, "gw", (999,)),
}
GROUPS = {"www-data": 33, "web": 2000}


def conf(server: dict | None = None, php_fpm: dict | None = None, address: str = "spawn") -> object:
    return validate({"server": server or {}, "backends": {"php": {"address": address, "php_fpm": php_fpm or {}}},
                     "sites": {"blog": {"root": "/srv/blog", "php": "php", "aliases": {"/media/": "/srv/media"}}}})


def decide(cfg: object, euid: int = 0) -> Plan:
    return plan(cfg, euid, USERS.get, GROUPS.get)  # type: ignore[arg-type]


def test_not_root_changes_nothing():
    assert decide(conf({"user": "gw"}), euid=1000) == Plan(None)


def test_root_drops_to_www_data_by_default_and_php_fpm_follows_the_gateway():
    p = decide(conf())
    assert p.account == USERS["www-data"]
    assert p.fpm == {"php": FpmUsers("www-data", "www-data", "www-data")}


def test_server_user_and_group():
    p = decide(conf({"user": "gw", "group": "web"}))
    assert p.account is not None and (p.account.name, p.account.uid, p.account.gid) == ("gw", 999, 2000)
    assert set(p.account.groups) == {999, 2000}
    assert p.fpm["php"] == FpmUsers("gw", "gw", "web")


def test_php_fpm_runs_as_root_only_when_written():
    assert decide(conf(php_fpm={"user": "root"})).fpm["php"].worker == "root"
    # the gateway keeping root explicitly does not make php-fpm root
    p = decide(conf({"user": "root"}))
    assert p.account is None and p.fpm["php"] == FpmUsers("www-data", "www-data", "root")


def test_an_external_backend_has_no_php_fpm_to_run():
    assert decide(conf(address="unix:/run/php/php8.2-fpm.sock")).fpm == {}


@pytest.mark.parametrize(("cfg", "message"), [
    (conf({"user": "nobody-here"}), "server.user: no such user 'nobody-here'"),
    (conf({"group": "nogroup-here"}), "server.group: no such group 'nogroup-here'"),
    (conf(php_fpm={"user": "ghost"}), "backends.php.php_fpm.user: no such user 'ghost'"),
])
def test_unknown_users_and_groups_name_the_key(cfg, message):
    with pytest.raises(PrivilegeError, match=message):
        decide(cfg)


def test_a_root_closed_to_a_user_is_one_line_naming_key_path_and_user():
    closed = {("/srv/blog", "wp")}

    def can_read(path: str, account: Account) -> bool:
        return (path, account.name) not in closed

    cfg = conf(php_fpm={"user": "wp"})
    assert problems(cfg, decide(cfg), USERS.get, can_read, is_dir=lambda p: True) == [  # type: ignore[arg-type]
        (("sites", "blog", "root"), "/srv/blog: not readable by user wp (php-fpm's workers, "
         "backends.php.php_fpm.user); give it r-x on the directory and x on every one above, or choose another user")]
    closed = {("/srv/media", "www-data")}
    lines = problems(cfg, decide(cfg), USERS.get, can_read, is_dir=lambda p: True)  # type: ignore[arg-type]
    assert len(lines) == 1 and lines[0][0] == ("sites", "blog", "aliases", "/media/")
    assert lines[0][1].startswith("/srv/media: not readable by user www-data (the gateway's user")


def test_a_root_that_does_not_exist_says_so():
    cfg = conf()
    assert problems(cfg, decide(cfg), USERS.get, lambda p, a: False,  # type: ignore[arg-type]
                    is_dir=lambda p: p != "/srv/blog") == [
        (("sites", "blog", "root"), "/srv/blog: no such directory"),
        (("sites", "blog", "aliases", "/media/"), "/srv/media: not readable by user www-data (the gateway's user, "
         "[server] user); give it r-x on the directory and x on every one above, or choose another user")]


def test_a_site_that_only_redirects_has_no_root_to_read():
    cfg = validate({"sites": {"www": {"return": [{"paths": ["/"], "code": 301, "to": "https://example.com/"}]}}})
    assert problems(cfg, decide(cfg), USERS.get, lambda p, a: False,  # type: ignore[arg-type]
                    is_dir=lambda p: False) == []


@pytest.mark.parametrize(("uid", "gid", "mode", "who", "need", "allowed"), [
    (0, 0, 0o755, "www-data", 5, True),    # others r-x
    (0, 0, 0o750, "www-data", 5, False),   # closed to others
    (0, 33, 0o750, "www-data", 5, True),   # group www-data
    (0, 33, 0o750, "wp", 5, True),         # wp is in group 33
    (33, 0, 0o700, "www-data", 3, True),   # owner may create files
    (0, 0, 0o711, "www-data", 1, True),    # may pass through
    (0, 0, 0o711, "www-data", 5, False),   # but not list
    (0, 0, 0o000, "root", 5, True),        # root reads everything
])
def test_permission_bits(uid, gid, mode, who, need, allowed):
    assert bits_allow(uid, gid, stat.S_IFDIR | mode, USERS[who], need) is allowed


def test_a_directory_under_a_closed_one_is_not_readable(tmp_path):
    closed = tmp_path / "closed" / "site"
    closed.mkdir(parents=True)
    os.chmod(tmp_path / "closed", 0o700)
    os.chmod(tmp_path, 0o755)
    nobody = Account("x", 54321, 54321, "x", (54321,))
    assert can_use_dir("/usr/share", nobody)
    assert not can_use_dir(str(closed), nobody)
    assert not can_use_dir(str(tmp_path / "missing"), nobody)


def test_the_php_fpm_pool_gets_its_user_and_gives_its_sockets_to_the_gateway(tmp_path):
    cfg = conf({"user": "gw"}, php_fpm={"user": "wp"})
    paths = write_pool_config("php", cfg.backends["php"], str(tmp_path),  # type: ignore[attr-defined]
                              users=FpmUsers("wp", "gw", "gw"))
    text = Path(paths.config).read_text()
    assert "user = wp\n" in text and "listen.owner = gw\n" in text and "listen.group = gw\n" in text
    assert "listen.mode = 0660\n" in text


def test_workers_of_another_user_are_dumpable_only_while_the_diagnosis_samples_them(tmp_path):
    # process.dumpable lets the gateway (dropped to that user) read the workers' /proc files;
    # with [diagnosis] sample_workers = false php-fpm keeps its default (not dumpable)
    cfg = conf({"user": "gw"}, php_fpm={"user": "wp"})
    users = FpmUsers("wp", "gw", "gw")
    sampled = write_pool_config("php", cfg.backends["php"], str(tmp_path / "on"),  # type: ignore[attr-defined]
                                users=users)
    assert "process.dumpable = yes\n" in Path(sampled.config).read_text()
    quiet = write_pool_config("php", cfg.backends["php"], str(tmp_path / "off"),  # type: ignore[attr-defined]
                              users=users, dumpable=False)
    assert "dumpable" not in Path(quiet.config).read_text()
