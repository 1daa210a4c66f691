"""Deleting: the pack set's job of zeroing a shard's records and tombstoning its
name, a class PackSet (nodes/packs.py) inherits, apart from its writing, reading
and compaction (nodes/pack_compaction.py).

A deleted (or forgotten) user's ciphertext must not wait for compaction: the
record's data is zeroed in place first, then a tombstone is appended. Zeroing
every copy is the hard part: a compaction under way, or one that died, may hold
a shard in two packs (nodes/journal.py names them), and one may remove the
zeroed record's pack before the tombstone lands.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from shardvault.nodes.journal import JOURNAL, read_journal
from shardvault.nodes.pack_records import (
    CRC,
    RECORD,
    TOMBSTONE,
    Erasure,
    PackedShard,
    erasure_at,
    erasure_of,
    frames,
    parse_location,
    shard_records,
)
from shardvault.nodes.pack_tombstones import Tombstones

_ERASE_TRIES = 3  # a shard moved by a compaction each time it is looked up, in a row


class PackDeletion:
    """Zero a shard's records and tombstone its name (`delete`), for PackSet.

    What of the pack set it uses is declared here as annotations only (PackSet has
    them), so that these methods are checked as they would be in PackSet itself."""

    directory: Path
    _lock: threading.RLock
    _index: dict[str, PackedShard]
    _dead: Tombstones
    _damaged: dict[str, dict[str, PackedShard]]
    refresh: Callable[[], None]
    _prune_gone: Callable[[], None]
    _fd: Callable[[str], int]
    locate: Callable[[str], PackedShard | None]
    _append: Callable[[int, str, bytes], PackedShard]
    _dead_on_disk: Callable[[str], bool]
    _forget_pack: Callable[[str], None]

    def delete(self, name: str, location: str | None = None) -> PackedShard | None:
        """Overwrite the shard's record with zeros, name and data, then tombstone it
        (neither synced yet); where the tombstone went, for the caller to `confirm` once
        synced, or None if no record of the shard was found.

        Compaction alone would leave a deleted (or forgotten) user's ciphertext in a
        pack for as long as the pack is live, or more than a quarter alive, and the
        name (its object id: when it was minted) for as long as the pack is there.
        Zeroing comes first, so a failure leaves the shard live for the next attempt.
        With the location its manifest kept, the shard is found without indexing every
        pack: a forget then costs what the subject holds, not what the node does; and
        a damaged record there is found too (`erasure_at`), which no index holds.
        The tombstone needs the look a shard's append gets: a compaction that copied
        the record before it was zeroed, or one settling a dead compaction, zeroes
        its copy only by the tombstones it finds on disk.
        """
        with self._lock:
            found = self._erasure_of(name, location)
            if found is None:
                return None
            erased = None  # the pack whose record was zeroed
            for _ in range(_ERASE_TRIES):
                if self._overwrite(found):
                    erased = found.pack
                    break
                # another process compacted that pack: the shard was copied elsewhere
                self._forget_pack(found.pack)
                self.refresh()
                located = self._index.get(name)
                if located is None:
                    break
                found = erasure_of(name, located)
            tombstone = self._append(TOMBSTONE, name, b"")
            self._index.pop(name, None)
            self._dead.add(name, tombstone.pack)
            if erased is not None and not (self.directory / erased).exists():
                # Compacted away between the zeroing and the tombstone: the copy may
                # predate the zeroing, and the compaction's last look for tombstones
                # may predate ours, so neither zeroed it. Rare: a search of every pack.
                self._erase_records_of(name)
            elif (self.directory / JOURNAL).exists():  # one stat a delete
                self._erase_other_copies(name)
            return tombstone

    def _erasure_of(self, name: str, location: str | None) -> Erasure | None:
        """What zeroes the shard's record: the one its index or its location names, else
        a damaged one of its name a scan noted (a shard whose manifest kept no location:
        a version 1 manifest, a pending write's)."""
        located = self._index.get(name)
        if located is None and location is not None and not self._dead_on_disk(name):
            found = self._erasure_at(name, location)
            if found is not None:
                return found
        if located is None:
            located = self.locate(name)
        if located is not None:
            return erasure_of(name, located)
        for noted in self._damaged.values():
            damaged = noted.pop(name, None)
            if damaged is not None:
                return erasure_of(name, damaged)
        return None

    def _erasure_at(self, name: str, location: str) -> Erasure | None:
        """The erasure of the record at the location the shard's manifest kept, whole or
        damaged, if it is the shard's (`erasure_at`). Read up to where the record
        frames, else, damaged, to the end of its pack: rare, and bounded by it."""
        encoded = name.encode()
        parsed = parse_location(location, encoded)
        if parsed is None:
            return None
        pack, _, record = parsed
        self._prune_gone()
        try:
            fd = self._fd(pack)
            head = os.pread(fd, RECORD.size, record)
            if len(head) < RECORD.size:
                return None
            framed = RECORD.size + len(encoded) + RECORD.unpack(head)[4] + 2 * CRC.size
            rest = os.fstat(fd).st_size - record  # a damaged length may say gigabytes
            view = os.pread(fd, min(framed, rest), record)  # to the next record's magic
            if len(view) < rest and not frames(view, len(encoded)):
                view = os.pread(fd, rest, record)
        except FileNotFoundError:
            return None
        return erasure_at(view, pack, record, encoded)

    def _erase(self, name: str, located: PackedShard) -> bool:
        """Zero a whole record's name and data in place; False if its pack is gone."""
        return self._overwrite(erasure_of(name, located))

    def _overwrite(self, erasure: Erasure) -> bool:
        """Write an erasure in place; False if its pack is gone (compacted). Its CRC then
        fails, and the scan steps over it (its framing is intact)."""
        try:
            fd = os.open(self.directory / erasure.pack, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if os.pwrite(fd, erasure.data, erasure.offset) != len(erasure.data):
                raise OSError(errno.ENOSPC, "short write")
            if os.fstat(fd).st_nlink == 0:  # compacted away while we wrote: find the copy
                return False
        finally:
            os.close(fd)
        return True

    def _erase_other_copies(self, name: str) -> None:
        """A compaction is under way, or died, between copying records and removing the
        old ones: a shard may be in two packs, and only one was zeroed. Zero the name in
        every pack its journal names: a running one may be killed before its last look
        for deletes. A dead one's journal is left to the next compaction to settle:
        settling folds the old packs, moving the live shards in them, and only a
        compaction's caller tells their manifests where they went (gc); settled by a
        delete, they kept locations in packs removed, and every reader scanned."""
        journal = read_journal(self.directory)
        if journal is not None:
            self._erase_records_of(name, journal.old + journal.new)

    def _erase_records_of(self, name: str, packs: Iterable[str] | None = None) -> None:
        """Zero every whole shard record of `name` in the packs (or in `packs`), whatever
        the index says."""
        encoded = name.encode()
        found_packs = self.directory.glob("*.pack") if packs is None else packs
        for path in (self.directory / pack for pack in found_packs):
            try:
                with (
                    open(path, "rb") as file,
                    mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view,
                ):
                    found = [
                        PackedShard(path.name, start, length)
                        for start, length in shard_records(view, encoded)
                    ]
            except (FileNotFoundError, IsADirectoryError, ValueError):  # gone, not a pack, empty
                continue
            for located in found:
                self._erase(name, located)
