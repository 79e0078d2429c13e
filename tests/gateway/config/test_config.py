from __future__ import annotations

import pytest

from gateway.config import ConfigError, Override, load_dir, parse_duration, parse_size, validate


def test_sizes_and_durations():
    assert parse_size("8k") == 8192 and parse_size("64m") == 64 << 20 and parse_size(10) == 10
    assert parse_duration("500ms") == 0.5 and parse_duration("5m") == 300 and parse_duration(2) == 2.0
    with pytest.raises(ValueError):
        parse_size("eight")


def write(d, name, text):
    (d / name).write_text(text)


def test_files_merge_in_name_order_and_relative_roots(tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (tmp_path / "www").mkdir()
    write(conf, "00-base.toml", '[sites.a]\nroot = "www"\n[limits]\nclient_max_body_size = "1m"\n')
    write(conf, "50-local.toml", '[limits]\nclient_max_body_size = "100m"\n')
    cfg = load_dir(conf)
    assert cfg.limits.client_max_body_size == 100 << 20
    assert cfg.sites["a"].root == str(tmp_path / "www")
    assert cfg.sites["a"].effective_try_files() == ["$uri", "$uri/", "=404"]


def test_unknown_key_names_file_and_key(tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, "00-base.toml", '[sites.a]\nroot = "/srv"\n')
    write(conf, "10-typo.toml", '[limits]\nclient_max_body = "1m"\n')
    with pytest.raises(ConfigError) as exc:
        load_dir(conf)
    assert "10-typo.toml: limits.client_max_body: unknown key" in str(exc.value)


def test_bad_value_names_file_and_key(tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, "00.toml", '[sites.a]\nroot = "/srv"\nphp = "php"\n[backends.php]\nread_timeout = "soon"\n')
    with pytest.raises(ConfigError, match=r"00.toml: backends.php.read_timeout: .*not a duration"):
        load_dir(conf)


def test_site_naming_a_missing_backend(tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, "00.toml", '[sites.a]\nroot = "/srv"\nphp = "fpm"\n')
    with pytest.raises(ConfigError, match="backend 'fpm', which is not defined"):
        load_dir(conf)


def test_idle_timeout_must_be_below_request_terminate_timeout(tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, "00.toml", '[sites.a]\nroot = "/srv"\nphp = "php"\n'
          '[backends.php]\nidle_timeout = "30s"\n[backends.php.php_fpm]\nrequest_terminate_timeout = "20s"\n')
    with pytest.raises(ConfigError, match="idle_timeout"):
        load_dir(conf)


def test_shipped_conf_d_is_valid():
    import pathlib

    cfg = load_dir(pathlib.Path(__file__).parents[3] / "conf.d")
    assert cfg.server.listen == ["127.0.0.1:8080"]
    assert cfg.sites["demo"].php == "php"


@pytest.mark.parametrize("example", ["wordpress-debian.toml", "wordpress-tarball.toml"])
def test_shipped_wordpress_examples_are_valid(tmp_path, example):
    import pathlib
    import shutil

    src = pathlib.Path(__file__).parents[3] / "conf.d" / "examples" / example
    shutil.copy(src, tmp_path / example)
    cfg = load_dir(tmp_path, check_paths=False)  # WordPress need not be installed here
    site = cfg.sites["wordpress"]
    assert site.effective_try_files() == ["$uri", "$uri/", "/index.php?$args"]
    assert site.no_php_under == ["/wp-content/uploads/"] and "/wp-config.php" in site.deny
    assert site.rate_limit[0].paths == ["/wp-login.php", "/xmlrpc.php"] and site.rate_limit[0].methods == ["POST"]


def test_the_hardened_wordpress_example_is_valid(tmp_path):
    """conf.d/examples/wordpress-hardened.toml (tests/integration/test_site_rules_together.py serves it)."""
    import pathlib
    import shutil

    src = pathlib.Path(__file__).parents[3] / "conf.d" / "examples" / "wordpress-hardened.toml"
    shutil.copy(src, tmp_path / src.name)
    cfg = load_dir(tmp_path, check_paths=False)
    wp, www, staging = cfg.sites["wordpress"], cfg.sites["www"], cfg.sites["staging"]
    assert www.return_[0].code == 301 and not www.root
    assert wp.effective_try_files()[0] == "/wp-content/cache/supercache/$host$uri/index.html"
    assert wp.rate_limit[0].paths == ["/wp-login.php"] and wp.rate_limit[0].methods == ["POST"]
    assert [(a.paths, a.deny) for a in wp.access] == [(["/xmlrpc.php"], ["all"]), (["/wp-admin/"], ["all"]),
                                                      (["/wp-admin/admin-ajax.php"], [])]
    assert wp.aliases["/protected/"].internal and wp.aliases["/errors/"].internal
    assert set(wp.error_pages) == {"403", "404", "429", "502", "503", "504"}
    assert staging.basic_auth[0].realm == "Staging"


def test_queue_depth_defaults_to_max_connections():
    cfg = validate({"limits": {"max_connections": 500}, "backends": {"php": {}},
                    "sites": {"s": {"root": "/srv", "php": "php"}}})
    assert cfg.backends["php"].queue_depth == "auto"
    assert cfg.backends["php"].queue_limit(cfg.limits.max_connections) == 500
    cfg = validate({"backends": {"php": {"queue_depth": 7}}, "sites": {"s": {"root": "/srv", "php": "php"}}})
    assert cfg.backends["php"].queue_limit(cfg.limits.max_connections) == 7


@pytest.mark.parametrize(("toml", "key", "says"), [
    ('[server]\nlisten = ["127.0.0.1:99999"]\n', "server.listen.0", "port 99999 is out of range"),
    ('[server]\nlisten = ["localhost"]\n', "server.listen.0", "'localhost' is not HOST:PORT"),
    ('[server]\nlisten = ["::1:8080"]\n', "server.listen.0", "an IPv6 address goes in brackets"),
    ('[admin]\nlisten = "127.0.0.1"\n', "admin.listen", "'127.0.0.1' is not HOST:PORT, [V6]:PORT, :PORT or "
                                                        'unix:/path, or "off"'),
    ('[backends.php]\naddress = "php-fpm"\n', "backends.php.address", 'unix:/path, or "spawn"'),
    ('[backends.php]\naddress = "unix:"\n', "backends.php.address", "no socket path after unix:"),
    ('[backends.php]\nstatus = "127.0.0.1:70000"\n', "backends.php.status", "port 70000 is out of range"),
])
def test_a_bad_address_names_file_and_key(tmp_path, toml, key, says):
    write(tmp_path, "00.toml", '[sites.a]\nroot = "/srv"\n')
    write(tmp_path, "10-addr.toml", toml)
    with pytest.raises(ConfigError) as exc:
        load_dir(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / '10-addr.toml'}: {key}: ")
    assert says in str(exc.value)


def test_every_address_form_serve_accepts_passes():
    cfg = validate({"server": {"listen": ["127.0.0.1:8080", "[::1]:8080", ":8081", "8082", "unix:/run/gw.sock"]},
                    "admin": {"listen": "off"},
                    "backends": {"a": {"address": "spawn"},
                                 "b": {"address": "unix:/run/php/php8.2-fpm.sock", "status": "/run/php/status.sock"},
                                 "c": {"address": "10.0.0.2:9000", "status": "10.0.0.2:9001"}},
                    "sites": {"s": {"root": "/srv"}}})
    assert cfg.server.listen[2] == ":8081"  # kept as written: check prints what the file says
    assert cfg.admin.listen == "off" and cfg.backends["a"].status == ""


# -- old spellings: still read, one warning line each ---------------------------

OLD_SPELLINGS = (
    '[server]\nworkers = 2\n'
    '[backends.php]\nworkers = 3\nphp_fpm = "/usr/sbin/php-fpm8.2"\nuser = "www-data"\nmax_requests = 500\n'
    'request_terminate_timeout = "300s"\nphp_admin_values = { memory_limit = "256M" }\n'
    '[sites.a]\nroot = "/srv"\nphp = "php"\n'
)


def test_old_names_still_work_with_one_warning_line_each_naming_file_and_new_key(tmp_path, caplog):
    write(tmp_path, "00-old.toml", OLD_SPELLINGS)
    cfg = load_dir(tmp_path)
    assert cfg.server.processes == 2
    b = cfg.backends["php"]
    assert b.pool_size == 3
    assert (b.php_fpm.binary, b.php_fpm.user, b.php_fpm.max_requests) == ("/usr/sbin/php-fpm8.2", "www-data", 500)
    assert b.php_fpm.request_terminate_timeout == 300 and b.php_fpm.php_admin_values == {"memory_limit": "256M"}
    f = tmp_path / "00-old.toml"
    assert sorted(r.getMessage() for r in caplog.records if r.levelname == "WARNING") == sorted(
        f"{f}: {old}: deprecated, write {new} instead (the old name still works)" for old, new in [
            ("server.workers", "server.processes"),
            ("backends.php.workers", "backends.php.pool_size"),
            ("backends.php.php_fpm", "backends.php.php_fpm.binary"),
            ("backends.php.user", "backends.php.php_fpm.user"),
            ("backends.php.max_requests", "backends.php.php_fpm.max_requests"),
            ("backends.php.request_terminate_timeout", "backends.php.php_fpm.request_terminate_timeout"),
            ("backends.php.php_admin_values", "backends.php.php_fpm.php_admin_values"),
        ])


def test_new_names_warn_about_nothing(tmp_path, caplog):
    write(tmp_path, "00.toml", '[server]\nprocesses = 2\n[backends.php]\npool_size = 3\n'
          '[backends.php.php_fpm]\nbinary = "/usr/sbin/php-fpm8.2"\nuser = "www-data"\n'
          '[sites.a]\nroot = "/srv"\nphp = "php"\n')
    cfg = load_dir(tmp_path)
    assert (cfg.server.processes, cfg.backends["php"].pool_size, cfg.backends["php"].php_fpm.user) == (2, 3, "www-data")
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


def test_a_later_files_old_name_still_overrides_an_earlier_files_new_one(tmp_path):
    # conf.d/10-demo.toml ships the new names; a 50-local.toml written for an
    # older release must keep overriding them
    write(tmp_path, "10-demo.toml", '[backends.php]\npool_size = 4\n[backends.php.php_fpm]\nuser = "www-data"\n'
          '[sites.a]\nroot = "/srv"\nphp = "php"\n')
    write(tmp_path, "50-local.toml", '[backends.php]\nworkers = 8\nuser = "nobody"\n')
    b = load_dir(tmp_path).backends["php"]
    assert (b.pool_size, b.php_fpm.user) == (8, "nobody")


def test_old_and_new_name_in_one_file_is_an_error_naming_both(tmp_path):
    write(tmp_path, "00.toml", '[backends.php]\nworkers = 4\npool_size = 8\n[sites.a]\nroot = "/srv"\n')
    with pytest.raises(ConfigError) as exc:
        load_dir(tmp_path)
    assert str(exc.value) == (f"{tmp_path / '00.toml'}: backends.php.workers: also set as backends.php.pool_size; "
                              "keep only backends.php.pool_size")


def test_an_error_in_a_moved_key_names_the_new_key_and_the_file(tmp_path):
    write(tmp_path, "00.toml", '[sites.a]\nroot = "/srv"\nphp = "php"\n')
    write(tmp_path, "10.toml", '[backends.php]\nmax_requests = -1\n')
    with pytest.raises(ConfigError, match=r"10.toml: backends.php.php_fpm.max_requests: -1 is too small"):
        load_dir(tmp_path)


def test_a_flag_is_validated_as_a_file_is_and_named_in_the_error(tmp_path):
    write(tmp_path, "00.toml", '[sites.a]\nroot = "/srv"\n')
    cfg = load_dir(tmp_path, [Override("--processes", ("server", "processes"), "3"),
                              Override("--listen", ("server", "listen"), ["[::1]:8081"])])
    assert cfg.server.processes == 3 and cfg.server.listen == ["[::1]:8081"]
    with pytest.raises(ConfigError) as exc:
        load_dir(tmp_path, [Override("--processes", ("server", "processes"), "0"),
                            Override("--listen", ("server", "listen"), ["127.0.0.1:99999"])])
    assert str(exc.value).splitlines() == [
        "--listen: server.listen.0: listen address '127.0.0.1:99999': port 99999 is out of range (1-65535)",
        "--processes: server.processes: 0 is neither a whole number from 1 to 256 nor \"auto\"",
    ]


def test_diagnosis_endpoints_name_file_and_key(tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (tmp_path / "www").mkdir()
    write(conf, "00.toml", '[sites.a]\nroot = "www"\n')
    write(conf, "20-diag.toml", '[diagnosis.endpoints]\n"[0::1]:3306" = { name = "primary db", kind = "database" }\n')
    cfg = load_dir(conf)
    assert cfg.diagnosis.endpoints["[::1]:3306"].name == "primary db"  # compared as /proc shows addresses
    write(conf, "30-bad.toml", '[diagnosis.endpoints]\n"db.internal:3306" = { kind = "database" }\n'
                               '"10.0.0.5:6379" = { kind = "redis" }\n')
    with pytest.raises(ConfigError) as exc:
        load_dir(conf)
    text = str(exc.value)
    assert "30-bad.toml: diagnosis.endpoints.db.internal:3306" in text and "not \"ip:port\"" in text
    assert "30-bad.toml: diagnosis.endpoints.10.0.0.5:6379.kind: 'redis' is not allowed" in text
