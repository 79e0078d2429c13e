"""``serve.signals``: log files reopened after ``mv`` (USR1), the old file kept
when the new one cannot be opened; the pid file."""

from __future__ import annotations

import logging
import os

import pytest

from gateway.serve.signals import PidFileError, read_pid_file, remove_pid_file, reopen_log_files, write_pid_file


@pytest.fixture
def access(tmp_path):
    logger = logging.getLogger("gateway.access")
    logger.propagate = False
    (tmp_path / "logs").mkdir()
    handler = logging.FileHandler(tmp_path / "logs" / "access.log")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    yield logger, tmp_path / "logs"
    logger.removeHandler(handler)
    handler.close()


def test_reopen_after_mv_writes_to_the_new_file(access):
    logger, logs = access
    logger.warning("before")
    (logs / "access.log").rename(logs / "access.log.1")
    reopen_log_files()
    logger.warning("after")
    assert (logs / "access.log.1").read_text() == "before\n"
    assert (logs / "access.log").read_text() == "after\n"


def test_a_file_that_cannot_be_reopened_keeps_the_old_one_and_says_why(access, caplog):
    logger, logs = access
    (logs / "access.log").rename(logs.parent / "access.log.1")
    logs.rmdir()  # nowhere to create the new file
    reopen_log_files()  # (pytest has a file handler of its own on the root logger)
    assert "cannot reopen log file" in caplog.text and "still writing to the old one" in caplog.text
    logger.warning("still here")
    assert (logs.parent / "access.log.1").read_text() == "still here\n"


def test_pid_file_is_ours_to_remove_only_while_it_holds_our_pid(tmp_path):
    path = str(tmp_path / "gateway.pid")
    write_pid_file(path)
    assert read_pid_file(path) == os.getpid()
    (tmp_path / "gateway.pid").write_text("1\n")  # another gateway's now
    remove_pid_file(path)
    assert (tmp_path / "gateway.pid").exists()
    (tmp_path / "gateway.pid").write_text("999999999\n")
    with pytest.raises(PidFileError, match="stale pid file"):
        read_pid_file(path)
    with pytest.raises(PidFileError, match="no pid file"):
        read_pid_file(str(tmp_path / "none.pid"))
