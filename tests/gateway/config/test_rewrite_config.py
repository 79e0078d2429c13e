"""``[[sites.X.return]]``, ``[[sites.X.rewrite]]`` and a site without root,
as ``gateway check`` sees them: each malformed rule one line with file, key
and line."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_dir, validate
from gateway.config.rewrite import regex_problem


def load_error(tmp_path, text: str) -> str:
    (tmp_path / "00.toml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_dir(tmp_path)
    return str(exc.value)


def site(tmp_path) -> str:
    return f'[sites.a]\nroot = "{tmp_path}"\n'


def test_valid_rules_load(tmp_path):
    (tmp_path / "00.toml").write_text(site(tmp_path) + """
[[sites.a.return]]
paths = ["/old-page"]
code = 301
to = "/new-page"
[[sites.a.return]]
regex = '^/blog/(\\d+)$'
methods = ["GET"]
code = 308
to = "$scheme://$host/posts/$1$is_args$args"
[[sites.a.return]]
paths = ["/health"]
code = 200
to = "ok"
[[sites.a.rewrite]]
paths = ["/shop/"]
to = "/store/"
[[sites.a.rewrite]]
regex = '^/p/([a-z-]+)$'
to = "/index.php?product=$1"
""")
    cfg = load_dir(tmp_path)
    s = cfg.sites["a"]
    assert [r.code for r in s.return_] == [301, 308, 200] and len(s.rewrite) == 2
    # the worker processes get the configuration back through model_dump: "return" survives it
    assert validate(cfg.model_dump(mode="json")).sites["a"].return_ == s.return_
    assert "return" in cfg.model_dump(mode="json")["sites"]["a"]


@pytest.mark.parametrize(("rule", "key", "says"), [
    ('[[sites.a.return]]\ncode = 301\nto = "/x"\n', "sites.a.return.0",
     "give paths (URI prefixes like [\"/old/\"]) or regex"),
    ('[[sites.a.return]]\npaths = ["/"]\nregex = "x"\ncode = 403\n', "sites.a.return.0",
     "give either paths (URI prefixes) or regex, not both"),
    ('[[sites.a.return]]\npaths = ["old"]\ncode = 403\n', "sites.a.return.0", "paths: 'old' must start with \"/\""),
    ('[[sites.a.return]]\npaths = ["/shop?id=1"]\ncode = 410\n', "sites.a.return.0", "has a query"),
    ('[[sites.a.rewrite]]\npaths = ["/%7Ebob/"]\nto = "/users/bob/"\n', "sites.a.rewrite.0", "%-escape"),
    ('[[sites.a.return]]\npaths = ["/"]\ncode = 301\n', "sites.a.return.0", "code 301 is a redirect: give to ="),
    ('[[sites.a.return]]\npaths = ["/"]\ncode = 444\n', "sites.a.return.0", "444 (close the connection)"),
    ('[[sites.a.return]]\npaths = ["/"]\ncode = 99\n', "sites.a.return.0", "code 99: give a status from 200"),
    ('[[sites.a.return]]\npaths = ["/"]\ncode = 204\nto = "x"\n', "sites.a.return.0", "code 204 has no body"),
    ('[[sites.a.return]]\npaths = ["/"]\ncode = 302\nto = "/a b"\n', "sites.a.return.0",
     "to '/a b' contains whitespace"),
    ('[[sites.a.return]]\npaths = ["/"]\ncode = 302\nto = "/$1"\n', "sites.a.return.0",
     "to uses $1 but $1...$9 need a regex with groups"),
    ('[[sites.a.return]]\nregex = "^/(a)"\ncode = 302\nto = "/$2"\n', "sites.a.return.0",
     "to uses $2 but the regex has 1 group(s)"),
    ('[[sites.a.return]]\npaths = ["/"]\ncode = 302\nto = "$cookie_x"\n', "sites.a.return.0",
     "$cookie_x is not a variable here"),
    ('[[sites.a.return]]\npaths = ["/"]\nmethods = ["post"]\ncode = 405\n', "sites.a.return.0",
     "methods: 'post' is not a method name"),
    ('[[sites.a.return]]\npaths = ["/"]\ncode = "301"\nto = "/x"\nfoo = 1\n', "sites.a.return.0.foo",
     "unknown key"),
    ('[[sites.a.rewrite]]\nregex = "(a"\nto = "/x"\n', "sites.a.rewrite.0",
     "regex '(a' is not a valid RE2 regular expression: missing ): (a"),
    ('[[sites.a.rewrite]]\nregex = "^/(?!index)(.*)$"\nto = "/x"\n', "sites.a.rewrite.0",
     "RE2 has no lookaround"),
    ('[[sites.a.rewrite]]\npaths = ["/a/"]\nto = "b/"\n', "sites.a.rewrite.0", "to 'b/' must start with \"/\""),
    ('[[sites.a.rewrite]]\npaths = ["/a/"]\n', "sites.a.rewrite.0.to", "is required"),
])
def test_malformed_rules_name_file_key_and_line(tmp_path, rule, key, says):
    err = load_error(tmp_path, site(tmp_path) + rule)
    assert err.startswith(f"{tmp_path / '00.toml'}: {key}: "), err
    assert says in err and err.endswith("(line 3)"), err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(("pattern", "says"), [
    (r"^/(?!index\.php)(.*)$", "RE2 has no lookaround"),
    (r"^/(\w+)/\1$", "RE2 has no lookaround ((?=...), (?!...)) or backreferences"),
    ("a" * 1001, "at most 1000"),
    ("(a", "missing ): (a"),
    ("((((a{100}){100}){100}){100})", "invalid repetition size"),  # RE2's program would be too big
])
def test_regexes_re2_cannot_run_are_refused(pattern, says):
    problem = regex_problem(pattern)
    assert problem is not None and says in problem, problem


@pytest.mark.parametrize("pattern", [
    r"^/blog/(\d+)/([^/]+)/?$", r"\.(?:jpg|png|gif)$", r"^/([^.]*)$", r"(?i)^/WP-LOGIN\.PHP$", r"^/(a+)+$",
    r"^/(?P<slug>[a-z-]+)$",
])
def test_usual_regexes_pass(pattern):
    assert regex_problem(pattern) is None


def test_a_site_that_only_redirects_needs_no_root(tmp_path):
    (tmp_path / "00.toml").write_text('[sites.www]\nserver_names = ["www.example.com"]\n'
                                      '[[sites.www.return]]\npaths = ["/"]\ncode = 301\n'
                                      'to = "$scheme://example.com$request_uri"\n')
    assert load_dir(tmp_path).sites["www"].root == ""


def test_a_site_without_root_whose_rules_leave_requests_unanswered(tmp_path):
    err = load_error(tmp_path, '[sites.www]\nserver_names = ["www.example.com"]\n'
                               '[[sites.www.return]]\npaths = ["/old/"]\ncode = 301\nto = "/new/"\n')
    assert err == (f"{tmp_path / '00.toml'}: sites.www.root: is required: set it (only a site whose return rule "
                   'answers every request, paths = ["/"], can do without) (line 1)')
    err = load_error(tmp_path, '[sites.www]\nserver_names = ["www.example.com"]\n'
                               '[[sites.www.return]]\npaths = ["/"]\nmethods = ["GET"]\ncode = 301\nto = "/new/"\n')
    assert "sites.www.root: is required" in err
