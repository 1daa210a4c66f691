"""Files written whole or not at all, and what a failed write says."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from shardvault import durability
from shardvault.durability import failure_reason
from shardvault.nodes import localdir
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.port import shard_name


def test_create_whole_whose_temporary_another_process_took_for_a_leftover_keeps_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a file is there, a reader removes the temporaries beside it (nodes/marker.py):
    a process about to link its own then found it gone, and failed."""
    path = tmp_path / "NODE"
    real_link = os.link

    def link(source: str, target: str) -> None:
        path.write_bytes(b"theirs")  # another process made it, then dropped the leftovers
        for temp in durability.leftover_temporaries(path):
            temp.unlink()
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    assert durability.create_whole(path, b"ours") is False
    assert path.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["NODE"]


def test_a_read_only_database_says_what_to_do(tmp_path: Path) -> None:
    """SQLite says only "attempt to write a readonly database" (found in review)."""
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    readonly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as caught:
        readonly.execute("INSERT INTO t VALUES (1)")
    readonly.close()
    reason = failure_reason(caught.value, path)
    assert reason.startswith("attempt to write a readonly database")
    assert reason.endswith("make the file and its directory writable by this user")


def test_a_shard_in_new_fan_out_folders_makes_their_names_durable_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the shard's own folder was fsynced: the new folders' entries in shards/ and
    in the first fan-out level could be lost by a power cut, and the shard with them."""
    store = LocalDirShardStore("n1", tmp_path, pack_limit=0)
    synced: list[Path] = []
    real = localdir.fsync_directory
    monkeypatch.setattr(localdir, "fsync_directory", lambda p: (synced.append(p), real(p)))
    name = shard_name(bytes.fromhex("ab" * 16), 1, 0)
    writer = store.open_writer(name)
    writer.write(b"x" * 100)
    writer.commit()
    final = store.shard_path(name)
    assert {final.parent, final.parent.parent, store.shard_dir} <= set(synced)
    synced.clear()
    writer = store.open_writer(shard_name(bytes.fromhex("ab" * 16), 2, 0))
    writer.write(b"x" * 100)
    writer.commit()
    assert synced == [final.parent], "folders already there cost nothing more"
    store.close()
