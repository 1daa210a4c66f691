"""The subject directory: a damaged key or database is refused, never taken for an empty one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shardvault.directory import KEY_BYTES, SubjectDirectory
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
