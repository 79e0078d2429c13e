"""App.handle with guard rules, on static files (no PHP needed), on the
autojump clock: the rate limit's delays are exact virtual times."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import trio

from gateway.app.guard import Guard
from gateway.app.guard_table import GuardTable
from gateway.app.site import App
from gateway.config import validate
from gateway.http.request import Request
from gateway.http.response import Response
from gateway.metrics import GuardStats


def make_app(tmp_path, **rules) -> App:
    (tmp_path / "wp-admin").mkdir(exist_ok=True)
    for name in ("index.html", "wp-login.html", "wp-admin/edit.html", "wp-admin/admin-ajax.html"):
        (tmp_path / name).write_text("ok")
    cfg = validate({"sites": {"s": {"root": str(tmp_path), "server_names": ["example.com"], **rules}}})
    app = App(cfg, {})
    # the table on trio's clock, so a delay is virtual time
    app.guard = Guard(cfg, GuardStats(), GuardTable.memory(sets=64, clock=trio.current_time))
    return app


def request(path: str, client: str = "192.0.2.7", method: bytes = b"GET",
            headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(method, path.encode(), b"1.1", [(b"host", b"example.com"), *(headers or [])], (client, 40000),
                   ("192.0.2.1", 80), None, "t", host=b"example.com")


def header(resp: Response, name: bytes) -> bytes | None:
    return dict(resp.headers).get(name)


async def statuses(app: App, reqs: list[Request]) -> list[int]:
    out = []
    for req in reqs:
        resp = await app.handle(req)
        resp.close()
        out.append(resp.status)
    return out


async def test_rate_limit_delays_the_burst_and_refuses_beyond_it(tmp_path, autojump_clock):
    app = make_app(tmp_path, rate_limit=[{"paths": ["/wp-login"], "rate": "2r/s", "burst": 2}])
    t0 = trio.current_time()
    done: list[tuple[int, float]] = []

    async def one() -> None:
        resp = await app.handle(request("/wp-login.html"))
        done.append((resp.status, trio.current_time() - t0, header(resp, b"retry-after")))
        resp.close()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    # 2r/s, burst 2: served at once, after 0.5 s and 1 s; the fourth refused (excess 3 over 2 at 2r/s: 0.5 s -> 1)
    assert sorted(done) == [(200, 0.0, None), (200, 0.5, None), (200, 1.0, None), (429, 0.0, b"1")]
    assert app.guard.stats.rate_limited == {"s": 1} and app.guard.stats.delayed == {"s": 2}
    # another client, another path: not limited
    assert await statuses(app, [request("/wp-login.html", "192.0.2.8"), request("/index.html")] * 2) == [200] * 4


async def test_rate_limit_by_method_and_longest_prefix(tmp_path, autojump_clock):
    app = make_app(tmp_path, rate_limit=[
        {"paths": ["/"], "rate": "100r/s", "burst": 100, "nodelay": True},
        {"paths": ["/wp-login"], "methods": ["POST"], "rate": "1r/m", "nodelay": True},
    ])
    # GETs of the login page fall to the site-wide rule; POSTs to the strict one
    assert await statuses(app, [request("/wp-login.html")] * 5) == [200] * 5
    posts = [request("/wp-login.html", method=b"POST")] * 3
    assert await statuses(app, posts) == [405, 429, 429]  # (a static file answers POST 405: it got through)
    resp = await app.handle(request("/wp-login.html", method=b"POST"))
    assert header(resp, b"retry-after") == b"60"
    await trio.sleep(60)
    assert await statuses(app, posts[:1]) == [405]


async def test_a_client_without_an_address_is_not_rate_limited(tmp_path, autojump_clock):
    app = make_app(tmp_path, rate_limit=[{"rate": "1r/m"}])
    assert await statuses(app, [request("/index.html", "unix:")] * 3) == [200] * 3


async def test_wp_admin_from_the_office_only_with_admin_ajax_open(tmp_path, autojump_clock):
    app = make_app(tmp_path, access=[
        {"paths": ["/wp-admin/"], "allow": ["192.0.2.0/24", "2001:db8:1::/48"], "deny": ["all"]},
        {"paths": ["/wp-admin/admin-ajax.html"], "allow": ["all"]},
    ])
    office, home, office6 = "192.0.2.50", "203.0.113.9", "2001:db8:1::77"
    assert await statuses(app, [request("/wp-admin/edit.html", office), request("/wp-admin/edit.html", office6),
                                request("/wp-admin/edit.html", "::ffff:192.0.2.51")]) == [200, 200, 200]
    assert await statuses(app, [request("/wp-admin/edit.html", home), request("/wp-admin/", home)]) == [403, 403]
    assert await statuses(app, [request("/wp-admin/admin-ajax.html", home), request("/index.html", home)]) == [
        200, 200]
    # the prefix is matched on the normalised path: dot segments and escapes do not slip past
    assert await statuses(app, [request("/x/../wp-admin/edit.html", home), request("/wp-%61dmin/edit.html", home),
                                request("//wp-admin/edit.html", home)]) == [403, 403, 403]
    assert app.guard.stats.access_denied == {"s": 5}


def basic(user: str, password: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Basic " + base64.b64encode(f"{user}:{password}".encode()))]


@pytest.fixture
def users(tmp_path) -> str:
    path = tmp_path / "users"
    lines = [subprocess.run(["htpasswd", "-nb" + flag, name, "pw-" + name], capture_output=True, check=True,
                            text=True).stdout.strip() for flag, name in (("B", "bea"), ("m", "max"), ("5", "sam"))]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def test_basic_auth(tmp_path, users, autojump_clock):
    app = make_app(tmp_path, basic_auth=[{"realm": "Staging", "user_file": users, "max_failures": 3},
                                         {"paths": ["/wp-admin/admin-ajax.html"], "realm": "off"}])
    resp = await app.handle(request("/index.html"))
    assert resp.status == 401 and header(resp, b"www-authenticate") == b'Basic realm="Staging"'
    for name in ("bea", "max", "sam"):
        assert await statuses(app, [request("/index.html", headers=basic(name, "pw-" + name))]) == [200]
    assert await statuses(app, [request("/wp-admin/admin-ajax.html")]) == [200]
    assert app.guard.stats.auth_failures == {}  # no credentials is a prompt, not a failure
    wrong = [request("/index.html", "198.51.100.1", headers=basic("bea", "guess")),
             request("/index.html", "198.51.100.1", headers=basic("nobody", "guess")),
             request("/index.html", "198.51.100.1", headers=basic("max", "guess"))]
    assert await statuses(app, wrong) == [401, 401, 401]
    # the fourth attempt from that address: 429 until the window (1 min) closes, even with the right password
    blocked = await app.handle(request("/index.html", "198.51.100.1", headers=basic("bea", "pw-bea")))
    assert blocked.status == 429 and 1 <= int(header(blocked, b"retry-after") or 0) <= 60
    assert await statuses(app, [request("/index.html", "198.51.100.2", headers=basic("bea", "pw-bea"))]) == [200]
    await trio.sleep(61)
    assert await statuses(app, [request("/index.html", "198.51.100.1", headers=basic("bea", "pw-bea"))]) == [200]
    assert app.guard.stats.auth_failures == {"s": 3} and app.guard.stats.auth_blocked == {"s": 1}


def drop_user(path: str, name: str) -> None:
    file = Path(path)
    file.write_text("".join(line for line in file.read_text().splitlines(True) if not line.startswith(name + ":")))


async def test_a_bcrypt_success_is_remembered_and_a_changed_file_is_read_again(tmp_path, users, autojump_clock):
    app = make_app(tmp_path, basic_auth=[{"user_file": users}])
    ok = request("/index.html", headers=basic("bea", "pw-bea"))
    assert await statuses(app, [ok, ok]) == [200, 200]
    assert len(app.guard.cache) == 1
    # the file changes (bea removed): the remembered success no longer counts
    drop_user(users, "bea")
    assert await statuses(app, [ok]) == [401]
    assert await statuses(app, [request("/index.html", headers=basic("max", "pw-max"))]) == [200]


@pytest.fixture
def slow_users(tmp_path) -> str:
    """A user whose bcrypt cost is 10: tens of milliseconds."""
    path = tmp_path / "slow-users"
    path.write_text(subprocess.run(["htpasswd", "-nbB", "-C", "10", "bea", "pw"], capture_output=True, check=True,
                                   text=True).stdout)
    return str(path)


async def test_bcrypt_runs_off_the_event_loop(tmp_path, slow_users):
    """While bcrypt checks a password (in a thread), the loop serves others."""
    app = make_app(tmp_path, basic_auth=[{"user_file": slow_users, "paths": ["/wp-admin/"]}])
    app.guard.table = GuardTable.memory(sets=64)
    ticks = 0
    checked = trio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not checked.is_set():
            ticks += 1
            await trio.sleep(0.001)

    async def login() -> None:
        assert await statuses(app, [request("/wp-admin/edit.html", headers=basic("bea", "wrong"))]) == [401]
        checked.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        nursery.start_soon(login)
    assert ticks >= 10  # on the event loop, bcrypt would have let it tick once


async def test_the_rules_see_the_rewritten_path(tmp_path, autojump_clock):
    """nginx's phase order: rewrite first, then limit_req and access on the new URI."""
    app = make_app(tmp_path, rewrite=[{"paths": ["/login"], "to": "/wp-login.html"},
                                      {"paths": ["/admin/"], "to": "/wp-admin/"}],
                   rate_limit=[{"paths": ["/wp-login"], "rate": "1r/m", "nodelay": True}],
                   access=[{"paths": ["/wp-admin/"], "allow": ["192.0.2.0/24"], "deny": ["all"]}])
    assert await statuses(app, [request("/login"), request("/login"), request("/wp-login.html")]) == [200, 429, 429]
    assert await statuses(app, [request("/admin/edit.html", "198.51.100.1"), request("/admin/edit.html")]) == [
        403, 200]


