"""Compaction: the pack set's collection job, a class PackSet (nodes/packs.py)
inherits, apart from its writing, reading and deleting (nodes/pack_deletes.py).

``compact`` copies the live records of packs no live writer holds into this
store's pack and removes the old files (their descriptors stay open a minute, for
reads already under way), and says where each shard went, so that gc can rewrite
the locations manifests keep (shardvault.vault.gc). Between its copies and the
removal a shard is in two packs; a compaction journal names them for that long
(nodes/journal.py), so that a delete meanwhile zeroes both copies, and one a dead
compaction left is settled by the next compaction. A damaged record a scan noted
is named too, and copied if a read could use it (nodes/packs.py says which, and why).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shardvault.durability import fsync_directory, leftover_temporaries
from shardvault.group_commit import GroupSync
from shardvault.nodes.journal import JOURNAL, Journal, read_journal
from shardvault.nodes.pack_records import (
    CRC,
    FILE_HEADER,
    FRAMING,
    RECORD,
    SHARD,
    PackedShard,
    framed_records,
    names_shard,
)
from shardvault.nodes.pack_tombstones import Tombstones

SMALL_PACK = 1 << 20
_COMPACT_BATCH = 64  # packs claimed, copied and synced together (two fds each meanwhile)
LOCK_FILE = "compact.lock"  # held by the one process compacting the node's packs


@dataclass(slots=True)
class Compaction:
    packs: int  # removed
    moved: dict[str, str]  # shard name -> its new location, for each shard copied
    damaged: list[str] = field(default_factory=list)  # failing their CRC: for repair


class NamesByPack(dict[str, list[str]]):
    """Indexed names per pack, and the state of the scans it was taken at."""

    def __init__(self, rescans: int, scanned: dict[str, int]) -> None:
        super().__init__()
        self.rescans = rescans
        self.scanned = scanned


def _try_flock(fd: int) -> bool:
    """Take an exclusive flock on `fd` if free; if not, or if flock fails (ENOLCK), the
    descriptor is closed: each failure once left one open, per pack per gc."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            return False
        raise
    return True


class _ForgetPack(Protocol):
    def __call__(
        self, pack: str, names: Iterable[str] | None = None, *, compacted_here: bool = False
    ) -> None: ...


