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
location never scans, whatever the packs hold. Deleting zeroes a shard's records
and appends a tombstone (nodes/pack_deletes.py; the tombstones seen are
nodes/pack_tombstones.py); ``compact`` copies the live records of packs no live
writer holds into this store's pack and removes the old files
(nodes/pack_compaction.py): each job a class PackSet inherits, which says how.
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
deleted: compaction names it, so that gc queues its version for repair, and copies
its data, with a CRC of its own, if it begins with the header of its name's shard
(docs/formats.md, "pack file", says why a copy, and why only then).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from shardvault.errors import StorageError
from shardvault.file_locks import release_flock
from shardvault.group_commit import GroupSync
from shardvault.nodes.held_file import HeldFile
from shardvault.nodes.journal import Journal
from shardvault.nodes.pack_compaction import LOCK_FILE as LOCK_FILE
from shardvault.nodes.pack_compaction import SMALL_PACK as SMALL_PACK
from shardvault.nodes.pack_compaction import NamesByPack, PackCompaction
from shardvault.nodes.pack_deletes import PackDeletion
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
)
from shardvault.nodes.pack_tombstones import Tombstones
from shardvault.nodes.port import PackLost, is_shard_name, storage_error

ROTATE_AT = 64 << 20
RETIRED_FD_SECONDS = 60.0  # far longer than any read between taking an fd and its pread
_CREATE_TRIES = 3  # new packs a scan took for a dead writer's, in a row
PRUNE_SECONDS = 10.0  # how often reads by location let go of packs compacted away
_PREFETCH = 4096  # a read by location takes the record's header and a small shard in one pread


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


class PackSet(PackDeletion, PackCompaction):
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
        self._closed = False  # no pack is opened again: nothing would close it

    # -- writing ---------------------------------------------------------------

    def _open_active(self) -> int:
        if self._active_fd is not None and self._active_size < ROTATE_AT:
            return self._active_fd
        if self._closed:  # a put the vault's close did not wait for: `close` let go of
            # the active pack, and a new one would stay open, and locked, for good
            raise OSError(errno.EBADF, "its store is closed")
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
        fd, self._active, self._active_fd = self._active_fd, None, None
        if fd is not None:  # let go first: a close that fails has released it all the same
            release_flock(fd)  # compaction may take it now

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
                raise storage_error(self.node_id, "appending to a pack", exc) from exc
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
        (a readlink: nodes/held_file.py). Without /proc the look is a stat of the pack's
        name, which a disk hung since the node's last call (nothing has marked it) holds
        for as long as it hangs: the vault gives up on such a close after the nodes'
        deadline (`NodeDeadline.close_stores`), but its thread stays stuck, with the
        store's lock held. None is made: what was appended since the last look is not known
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
                if self._closed:  # a read the vault's close did not wait for
                    raise OSError(errno.EBADF, f"node {self.node_id}: its store is closed")
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
        which compaction names for repair, and copies rather than drop if a read could
        use it (`_fold`). Kept apart from the index: found by name, it would be read as
        whole. A name that is not a shard's (damaged itself) is no record any read asks
        for: the shard reads as missing, and is repaired so."""
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

    def _indexed(self, name: str, pack: str) -> PackedShard | None:
        """Where the index places a shard, if that is in `pack`."""
        found = self._index.get(name)
        return found if found is not None and found.pack == pack else None

    def close(self) -> None:
        """Close every descriptor: one whose close fails (EIO from a network share; the
        kernel releases it all the same) left the rest open, and said a bare OSError.
        The first failure is raised once all are closed, naming the node."""
        failures: list[OSError] = []
        with self._lock:
            self._closed = True
            try:
                self._retire_unwaited()
            except OSError as exc:
                failures.append(exc)
            fds = [*self._fds.values(), *(fd for _, fd in self._retired.values())]
            self._fds.clear()
            self._retired.clear()
            for fd in fds:
                try:
                    os.close(fd)
                except OSError as exc:
                    failures.append(exc)
        if failures:
            first = failures[0]
            raise StorageError(
                f"node {self.node_id}: closing its packs failed: {first.strerror or first}"
            ) from first
