"""``[sites.X.tls] acme = true``: what ``gateway check`` refuses, one line
naming the file and the key, and what it accepts."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_dir

BASE = '''[server]
listen = ["0.0.0.0:80", "0.0.0.0:443 tls"]
[sites.a]
root = "/srv"
server_names = ["example.com", "www.example.com"]
[sites.a.tls]
acme = true
'''


def load(tmp_path, text: str):
    (tmp_path / "00.toml").write_text(text)
    return load_dir(tmp_path, check_paths=False)


def test_a_site_with_real_names_and_both_listeners_passes(tmp_path):
    cfg = load(tmp_path, BASE + '[acme]\nemail = "ops@example.com"\n')
    assert cfg.sites["a"].tls is not None and cfg.sites["a"].tls.acme


def test_tls_alpn_01_needs_no_plain_listener(tmp_path):
    load(tmp_path, BASE.replace('"0.0.0.0:80", ', "") + '[acme]\nchallenge = "tls-alpn-01"\n')


@pytest.mark.parametrize(("change", "says"), [
    (('"example.com", "www.example.com"', '"_"'), 'sites.a.server_names.0: "_" is a catch-all'),
    (('"example.com", "www.example.com"', '"example.com", "*.example.com"'),
     "sites.a.server_names.1: '*.example.com' is a wildcard"),
    (('"example.com", "www.example.com"', '"192.0.2.1"'), "'192.0.2.1' is an IP address"),
    (('"example.com", "www.example.com"', '"localhost"'), "'localhost' is not a public DNS name"),
    (('"example.com", "www.example.com"', '"bad_name.example.com"'), "is not a public DNS name"),
    (('"example.com", "www.example.com"', ""), "sites.a.server_names: is empty: tls.acme = true needs"),
    (('"0.0.0.0:80", "0.0.0.0:443 tls"', '"0.0.0.0:80"'), "server.listen: sites.a has tls.acme = true but no "
                                                           "listener is flagged tls"),
    (('"0.0.0.0:80", "0.0.0.0:443 tls"', '"0.0.0.0:443 tls"'), "server.listen: sites.a has tls.acme = true with "
                                                               "the http-01 challenge"),
])
def test_what_acme_cannot_work_with_is_one_line_naming_file_and_key(tmp_path, change, says):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, BASE.replace(*change))
    err = str(exc.value)
    assert says in err, err
    assert len(err.splitlines()) == 1 and err.startswith(str(tmp_path / "00.toml"))


@pytest.mark.parametrize(("toml", "says"), [
    ('[acme]\ndirectory = "http://acme.example/dir"\n', "acme.directory: 'http://acme.example/dir' is not an https"),
    ('[acme]\nemail = "not an address"\n', "acme.email: 'not an address' is not an e-mail address"),
    ('[sites.b]\nroot = "/srv"\nserver_names = ["example.com"]\n[sites.b.tls]\nacme = true\n',
     "sites.b.server_names: starts with 'example.com' as sites.a.server_names does"),
])
def test_acme_table_mistakes(tmp_path, toml, says):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, BASE + toml)
    assert says in str(exc.value) and len(str(exc.value).splitlines()) == 1


def test_sites_without_acme_are_not_checked(tmp_path):
    load(tmp_path, '[sites.a]\nroot = "/srv"\nserver_names = ["_", "*.example.com"]\n')