async def test_head_counts_as_get_for_a_rate_limit(tmp_path, autojump_clock):
    """PHP runs the same script for HEAD as for GET: a HEAD flood must not pass a GET limit."""
    app = make_app(tmp_path, rate_limit=[{"paths": ["/index.html"], "methods": ["GET"], "rate": "1r/m",
                                          "nodelay": True}])
    assert await statuses(app, [request("/index.html"), request("/index.html", method=b"HEAD"),
                                request("/index.html", method=b"HEAD")]) == [200, 429, 429]
    assert await statuses(app, [request("/index.html", method=b"POST")]) == [405]  # not limited: it got through


async def test_concurrent_guesses_meet_max_failures_too(tmp_path, slow_users):
    """Twenty wrong passwords at once from one address (HTTP/2 streams or many connections): only
    max_failures of them get a bcrypt check, the others 429, though none had failed when they came."""
    app = make_app(tmp_path, basic_auth=[{"user_file": slow_users, "max_failures": 3}])
    app.guard.table = GuardTable.memory(sets=64)
    got: list[int] = []

    async def guess(n: int) -> None:
        got.extend(await statuses(app, [request("/index.html", headers=basic("bea", f"guess{n}"))]))

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(guess, n)
    assert sorted(got) == [401] * 3 + [429] * 17
    assert app.guard.stats.auth_failures == {"s": 3}


