"""Backends of two types and several addresses, and the sites that use them
(issue 15): the keys, their defaults, and one line per mistake naming file,
key and line."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_dir, validate
from gateway.config.addresses import parse_upstream
from gateway.serve.master import worker_config

SITE = '[sites.a]\nroot = "/srv"\n'


def load_error(tmp_path, text: str) -> str:
    (tmp_path / "00.toml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_dir(tmp_path, check_paths=False)
    return str(exc.value)


def test_defaults_are_todays_php_backend():
    cfg = validate({"sites": {"a": {"root": "/srv", "php": "php"}}, "backends": {"php": {}}})
    backend = cfg.backends["php"]
    assert backend.type == "fastcgi"
    assert backend.spawned
    assert backend.balance == "least_busy"
    assert backend.health.path == ""  # passive only
    assert (backend.health.max_fails, backend.health.fail_timeout) == (1, 10.0)
    assert cfg.sites["a"].proxy == "" and cfg.sites["a"].routes == {}


def test_an_http_backend_with_routes_and_proxy():
    cfg = validate({
        "backends": {
            "app": {"type": "http", "addresses": ["10.0.0.2:8080", "https://api.internal"], "balance": "round_robin",
                    "upstream_host": "app.internal:8080",
                    "health": {"path": "/healthz", "interval": "2s", "fails": 3, "passes": 2}},
            "php": {"addresses": ["10.0.0.3:9000", "unix:/run/php.sock"]},
        },
        "sites": {"a": {"root": "/srv", "php": "php", "routes": {"/api/": "app"}},
                  "b": {"root": "/srv", "proxy": "app"}},
    })
    app = cfg.backends["app"]
    assert not app.spawned
    first, second = app.upstreams()
    assert (first.where.host, first.where.port, first.tls) == ("10.0.0.2", 8080, False)
    assert (second.where.host, second.where.port, second.tls, str(second)) == ("api.internal", 443, True,
                                                                               "https://api.internal")
    assert app.health.interval == 2.0 and app.health.fails == 3
    assert [str(a) for a in cfg.backends["php"].upstreams()] == ["10.0.0.3:9000", "unix:/run/php.sock"]
    assert not cfg.backends["php"].spawned


def test_a_single_address_still_works_for_both_types():
    cfg = validate({"backends": {"app": {"type": "http", "address": "http://127.0.0.1:3000"},
                                 "php": {"address": "127.0.0.1:9000"}},
                    "sites": {"a": {"root": "/srv", "proxy": "app"}}})
    assert [a.where.port for a in cfg.backends["app"].upstreams()] == [3000]
    assert [a.where.port for a in cfg.backends["php"].upstreams()] == [9000]


@pytest.mark.parametrize(("text", "http", "says"), [
    ("http://h:80", False, "is a URL: a FastCGI backend is HOST:PORT or unix:/path"),
    ("ftp://h:21", True, "the scheme is http:// or https://, not ftp://"),
    ("http://h/path", True, "without a path or user"),
    ("http://u@h", True, "without a path or user"),
    ("http://", True, "without a path or user"),
    ("http://h:99999", True, "out of range"),
    ("http://h:0", True, "port 0 cannot be connected to"),
    ("h", True, "is not HOST:PORT"),
])
def test_upstream_address_syntax(text, http, says):
    with pytest.raises(ValueError, match=says):
        parse_upstream(text, http=http)


@pytest.mark.parametrize(("text", "host", "port", "tls"), [
    ("http://app", "app", 80, False),
    ("https://app", "app", 443, True),
    ("HTTPS://app:8443/", "app", 8443, True),
    ("http://[::1]", "::1", 80, False),
    ("http://[::1]:81", "::1", 81, False),
    (":8080", "127.0.0.1", 8080, False),
])
def test_upstream_urls(text, host, port, tls):
    got = parse_upstream(text, http=True)
    assert (got.where.host, got.where.port, got.tls) == (host, port, tls)


@pytest.mark.parametrize(("toml", "line"), [
    ('[backends.app]\ntype = "http"\n', 'backends.app: type = "http" needs addresses'),
    ('[backends.app]\ntype = "grpc"\naddresses = ["h:1"]\n', "backends.app.type: 'grpc' is not allowed"),
    ('[backends.app]\ntype = "http"\naddress = "spawn"\n', 'backends.app: type = "http" needs addresses'),
    ('[backends.php]\naddresses = ["http://h:80"]\n', "backends.php: backend address 'http://h:80' is a URL"),
    ('[backends.php]\naddresses = ["spawn"]\n', 'backends.php.addresses.0: "spawn" goes in address, alone'),
    ('[backends.php]\naddresses = ["h:1", "h:1"]\n', "backends.php: addresses lists an address twice"),
    ('[backends.php]\naddresses = ["nope"]\n', "backends.php.addresses.0: backend address 'nope' is not HOST:PORT"),
    ('[backends.php]\nbalance = "random"\n', "backends.php.balance: 'random' is not allowed"),
    ('[backends.php]\naddress = "h:1"\nupstream_host = "x"\n',
     'backends.php: upstream_host is for type = "http" backends'),
    ('[backends.php]\naddress = "h:1"\nca_bundle = "/x.pem"\n',
     'backends.php: ca_bundle is for type = "http" backends'),
    ('[backends.app]\ntype = "http"\naddresses = ["h:1"]\nupstream_host = "a b"\n',
     "backends.app.upstream_host: 'a b' is not a host name"),
    ('[backends.app]\ntype = "http"\naddresses = ["h:1"]\nstatus = "h:2"\n',
     "backends.app: status: only for php-fpm"),
    ('[backends.php]\n[backends.php.health]\npath = "ping"\n', "backends.php.health: path 'ping' must start with"),
    ('[backends.php]\naddress = "h:1"\n[backends.php.health]\npath = "/ping"\n',
     'backends.php: health.path is for type = "http" backends'),
    ('[backends.php]\n[backends.php.health]\nfails = 0\n', "backends.php.health.fails: 0 is too small"),
])
def test_backend_mistakes(tmp_path, toml, line):
    err = load_error(tmp_path, SITE + toml)
    assert err.startswith(f"{tmp_path / '00.toml'}: {line}"), err
    assert len(err.splitlines()) == 1


def test_address_and_addresses_together(tmp_path):
    err = load_error(tmp_path, SITE + '[backends.php]\naddress = "h:1"\naddresses = ["h:2"]\n')
    assert err == (f"{tmp_path / '00.toml'}: backends.php.addresses: and address are both set: keep one (address is "
                   "one address, addresses a list of them) (line 5)")


def test_references_name_the_key_and_the_type(tmp_path):
    err = load_error(tmp_path, (
        '[backends.php]\naddress = "h:9000"\n'
        '[backends.app]\ntype = "http"\naddresses = ["h:80"]\n'
        '[sites.a]\nroot = "/srv"\nphp = "app"\n'
        '[sites.b]\nroot = "/srv"\nproxy = "php"\n'
        '[sites.c]\nroot = "/srv"\nproxy = "nope"\n'
        '[sites.d]\nroot = "/srv"\n[sites.d.routes]\n"/api/" = "php"\n'
    ))
    f = tmp_path / "00.toml"
    assert err.splitlines() == [
        f"{f}: sites.a.php: names backend 'app', which is type = 'http': it must be a FastCGI (php-fpm) backend "
        "(line 8)",
        f"{f}: sites.b.proxy: names backend 'php', which is type = 'fastcgi': it must be an HTTP backend "
        '(type = "http") (line 11)',
        f"{f}: sites.c.proxy: names backend 'nope', which is not defined (defined: app, php) (line 14)",
        f"{f}: sites.d.routes./api/: names backend 'php', which is type = 'fastcgi': it must be an HTTP backend "
        '(type = "http") (line 18)',
    ]


@pytest.mark.parametrize(("toml", "line"), [
    ('[sites.a]\nroot = "/srv"\nproxy = "app"\nphp = "php"\n', "sites.a: php ('php') and proxy ('app')"),
    ('[sites.a]\nroot = "/srv"\n[sites.a.routes]\n"api/" = "app"\n', "sites.a: routes: the prefix 'api/' must start"),
    ('[sites.a]\nroot = "/srv"\nproxy = "app"\ntry_files = ["$uri", "=404"]\n', "sites.a: try_files and proxy"),
])
def test_site_mistakes(tmp_path, toml, line):
    backends = '[backends.php]\naddress = "h:9000"\n[backends.app]\ntype = "http"\naddresses = ["h:80"]\n'
    err = load_error(tmp_path, backends + toml)
    assert err.startswith(f"{tmp_path / '00.toml'}: {line}"), err
    assert len(err.splitlines()) == 1


def test_worker_processes_get_a_configuration_that_validates():
    """The master hands each worker a dump of the configuration: an HTTP
    backend's and a group's must validate again (no fastcgi-only keys, not
    both address and addresses)."""
    cfg = validate({"backends": {"app": {"type": "http", "addresses": ["h:80", "h:81"], "pool_size": 8},
                                 "php": {"addresses": ["h:9000", "h:9001"]}},
                    "sites": {"a": {"root": "/srv", "php": "php", "routes": {"/api/": "app"}}}})
    data = worker_config(cfg, 0, 2, {"app": ("h:80", ""), "php": ("h:9000", "")}, "/tmp/rt")
    again = validate(data)
    assert again.backends["app"].addresses == ["h:80", "h:81"]
    assert again.backends["app"].pool_size == 4
    assert again.backends["php"].addresses == ["h:9000", "h:9001"]


def test_the_shipped_groups_example_is_valid(tmp_path):
    import pathlib
    import shutil

    src = pathlib.Path(__file__).parents[3] / "conf.d" / "examples" / "php-hosts-and-app.toml"
    shutil.copy(src, tmp_path / src.name)
    cfg = load_dir(tmp_path, check_paths=False)
    assert len(cfg.backends["php"].upstreams()) == 3 and cfg.backends["php"].health.interval == 2.0
    assert cfg.backends["api"].type == "http" and cfg.sites["shop"].routes == {"/api/": "api"}


def test_the_shipped_several_gateways_example_is_valid_and_sized_as_it_says(tmp_path):
    import pathlib
    import re
    import shutil

    src = pathlib.Path(__file__).parents[3] / "conf.d" / "examples" / "several-gateways-php-hosts.toml"
    shutil.copy(src, tmp_path / src.name)
    cfg = load_dir(tmp_path, check_paths=False)
    php = cfg.backends["php"]
    hosts = [u.text for u in php.upstreams()]
    assert hosts == ["10.0.1.11:9000", "10.0.1.12:9000", "10.0.1.13:9000"]
    assert (php.health.interval, php.health.timeout, php.health.passes) == (2.0, 1.0, 2)
    assert cfg.server.listen == ["0.0.0.0:80 proxy_protocol"] and cfg.server.trusted_proxies == ["10.0.0.0/24"]
    # the php-fpm side it describes: pm.max_children covers every gateway's pool_size to that host
    text = src.read_text()
    gateways = len(re.search(r"allowed_clients = (\S+)", text).group(1).split(","))
    max_children = int(re.search(r"pm\.max_children = (\d+)", text).group(1))
    assert gateways * php.pool_size <= max_children
    assert int(re.search(r"request_terminate_timeout = (\d+)s", text).group(1)) > php.read_timeout
