"""Local-directory shard store: the embedded default.

Layout under the node's root::

    shards/ab/cd/<name>    committed shards, fanned out by the name's first 4 hex digits
    tmp/<name>.<random>    shards being written

A write goes to tmp/ and is renamed into place once durable, so a shard is
either wholly there or not there at all. A large shard is fsynced on its own
(then its directory); a small one is renamed and then made durable by the
filesystem's group commit (shardvault.durability), so concurrent small puts
share one journal commit instead of paying one each.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

from shardvault.durability import GroupSync, group_sync_for
from shardvault.errors import NotFound, StorageError
from shardvault.nodes.port import check_shard_name

SMALL_SHARD = 256 << 10


def _storage_error(node_id: str, what: str, exc: OSError) -> StorageError:
    reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return StorageError(f"node {node_id}: {what} failed: {reason}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalShardWriter:
    def __init__(self, store: LocalDirShardStore, name: str) -> None:
        self._store = store
        self._final = store.shard_path(name)
        self._temp = store.tmp_dir / f"{name}.{secrets.token_hex(6)}"
        self._written = 0
        try:
            self._fd: int | None = os.open(
                self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise _storage_error(store.node_id, "creating a shard", exc) from exc

    def write(self, data: bytes | memoryview) -> None:
        if self._fd is None:
            raise StorageError(f"node {self._store.node_id}: write after commit or abort")
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self._written += written
        except OSError as exc:
            self.abort()
            raise _storage_error(self._store.node_id, "writing a shard", exc) from exc

    def commit(self, durable: bool = True) -> None:
        if self._fd is None:
            raise StorageError(f"node {self._store.node_id}: commit after abort")
        small = self._written <= SMALL_SHARD
        try:
            if not small:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            try:
                os.rename(self._temp, self._final)
            except FileNotFoundError:
                self._final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self._temp, self._final)
            if not small:
                _fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise _storage_error(self._store.node_id, "committing a shard", exc) from exc
        if small:
            ticket = self._store.group_sync.note_write()
            if durable:
                self._store.group_sync.sync(self._store.root, ticket)
            else:
                self._store.owe_sync(ticket)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._temp.unlink(missing_ok=True)


class LocalShardReader:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        os.close(self._fd)


class LocalDirShardStore:
    def __init__(self, node_id: str, root: Path) -> None:
        self.node_id = node_id
        self.root = root
        self.shard_dir = root / "shards"
        self.tmp_dir = root / "tmp"
        self._shard_root = str(self.shard_dir)
        self._owed = 0
        self._owed_lock = threading.Lock()
        try:
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self.group_sync: GroupSync = group_sync_for(self.root)
        except OSError as exc:
            raise _storage_error(node_id, f"opening {root}", exc) from exc

    def owe_sync(self, ticket: int) -> None:
        with self._owed_lock:
            self._owed = max(self._owed, ticket)

    def sync(self) -> None:
        with self._owed_lock:
            owed = self._owed
        if owed:
            self.group_sync.sync(self.root, owed)

    def shard_path(self, name: str) -> Path:
        return Path(self._shard_file(name))

    def _shard_file(self, name: str) -> str:
        check_shard_name(name)
        return os.path.join(self._shard_root, name[:2], name[2:4], name)

    def open_writer(self, name: str) -> LocalShardWriter:
        return LocalShardWriter(self, check_shard_name(name))

    def open_reader(self, name: str) -> LocalShardReader:
        path = self._shard_file(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"shard {name} not on node {self.node_id}") from None
        except OSError as exc:
            raise _storage_error(self.node_id, "opening a shard", exc) from exc
        return LocalShardReader(fd)

    def delete(self, name: str) -> bool:
        try:
            self.shard_path(name).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _storage_error(self.node_id, "deleting a shard", exc) from exc
        return True

    def names(self) -> Iterator[str]:
        for path in sorted(self.shard_dir.glob("*/*/*")):
            yield path.name

    def collect_temporaries(self, older_than: float) -> int:
        removed = 0
        for path in self.tmp_dir.iterdir():
            try:
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