async def test_a_right_password_does_not_count_as_a_failure(tmp_path, users, autojump_clock):
    app = make_app(tmp_path, basic_auth=[{"user_file": users, "max_failures": 2}])
    ok, wrong = basic("max", "pw-max"), basic("max", "nope")
    # the right one again and again (not cached: apr1 is checked each time, no bcrypt) never locks out
    assert await statuses(app, [request("/index.html", headers=ok)] * 5) == [200] * 5
    assert await statuses(app, [request("/index.html", headers=wrong), request("/index.html", headers=ok),
                                request("/index.html", headers=wrong), request("/index.html", headers=ok)]) == [
        401, 200, 401, 429]


async def test_refusals_through_error_pages_and_always_headers(tmp_path, users, autojump_clock):
    """429, 401 and 403 get the site's pages, keep Retry-After / WWW-Authenticate, and the always
    headers; a page is shown even where a rule covers its own URI (it is for whoever got the error)."""
    (tmp_path / "errors").mkdir()
    for status in (401, 403, 429):
        (tmp_path / "errors" / f"{status}.html").write_text(f"page {status}")
    app = make_app(tmp_path, rate_limit=[{"paths": ["/wp-login"], "rate": "1r/m", "nodelay": True}],
                   access=[{"paths": ["/wp-admin/", "/errors/403.html"], "allow": ["192.0.2.0/24"],
                            "deny": ["all"]}],
                   basic_auth=[{"paths": ["/wp-admin/edit.html", "/errors/401.html"], "realm": "Office",
                                "user_file": users}],
                   error_pages={"401": "/errors/401.html", "403": "/errors/403.html", "429": "/errors/429.html"},
                   headers=[{"add": {"X-Frame-Options": "DENY"}, "always": True},
                            {"add": {"X-Not-On-Errors": "1"}}])

    async def fetch(path: str, client: str = "192.0.2.7") -> tuple[int, bytes, dict[bytes, bytes]]:
        resp = await app.handle(request(path, client))
        body = resp.body
        if not isinstance(body, bytes):
            body.file.seek(body.offset)
            body = body.file.read(body.length)
        resp.close()
        return resp.status, body, dict(resp.headers)

    await fetch("/wp-login.html")
    status, body, headers = await fetch("/wp-login.html")
    assert (status, body, headers[b"retry-after"], headers[b"x-frame-options"]) == (429, b"page 429", b"60", b"DENY")
    status, body, headers = await fetch("/wp-admin/edit.html")
    assert (status, body, headers[b"www-authenticate"]) == (401, b"page 401", b'Basic realm="Office"')
    assert headers[b"x-frame-options"] == b"DENY" and b"x-not-on-errors" not in headers
    status, body, headers = await fetch("/wp-admin/edit.html", "203.0.113.9")
    assert (status, body, headers[b"x-frame-options"]) == (403, b"page 403", b"DENY")
    assert b"www-authenticate" not in headers
    # the pages themselves, asked for directly, are under their rules
    assert (await fetch("/errors/403.html", "203.0.113.9"))[:2] == (403, b"page 403")
    assert (await fetch("/errors/401.html"))[:2] == (401, b"page 401")


