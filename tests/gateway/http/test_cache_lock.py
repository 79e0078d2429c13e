"""The shared stampede lock's steps on a key's state (``http.cache_lock``), on
a rate-limit ``SlotTable`` in a bytearray, with explicit times and a stated
set of live processes."""

from __future__ import annotations

import os

from gateway.http.cache_lock import (
    HELD,
    STORED,
    UNCACHEABLE,
    Claim,
    cacheable_again,
    claim,
    lock_key,
    make_token,
    peek,
    release,
)
from gateway.http.ratelimit import SlotTable, init_table, table_size

KEY = lock_key("site", b"http://example.com/")
LIVE = {100, 200}


def alive(pid: int) -> bool:
    return pid in LIVE


def table() -> SlotTable:
    buf = bytearray(table_size(4))
    init_table(buf, 4, os.urandom(16))
    return SlotTable(buf)


def test_the_first_request_leads_the_others_wait() -> None:
    t = table()
    a, b = make_token(100, 1), make_token(200, 1)
    got, lock = t.update(KEY, 10.0, claim(a, 5.0, alive))
    assert got is Claim.LEAD and lock is not None and (lock.token, lock.owner, lock.expires) == (a, 100, 15.0)
    got, lock = t.update(KEY, 11.0, claim(b, 5.0, alive))
    assert got is Claim.WAIT and lock is not None and lock.owner == 100
    held = t.update(KEY, 11.0, peek)
    assert (held.token, held.phase, held.expires) == (a, HELD, 15.0)  # the holder's deadline kept


def test_a_release_tells_the_waiters_and_frees_the_lock() -> None:
    t = table()
    a, b = make_token(100, 1), make_token(200, 7)
    t.update(KEY, 10.0, claim(a, 5.0, alive))
    assert t.update(KEY, 12.0, release(a, STORED, 2.0)) is True
    done = t.update(KEY, 12.5, peek)
    assert (done.phase, done.expires) == (STORED, 14.0)
    assert t.update(KEY, 14.0, peek) is None  # (kept 2 s for the pollers)
    # a stored page's lock is free for the next miss (its entry expired, or was purged)
    assert t.update(KEY, 13.0, claim(b, 5.0, alive))[0] is Claim.LEAD


def test_an_uncacheable_answer_sends_everyone_to_php_until_it_expires() -> None:
    t = table()
    a, b = make_token(100, 1), make_token(200, 1)
    t.update(KEY, 10.0, claim(a, 5.0, alive))
    t.update(KEY, 11.0, release(a, UNCACHEABLE, 10.0))
    assert t.update(KEY, 12.0, claim(b, 5.0, alive))[0] is Claim.UNCACHEABLE
    assert t.update(KEY, 21.0, claim(b, 5.0, alive))[0] is Claim.LEAD
    # a page stored without the lock is cacheable again at once
    t.update(KEY, 30.0, release(b, UNCACHEABLE, 10.0))
    t.update(KEY, 31.0, cacheable_again)
    assert t.update(KEY, 31.0, claim(a, 5.0, alive))[0] is Claim.LEAD


def test_a_dead_holders_lock_is_free_at_once_a_live_ones_when_it_expires() -> None:
    t = table()
    dead, live, other = make_token(300, 1), make_token(100, 2), make_token(200, 3)
    t.update(KEY, 10.0, claim(dead, 5.0, alive))
    assert t.update(KEY, 10.1, claim(other, 5.0, alive))[0] is Claim.LEAD
    t2 = table()
    t2.update(KEY, 10.0, claim(live, 5.0, alive))
    assert t2.update(KEY, 14.9, claim(other, 5.0, alive))[0] is Claim.WAIT
    assert t2.update(KEY, 15.0, claim(other, 5.0, alive))[0] is Claim.LEAD


def test_a_holder_whose_client_left_frees_the_lock_and_a_late_release_leaves_the_new_holders() -> None:
    t = table()
    a, b = make_token(100, 1), make_token(200, 1)
    t.update(KEY, 10.0, claim(a, 5.0, alive))
    t.update(KEY, 11.0, release(a, None, 2.0))
    assert t.update(KEY, 11.0, peek) is None
    assert t.update(KEY, 11.0, claim(b, 5.0, alive))[0] is Claim.LEAD
    # a's lock expired meanwhile and b took it: a's release does not free b's
    assert t.update(KEY, 12.0, release(a, STORED, 2.0)) is False
    assert t.update(KEY, 12.0, peek).token == b


def test_tokens_keep_the_process_id_exact() -> None:
    token = make_token(4_194_304, (1 << 24) + 5)  # Linux's largest pid; the serial wraps
    t = table()
    t.update(KEY, 0.0, claim(token, 5.0, lambda pid: True))
    lock = t.update(KEY, 1.0, peek)
    assert (lock.owner, lock.token) == (4_194_304, token)
