"""The response rules' keys (issue 16 items 5-7): ``error_pages``,
``intercept_errors``, the alias table form with ``internal``, and both forms
of ``headers``: what loads, and the one line ``gateway check`` says for each
mistake, naming the file and the key."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_dir

SITE = '[sites.a]\nroot = "/srv"\n'


def load(tmp_path, text: str):
    (tmp_path / "00.toml").write_text(text)
    return load_dir(tmp_path, check_paths=False)


def load_error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    return str(exc.value)


def test_the_rules_load(tmp_path):
    cfg = load(tmp_path, SITE + """intercept_errors = true
[sites.a.error_pages]
404 = "/errors/404.html"
"503" = "/maintenance.php"
[sites.a.aliases]
"/media/" = "/srv/media"
[sites.a.aliases."/protected/"]
path = "/srv/files"
internal = true
[[sites.a.headers]]
add = { X-Frame-Options = "SAMEORIGIN" }
[[sites.a.headers]]
paths = ["/wp-json/"]
set = { Access-Control-Allow-Origin = "*" }
remove = ["X-Powered-By"]
always = true
preflight = true
""")
    site = cfg.sites["a"]
    assert site.intercept_errors
    assert site.error_pages == {"404": "/errors/404.html", "503": "/maintenance.php"}
    assert (site.aliases["/media/"].path, site.aliases["/media/"].internal) == ("/srv/media", False)
    assert (site.aliases["/protected/"].path, site.aliases["/protected/"].internal) == ("/srv/files", True)
    first, cors = site.headers
    assert (first.paths, first.add, first.always) == (["/"], {"X-Frame-Options": "SAMEORIGIN"}, False)
    assert (cors.paths, cors.set, cors.remove, cors.always, cors.preflight) == (
        ["/wp-json/"], {"Access-Control-Allow-Origin": "*"}, ["X-Powered-By"], True, True)


def test_the_table_form_of_headers_is_one_rule_that_sets_and_removes(tmp_path):
    cfg = load(tmp_path, SITE + '[sites.a.headers]\nX-A = "1"\nX-Powered-By = ""\n')
    (rule,) = cfg.sites["a"].headers
    assert (rule.paths, rule.set, rule.remove, rule.always) == (["/"], {"X-A": "1"}, ["X-Powered-By"], True)


def test_a_relative_alias_path_is_resolved_in_both_forms(tmp_path):
    cfg = load(tmp_path, SITE + '[sites.a.aliases]\n"/m/" = "media"\n"/p/" = { path = "files", internal = true }\n')
    aliases = cfg.sites["a"].aliases
    assert aliases["/m/"].path == str(tmp_path.parent / "media")
    assert aliases["/p/"].path == str(tmp_path.parent / "files")


def test_a_missing_internal_alias_directory_is_named_by_its_path_key(tmp_path):
    (tmp_path / "00.toml").write_text(f'[sites.a]\nroot = "{tmp_path}"\n'
                                      '[sites.a.aliases."/p/"]\npath = "/srv/nothing-here"\ninternal = true\n')
    with pytest.raises(ConfigError) as exc:
        load_dir(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / '00.toml'}: sites.a.aliases./p/.path: /srv/nothing-here does "
                                     "not exist")


@pytest.mark.parametrize(("toml", "key", "says"), [
    ('[sites.a.error_pages]\n"40x" = "/e.html"\n', "sites.a.error_pages", "'40x' is not an error status"),
    ('[[sites.a.headers]]\npaths = ["/wp-json//"]\nadd = { X-A = "1" }\n', "sites.a.headers.0.paths.0",
     "not a normalised path"),
    ('[sites.a.error_pages]\n302 = "/e.html"\n', "sites.a.error_pages", "'302' is not an error status"),
    ('[sites.a.error_pages]\n404 = "errors/404.html"\n', "sites.a.error_pages", "is not a URI of the site"),
    ('intercept_errors = "maybe"\n', "sites.a.intercept_errors", "true or false"),
    ('[sites.a.aliases."/p/"]\ninternal = true\n', "sites.a.aliases./p/.path", "is required"),
    ('[sites.a.aliases."/p/"]\npath = "/x"\nintrnal = true\n', "sites.a.aliases./p/.intrnal", "unknown key"),
    ('[[sites.a.headers]]\nadd = { "X A" = "1" }\n', "sites.a.headers.0.add", "'X A' is not a valid HTTP header"),
    ('[[sites.a.headers]]\nset = { X-A = "1\\n2" }\n', "sites.a.headers.0.set", "contains a line break"),
    ('[[sites.a.headers]]\nset = { X-A = "1 " }\n', "sites.a.headers.0.set", "not a valid header value"),
    ('[[sites.a.headers]]\nadd = { X-A = "\\u0001" }\n', "sites.a.headers.0.add", "not a valid header value"),
    ('[[sites.a.headers]]\nadd = { X-A = "caf\\u20ac" }\n', "sites.a.headers.0.add", "Latin-1"),
    ('[[sites.a.headers]]\nremove = ["Content-Length"]\n', "sites.a.headers.0.remove.0", "cannot be configured"),
    ('[[sites.a.headers]]\npaths = ["wp-json"]\n', "sites.a.headers.0.paths.0", "must start with \"/\""),
    ('[[sites.a.headers]]\nadd = { X-A = "1" }\nalways = "maybe"\n', "sites.a.headers.0.always", "true or false"),
    ('[[sites.a.headers]]\nadd = { X-A = "1" }\npath = ["/"]\n', "sites.a.headers.0.path", "unknown key"),
    ('[sites.a.headers]\npaths = ["/"]\n', "sites.a.headers", "double brackets"),
])
def test_mistakes_are_one_line_naming_file_and_key(tmp_path, toml, key, says):
    err = load_error(tmp_path, SITE + toml)
    assert err.startswith(f"{tmp_path / '00.toml'}: {key}: "), err
    assert says in err
    assert len(err.splitlines()) == 1


def test_header_values_h11_would_send_load(tmp_path):
    """Inner spaces and tabs, Latin-1's upper half and an empty value are valid field values."""
    config = load(tmp_path, SITE + '[[sites.a.headers]]\nset = { X-A = "a b\\tc", X-B = "caf\\u00e9", X-C = "" }\n')
    assert config.sites["a"].headers[0].set == {"X-A": "a b\tc", "X-B": "caf\u00e9", "X-C": ""}