async def test_the_uri_an_index_or_the_fallback_leads_to_is_checked_too(tmp_path, autojump_clock):
    """nginx runs the access phase again after an internal redirect (a directory's index, try_files'
    last entry): a rule on the front controller covers every pretty URL it answers, one on an index
    file covers its directory; a rate limit counts a request once."""
    (tmp_path / "wp-admin").mkdir()
    (tmp_path / "wp-admin" / "index.html").write_text("dashboard")
    fallback = {"try_files": ["$uri", "$uri/", "/index.html"], "index": ["index.html"]}
    app = make_app(tmp_path, **fallback, access=[{"paths": ["/index.html", "/wp-admin/index.html"],
                                                  "allow": ["192.0.2.0/24"], "deny": ["all"]}])
    home = "203.0.113.9"
    assert await statuses(app, [request("/2024/hello/"), request("/wp-admin/")]) == [200, 200]
    assert await statuses(app, [request("/2024/hello/", home), request("/wp-admin/", home),
                                request("/index.html", home), request("/wp-login.html", home)]) == [403, 403, 403, 200]

    # the front controller's rate limit covers pretty URLs
    app = make_app(tmp_path, **fallback, rate_limit=[{"paths": ["/index.html"], "rate": "1r/m", "nodelay": True}])
    assert await statuses(app, [request("/a"), request("/b"), request("/wp-login.html")]) == [200, 429, 200]
    # a request the site-wide rule limited is not limited again by the front controller's
    app = make_app(tmp_path, **fallback, rate_limit=[
        {"paths": ["/"], "rate": "1r/m", "burst": 2, "nodelay": True},
        {"paths": ["/index.html"], "rate": "1r/m", "nodelay": True}])
    assert await statuses(app, [request("/a"), request("/b"), request("/c"), request("/d")]) == [200, 200, 200, 429]
