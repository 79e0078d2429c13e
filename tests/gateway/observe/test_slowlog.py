"""php-fpm's slowlog: parsed from a real one (php-fpm 8.2, request_slowlog_timeout
1s, mysqli_query on SELECT SLEEP(0.5) in a loop: ``slowlog_sample.log``), read
piece by piece as the sampler reads a growing file."""

from __future__ import annotations

from pathlib import Path

from gateway.observe.sampler import SlowlogTail
from gateway.observe.slowlog import SlowEntry, SlowFrames, parse, relative

SAMPLE = (Path(__file__).parent / "slowlog_sample.log").read_text()
DB_PHP = "/work/wt-diag/tests/integration/docroot/waits/db.php"
WORDPRESS = """
[27-Nov-2026 03:40:01]  [pool www] pid 4101
script_filename = /srv/www/index.php
[0x00007f3e4a613f50] mysqli_query() /srv/www/wp-includes/class-wpdb.php:2056
[0x00007f3e4a613ec0] _do_query() /srv/www/wp-includes/class-wpdb.php:1980
[0x00007f3e4a613e00] query() /srv/www/wp-includes/class-wpdb.php:2750
[0x00007f3e4a613d40] get_results() /srv/www/wp-includes/class-wp-query.php:3333
"""


def test_real_entries():
    entries, rest = parse(SAMPLE)
    assert rest == ""
    assert [e.pid for e in entries] == [14160, 14161, 14161]
    assert entries[0].script.endswith("waits/db.php")
    assert entries[0].frames[0][0] == "mysqli_query" and entries[0].frames[0][2] == 5
    assert entries[0].frame == "mysqli_query from db.php"


def test_the_top_frame_and_the_file_that_called_it():
    (entry,), _ = parse(WORDPRESS)
    assert entry.pool == "www" and len(entry.frames) == 4
    assert entry.frame == "mysqli_query from wp-includes/class-wpdb.php"
    assert relative("/usr/share/php/x.php", "/srv/www/index.php") == "/usr/share/php/x.php"


def test_an_entry_cut_short_waits_for_the_rest():
    cut = SAMPLE.index("mysqli_query", SAMPLE.index("pid 14161")) + 5
    entries, rest = parse(SAMPLE[:cut])
    assert [e.pid for e in entries] == [14160] and rest.startswith("[27-Nov-2026")
    more, rest = parse(rest + SAMPLE[cut:])
    assert [e.pid for e in more] == [14161, 14161] and rest == ""


def test_the_window_keeps_a_minute():
    frames = SlowFrames(window=60.0)
    one = SlowEntry("php", 1, "/srv/index.php", (("curl_exec", "/srv/api.php", 3),))
    two = SlowEntry("php", 2, "/srv/index.php", (("mysqli_query", "/srv/db.php", 9),))
    frames.add(0.0, [one, two, two])
    assert frames.by_pid() == {1: "curl_exec from api.php", 2: "mysqli_query from db.php"}
    assert frames.top() == [("mysqli_query from db.php", 2), ("curl_exec from api.php", 1)]
    frames.add(61.0, [])
    assert frames.top() == []


def test_the_tail_reads_what_was_added_since(tmp_path):
    log = tmp_path / "slow.log"
    log.write_text(SAMPLE)  # before the first read: not this run's
    tail = SlowlogTail(str(log))
    tail.read(0.0)
    assert tail.frames.top() == []
    with open(log, "a") as f:
        f.write(WORDPRESS)
    tail.read(1.0)
    assert tail.frames.by_pid() == {4101: "mysqli_query from wp-includes/class-wpdb.php"}
    log.write_text(SAMPLE[:SAMPLE.index("\n\n[", 5) + 1])  # rotated, one entry: read from the start
    tail.read(2.0)
    assert 14160 in tail.frames.by_pid()


def test_our_slowlog_is_emptied_once_read_past_its_limit(tmp_path, monkeypatch):
    import gateway.observe.sampler as sampler

    monkeypatch.setattr(sampler, "SLOWLOG_MAX", 100)
    log = tmp_path / "slow.log"
    log.write_text("")
    tail = SlowlogTail(str(log))
    tail.read(0.0)
    log.write_text(SAMPLE)
    tail.read(1.0)
    assert log.stat().st_size == 0 and tail.offset == 0
    assert 14160 in tail.frames.by_pid()
