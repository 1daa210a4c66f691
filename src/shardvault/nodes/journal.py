"""The compaction journal: which packs a compaction of a node's packs is folding.

A compaction copies live records into a pack, syncs, then removes the old
packs; killed between the copy and the removal it left those shards in two
packs, and a later delete zeroed only the copy it found (nodes/packs.py). So
before its first copy a compaction writes ``packs/compact.journal``, durably,
naming the packs it folds (``old``) and every pack it copies into (``new``,
each named before the first copy lands there), and removes it only once the
old packs are gone for good. A journal found while no compaction holds the
node's compaction lock was left by one that died: the next compaction on the
node settles it (`PackSet._settle`, nodes/pack_compaction.py), and reports
where the shards it moved went; a delete meanwhile zeroes its shard in every
pack the journal names.

    {"format":"shardvault-compaction","new":["<16 hex>.pack",...],"old":[...],"version":1}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from shardvault.durability import read_own, replace_whole
from shardvault.errors import NewerFormat, StorageError

JOURNAL = "compact.journal"
FORMAT = "shardvault-compaction"
VERSION = 1
_PACK = re.compile(r"[0-9a-f]{16}\.pack")  # checked before any path is built from a name


@dataclass(slots=True)
class Journal:
    old: list[str]  # packs being folded: removed once their live records are copied
    new: list[str]  # packs the copies go to

    def encode(self) -> bytes:
        content = {"format": FORMAT, "new": self.new, "old": self.old, "version": VERSION}
        return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()

    def write(self, directory: Path) -> None:
        """Whole, durable, replacing the one there: a kill leaves the old or the new."""
        replace_whole(directory / JOURNAL, self.encode())


def read_journal(directory: Path) -> Journal | None:
    """The journal in `directory`, or None; NewerFormat for one of a newer version,
    StorageError for one damaged (fail closed: the packs it names may hold shards twice)."""
    path = directory / JOURNAL
    try:
        raw = read_own(path, "compaction journal")
    except FileNotFoundError:
        return None
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise StorageError(
            f"{path} is not a shardvault compaction journal: remove it to compact the node again"
        )
    version = found.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise NewerFormat(
            f"{path} has compaction journal version {version}; this shardvault reads "
            f"{VERSION}: upgrade shardvault"
        )
    if type(version) is not int or version != VERSION:  # not true, nor 1.0, which equal 1
        raise StorageError(f"{path} has no compaction journal version this shardvault knows")
    old, new = found.get("old"), found.get("new")
    if not (_pack_names(old) and _pack_names(new)):
        raise StorageError(
            f"{path} names a pack that is not one: remove it to compact the node again"
        )
    return Journal(old, new)


def _pack_names(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(
        isinstance(item, str) and _PACK.fullmatch(item) for item in value
    )
