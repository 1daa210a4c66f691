"""In-memory shard store: for tests and for measuring the pipeline without disks."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from shardvault.errors import NotFound
from shardvault.nodes.port import Compacted, check_shard_name


class MemoryShardWriter:
    def __init__(self, store: MemoryShardStore, name: str) -> None:
        self._store = store
        self._name = name
        self._parts: list[bytes] = []
        self._done = False
        self.location: str | None = None  # a name is all this store needs

    def write(self, data: bytes | memoryview) -> None:
        self._parts.append(bytes(data))

    def commit(self, durable: bool = True) -> None:
        with self._store.lock:
            self._store.shards[self._name] = b"".join(self._parts)
        self._done = True

    def sync(self) -> None:
        """Memory is as durable as it gets at commit."""

    def abort(self) -> None:
        self._parts.clear()
        self._done = True


class MemoryShardReader:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read_at(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]

    def close(self) -> None:
        pass


class MemoryShardStore:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.shards: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def open_writer(self, name: str) -> MemoryShardWriter:
        return MemoryShardWriter(self, check_shard_name(name))

    def open_reader(self, name: str, location: str | None = None) -> MemoryShardReader:
        with self.lock:
            data = self.shards.get(check_shard_name(name))
        if data is None:
            raise NotFound(f"shard {name} not on node {self.node_id}")
        return MemoryShardReader(data)

    def intact(self, name: str, location: str | None = None) -> bool:
        """Memory keeps no check of its own: the block hashes are the check."""
        with self.lock:
            if check_shard_name(name) not in self.shards:
                raise NotFound(f"shard {name} not on node {self.node_id}")
        return True

    def read_cached(self, name: str, location: str | None, length: int) -> bytes | None:
        """Memory never waits; a shard not here is for `open_reader` to say."""
        with self.lock:
            data = self.shards.get(check_shard_name(name))
        return None if data is None else data[:length]

    def delete(self, name: str, location: str | None = None) -> bool:
        with self.lock:
            return self.shards.pop(check_shard_name(name), None) is not None

    def has_trace(self, name: str) -> bool:
        """A deleted name leaves nothing here, so it may be written again."""
        with self.lock:
            return check_shard_name(name) in self.shards

    def names(self) -> Iterator[str]:
        with self.lock:
            return iter(sorted(self.shards))

    def strays(self) -> list[str]:
        """Memory holds shards only."""
        return []

    def sync(self) -> None:
        pass

    def probe(self) -> None:
        """Memory always answers."""

    def collect_temporaries(self, older_than: float) -> int:
        return 0

    def drop_caches(self) -> None:
        """The shards are the memory: nothing else is kept."""

    def compact(self) -> Compacted:
        return Compacted({})  # a deleted shard's memory is freed at once

    def close(self) -> None:
        pass
