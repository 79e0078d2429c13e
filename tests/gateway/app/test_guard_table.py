"""The rate-limit table shared by worker processes: one limit for all of them."""

from __future__ import annotations

import os
import subprocess
import sys

from gateway.app.guard_table import GuardTable, create
from gateway.http.ratelimit import Limit, address_key, admit, rule_id

#: one process's part: N requests of one client as fast as it can, printing how many passed
WORKER = """
import sys
from gateway.app.guard_table import GuardTable
from gateway.http.ratelimit import Limit, address_key, admit, rule_id
table = GuardTable.open(sys.argv[1])
assert table.fd is not None
key = address_key(bytes([192, 0, 2, 7]), rule_id("s", "rate_limit", "0"))
limit = Limit(1 / 60, burst=int(sys.argv[2]), nodelay=True)
sys.stdin.readline()  # start together
print(sum(table.update(key, lambda state, now: admit(limit, state, now)).allowed for _ in range(int(sys.argv[3]))))
"""


def test_processes_share_one_bucket(tmp_path):
    path = create(str(tmp_path), sets=16)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, path, "49", "2000"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    passed = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # 1r/m with burst 49: 50 requests pass in all, however the 6000 were spread over the processes
    assert sum(passed) == 50
    # and the master's process sees the same state
    key = address_key(bytes([192, 0, 2, 7]), rule_id("s", "rate_limit", "0"))
    assert not GuardTable.open(path).update(key, lambda s, now: admit(Limit(1 / 60, 49, True), s, now)).allowed


def test_create_keeps_a_table_of_this_layout_and_replaces_another(tmp_path):
    path = create(str(tmp_path), sets=16)
    table = GuardTable.open(path)
    key = address_key(bytes(4), rule_id("x"))
    table.update(key, lambda s, now: admit(Limit(1 / 60), s, now))
    assert create(str(tmp_path), sets=16) == path  # a reload: the clients' states stay
    assert not GuardTable.open(path).update(key, lambda s, now: admit(Limit(1 / 60), s, now)).allowed
    create(str(tmp_path), sets=32)  # another size: a fresh table
    assert GuardTable.open(path).table.sets == 32


def test_a_missing_file_falls_back_to_a_table_of_its_own(tmp_path, caplog):
    table = GuardTable.open(str(tmp_path / "gone"))
    assert table.fd is None
    assert "limits hold per process" in caplog.text
