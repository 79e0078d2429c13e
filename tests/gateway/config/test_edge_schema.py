"""The edge keys (TLS, real client IPs, compression): what is accepted, and
what an operator is told when a value cannot work."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_dir
from gateway.config.addresses import parse_listen

SITE = '[sites.a]\nroot = "/srv"\n'


def load(tmp_path, text: str):
    (tmp_path / "00.toml").write_text(text)
    return load_dir(tmp_path, check_paths=False)


def load_error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    return str(exc.value)


@pytest.mark.parametrize(("text", "address", "tls", "proxy"), [
    ("0.0.0.0:443 tls", "0.0.0.0:443", True, False),
    (":8080 proxy_protocol", ":8080", False, True),
    ("[::]:443 tls proxy_protocol", "[::]:443", True, True),
    ("  127.0.0.1:8443   tls ", "127.0.0.1:8443", True, False),
    ("unix:/run/gw.sock proxy_protocol", "unix:/run/gw.sock", False, True),
])
def test_listen_flags_as_nginx_writes_them(text, address, tls, proxy):
    spec = parse_listen(text)
    assert (spec.address, spec.tls, spec.proxy_protocol) == (address, tls, proxy)


@pytest.mark.parametrize(("text", "says"), [
    ("127.0.0.1:443 ssl", "unknown flag 'ssl' (known: tls, proxy_protocol, reuseport)"),
    ("127.0.0.1:443 tls tls", "flag 'tls' given twice"),
    ("", "is empty"),
    ("tls", "is not HOST:PORT"),
])
def test_bad_listen_flags_are_named(text, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_listen(text)


def test_reuseport_is_a_flag_of_tcp_addresses():
    assert parse_listen("0.0.0.0:443 tls reuseport").reuseport
    assert not parse_listen("0.0.0.0:443 tls").reuseport
    assert str(parse_listen("[::]:80 reuseport proxy_protocol")) == "[::]:80 proxy_protocol reuseport"
    with pytest.raises(ValueError, match="reuseport is for TCP addresses"):
        parse_listen("unix:/run/gw.sock reuseport")


def test_reuseport_on_a_unix_socket_is_refused_naming_the_key(tmp_path):
    err = load_error(tmp_path, SITE + '[server]\nlisten = ["unix:/tmp/gw.sock reuseport"]\n')
    assert "server.listen" in err and "reuseport is for TCP addresses" in err


def test_a_flagged_listener_conflicts_by_its_address(tmp_path):
    err = load_error(tmp_path, SITE + '[server]\nlisten = ["127.0.0.1:8443 tls", "127.0.0.1:8443"]\n')
    assert "server.listen.1: 127.0.0.1:8443 overlaps server.listen.0" in err


def test_edge_keys_load(tmp_path):
    cfg = load(tmp_path, SITE + """
redirect_to_https = true
precompressed = true
[sites.a.tls]
cert = "certs/a.pem"
key = "certs/a.key"
[sites.a.headers]
Strict-Transport-Security = "max-age=31536000"
[server]
listen = ["127.0.0.1:8080", "127.0.0.1:8443 tls"]
trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1/128", "unix:"]
real_ip_header = "X-Real-IP"
compression = ["gzip"]
compress_min_size = "1k"
[acme]
challenge = "tls-alpn-01"
state_dir = "state"
""")
    site = cfg.sites["a"]
    assert site.tls is not None and site.tls.cert == str(tmp_path.parent / "certs/a.pem")
    assert site.tls.key == str(tmp_path.parent / "certs/a.key")
    assert site.redirect_to_https and site.precompressed
    # the table form is one rule for every path and status
    assert [(r.paths, r.set, r.remove, r.always) for r in site.headers] == [
        (["/"], {"Strict-Transport-Security": "max-age=31536000"}, [], True)]
    assert cfg.server.trusted_proxies == ["127.0.0.1", "10.0.0.0/8", "::1/128", "unix:"]
    assert cfg.server.compression == ["gzip"] and cfg.server.compress_min_size == 1024
    assert cfg.acme.challenge == "tls-alpn-01" and cfg.acme.state_path() == str(tmp_path.parent / "state")


def test_defaults_compress_and_trust_nobody(tmp_path):
    cfg = load(tmp_path, SITE)
    assert cfg.server.compression == ["br", "gzip"]
    assert cfg.server.trusted_proxies == []
    assert cfg.sites["a"].tls is None
    assert cfg.acme.state_path(euid=0) == "/var/lib/gateway"


def test_state_dir_for_a_user(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load(tmp_path, SITE).acme.state_path(euid=1000) == str(tmp_path / "xdg" / "gateway")


@pytest.mark.parametrize(("toml", "says"), [
    ('[sites.a.tls]\ncert = "a.pem"\n', "sites.a.tls: cert and key go together"),
    ('[sites.a.tls]\nacme = true\ninternal = true\n', "give exactly one of cert + key, acme = true or "
                                                       "internal = true (got acme and internal)"),
    ('[sites.a.tls]\n', "give exactly one of"),
    ('[server]\ntrusted_proxies = ["10.0.0.1/8"]\n', "host bits are set"),
    ('[server]\ntrusted_proxies = ["proxy.local"]\n', "'proxy.local' is not an address or a CIDR network"),
    ('[server]\ncompression = ["zstd"]\n', "server.compression.0: 'zstd' is not allowed"),
    ('[server]\nreal_ip_header = "X Forwarded"\n', "is not a valid HTTP header name"),
    ('[sites.a.headers]\nX-A = "a\\r\\nSet-Cookie: x"\n', "contains a line break"),
    ('[sites.a.headers]\nContent-Length = "5"\n', "cannot be configured"),
    ('[acme]\nchallenge = "dns-01"\n', "acme.challenge: 'dns-01' is not allowed"),
])
def test_edge_mistakes_are_one_line_naming_the_key(tmp_path, toml, says):
    err = load_error(tmp_path, SITE + toml)
    assert says in err
    assert len(err.splitlines()) == 1


def test_http2_on_tls_by_default_and_h2c_only_when_asked(tmp_path):
    cfg = load(tmp_path, SITE)
    assert cfg.server.http2 is True and cfg.server.http2_cleartext is False
    cfg = load(tmp_path, SITE + "[server]\nhttp2 = false\nhttp2_cleartext = true\n")
    assert cfg.server.http2 is False and cfg.server.http2_cleartext is True
    assert "server.http2" in load_error(tmp_path, SITE + '[server]\nhttp2 = "maybe"\n')


def test_a_missing_acme_ca_bundle_is_found_by_check_not_at_the_first_order(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "10.toml").write_text(f'[acme]\nca_bundle = "{tmp_path / "pebble.pem"}"\n'
                                      f'[sites.a]\nroot = "{tmp_path / "www"}"\n')
    with pytest.raises(ConfigError) as err:
        load_dir(tmp_path)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / '10.toml'}: acme.ca_bundle: {tmp_path / 'pebble.pem'}"
                                                   " is not a file"), lines
    (tmp_path / "pebble.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_dir(tmp_path).acme.ca_bundle == str(tmp_path / "pebble.pem")