class PackCompaction:
    """Rewrite the live shards of packs no live writer holds (`compact`), for PackSet.

    What of the pack set it uses is declared here as annotations only (PackSet has
    them), so that these methods are checked as they would be in PackSet itself."""

    directory: Path
    group: GroupSync
    _lock: threading.RLock
    _index: dict[str, PackedShard]
    _dead: Tombstones
    _damaged: dict[str, dict[str, PackedShard]]
    _scanned: dict[str, int]
    _active: str | None
    _rescans: int
    _grouped: NamesByPack | None
    _journal: Journal | None
    refresh: Callable[[], None]
    add: Callable[[str, bytes], tuple[int, PackedShard]]
    confirm: Callable[[PackedShard], None]
    _scan: Callable[[str], None]
    _fd: Callable[[str], int]
    _erase: Callable[[str, PackedShard], bool]
    _indexed: Callable[[str, str], PackedShard | None]
    _note_damaged_tail: Callable[[str], None]
    _forget_pack: _ForgetPack

    def compact(self) -> Compaction:
        """Rewrite the live shards of packs no live writer holds.

        The copies are made durable before the old files go: a batch of packs at a
        time, so a sync and a look for deletes made meanwhile cover many packs (per
        pack, both grow with the number of packs). Returns the packs removed and
        where each shard they held went, so the manifests that kept the old
        locations can be told (shardvault.vault.gc).
        """
        done = Compaction(0, {})
        with self._lock, self._compaction_lock() as mine:
            if not mine:  # another process is compacting this node's packs
                return done
            if not self._settle(done):
                return done
            self.refresh()
            self._grouped = None
            try:
                claimed: list[tuple[str, int]] = []
                only_small = True  # so far, every pack claimed is worth it for its size alone
                for pack in list(self._scanned):
                    why = None if pack == self._active else self._worth_compacting(pack)
                    if why is None:
                        continue
                    claim = self._claim(pack)
                    if claim is not None:
                        claimed.append((pack, claim))
                        only_small = only_small and why == "small"
                    if len(claimed) == _COMPACT_BATCH:
                        self._fold(claimed, done)
                        claimed = []
                if len(claimed) == 1 and only_small and not done.packs:
                    # one small live pack copied into another gains nothing, and would
                    # be copied again by every gc (found in review)
                    os.close(claimed.pop()[1])
                if claimed:
                    self._fold(claimed, done)
            finally:
                self._grouped = None
        return done

    @contextlib.contextmanager
    def _compaction_lock(self) -> Iterator[bool]:
        """Whether this process may compact the node's packs now: one at a time. Two
        compactions side by side can each skip a shard their indexes place in the pack
        the other is removing, so that neither copies it."""
        path = self.directory / LOCK_FILE
        try:  # read-only: flock needs no more, and a disk remounted read-only can still say
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # no packs yet
            yield False
            return
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # nothing to be done
                yield False
                return
            raise
        if not _try_flock(fd):
            yield False
            return
        try:
            yield True
        finally:
            os.close(fd)

    def _settle(self, done: Compaction) -> bool:
        """Finish a compaction that died (or failed) between its journal and its end,
        holding the compaction lock; whether no journal is left.

        Every record of a deleted name in its packs is zeroed (a delete since zeroed
        one copy), its copies are made durable and preferred to the old records, and
        the old packs are folded as any others: what was never copied is copied (with
        a journal naming the copies made before too), then they go. Settling is rolling
        forward, whatever step the compaction died at: each step is safe to take again.
        """
        for temporary in leftover_temporaries(self.directory / JOURNAL):
            temporary.unlink(missing_ok=True)  # killed while writing one: nothing copied since
        journal = read_journal(self.directory)
        if journal is None:
            return True
        self.refresh()
        old = [pack for pack in journal.old if (self.directory / pack).exists()]
        new = [pack for pack in journal.new if (self.directory / pack).exists()]
        for pack in old + new:
            self._erase_dead_records(pack)
        self._index_again(old)
        in_old = {name for pack in old for name in self._names_in(pack)}
        damaged = {name for pack in old for name in self._damaged.get(pack, {})}
        self._index_again(new)  # last: its copy wins over the old record
        self.group.sync(self.group.note_write())  # what the dead process wrote, too
        claimed = [(pack, fd) for pack in old if (fd := self._claim(pack)) is not None]
        if len(claimed) < len(old):  # only a compactor takes an old pack's flock: later
            for _, fd in claimed:
                os.close(fd)
            return False
        if claimed:
            self._fold(claimed, done, new)
            # the dead compaction's copies of what the old packs held: their manifests
            # name those packs, gone now, as the ones `_fold` copied did
            copied = {
                name: found.location
                for name in in_old | damaged
                if (found := self._index.get(name)) is not None and found.pack in new
            }
            done.moved.update(copied)
            # the damaged records it copied, which it died before telling gc of
            done.damaged.extend(sorted(damaged.intersection(copied)))
        else:
            (self.directory / JOURNAL).unlink(missing_ok=True)
        return True

    def _index_again(self, packs: list[str]) -> None:
        """Index every record of these packs anew, over where the index placed them."""
        for pack in packs:
            self._scanned.pop(pack, None)
            self._scan(pack)
        self._grouped = None

    def _erase_dead_records(self, pack: str) -> None:
        """Zero every whole shard record in `pack` of a name a tombstone on disk kills."""
        try:
            fd = self._fd(pack)
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        except FileNotFoundError:
            return
        if not data.startswith(FILE_HEADER):
            return  # not ours to read (see `_scan`)
        body = data[len(FILE_HEADER) :]
        for at, kind, name_len, data_len, whole in framed_records(body):
            if not whole or kind != SHARD:  # a damaged name need not even be UTF-8
                continue
            name = body[at + RECORD.size : at + RECORD.size + name_len].decode()
            if name in self._dead:
                start = len(FILE_HEADER) + at + RECORD.size + name_len
                self._erase(name, PackedShard(pack, start, data_len))

    def _fold(
        self, claimed: list[tuple[str, int]], done: Compaction, carried: Iterable[str] = ()
    ) -> None:
        """Copy the live shards of claimed packs into ours, sync, then remove the packs.

        The sync checks every copy's own ticket: with the latest alone, a flush that
        failed for the first copies was hidden by a later one that succeeded for the
        last, and the packs holding the only durable records went. The journal names
        the packs from before the first copy until they are gone for good (`carried`:
        packs holding copies an earlier, dead compaction made of them); one left by a
        failure stays, for the next compaction to settle."""
        try:
            journal = Journal([pack for pack, _ in claimed], list(carried))
            if self._active is not None and self._active not in journal.new:
                journal.new.append(self._active)  # a pack made by rotation is added then
            journal.write(self.directory)
            self._journal = journal
            copies = {}
            damaged: list[str] = []
            first = last = None  # tickets of the copies
            for pack, _ in claimed:
                self._scan(pack)  # what a writer appended before it died
                self._note_damaged_tail(pack)
                for name in self._names_in(pack):
                    located = self._indexed(name, pack)
                    data = None if located is None else self._whole_data(name, located)
                    if data is not None:  # not deleted, nor found elsewhere, meanwhile
                        last, copies[name] = self.add(name, data)
                        first = first or last
                for name, located in self._damaged.get(pack, {}).items():
                    data = self._damaged_data(name, located)
                    if data is None:
                        continue
                    damaged.append(name)
                    if names_shard(name.encode(), data):  # else no read can use it
                        last, copies[name] = self.add(name, data)
                        first = first or last
            self.group.sync(last, since=first)
            for copy in copies.values():  # in our pack, not removed under us with it
                self.confirm(copy)
            self._erase_copies_deleted_meanwhile(copies)
            for pack, _ in claimed:
                self._forget_pack(pack, self._names_in(pack), compacted_here=True)
                (self.directory / pack).unlink(missing_ok=True)
            fsync_directory(self.directory)  # gone for good before the journal goes
            # a delete going by a manifest's old location may have zeroed an old record
            # after the look above: its copy goes too (one zeroing a pack already
            # unlinked sees that, and looks the copy up: `_erase`)
            self._erase_copies_deleted_meanwhile(copies)
            self._journal = None
            (self.directory / JOURNAL).unlink(missing_ok=True)
            done.packs += len(claimed)
            done.moved.update(
                (name, copy.location) for name, copy in copies.items() if name not in self._dead
            )
            done.damaged.extend(name for name in damaged if name not in self._dead)
        finally:
            self._journal = None
            for _, claim in claimed:
                os.close(claim)

    def _whole_data(self, name: str, located: PackedShard) -> bytes | None:
        """The record's data, or None if it is no longer whole: a delete zeroed it since
        the scan. Copied, it would be a whole record of zeros under the tombstone, which
        zeroing again leaves whole: live again once the tombstone's pack was compacted."""
        encoded = name.encode()
        start = located.offset - len(encoded) - RECORD.size
        size = RECORD.size + len(encoded) + located.length + CRC.size
        record = os.pread(self._fd(located.pack), size, start)
        end = size - CRC.size
        if len(record) != size or CRC.unpack_from(record, end)[0] != zlib.crc32(record[:end]):
            return None
        return record[RECORD.size + len(encoded) : end]

    def _damaged_data(self, name: str, located: PackedShard) -> bytes | None:
        """A damaged record's data (`_note_damaged`), to copy; None if its name is dead, a
        whole record of it is indexed (a copy), or a delete zeroed it since the scan."""
        if name in self._dead or name in self._index:
            return None
        data = os.pread(self._fd(located.pack), located.length, located.offset)
        return data if len(data) == located.length and data.count(0) != len(data) else None

    def _erase_copies_deleted_meanwhile(self, copies: dict[str, PackedShard]) -> None:
        """A delete racing the copy zeroed the old record, not the copy: zero that too
        (found by the tombstones appended since; a delete after this finds the copy)."""
        self.refresh()
        for name, copy in copies.items():
            if name in self._dead:
                self._erase(name, copy)

    def _names_in(self, pack: str) -> list[str]:
        """Every name indexed in `pack`, perhaps with some since dropped or moved (callers
        check), from a grouping of the whole index: one pass, not one per pack.

        The grouping is made again only once it may miss one: names are indexed in a
        pack (ours aside, never compacted) only by scanning it, from the start in a
        rescan of every pack, or records appended to it since.
        """
        grouped = self._grouped
        if (
            grouped is None
            or grouped.rescans != self._rescans
            or grouped.scanned.get(pack) != self._scanned.get(pack)
        ):
            grouped = self._grouped = NamesByPack(self._rescans, dict(self._scanned))
            for name, located in self._index.items():
                grouped.setdefault(located.pack, []).append(name)
        return grouped.get(pack, [])

    def _worth_compacting(self, pack: str) -> str | None:
        """Why the pack is worth rewriting: "dead" (a quarter of it), "small" (enough
        to fold into one file with the others), or None."""
        try:
            size = (self.directory / pack).stat().st_size
        except FileNotFoundError:
            return None
        live = sum(
            FRAMING + len(n) + found.length
            for n in self._names_in(pack)
            if (found := self._indexed(n, pack))
        )  # whole records: a pack of shards of a few bytes is not mostly dead
        if live < size * 3 // 4:
            return "dead"
        return "small" if size < SMALL_PACK else None

    def _claim(self, pack: str) -> int | None:
        """An fd holding the pack's flock, or None while a live writer (or compactor) has it."""
        try:
            fd = os.open(self.directory / pack, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return fd if _try_flock(fd) else None
