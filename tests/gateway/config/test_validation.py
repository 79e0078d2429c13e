"""What ``serve`` would trip on is caught at load time: one line per problem,
naming the file, the key and the line; no pydantic wording."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_dir, parse_duration, validate
from gateway.config.messages import find_line

SITE = '[sites.a]\nroot = "/srv"\n'


def load_error(tmp_path, text: str, name: str = "00.toml") -> str:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_dir(tmp_path)
    return str(exc.value)


def test_compound_durations_as_nginx_writes_them():
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("1h 30m") == 5400.0
    assert parse_duration("2s500ms") == 2.5
    for bad in ("1m30", "m30s", "1x", "1m 30 s s", ""):
        with pytest.raises(ValueError, match="1m30s"):
            parse_duration(bad)


def test_a_compound_duration_in_a_file(tmp_path):
    (tmp_path / "00.toml").write_text(SITE + '[timeouts]\nkeepalive = "1m30s"\n')
    assert load_dir(tmp_path).timeouts.keepalive == 90.0


@pytest.mark.parametrize(("toml", "line"), [
    ('[limits]\nmax_header_count = "many"\n', "limits.max_header_count: 'many' is not a whole number (line 4)"),
    ('[limits]\nmax_header_count = 0\n', "limits.max_header_count: 0 is too small: it must be 1 or more (line 4)"),
    ('[backends.php]\npool_size = 5000\n', "backends.php.pool_size: 5000 is too large: it must be 4096 or less"),
    ('[server]\nserver_timing = "maybe"\n', "server.server_timing: 'maybe' is not true or false"),
    ('[server]\naccess_log_format = "xml"\n', "server.access_log_format: 'xml' is not allowed: write 'combined' or "
                                              "'json' (line 4)"),
    ('[server]\nlisten = "127.0.0.1:80"\n', "server.listen: '127.0.0.1:80' is not a list"),
    ('[server]\nprocesses = 0\n', 'server.processes: 0 is neither a whole number from 1 to 256 nor "auto"'),
    ('[backends]\nphp = 3\n', "backends.php: 3 is not a table"),
])
def test_messages_are_sentences_not_pydantic_internals(tmp_path, toml, line):
    err = load_error(tmp_path, SITE + toml)
    assert err == f"{tmp_path / '00.toml'}: {line}" or err.startswith(f"{tmp_path / '00.toml'}: {line}")
    for internal in ("Input should", "constrained", "literal[", "type=", "pydantic"):
        assert internal not in err
    assert len(err.splitlines()) == 1


def test_a_missing_key_points_at_its_table(tmp_path):
    err = load_error(tmp_path, '# sites\n\n[sites.a]\nphp = ""\n')
    assert err == f"{tmp_path / '00.toml'}: sites.a.root: is required: set it (line 3)"


@pytest.mark.parametrize("try_files", [
    ["$uri", "$uri/", "/index.php?$args"],
    ["$uri", "$uri/", "/index.php?q=1&$query_string"],
    ["$uri", "/app.php$uri"],
    ["$uri", "=404"],
    ["$uri/", "=503"],
    ["/index.php"],
    # issue 16: any number of file checks with variables, then the fallback
    ["$uri", "$uri.html", "/index.php"],
    ["$uri", "/index.php", "$uri/"],
    ["$uri", "/index.php$is_args$args"],
    ["$uri", "/index.php?$uri"],
    ["/cache$uri/index.html", "$uri", "$uri/", "/index.php?$args"],
    ["/wp-content/cache/supercache/$host$uri/index.html", "$uri", "$uri/", "/index.php?$args"],
    ["/maintenance/", "${uri}.json", "=404"],
])
def test_try_files_the_router_supports(try_files):
    cfg = validate({"sites": {"a": {"root": "/srv", "try_files": try_files}}})
    assert cfg.sites["a"].effective_try_files() == try_files


@pytest.mark.parametrize(("try_files", "says"), [
    ('["$uri", "index.php?$args"]', "the last entry, 'index.php?$args', is not supported"),
    ('["$uri", "=4o4"]', "the last entry, '=4o4', is not supported"),
    ('["$uri", "=200"]', "the last entry, '=200', is not supported"),
    ('["=404", "$uri"]', "entry 1 of 2, '=404', is not supported"),
    ('["$uri?x=1", "=404"]', "entry 1 of 2, '$uri?x=1', is not supported"),
    ('["cache/$uri", "=404"]', "entry 1 of 2, 'cache/$uri', is not supported"),
    ('["$host$uri", "=404"]', "entry 1 of 2, '$host$uri', is not supported"),
    ('["/c/$http_cookie$uri", "=404"]', "entry 1 of 2, '/c/$http_cookie$uri': $http_cookie is not a variable here"),
    ('["$uri", "/index.php?$1"]', "the last entry, '/index.php?$1', is not supported"),
    ('["$uri", "/index.php?a=$"]', "that starts no variable"),
    ('["$uri", "/a b"]', "the last entry, '/a b': it contains whitespace"),
    ('[]', "is empty"),
])
def test_try_files_the_router_would_mishandle(tmp_path, try_files, says):
    err = load_error(tmp_path, f'[sites.a]\nroot = "/srv"\ntry_files = {try_files}\n')
    assert err.startswith(f"{tmp_path / '00.toml'}: sites.a.try_files: ")
    assert says in err and err.endswith("(line 3)")
    assert 'the last is "=CODE" (400-599) or the URI to go to' in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(("server", "admin", "key", "says"), [
    ('["127.0.0.1:8080"]', '"127.0.0.1:8080"', "admin.listen", "127.0.0.1:8080 overlaps server.listen.0"),
    ('[":9180"]', '"127.0.0.1:9180"', "admin.listen", "127.0.0.1:9180 overlaps server.listen.0 (:9180)"),
    ('["0.0.0.0:80", "10.0.0.1:80"]', '"off"', "server.listen.1", "10.0.0.1:80 overlaps server.listen.0"),
    ('["unix:/run/gw.sock"]', '"unix:/run/gw.sock"', "admin.listen", "unix:/run/gw.sock overlaps"),
    ('["[::1]:80", "[::]:80"]', '"off"', "server.listen.1", "[::]:80 overlaps server.listen.0 ([::1]:80)"),
])
def test_two_listeners_on_one_address(tmp_path, server, admin, key, says):
    (tmp_path / "00.toml").write_text(SITE + f"[server]\nlisten = {server}\n")
    err = load_error(tmp_path, f"[admin]\nlisten = {admin}\n", name="10.toml")
    f = tmp_path / ("10.toml" if key == "admin.listen" else "00.toml")
    assert err.startswith(f"{f}: {key}: {says}")
    assert "each listener needs its own address or port" in err and len(err.splitlines()) == 1
    if key == "admin.listen":
        assert f"in {tmp_path / '00.toml'}" in err and err.endswith("(line 2)")


def test_listeners_that_do_not_overlap():
    cfg = validate({"server": {"listen": ["127.0.0.1:80", "[::1]:80", "0.0.0.0:81", "[::]:81", "127.0.0.1:0"]},
                    "admin": {"listen": "127.0.0.1:0"}, "sites": {"a": {"root": "/srv"}}})
    assert len(cfg.server.listen) == 5


def test_a_site_root_that_does_not_exist(tmp_path):
    err = load_error(tmp_path, '[sites.a]\nphp = ""\nroot = "/srv/no-such-site"\n')
    assert err == (f"{tmp_path / '00.toml'}: sites.a.root: /srv/no-such-site does not exist (a typo? serve would "
                   "answer 404 to everything) (line 3)")


def test_a_site_root_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    err = load_error(tmp_path, f'[sites.a]\nroot = "{tmp_path / "file"}"\n')
    assert err == f"{tmp_path / '00.toml'}: sites.a.root: {tmp_path / 'file'} is not a directory (line 2)"


def test_an_alias_that_does_not_exist(tmp_path):
    err = load_error(tmp_path, SITE + '[sites.a.aliases]\n"/wp-content/" = "/srv/nothing/"\n')
    assert err == (f"{tmp_path / '00.toml'}: sites.a.aliases./wp-content/: /srv/nothing/ does not exist (a typo? "
                   "serve would answer 404 to everything) (line 4)")


def test_every_problem_gets_its_own_line(tmp_path):
    err = load_error(tmp_path, '[sites.a]\nroot = "/srv/x"\n[sites.b]\nroot = "/srv/y"\n')
    assert [line.split(": ")[1] for line in err.splitlines()] == ["sites.a.root", "sites.b.root"]


def test_find_line():
    text = ('# c\n[server]\nlisten = [\n  "a",\n]\n[sites."my site"]\nroot = "/x"\n'
            'aliases = { "/p/" = "/y" }\n[backends.php]\nphp_fpm.user = "root"\n')
    assert find_line(text, ("server", "listen", "0")) == 3
    assert find_line(text, ("sites", "my site", "root")) == 7
    assert find_line(text, ("sites", "my site", "aliases", "/p/")) == 8
    assert find_line(text, ("sites", "my site", "index")) == 6
    assert find_line(text, ("backends", "php", "php_fpm", "user")) == 10
    assert find_line(text, ("limits", "max_connections")) is None


def test_references_between_tables_name_their_key_and_line(tmp_path):
    err = load_error(tmp_path, '[sites.a]\nroot = "/srv"\nphp = "fpm"\ndefault = true\n'
                               '[sites.b]\nroot = "/srv"\ndefault = true\n')
    f = tmp_path / "00.toml"
    assert err.splitlines() == [
        f"{f}: sites.a.php: names backend 'fpm', which is not defined (defined: none) (line 3)",
        f"{f}: sites.b.default: sites.a is the default site already: only one site can be (line 7)",
    ]


def test_no_site_at_all(tmp_path):
    err = load_error(tmp_path, '[limits]\nmax_connections = 10\n')
    assert err == f"{tmp_path / '00.toml'}: sites: no [sites.NAME] table: there is nothing to serve"
