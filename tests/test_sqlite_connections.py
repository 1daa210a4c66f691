"""The deployment's SQLite connections: switching a new file to WAL while another opens it."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from shardvault import sqlite_connections


def _held_for_writing(path: Path) -> sqlite3.Connection:
    """A connection to a new rollback-journal file holding its write lock, as a process
    creating the file's tables holds it."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_sqlite_does_not_wait_to_switch_a_file_another_is_writing_to_wal(tmp_path: Path) -> None:
    """Why `use_wal` tries again: the busy timeout is not applied to this switch."""
    holder = _held_for_writing(tmp_path / "db")
    opener = sqlite3.connect(tmp_path / "db", timeout=5.0, isolation_level=None)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        opener.execute("PRAGMA journal_mode=WAL")
    assert time.monotonic() - started < 1.0
    holder.rollback()


def test_use_wal_waits_for_the_other_writer(tmp_path: Path) -> None:
    holder = _held_for_writing(tmp_path / "db")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    opener = sqlite_connections.connect(tmp_path / "db", "test database")
    try:
        sqlite_connections.use_wal(opener)
        assert opener.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        release.join()
        opener.close()
        holder.close()


def test_use_wal_gives_up_after_its_timeout(tmp_path: Path) -> None:
    holder = _held_for_writing(tmp_path / "db")
    opener = sqlite_connections.connect(tmp_path / "db", "test database")
    started = time.monotonic()
    try:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            sqlite_connections.use_wal(opener, timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 5.0
    finally:
        opener.close()
        holder.close()
