"""The small-file cache (nginx's open_file_cache, with the bytes): what it
keeps, when it looks again, what it forgets. A hand-driven clock stands in
for time: no sleeps."""

from __future__ import annotations

import os

from gateway.app.open_files import FileCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_kept_file_costs_no_system_call_within_the_window(tmp_path, monkeypatch):
    f = tmp_path / "a.txt"
    f.write_bytes(b"one")
    clock = Clock()
    cache = FileCache(clock=clock)
    first = cache.get(str(f))
    assert first is not None and first.body == b"one"

    def no_stat(*args, **kwargs):
        raise AssertionError("stat within the validity window")

    monkeypatch.setattr(os, "stat", no_stat)
    clock.now += 0.9
    assert cache.get(str(f)) is first


def test_a_change_a_replacement_and_a_deletion_are_seen_after_the_window(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"one")
    clock = Clock()
    cache = FileCache(clock=clock)
    assert cache.get(str(f)).body == b"one"
    f.write_bytes(b"two")  # same size: mtime/ctime tell
    os.utime(f, ns=(1, 1))
    clock.now += 0.5
    assert cache.get(str(f)).body == b"one"  # within the window: the old bytes, as nginx's held fd
    clock.now += 0.6
    changed = cache.get(str(f))
    assert changed.body == b"two" and changed.mtime == 0
    other = tmp_path / "b.txt"
    other.write_bytes(b"replacement")
    os.replace(other, f)
    clock.now += 1.1
    assert cache.get(str(f)).body == b"replacement"
    f.unlink()
    assert cache.get(str(f)).body == b"replacement"
    clock.now += 1.1
    assert cache.get(str(f)) is None
    assert len(cache) == 0 and cache.bytes == 0


def test_errors_are_not_kept(tmp_path):
    f = tmp_path / "late.txt"
    cache = FileCache(clock=Clock())
    assert cache.get(str(f)) is None
    f.write_bytes(b"here now")
    assert cache.get(str(f)).body == b"here now"  # no waiting for a window


def test_big_files_and_fifos_are_remembered_without_a_body(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 101)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # with no writer: a blocking open would hang the test
    cache = FileCache(max_file=100, clock=Clock())
    entry = cache.get(str(big))
    assert entry is not None and entry.body is None
    assert cache.get(str(fifo)).body is None
    assert cache.bytes == 0 and len(cache) == 2


def test_memory_is_bounded_least_recently_used_first(tmp_path):
    clock = Clock()
    cache = FileCache(max_file=200, max_bytes=250, max_files=3, clock=clock)
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.txt"
        p.write_bytes(bytes([65 + i]) * 100)
        paths.append(str(p))
    cache.get(paths[0])
    cache.get(paths[1])
    cache.get(paths[0])  # used again: 1 is the oldest now
    cache.get(paths[2])  # 300 bytes > 250: 1 goes
    assert cache.bytes == 200 and len(cache) == 2
    assert cache.get(paths[0]).body == b"A" * 100
    small = tmp_path / "small"
    small.write_bytes(b"s")
    cache.get(str(small))
    big = tmp_path / "big"
    big.write_bytes(b"b" * 300)
    cache.get(str(big))  # no body, but an entry: 3 entries at most
    assert len(cache) == 3 and cache.bytes == 101


def test_compressed_variants_count_and_go_with_their_file(tmp_path):
    clock = Clock()
    cache = FileCache(max_bytes=300, clock=clock)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a" * 100)
    b.write_bytes(b"b" * 100)
    first = cache.get(str(a))
    second = cache.get(str(b))
    cache.add_variant(second, "gzip", b"z" * 50)
    assert cache.bytes == 250
    cache.add_variant(second, "br", b"y" * 60)  # 310 > 300: the other file goes, not this one
    assert cache.bytes == 210 and cache.get(str(b)) is second and len(cache) == 1
    b.write_bytes(b"B" * 100)
    clock.now += 1.1
    assert cache.get(str(b)).variants == {} and cache.bytes == 100  # changed: its variants went with it
    assert first.variants == {}
