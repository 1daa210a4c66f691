"""Append-only pack files: a node's small shards, many to a file.

A durable 1 KiB put writes six shards; as six files each needs a create, a
rename and a journal commit, which caps small puts at a few hundred a second
here. Appending them to a pack file that this store holds open costs one
write each, and the filesystem's group commit makes many appends durable at
once (shardvault.durability).

Each store instance appends only to its own pack (``packs/<random>.pack``),
held under an exclusive flock for its life, so processes never interleave
records. Appends are made durable by the filesystem's group commit
(shardvault.durability): one sync covers every append made before it began.
A shard's location (pack and offset) is kept in its manifest, so a reader goes
straight to it (`at`), checking that the record there names the shard; only
without one, or when it is stale (a compaction moved the record), does an
instance index every pack by scanning it, lazily and again on a miss, so a
shard another process just wrote is found. A process that only reads by
location never scans, whatever the packs hold. Deleting appends a tombstone;
``compact`` copies the live records of packs no live writer holds into this
store's pack and removes the old files (their descriptors stay open a minute,
for reads already under way), and says where each shard went, so that gc can
rewrite the locations manifests keep (shardvault.vault.gc). Between its copies
and the removal a shard is in two packs; a compaction journal names them for
that long (nodes/journal.py), so that a delete meanwhile zeroes both copies,
and one a dead compaction left is settled by the next compaction.
Shard names are never reused, so a tombstone lost in a crash or dropped by
compaction can at worst bring back a dead record, which gc's orphan sweep
removes again.

The records' layout and framing are in nodes/pack_records.py (docs/formats.md,
"pack file"). A record cut short, or failing its CRC with nothing whole after it, ends the scan
of that file (a torn tail). A record failing its CRC with a record after it is
stepped over, and so is a stretch that does not frame (a damaged length, zeros
left by a truncation under its writer) up to the next whole record: a deleted
shard's data is zeroed in place (``delete``), and damage must not hide the shards
after it (compaction copies only what a scan finds). A record failing its CRC
whose data is not all zeros and whose name no tombstone kills was damaged, not
deleted: compaction copies its data, with a CRC of its own, and names it, so that
gc queues its version for repair (docs/formats.md, "pack file", says why a copy).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shardvault.durability import fsync_directory, leftover_temporaries, release_flock
from shardvault.errors import StorageError
from shardvault.group_commit import GroupSync
from shardvault.nodes.held_file import HeldFile
from shardvault.nodes.journal import JOURNAL, Journal, read_journal
from shardvault.nodes.pack_records import (
    CRC,
    FILE_HEADER,
    FRAMING,
    RECORD,
    RECORD_MAGIC,
    SHARD,
    TOMBSTONE,
    PackedShard,
    encode_record,
    framed_records,
    parse_location,
    record_in,
    shard_records,
)
from shardvault.nodes.pack_tombstones import Tombstones
from shardvault.nodes.port import PackLost, is_shard_name

ROTATE_AT = 64 << 20
RETIRED_FD_SECONDS = 60.0  # far longer than any read between taking an fd and its pread
SMALL_PACK = 1 << 20
_CREATE_TRIES = 3  # new packs a scan took for a dead writer's, in a row
_COMPACT_BATCH = 64  # packs claimed, copied and synced together (two fds each meanwhile)
_ERASE_TRIES = 3  # a shard moved by a compaction each time it is looked up, in a row
PRUNE_SECONDS = 10.0  # how often reads by location let go of packs compacted away
_PREFETCH = 4096  # a read by location takes the record's header and a small shard in one pread
LOCK_FILE = "compact.lock"  # held by the one process compacting the node's packs


@dataclass(slots=True)
class Compaction:
    packs: int  # removed
    moved: dict[str, str]  # shard name -> its new location, for each shard copied
    damaged: list[str] = field(default_factory=list)  # copied though failing their CRC


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


def _open_for_reading(path: Path) -> int:
    """A read-only descriptor whose reads leave the file's access time alone where the
    process may ask that (it owns the file): an atime update is a journal write, which
    a hung disk holds, even for a read the page cache answers (`read_cached`)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME)
    except PermissionError:  # EPERM: not the file's owner
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _cached(fd: int, length: int, offset: int) -> bytes | None:
    """Up to `length` bytes at `offset`, as far as the page cache holds them: never waits
    for the disk (RWF_NOWAIT). None if the first page is not there, or the file system
    cannot say (EOPNOTSUPP, as tmpfs): the caller reads where it can stop waiting."""
    buffer = bytearray(length)
    try:
        got = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
    except OSError:
        return None
    return bytes(buffer) if got == length else bytes(memoryview(buffer)[:got])


