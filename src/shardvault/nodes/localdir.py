"""Local-directory shard store: the embedded default.

Layout under the node's root::

    shards/ab/cd/<name>    shards larger than the pack limit, one file each,
                           fanned out by the name's first 4 hex digits
    packs/<random>.pack    smaller shards, appended to this store's pack (nodes/packs.py)
    tmp/<name>.<random>    large shards being written

A large shard goes to tmp/, is fsynced, renamed into place and its directory
fsynced, so it is either wholly there or not there at all; never into a shards/
other than the one the store opened (`check_root`). A small one is
held in memory until commit, appended to the pack in one write, and made
durable by group commit on the pack (shardvault.durability), so many small
puts share one fdatasync. No path is ever built from user input:
shard names are checked against the vault's own pattern.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

from shardvault.background_flush import BackgroundFlush
from shardvault.durability import fsync_directory
from shardvault.errors import NotFound, StorageError
from shardvault.group_commit import filesystem_sync
from shardvault.nodes.pack_records import PackedShard
from shardvault.nodes.packs import PackSet
from shardvault.nodes.port import (
    AdvisedStorageError,
    Compacted,
    check_shard_name,
    is_shard_name,
    storage_error,
)

DEFAULT_PACK_LIMIT = 64 << 10
WRITEBACK_CHUNK = 4 << 20  # measured best of 2-16 MiB for 256 MiB puts here


def _make_fanout(folder: Path) -> None:
    """Make a shard's fan-out folders (never shards/ itself), their names durable.

    The shard's directory fsync makes its name in ``folder`` durable, not
    ``folder``'s own name in its parent: without these a power cut could take
    a new folder, and the acknowledged shard in it, away. Paid once per folder.
    """
    folder.parent.mkdir(exist_ok=True)
    folder.mkdir(exist_ok=True)
    fsync_directory(folder.parent)
    fsync_directory(folder.parent.parent)


def _folders(path: str) -> Iterator[str]:
    """The directories in PATH (a fan-out level); anything else there is not walked."""
    with os.scandir(path) as entries:
        return iter([e.path for e in entries if e.is_dir() and not e.name.startswith(".")])


class LocalShardWriter:
    """Buffers a shard in memory while it fits the pack limit, then spills to a file."""

    def __init__(self, store: LocalDirShardStore, name: str) -> None:
        self._store = store
        self._name = name
        self._temp: Path | None = None  # only a shard that outgrows the pack limit has files
        self._buffer: bytearray | None = bytearray()
        self._fd: int | None = None
        self._flush: BackgroundFlush | None = None
        self._done = False
        self._ticket = 0  # a packed shard committed without waiting: its group-commit ticket
        self._located: PackedShard | None = None  # a packed shard's, once committed
        self.location: str | None = None  # a packed shard's, once committed

    def _spill(self) -> None:
        """Move to a temporary file: the shard outgrew the pack limit."""
        self._temp = self._store.tmp_dir / f"{self._name}.{secrets.token_hex(6)}"
        try:
            self._fd = os.open(
                self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise storage_error(self._store.node_id, "creating a shard", exc) from exc
        self._flush = BackgroundFlush(self._fd, WRITEBACK_CHUNK)
        pending, self._buffer = self._buffer, None
        if pending:
            self._write_file(pending)

    def _write_file(self, data: bytes | bytearray | memoryview) -> None:
        assert self._fd is not None and self._flush is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            self._flush.wrote(len(data))
        except OSError as exc:
            self.abort()
            raise storage_error(self._store.node_id, "writing a shard", exc) from exc

    def write(self, data: bytes | memoryview) -> None:
        if self._done:
            raise StorageError(f"node {self._store.node_id}: write after commit or abort")
        if self._buffer is not None:
            if len(self._buffer) + len(data) <= self._store.pack_limit:
                self._buffer += data
                return
            self._spill()
        self._write_file(data)

    def commit(self, durable: bool = True) -> None:
        if self._done:
            raise StorageError(f"node {self._store.node_id}: commit after commit or abort")
        self._done = True
        if self._buffer is not None:
            packs = self._store.packs
            ticket, located = packs.add(self._name, bytes(self._buffer))
            self.location = located.location
            self._buffer = None
            if durable:
                packs.group.sync(ticket)
                packs.confirm(located)
            else:
                self._located = located
                self._ticket = ticket
                self._store.owe_sync(ticket)
            return
        assert self._fd is not None and self._temp is not None
        final = self._store.shard_path(self._name)
        assert self._flush is not None
        try:
            self._flush.finish()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            # checked as before a new pack (`PackSet._open_active`): renamed into a shards/
            # made again on an unmounted disk's mount point, the shard was acknowledged,
            # then hidden once the disk was back. One stat beside the fsync, made last
            # so that only a directory replaced between it and the rename goes unseen
            self._store.check_root()
            try:
                os.rename(self._temp, final)
            except FileNotFoundError:
                _make_fanout(final.parent)
                os.rename(self._temp, final)
            fsync_directory(final.parent)
        except OSError as exc:
            self.abort()
            raise storage_error(self._store.node_id, "committing a shard", exc) from exc
        except StorageError:  # its directory is not the one opened: the temporary goes
            self.abort()
            raise

    def sync(self) -> None:
        """Wait for this shard's own ticket: a flush that failed for it raises here even
        if a later one, for another put, has succeeded since (a large shard's commit
        has fsynced it already); so does a pack removed under this process (`confirm`)."""
        if self._ticket:
            self._store.packs.group.sync(self._ticket)
            assert self._located is not None
            self._store.packs.confirm(self._located)

    def abort(self) -> None:
        self._done = True
        self._buffer = None
        if self._fd is not None:
            assert self._flush is not None
            self._flush.wait()  # the descriptor is closed next: no flush may still use it
            os.close(self._fd)
            self._fd = None
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)


class LocalShardReader:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        os.close(self._fd)


class PackedShardReader:
    def __init__(self, packs: PackSet, located: PackedShard) -> None:
        self._packs = packs
        self._located = located

    def read_at(self, offset: int, length: int) -> bytes:
        return self._packs.read(self._located, offset, length)

    def close(self) -> None:
        pass


class LocalDirShardStore:
    def __init__(self, node_id: str, root: Path, pack_limit: int = DEFAULT_PACK_LIMIT) -> None:
        self.node_id = node_id
        self.root = root
        self.pack_limit = pack_limit
        self.shard_dir = root / "shards"
        self.tmp_dir = root / "tmp"
        self._shard_root = str(self.shard_dir)
        # per thread: (first, last) ticket not yet synced, and tombstones to look for
        # after that sync, the last per pack (`_owe_look`)
        self._owed = threading.local()
        self._strays: dict[str, list[str]] = {"shards": [], "tmp": []}  # see `strays`
        try:
            # the vault checks first that the root exists (nodes/marker.py); later
            # mkdirs never make it again, so a disk unmounted meanwhile stays so
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            opened = os.stat(self.shard_dir)
            self._shard_root_id = (opened.st_dev, opened.st_ino)
        except OSError as exc:
            raise storage_error(node_id, f"opening {root}", exc) from exc
        self.packs = PackSet(root / "packs", node_id, filesystem_sync(root), self.check_root)

    def owe_sync(self, ticket: int) -> None:
        """Note a write the calling thread's next `sync` must make durable."""
        span: tuple[int, int] | None = getattr(self._owed, "span", None)
        self._owed.span = (ticket if span is None else span[0], ticket)

    def _owe_look(self, tombstone: PackedShard) -> None:
        """Note a tombstone the calling thread's next `sync` must find in a pack still at
        its name (`PackSet.confirm`): the last one per pack covers those before it."""
        owed: dict[str, PackedShard] | None = getattr(self._owed, "tombstones", None)
        if owed is None:
            owed = self._owed.tombstones = {}
        owed[tombstone.pack] = tombstone

    def sync(self) -> None:
        """Make this thread's writes since its last sync durable, or raise: a flush that
        failed for any of them raises even when a later one, for another caller's
        write, succeeded (with the node's latest ticket alone, gc went on as if a
        delete that failed flush lost were durable). So does a tombstone appended to
        a pack removed under this process: the delete was not made durable either."""
        span: tuple[int, int] | None = getattr(self._owed, "span", None)
        tombstones: dict[str, PackedShard] | None = getattr(self._owed, "tombstones", None)
        self._owed.tombstones = None
        if span is not None:
            self._owed.span = None
            self.packs.group.sync(span[1], since=span[0])
        for tombstone in (tombstones or {}).values():
            self.packs.confirm(tombstone)

    def shard_path(self, name: str) -> Path:
        """Where a large (file) shard lives; small shards are in packs/."""
        return Path(self._shard_file(name))

    def _shard_file(self, name: str) -> str:
        check_shard_name(name)
        return os.path.join(self._shard_root, name[:2], name[2:4], name)

    def open_writer(self, name: str) -> LocalShardWriter:
        return LocalShardWriter(self, check_shard_name(name))

    def _packed_at(self, name: str, location: str | None) -> PackedShard | None:
        """The packed shard, if the index or the manifest's location finds it: no scan."""
        known = self.packs.known(name)  # no I/O: small shards skip the file lookup
        if known is not None:  # only checked names are ever indexed
            return known
        check_shard_name(name)
        if location is None:
            return None
        try:  # the manifest's: straight to the record
            return self.packs.at(name, location)
        except OSError as exc:
            raise storage_error(self.node_id, "reading a pack", exc) from exc

    def open_reader(
        self, name: str, location: str | None = None
    ) -> LocalShardReader | PackedShardReader:
        packed = self._packed_at(name, location)
        if packed is not None:  # the file path is built only when it is needed
            return PackedShardReader(self.packs, packed)
        try:
            fd = os.open(self._shard_file(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            located = self._locate(name)
            if located is None:
                self.check_root()
                raise NotFound(f"shard {name} not on node {self.node_id}") from None
            return PackedShardReader(self.packs, located)
        except OSError as exc:
            raise storage_error(self.node_id, "opening a shard", exc) from exc
        return LocalShardReader(fd)

    def intact(self, name: str, location: str | None = None) -> bool:
        """A packed shard's record passes its CRC; a file of its own has no check but the
        block hashes (nodes/port.py)."""
        packed = self._packed_at(name, location)
        if packed is None and os.path.isfile(self._shard_file(name)):
            return True
        packed = packed or self._locate(name)
        if packed is None:
            self.check_root()
            raise NotFound(f"shard {name} not on node {self.node_id}")
        try:
            return self.packs.intact(name, packed)
        except OSError as exc:
            raise storage_error(self.node_id, "reading a pack", exc) from exc

    def read_cached(self, name: str, location: str | None, length: int) -> bytes | None:
        """A packed shard from the page cache, through a pack this store has open (nodes/
        packs.py): no open, lookup or scan, which could wait for the disk. None for the
        rest, a large shard (a file of its own, opened per read) among them."""
        known = self.packs.known(name)  # no I/O, as in `open_reader`
        if known is not None:
            return self.packs.read_cached(known, length)
        if location is None:
            return None
        return self.packs.at_cached(check_shard_name(name), location, length)

    def _locate(self, name: str) -> PackedShard | None:
        try:
            return self.packs.locate(name)
        except OSError as exc:
            raise storage_error(self.node_id, "reading packs", exc) from exc

    def delete(self, name: str, location: str | None = None) -> bool:
        failures = self.packs.group.failures()  # before writing: see GroupSync.failures
        try:
            os.unlink(self._shard_file(name))
        except (FileNotFoundError, IsADirectoryError):  # none, or a directory: not a shard
            pass
        except OSError as exc:
            raise storage_error(self.node_id, "deleting a shard", exc) from exc
        else:  # the unlink is durable at the next sync() too: the group syncs the filesystem
            self.owe_sync(self.packs.group.note_write(failures))
            return True
        try:
            tombstone = self.packs.delete(name, location)
        except OSError as exc:
            raise storage_error(self.node_id, "deleting a packed shard", exc) from exc
        if tombstone is None:
            self.check_root()
            return False
        # its tombstone and zeroed bytes are durable at the next sync(), which looks
        # that the tombstone's pack is still at its name
        self.owe_sync(self.packs.group.note_write(failures))
        self._owe_look(tombstone)
        return True

    def has_trace(self, name: str) -> bool:
        if os.path.lexists(self._shard_file(name)):
            return True
        try:
            traced = self.packs.has_trace(name)
        except OSError as exc:
            raise storage_error(self.node_id, "reading packs", exc) from exc
        if not traced:
            self.check_root()
        return traced

    def check_root(self) -> None:
        """Raise unless the store's directory is still the one it opened: a shard found
        nowhere is gone only then. One that went after the store was opened (a disk
        unmounted, a directory moved) hides its shards, and "no such shard" would let
        the vault drop its notes of copies still on it (vault/copy_swap.py). Its shards/
        is compared by device and inode, not just looked for: another process opening
        the node meanwhile makes a new one on the empty mount point."""
        try:
            found = os.stat(self._shard_root)
        except OSError as exc:
            raise storage_error(self.node_id, f"finding {self.shard_dir}", exc) from exc
        if (found.st_dev, found.st_ino) != self._shard_root_id:
            raise AdvisedStorageError(
                f"node {self.node_id}: {self.shard_dir} is not the directory this process "
                "opened (a disk unmounted, or the directory made again)",
                "reopen the vault once the node's own directory is back",
                "reopen the vault once the nodes' own directories are back",
            )

    def names(self) -> Iterator[str]:
        """Every shard name on the node. A file of any other name under shards/ (a note,
        an editor's backup, a copy tool's temporary) is not one of ours: listed, gc
        took it for an orphan, and failed on it, the whole run or the node every run.
        Nor is anything named like a shard that is not a file (a directory a person or a
        restore tool made): its delete failed so, and it is kept for `strays`."""
        self.check_root()  # a directory gone lists as empty: gc would see nothing to do
        strays: list[str] = []
        try:
            found = set(self._shard_files(strays))
            found.update(self.packs.names())
        except OSError as exc:
            raise storage_error(self.node_id, "listing shards", exc) from exc
        self._strays["shards"] = strays
        return iter(sorted(found))

    def _shard_files(self, strays: list[str]) -> Iterator[str]:
        """The shard names of the files in the fan-out folders; what is named like a shard
        but is not a file goes to STRAYS. The folders' entries say what they are: no
        syscall per shard (but for a symbolic link, followed as a read would)."""
        for first in _folders(self._shard_root):
            for second in _folders(first):
                with os.scandir(second) as entries:
                    for entry in entries:
                        if not is_shard_name(entry.name):
                            continue
                        if entry.is_file():
                            yield entry.name
                        else:
                            strays.append(entry.path)

    def strays(self) -> list[str]:
        """What the last `names` and `collect_temporaries` left alone where the store
        keeps files, not being files (a directory, say): the paths, for an operator."""
        packs = [str(self.packs.directory / pack) for pack in self.packs.strays()]
        return sorted([*self._strays["shards"], *self._strays["tmp"], *packs])

    def probe(self) -> None:
        """Its directory, then a flush of its disk that begins now (a fresh ticket):
        a hung disk answers neither."""
        self.check_root()
        group = self.packs.group
        group.sync(group.note_write())

    def collect_temporaries(self, older_than: float) -> int:
        removed = 0
        try:
            found = list(self.tmp_dir.iterdir())
        except OSError as exc:
            raise storage_error(self.node_id, f"listing {self.tmp_dir}", exc) from exc
        strays = []
        for path in found:
            try:
                if path.is_dir():  # not one of ours: left alone, and named (`strays`)
                    strays.append(str(path))
                elif path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except (FileNotFoundError, IsADirectoryError):  # gone, or made a directory since
                continue
        self._strays["tmp"] = strays
        return removed

    def drop_caches(self) -> None:
        self.packs.drop_index()

    def compact(self) -> Compacted:
        """Rewrite the packs that only dead writers held (nodes/packs.py)."""
        try:
            done = self.packs.compact()
            return Compacted(done.moved, tuple(done.damaged))
        except OSError as exc:
            raise storage_error(self.node_id, "compacting packs", exc) from exc

    def close(self) -> None:
        self.packs.close()
