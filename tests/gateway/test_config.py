from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_dir, parse_duration, parse_size, validate


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
          '[backends.php]\nidle_timeout = "30s"\nrequest_terminate_timeout = "20s"\n')
    with pytest.raises(ConfigError, match="idle_timeout"):
        load_dir(conf)


def test_shipped_conf_d_is_valid():
    import pathlib

    cfg = load_dir(pathlib.Path(__file__).parents[2] / "conf.d")
    assert cfg.server.listen == ["127.0.0.1:8080"]
    assert cfg.sites["demo"].php == "php"


@pytest.mark.parametrize("example", ["wordpress-debian.toml", "wordpress-tarball.toml"])
def test_shipped_wordpress_examples_are_valid(tmp_path, example):
    import pathlib
    import shutil

    src = pathlib.Path(__file__).parents[2] / "conf.d" / "examples" / example
    shutil.copy(src, tmp_path / example)
    cfg = load_dir(tmp_path)
    site = cfg.sites["wordpress"]
    assert site.effective_try_files() == ["$uri", "$uri/", "/index.php?$args"]
    assert site.no_php_under == ["/wp-content/uploads/"] and "/wp-config.php" in site.deny


def test_worker_user_falls_back_to_root_when_www_data_cannot_read_the_root(tmp_path):
    import os

    from gateway.config import BackendConfig
    from gateway.serve.php_fpm import choose_worker_user, user_can_read_dir

    closed = tmp_path / "closed" / "site"
    closed.mkdir(parents=True)
    os.chmod(tmp_path / "closed", 0o700)
    assert user_can_read_dir("/usr/share", "www-data")  # world-readable on every Debian
    assert not user_can_read_dir(str(closed), "www-data")
    assert choose_worker_user(BackendConfig(), [str(closed)]) == "root"
    assert choose_worker_user(BackendConfig(), ["/usr/share"]) == "www-data"
    assert choose_worker_user(BackendConfig(user="nobody"), [str(closed)]) == "nobody"


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
    cfg = validate({"server": {"listen": ["127.0.0.1:8080", "[::1]:8080", ":8080", "8080", "unix:/run/gw.sock"]},
                    "admin": {"listen": "off"},
                    "backends": {"a": {"address": "spawn"},
                                 "b": {"address": "unix:/run/php/php8.2-fpm.sock", "status": "/run/php/status.sock"},
                                 "c": {"address": "10.0.0.2:9000", "status": "10.0.0.2:9001"}},
                    "sites": {"s": {"root": "/srv"}}})
    assert cfg.server.listen[2] == ":8080"  # kept as written: check prints what the file says
    assert cfg.admin.listen == "off" and cfg.backends["a"].status == ""
