"""Where a gc's compaction moved shards, and the manifest rewrites that tell them.

A compaction (nodes/pack_compaction.py) moves the records it keeps into new packs and names
where each went; the manifests of those shards must then be given their new
locations, or every process reading one would have to index the node's packs.
Until gc has swept every node the moves wait in a private SQLite database in the
cell's directory, unlinked (`CompactionMoves`), not in memory; `relocate` then
rewrites each version once, however many of its nodes moved it.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from shardvault.errors import StorageError
from shardvault.manifest import Manifest
from shardvault.nodes.port import parse_shard_name
from shardvault.vault.cells import Cell

_RELOCATE_BATCH = 1000  # object versions per catalog lookup and update


class CompactionMoves:
    """Where compaction moved shards, until their manifests are told.

    Rows of a private SQLite database on disk, in the cell's directory (``directory``),
    rather than a dict: held in memory, about 0.5 KB a move, a gc folding the packs of
    50,000 small objects from 100 writers peaked at 222 MiB. Not SQLite's own temporary
    database, nor its sorter: it writes both to the system's directory (/var/tmp) once
    past its cache, and the object ids, nodes and packs of the cell's shards with them.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.count = 0
        with _temporary_storage():
            self._db = _private_database(directory)
            self._db.execute(
                "CREATE TABLE moved (object_id BLOB, version INTEGER, shard INTEGER,"
                " generation INTEGER, node TEXT, location TEXT)"
            )  # read back in this order: the index, not a sort that could spill
            self._db.execute("CREATE INDEX moved_versions ON moved (object_id, version)")

    def add(self, node: str, moved: dict[str, str]) -> None:
        rows = ((*parse_shard_name(name), node, location) for name, location in moved.items())
        with _temporary_storage():
            self._db.executemany("INSERT INTO moved VALUES (?, ?, ?, ?, ?, ?)", rows)
        self.count += len(moved)

    def by_version(self) -> Iterator[dict[tuple[bytes, int], dict[tuple[int, int, str], str]]]:
        """Batches of up to `_RELOCATE_BATCH` versions: (object id, version) -> (shard
        index, generation, node) -> new location. By node and generation too: a stale
        copy elsewhere, or one of an earlier generation (see repair), may have moved."""
        batch: dict[tuple[bytes, int], dict[tuple[int, int, str], str]] = {}
        with _temporary_storage():  # rows stream from disk: the sort is SQLite's
            rows = self._db.execute("SELECT * FROM moved ORDER BY object_id, version")
            for object_id, version, shard, generation, node, location in rows:
                key = (object_id, version)
                if key not in batch and len(batch) == _RELOCATE_BATCH:
                    yield batch
                    batch = {}
                batch.setdefault(key, {})[shard, generation, node] = location
        if batch:
            yield batch

    def close(self) -> None:
        self._db.close()


_MOVES_FILES = ".gc-moves."  # the prefix of a moves database's name, while it has one


def _private_database(directory: Path | None) -> sqlite3.Connection:
    """A database only this connection can reach: made in ``directory``, then unlinked at
    once (with no rollback journal SQLite never needs its name again), so a gc killed at
    any point leaves nothing. One a kill left in between (empty) goes with the next.
    Without a directory (a cell of memory catalogs), SQLite's own temporary database."""
    if directory is None:
        return sqlite3.connect("")
    for leftover in directory.glob(f"{_MOVES_FILES}*"):
        leftover.unlink(missing_ok=True)
    path = directory / f"{_MOVES_FILES}{secrets.token_hex(8)}.sqlite"
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA temp_store=MEMORY")  # any temporary file: none on /var/tmp
    except BaseException:
        db.close()
        raise
    finally:
        path.unlink(missing_ok=True)
    return db


@contextlib.contextmanager
def _temporary_storage() -> Iterator[None]:
    """A failure of the temporary database (its disk full, say) as a StorageError: the
    shards stay where compaction put them, and readers of them look them up."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"gc could not hold where it moved shards: {exc}") from exc


def relocate(cell: Cell, moves: CompactionMoves) -> None:
    """Give the manifests of the shards a compaction moved their new locations: one
    update per version, however many of its nodes moved it."""
    for wanted in moves.by_version():
        records = cell.catalog.versions_with({object_id for object_id, _ in wanted})
        changes = []
        for record in records:
            new = wanted.get((record.object_id, record.version))
            if new is None or record.manifest is None:
                continue
            manifest = Manifest.from_bytes(record.manifest)
            locations = list(manifest.locations or (None,) * manifest.n)
            for (index, generation, node), location in new.items():
                if manifest.names_copy(index, node, generation):
                    locations[index] = location
            updated = replace(manifest, locations=tuple(locations)).to_bytes()
            if updated != record.manifest:
                changes.append((record, updated))
        cell.catalog.replace_manifests(changes)
