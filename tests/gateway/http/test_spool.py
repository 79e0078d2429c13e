"""``http.spool.Spool``: in memory it keeps the pieces written (a PHP page is
not copied into it and out again), past ``MAX_PIECES`` one growing buffer,
past its memory limit an unlinked temp file; every way of reading it gives
back what was written, in order."""

from __future__ import annotations

import pytest

from gateway.http.spool import MAX_PIECES, Spool


def test_bytes_are_kept_as_written_not_copied() -> None:
    pieces = [b"a" * 5000, b"b" * 3, b"c" * 8000]
    spool = Spool(1 << 20)
    for piece in [*pieces[:2], b"", pieces[2]]:
        spool.write(piece)
    assert spool.in_memory and spool.size == 13003
    assert all(kept is given for kept, given in zip(spool.pieces(), pieces, strict=True))
    assert spool.getvalue() == b"".join(pieces)
    assert spool.getvalue() is spool.getvalue()  # joined once
    assert b"".join(spool.chunks()) == b"".join(pieces)


def test_a_buffer_the_writer_may_reuse_is_copied() -> None:
    buf = bytearray(b"first")
    spool = Spool(1 << 20)
    spool.write(buf)
    spool.write(memoryview(b"-second"))
    buf[:] = b"XXXXX"
    assert spool.getvalue() == b"first-second"


def test_many_small_pieces_become_one_buffer() -> None:
    spool = Spool(1 << 20)
    for i in range(MAX_PIECES * 3):
        spool.write(b"%05d" % i)
    assert len(spool.pieces()) == 1
    assert spool.getvalue() == b"".join(b"%05d" % i for i in range(MAX_PIECES * 3))


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_chunks_are_at_most_the_size_asked_and_in_order(size: int) -> None:
    data = bytes(range(256)) * 40
    spool = Spool(1 << 20)
    for i in range(0, len(data), 3000):
        spool.write(data[i : i + 3000])
    chunks = list(spool.chunks(size))
    assert all(0 < len(c) <= size for c in chunks)
    assert b"".join(chunks) == data


def test_past_the_memory_limit_everything_goes_to_the_file_in_order() -> None:
    spool = Spool(10_000)
    written = [b"x" * 6000, bytearray(b"y" * 3000), b"z" * 2000]
    for piece in written:
        spool.write(piece)
    assert not spool.in_memory and spool.size == 11_000
    assert b"".join(spool.chunks(4096)) == b"".join(written)
    spool.close()