class PackSet:
    """The small shards of one node, across every pack file in its packs/ folder."""

    def __init__(
        self,
        directory: Path,
        node_id: str,
        group: GroupSync,
        check_root: Callable[[], None] = lambda: None,
    ) -> None:
        """``check_root`` raises unless the node's directory is still the one opened: a
        new pack is made only then (see `_open_active`)."""
        self.directory = directory
        self.node_id = node_id
        self._lock = threading.RLock()
        self._index: dict[str, PackedShard] = {}
        self._dead = Tombstones()
        self._damaged: dict[str, dict[str, PackedShard]] = {}  # pack -> records, see `_scan`
        self._scanned: dict[str, int] = {}
        self._fds: dict[str, int] = {}
        self._retired: dict[str, tuple[float, int]] = {}  # pack -> (when, fd), forgotten
        self._active: str | None = None
        self._active_fd: int | None = None
        self._active_size = 0
        # the active pack and its file, to see it is still at its name: one value, read
        # whole by a look without the lock (`_looked_unlocked`)
        self._watched: tuple[str, HeldFile] | None = None
        self._linked: tuple[str | None, int] = (None, 0)  # pack, size last seen at its name
        # let go unconfirmed -> size last seen at its name, and what happened to it
        self._lost: dict[str, tuple[int, str]] = {}
        self._next_prune = 0.0
        self._rescan = False  # a removed pack took indexed names: scan all again
        self._rescans = 0  # how many times every pack was scanned again from the start
        self._grouped: NamesByPack | None = None  # during a compaction: names per pack
        self._journal: Journal | None = None  # during a compaction: its packs (nodes/journal.py)
        self._strays: set[str] = set()  # named like a pack, not a file: left alone
        self.group = group
        self._check_root = check_root

    # -- writing ---------------------------------------------------------------

    def _open_active(self) -> int:
        if self._active_fd is not None and self._active_size < ROTATE_AT:
            return self._active_fd
        if self._active_fd is not None:  # full: once retired, `confirm` no longer looks at it
            self._check_linked()
        self._retire_active()
        # A disk unmounted under the process leaves its empty mount point: a pack made
        # there would hide the shard once the disk is back, and `group` syncs the
        # node's own file system, not that one: the put was acknowledged, not durable.
        self._check_root()
        self.directory.mkdir(exist_ok=True)  # never the node's root: an unmounted disk stays so
        for _ in range(_CREATE_TRIES):
            name = f"{secrets.token_hex(8)}.pack"
            fd = self._create_pack(name)
            if fd is not None:
                break
        else:
            raise OSError(errno.EAGAIN, "each new pack was taken for a dead writer's")
        path = self.directory / name
        try:  # before it is active: an active pack without its held file cannot be looked at
            held = HeldFile(fd, str(path))
        except BaseException:
            path.unlink(missing_ok=True)  # nothing in it yet: made again by the next append
            os.close(fd)
            raise
        self._active, self._active_fd, self._active_size = name, fd, len(FILE_HEADER)
        self._watched = (name, held)
        self._linked = (name, 0)
        self._scanned[name] = len(FILE_HEADER)
        # reads get an open file of their own: a dup would share the flock, and keep
        # holding it after rotation, so that no compaction could ever take the pack
        self._fds[name] = _open_for_reading(path)
        return fd

    def _create_pack(self, name: str) -> int | None:
        """Make the pack, take its flock and write its header; None if a scan took it
        for one a writer died making (`_remove_headerless`) between the make and the
        flock: appends to it would go to a removed file, acknowledged and lost."""
        if self._journal is not None:  # a compaction's copies go there: named before they land
            self._journal.new.append(name)
            self._journal.write(self.directory)
        path = self.directory / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        kept = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a scan holds it, and removes it
                return None
            if os.fstat(fd).st_nlink == 0:  # a scan removed it before we took the flock
                return None
            if os.write(fd, FILE_HEADER) != len(FILE_HEADER):
                raise OSError(errno.ENOSPC, "short write")
            kept = True
        finally:
            if not kept:  # not kept open and locked for the process's life, nor headerless
                os.close(fd)
                path.unlink(missing_ok=True)
        return fd

    def _retire_active(self) -> None:
        if self._watched is not None:  # before the close: a look under way may see its number
            self._watched[1].let_go()
            self._watched = None
        if self._active_fd is not None:
            release_flock(self._active_fd)  # compaction may take it now
        self._active, self._active_fd = None, None

    def _append(self, kind: int, name: str, data: bytes) -> PackedShard:
        record = encode_record(kind, name, data)
        with self._lock:
            try:
                fd = self._open_active()
                offset = self._active_size
                written = os.pwrite(fd, record, offset)
                if written != len(record):
                    raise OSError(errno.ENOSPC, "short write")
            except OSError as exc:
                self._undo_tail()
                reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror
                raise StorageError(
                    f"node {self.node_id}: appending to a pack failed: {reason}"
                ) from exc
            assert self._active is not None
            self._active_size += len(record)
            self._scanned[self._active] = self._active_size
            start = offset + RECORD.size + len(name.encode())
            return PackedShard(self._active, start, len(data))

    def confirm(self, located: PackedShard) -> None:
        """Raise unless the shard's pack was still the file at its name after the shard
        was appended: one removed (an `rm`, a cleanup), moved or replaced (a restore)
        under this writer takes every later append into a file nobody else will read.
        No compaction removes it: only a pack whose flock it takes (`_claim`).

        Called once the append is durable (its group commit synced). One look (a
        readlink: nodes/held_file.py) covers every append made before it, so
        concurrent puts share it; a pack found gone is let go, and the next append
        makes a new one. The lock is taken only when the look fails or the pack is
        no longer the active one: a put does not wait behind a scan or a compaction."""
        end = located.offset + located.length
        pack, upto = self._linked
        if located.pack == pack and end <= upto:  # a look since the append found it
            return
        if self._looked_unlocked(located.pack):
            return
        with self._lock:
            try:
                if located.pack == self._active and end > self._linked[1]:
                    self._check_linked()
            except OSError as exc:
                raise StorageError(
                    f"node {self.node_id}: looking for its pack failed: {exc.strerror}"
                ) from exc
            lost = self._lost.get(located.pack)
            if lost is not None and end > lost[0]:
                raise PackLost(f"node {self.node_id}: pack {located.pack} {lost[1]}")

    def _looked_unlocked(self, pack: str) -> bool:
        """Whether `pack` is the active pack and still at its name, seen without the lock;
        False sends the caller to the lock, to look there or say what was lost.

        Only the lock changes the active pack, and a change replaces `_watched` first:
        the pair read here, and still the one there after the look, means the size
        read between is that pack's and its descriptor was not closed before the
        look (the held file is let go before: `HeldFile.let_go`)."""
        watched = self._watched
        if watched is None or watched[0] != pack:
            return False
        size = self._active_size
        try:
            if not watched[1].at_its_name() or self._watched is not watched:
                return False
        except OSError:  # said under the lock, by the look made there
            return False
        self._linked = (pack, size)  # may replace a later look's: only ever too little
        return True

    def _check_linked(self) -> None:
        """Holding the lock: whether the active pack is still the file at its name; if
        not, it is let go (what was appended since the last look is lost with it)."""
        assert self._active is not None and self._watched is not None
        self._looked(self._watched[1].at_its_name())

    def _looked(self, at_name: bool) -> None:
        """Holding the lock: what a look at the active pack found (`_check_linked`)."""
        assert self._active is not None
        if at_name:
            self._linked = (self._active, self._active_size)
            return
        pack = self._active
        self._note_lost(
            pack, "was removed or replaced under this process, taking this write with it"
        )
        self._retire_active()
        self._forget_pack(pack)  # its records read as they would in any other process

    def _note_lost(self, pack: str, what: str) -> None:
        """Fail the appends to `pack` since its last look (`confirm`), saying `what`."""
        linked, upto = self._linked  # another pack's, if a look without the lock lagged
        self._lost[pack] = (upto if linked == pack else 0, what)

    def _retire_looked(self) -> None:
        """Let the active pack go once looked at. A put appended since the last look is
        called durable only by a look (`confirm`), and none is made once its pack is no
        longer active: let go unlooked, a pack removed meanwhile took such puts with it,
        acknowledged. A look that fails fails them too (fail closed)."""
        if self._active is None:
            return
        try:
            self._check_linked()
        except OSError as exc:
            self._note_lost(
                self._active,
                f"could not be looked for at its name ({exc.strerror}) before it was let "
                "go, so this write is not known durable",
            )
        self._retire_active()

    def _retire_unwaited(self) -> None:
        """Let the active pack go as the store closes, looked at only where /proc can say
        (a readlink: nodes/held_file.py). Stores are closed on the closing caller's own
        thread (the vault's `close`, vault/cells.py), which no deadline bounds: without
        /proc the look is a stat of the pack's name, which a disk hung since the node's
        last call (nothing has marked it) holds, and the close with it, for as long as
        it hangs. None is made: what was appended since the last look is not known
        durable (fail closed; in the vault, only a put given up on has a sync to come
        once its stores close)."""
        if self._active is None:
            return
        assert self._watched is not None
        at_name = self._watched[1].linked_at_its_name()
        if at_name is None:
            self._note_lost(
                self._active,
                "was let go as its store closed, unlooked at (without /proc the look is a "
                "stat of its name, which a hung disk would hold), so this write is not "
                "known durable",
            )
        else:
            self._looked(at_name)
        self._retire_active()

    def _undo_tail(self) -> None:
        """Cut a failed append off, or give up on this pack if even that fails."""
        if self._active_fd is None:
            return
        try:
            os.ftruncate(self._active_fd, self._active_size)
        except OSError:
            self._retire_looked()

    def add(self, name: str, data: bytes) -> tuple[int, PackedShard]:
        """Append a shard; returns the ticket to pass to ``group.sync`` for durability,
        and where it went."""
        self._prune_gone()  # a process that only writes lets go of packs compacted away
        failures = self.group.failures()  # before writing: see GroupSync.failures
        located = self._append(SHARD, name, data)
        with self._lock:
            self._index[name] = located
        return self.group.note_write(failures), located

    def delete(self, name: str, location: str | None = None) -> PackedShard | None:
        """Overwrite the shard's bytes with zeros, then tombstone it (neither synced yet);
        where the tombstone went, for the caller to `confirm` once synced, or None if
        the shard was not found.

        Compaction alone would leave a deleted (or forgotten) user's ciphertext in a
        pack for as long as the pack is live, or more than a quarter alive. Zeroing
        comes first, so a failure leaves the shard live for the next attempt. With
        the location its manifest kept, the shard is found without indexing every
        pack: a forget then costs what the subject holds, not what the node does.
        The tombstone needs the look a shard's append gets: a compaction that copied
        the record before it was zeroed, or one settling a dead compaction, zeroes
        its copy only by the tombstones it finds on disk.
        """
        with self._lock:
            located = self._index.get(name)
            if located is None and location is not None and not self._dead_on_disk(name):
                located = self.at(name, location)
            if located is None:
                located = self.locate(name)
            if located is None:
                return None
            erased = None  # the pack whose record was zeroed
            for _ in range(_ERASE_TRIES):
                if self._erase(located):
                    erased = located.pack
                    break
                # another process compacted that pack: the shard was copied elsewhere
                self._forget_pack(located.pack)
                self.refresh()
                found = self._index.get(name)
                if found is None:
                    break
                located = found
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

    def _erase(self, located: PackedShard) -> bool:
        """Zero a record's data in place; False if its pack is gone (compacted). Its CRC
        then fails, and the scan steps over it (its framing is intact)."""
        try:
            fd = os.open(self.directory / located.pack, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if os.pwrite(fd, bytes(located.length), located.offset) != located.length:
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
                self._erase(located)

    # -- reading ---------------------------------------------------------------

    def known(self, name: str) -> PackedShard | None:
        """Where the index already places a shard, without looking at the disk.

        No lock: a dict read is atomic, and the index only changes under the lock."""
        return self._index.get(name)

    def locate(self, name: str) -> PackedShard | None:
        with self._lock:
            found = self._index.get(name)
            if found is None and not self._dead_on_disk(name):
                self.refresh()
                found = self._index.get(name)
            return found

    def _dead_on_disk(self, name: str) -> bool:
        """Whether a tombstone this process saw still stands: its pack is still there.
        If it is gone, a record written since (by repair) may be the name's live one."""
        pack = self._dead.pack_of(name)
        return pack is not None and (pack == self._active or (self.directory / pack).exists())

    def has_trace(self, name: str) -> bool:
        """Whether a record or a tombstone of this name is in the packs, as of now."""
        with self._lock:
            self.refresh()
            return name in self._index or name in self._dead

    def at(self, name: str, location: str) -> PackedShard | None:
        """The shard at a location its manifest kept, if the record there is whole and
        names it; None if not (a compaction moved it, or the location is bad), and the
        caller looks it up instead. Its data is checked by the reader (block hash)."""
        encoded = name.encode()
        found = parse_location(location, encoded)
        if found is None:
            return None
        pack, start, record = found
        self._prune_gone()
        try:
            head = os.pread(self._fd(pack), _PREFETCH, record)
        except FileNotFoundError:
            return None
        return record_in(head, pack, start, encoded)

    def at_cached(self, name: str, location: str, length: int) -> bytes | None:
        """As `read_cached`, for the shard at a location its manifest kept. None also if
        the record there is not the shard's: `at` then tells, and the caller looks."""
        encoded = name.encode()
        found = parse_location(location, encoded)
        fd = None if found is None else self._open_fd(found[0])
        if found is None or fd is None:
            return None
        pack, start, record = found
        head = _cached(fd, start - record + length, record)  # the record's head and the data
        located = None if head is None else record_in(head, pack, start, encoded)
        return None if located is None else self.read_cached(located, length)

    def intact(self, name: str, located: PackedShard) -> bool:
        """Whether the shard's record passes its CRC, read from the disk now (the index
        says it did when scanned). Reads by location do not ask (see `at`). A pack
        another process compacted away meanwhile: its copy is looked up."""
        try:
            return self._whole_data(name, located) is not None
        except FileNotFoundError:
            moved = self.locate(name)
            return moved is not None and self._whole_data(name, moved) is not None

    def read_cached(self, located: PackedShard, length: int) -> bytes | None:
        """The shard's first `length` bytes, if they can be had without a call that could
        wait for the disk: its pack open here already, its pages in the page cache (a
        hung disk's reads never return, but its cache still answers). None if not, or
        if a look for packs compacted away is due (`read` makes it)."""
        length = min(length, located.length)
        if located.prefetched is not None:
            return located.prefetched[:length]
        fd = self._open_fd(located.pack)
        data = None if fd is None else _cached(fd, length, located.offset)
        return data if data is not None and len(data) == length else None

    def _open_fd(self, pack: str) -> int | None:
        """The pack's descriptor, if open here and no pruning is due: what a read that
        must not wait may use (`_fd` may open, `_prune_gone` lists the folder)."""
        if time.monotonic() >= self._next_prune:
            return None
        return self._fds.get(pack)

    def _prune_gone(self) -> None:
        """Now and then, let go of packs removed since (compacted by another process):
        reads by location never scan, which is what otherwise notices them."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_SECONDS  # one caller looks; the others go on
        # never waits: reads call this, and a compaction or a scan holds the lock long
        if not self._lock.acquire(blocking=False):
            return
        try:
            try:
                present = set(os.listdir(self.directory))
            except OSError:
                return
            for pack in [pack for pack in self._fds if pack not in present]:
                self._forget_pack(pack)
            self._close_expired()
        finally:
            self._lock.release()

    def read(self, located: PackedShard, offset: int, length: int) -> bytes:
        length = max(0, min(length, located.length - offset))
        if located.prefetched is not None:
            return located.prefetched[offset : offset + length]
        self._prune_gone()  # a process reading only by its index lets go of packs too
        fd = self._fd(located.pack)
        return os.pread(fd, length, located.offset + offset)

    def _fd(self, pack: str) -> int:
        fd = self._fds.get(pack)  # no lock when open (as `known`): fds change only under it
        if fd is not None:
            return fd
        with self._lock:
            fd = self._fds.get(pack)
            if fd is None:
                retired = self._retired.get(pack)
                if retired is not None:  # a read that located it before it was forgotten
                    return retired[1]
                fd = _open_for_reading(self.directory / pack)
                self._fds[pack] = fd
            return fd

    def strays(self) -> list[str]:
        """The names of what the scans left alone as not packs, not being files."""
        with self._lock:
            return sorted(self._strays)

    def names(self) -> list[str]:
        with self._lock:
            self.refresh()
            return sorted(self._index)

    def refresh(self) -> None:
        """Index records appended since the last look, in every pack (ours and others'),
        and all of every pack again once a removed pack took indexed names with it."""
        with self._lock:
            while True:
                try:
                    packs = sorted(p.name for p in self.directory.glob("*.pack"))
                except OSError:
                    return
                for gone in set(self._scanned) - set(packs):
                    self._forget_pack(gone)
                self._strays.intersection_update(packs)  # those still there are scanned again
                if self._rescan:  # every pack, this set's own active one included
                    self._rescan = False
                    self._rescans += 1
                    self._scanned.clear()
                for pack in packs:
                    if pack != self._active or pack not in self._scanned:
                        self._scan(pack)
                if not self._rescan:  # a pack removed during the scan: once more
                    return

    def drop_index(self) -> None:
        """Forget every indexed name (about 240 bytes a shard) but our active pack's (at
        most a pack's worth, ROTATE_AT); the next look scans every pack again. The
        active pack is kept: retiring it would leave a pack per call, and let another
        process's compaction move what this one's gc has yet to tell manifests about."""
        with self._lock:
            active = self._active
            self._index = {n: loc for n, loc in self._index.items() if loc.pack == active}
            self._dead = Tombstones()
            self._damaged.clear()
            self._scanned.clear()  # our active pack too: its tombstones fill _dead again
            self._rescans += 1

    def _in_active(self, name: str) -> bool:
        """Whether the index places a shard in this set's own active pack: that record is
        the newest copy (a compaction appends there), and no other process removes it."""
        found = self._index.get(name)
        return found is not None and found.pack == self._active

    def _forget_pack(
        self, pack: str, names: Iterable[str] | None = None, *, compacted_here: bool = False
    ) -> None:
        """Drop a removed pack. A name indexed there may have a copy in another pack
        this set scanned earlier (a compaction copies before it removes), which only a
        scan of every pack from the start finds again: the next `refresh` makes one.
        So may a name its tombstones kept dead: repair may have written it again, and
        a scan may have passed that record while the name was dead. Not so in the
        process removing the pack (`compacted_here`): nobody writes the name again
        before the unlink, which comes after this, so its next scan finds the record.
        `names`: all that can be indexed there, when the caller knows (else all are tried)."""
        self._scanned.pop(pack, None)
        self._damaged.pop(pack, None)
        fd = self._fds.pop(pack, None)
        if fd is not None:
            self._retire(pack, fd)
        candidates = self._index if names is None else names
        dropped = [n for n in candidates if self._indexed(n, pack)]
        for name in dropped:
            del self._index[name]
        undead = self._dead.drop_pack(pack) and not compacted_here
        self._rescan = self._rescan or bool(dropped) or undead

    def _retire(self, pack: str, fd: int) -> None:
        """Keep a forgotten pack's descriptor open a while: a read that located a shard
        there may not have read yet (`_fd` still hands it out), and closing it could even
        give its number to another file. The records stay readable through it after the
        unlink."""
        self._close_expired()
        self._retired[pack] = (time.monotonic(), fd)

    def _close_expired(self) -> None:
        now = time.monotonic()
        for pack, (when, old) in list(self._retired.items()):
            if now - when > RETIRED_FD_SECONDS:
                del self._retired[pack]
                os.close(old)

    def _scan(self, pack: str) -> None:
        try:
            fd = self._fd(pack)
            info = os.fstat(fd)
        except FileNotFoundError:
            self._forget_pack(pack)
            return
        if not stat.S_ISREG(info.st_mode):  # a directory named like a pack: not ours
            self._strays.add(pack)
            return
        size = info.st_size
        position = self._scanned.get(pack, 0)
        if position > size:  # cut short since the last look (damage): all of it again
            position = 0
        if position == 0:
            header = os.pread(fd, len(FILE_HEADER), 0)
            if header != FILE_HEADER:
                # Cut short, zeros a power loss left of a pack never synced, or another
                # version's: none of its records is read, and it is never compacted (it
                # is not scanned); the node's other packs serve on.
                if FILE_HEADER.startswith(header):  # shorter than ours: a writer's new pack
                    self._remove_headerless(pack)
                return
            position = len(FILE_HEADER)
        data = os.pread(fd, size - position, position)
        cursor = 0
        for at, kind, name_len, data_len, whole in framed_records(data):
            cursor = at + FRAMING + name_len + data_len
            if not whole:  # erased or damaged: not indexed, the rest stays
                if kind == SHARD:
                    self._note_damaged(pack, data, at, name_len, data_len, position)
                continue
            name = data[at + RECORD.size : at + RECORD.size + name_len].decode()
            if kind == TOMBSTONE:
                self._dead.add(name, pack)
                self._index.pop(name, None)
            elif name not in self._dead and not self._in_active(name):
                start = position + at + RECORD.size + name_len
                self._index[name] = PackedShard(pack, start, data_len)
        self._scanned[pack] = position + cursor

    def _note_damaged(
        self, pack: str, data: bytes, at: int, name_len: int, data_len: int, position: int
    ) -> None:
        """Note a shard record failing its CRC whose data a delete did not zero: damage,
        which compaction copies rather than drop (`_fold`). Kept apart from the index:
        found by name, it would be read as whole. A name that is not a shard's (damaged
        itself) is no record any read asks for: the shard reads as missing, and is
        repaired so."""
        start = at + RECORD.size + name_len
        if data.count(0, start, start + data_len) == data_len:
            return  # deleted: zeroed in place (its tombstone perhaps lost in a crash)
        name = data[at + RECORD.size : start].decode("ascii", errors="replace")
        if is_shard_name(name):
            found = PackedShard(pack, position + start, data_len)
            self._damaged.setdefault(pack, {})[name] = found

    def _note_damaged_tail(self, pack: str) -> None:
        """Note the shard record a scan of a pack no writer holds stopped at: failing its
        CRC with nothing whole after it. A torn write a crash left (never acknowledged:
        a put is only once synced, and its version never committed, so gc queues
        nothing), or damage to the pack's last record, which a delete would have zeroed."""
        position = self._scanned.get(pack)
        if position is None:
            return
        fd = self._fd(pack)
        tail = os.pread(fd, os.fstat(fd).st_size - position, position)
        if len(tail) < RECORD.size:
            return
        magic, kind, _, name_len, data_len = RECORD.unpack_from(tail)
        framed = RECORD.size + name_len + data_len + CRC.size <= len(tail)
        if magic == RECORD_MAGIC and kind == SHARD and framed:
            self._note_damaged(pack, tail, 0, name_len, data_len, position)

    def _remove_headerless(self, pack: str) -> None:
        """Remove a pack whose writer was killed between making it and writing its
        header (it would stay for good: never read, never compacted), unless its flock
        is held: a live writer takes it before its header, and writes that next.
        Checked again under the flock, which the writer needs to write anything."""
        claim = self._claim(pack)
        if claim is None:
            return
        try:
            if os.fstat(claim).st_size < len(FILE_HEADER):
                (self.directory / pack).unlink(missing_ok=True)
                self._forget_pack(pack)
        finally:
            os.close(claim)

    # -- collection ------------------------------------------------------------

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
                self._erase(PackedShard(pack, start, data_len))

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
                    if data is not None:
                        last, copies[name] = self.add(name, data)
                        first = first or last
                        damaged.append(name)
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
                self._erase(copy)

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

    def _indexed(self, name: str, pack: str) -> PackedShard | None:
        """Where the index places a shard, if that is in `pack`."""
        found = self._index.get(name)
        return found if found is not None and found.pack == pack else None

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

    def close(self) -> None:
        with self._lock:
            self._retire_unwaited()
            for fd in [*self._fds.values(), *(fd for _, fd in self._retired.values())]:
                os.close(fd)
            self._fds.clear()
            self._retired.clear()
