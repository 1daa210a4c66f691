"""The subject directory: a damaged key or database is refused, never taken for an empty one."""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest

from shardvault.directory import KEY_BYTES, SCHEMA_VERSION, SubjectDirectory
from shardvault.errors import IntegrityError, StorageError


def test_key_is_made_whole_once_and_kept(tmp_path: Path) -> None:
    directory = SubjectDirectory.open(tmp_path)
    directory.add("intl", "alice", "US")
    directory.close()
    key = tmp_path / "directory.key"
    assert len(key.read_bytes()) == KEY_BYTES
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if "key" in p.name) == ["directory.key"]
    again = SubjectDirectory.open(tmp_path)
    assert again.home("intl", "alice") == "US"
    again.close()


@pytest.mark.parametrize("content", [b"", b"short", bytes(KEY_BYTES + 1)])
def test_damaged_key_is_refused(tmp_path: Path, content: bytes) -> None:
    # with another key no subject would be found, and each could be registered again
    # in another jurisdiction
    SubjectDirectory.open(tmp_path).close()
    (tmp_path / "directory.key").write_bytes(content)
    with pytest.raises(IntegrityError, match=rf"directory.key is damaged \({len(content)} bytes"):
        SubjectDirectory.open(tmp_path)


def test_garbage_database_is_a_storage_error(tmp_path: Path) -> None:
    SubjectDirectory.open(tmp_path).close()
    (tmp_path / "directory.sqlite").write_bytes(b"this is not a database" * 100)
    for name in ("directory.sqlite-wal", "directory.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(StorageError, match=r"subject directory .*directory\.sqlite: file is not a"):
        SubjectDirectory.open(tmp_path)


def test_state_directory_that_is_a_file_is_a_storage_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("")
    with pytest.raises(StorageError, match=f"state directory {state}: "):
        SubjectDirectory.open(state)


def test_lost_key_beside_homes_is_refused_not_made_anew(tmp_path: Path) -> None:
    # a new key would find no subject: each could be registered again in another
    # jurisdiction, its data left behind in the first (found in review)
    directory = SubjectDirectory.open(tmp_path)
    directory.add("intl", "alice", "US")
    directory.close()
    (tmp_path / "directory.key").unlink()
    with pytest.raises(IntegrityError, match=r"directory.key is missing, though the directory"):
        SubjectDirectory.open(tmp_path)
    assert not (tmp_path / "directory.key").exists()


def test_key_is_made_for_a_directory_without_homes(tmp_path: Path) -> None:
    directory = SubjectDirectory.open(tmp_path)
    directory.add("intl", "alice", "US")
    directory.remove("intl", "alice")  # an unfinished registration, undone
    directory.close()
    (tmp_path / "directory.key").unlink()
    SubjectDirectory.open(tmp_path).close()
    assert len((tmp_path / "directory.key").read_bytes()) == KEY_BYTES


def test_a_schema_1_directory_is_migrated_to_2_with_its_homes(tmp_path: Path) -> None:
    # schema 2 added the scrubs a forget or a registration still owes another cell
    key = os.urandom(KEY_BYTES)
    (tmp_path / "directory.key").write_bytes(key)
    (tmp_path / "directory.key").chmod(0o600)
    token = hmac.new(key, b"intl\x00alice", hashlib.sha256).hexdigest()
    with closing(sqlite3.connect(tmp_path / "directory.sqlite")) as db:  # as schema 1 made it
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA user_version=1")
        db.execute("CREATE TABLE homes (token TEXT PRIMARY KEY, jurisdiction TEXT NOT NULL)")
        db.execute("INSERT INTO homes VALUES (?, 'US')", (token,))
        db.commit()
    directory = SubjectDirectory.open(tmp_path)
    assert directory.home("intl", "alice") == "US"
    assert directory.owing_cells() == [] and directory.owed_in("SG") == {}
    directory.owe_scrubs("intl", "alice", ["SG", "EU"])
    assert directory.still_owed("intl", "alice") == ["EU", "SG"]
    assert directory.owed_in("SG") == {token: "US"}  # the token only, with the home
    directory.scrubbed("SG", [token])
    assert directory.owing_cells() == ["EU"]
    directory.remove("intl", "alice")  # a registration undone owes nothing
    assert directory.owing_cells() == []
    directory.close()
    with closing(sqlite3.connect(tmp_path / "directory.sqlite")) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (2,)
    again = SubjectDirectory.open(tmp_path)  # migrated once: opened again as it is
    again.close()
