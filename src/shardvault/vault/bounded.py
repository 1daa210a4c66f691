"""Maintenance's calls to the node stores (gc, repair, node usage), bounded by the deadline.

gc, repair and `shardvault nodes` call the stores themselves, many calls per
node, some long (a listing reads every pack of a node). Each node's calls run
in turn on a thread of the node's own for the run (`io_threads.IoThread`: a
store's ``sync`` covers the deletes its calling thread made; `on_node` runs
many as one, where a hand-off per call would cost more than they do), and the caller
waits for one while that thread makes progress: a call is given up on once
the thread has not run at all for the nodes' deadline, as a call stuck on a
hung disk does not, while a listing of a large node that reads pack after
pack is waited for. The node is then marked hung (`NodeDeadline.expired`),
every later call of the run to it fails at once (its thread is stuck), and
the node stays unavailable to the process until that call has returned and
the node answers a probe. The caller treats the failure as it treats a node
that could not be opened: skipped, named in its report.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from typing import Concatenate, ParamSpec, TypeVar

from shardvault.errors import StorageError
from shardvault.io_threads import IoThread, Stalled
from shardvault.nodes.port import Compacted, ShardReader, ShardStore, ShardWriter
from shardvault.nodes.unavailable import UnavailableStore
from shardvault.vault.cells import Cell, StoreOpening
from shardvault.vault.deadline import NodeDeadline

_P = ParamSpec("_P")
_T = TypeVar("_T")


class BoundedStores:
    """One maintenance run's calls to node stores, each node's on its own thread, every
    call waited for within the nodes' deadline (see the module docstring). Used from
    one thread; `close` once done."""

    def __init__(self, deadline: NodeDeadline) -> None:
        self._deadline = deadline
        self._threads: dict[str, IoThread] = {}
        self._stalled: dict[str, StorageError] = {}

    def __enter__(self) -> BoundedStores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, node_id: str, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args)`` on the node's thread; StorageError if the node ran past the
        deadline, in this call or an earlier one of the run."""
        failed = self._stalled.get(node_id)
        if failed is not None:
            raise failed
        thread = self._threads.get(node_id)
        if thread is None:
            thread = self._threads[node_id] = IoThread(f"shardvault-maintenance-{node_id}")
        future: Future[_T] = thread.submit(fn, *args, **kwargs)
        try:
            return thread.wait(future, self._deadline.seconds)
        except Stalled:
            failed = self._stalled[node_id] = self._deadline.expired(node_id, stuck=future)
            raise failed from None

    def cell(self, cell: Cell) -> Cell:
        """The cell as this run sees it: the same catalog and nodes, every store that
        could be opened called through `run`."""
        stores: dict[str, ShardStore] = {
            node: store if isinstance(store, UnavailableStore) else BoundedStore(store, self)
            for node, store in cell.stores.items()
        }
        return replace(cell, node_opening=StoreOpening.of(cell.jurisdiction, stores))

    def hung(self) -> tuple[str, ...]:
        """The nodes this run gave up on."""
        return tuple(sorted(self._stalled))

    def close(self) -> None:
        """Let the threads end; one stuck on a hung disk ends with the process."""
        for thread in self._threads.values():
            thread.shutdown(wait=False)
        self._threads.clear()


class BoundedStore:
    """A node's store whose every call goes through `BoundedStores.run`."""

    def __init__(self, store: ShardStore, calls: BoundedStores) -> None:
        self.node_id = store.node_id
        self.inner = store  # called on the node's thread only (`on_node`)
        self._store = store
        self._calls = calls

    def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._calls.run(self.node_id, fn, *args, **kwargs)

    def open_writer(self, name: str) -> BoundedWriter:
        return BoundedWriter(self.run(self._store.open_writer, name), self)

    def open_reader(self, name: str, location: str | None = None) -> BoundedReader:
        return BoundedReader(self.run(self._store.open_reader, name, location), self)

    def intact(self, name: str, location: str | None = None) -> bool:
        return self.run(self._store.intact, name, location)

    def read_cached(self, name: str, location: str | None, length: int) -> bytes | None:
        return self.run(self._store.read_cached, name, location, length)

    def delete(self, name: str, location: str | None = None) -> bool:
        return self.run(self._store.delete, name, location)

    def names(self) -> Iterator[str]:
        return iter(self.run(lambda: list(self._store.names())))

    def has_trace(self, name: str) -> bool:
        return self.run(self._store.has_trace, name)

    def strays(self) -> list[str]:
        return self.run(self._store.strays)

    def sync(self) -> None:
        self.run(self._store.sync)

    def probe(self) -> None:
        self.run(self._store.probe)

    def collect_temporaries(self, older_than: float) -> int:
        return self.run(self._store.collect_temporaries, older_than)

    def drop_caches(self) -> None:
        """Not done on a hung node: its thread is stuck, perhaps holding what this takes."""
        with contextlib.suppress(StorageError):
            self.run(self._store.drop_caches)

    def compact(self) -> Compacted:
        return self.run(self._store.compact)

    def close(self) -> None:
        """The vault closes the store itself."""


def on_node(
    store: ShardStore,
    fn: Callable[Concatenate[ShardStore, _P], _T],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """``fn(store, *args)``: for a run's `BoundedStore`, on the node's thread with the store
    itself (many calls, one hand-off), bounded as one call; for any other, right here."""
    if isinstance(store, BoundedStore):
        return store.run(fn, store.inner, *args, **kwargs)
    return fn(store, *args, **kwargs)


class BoundedReader:
    """A shard reader whose reads are bounded as its store's calls are."""

    def __init__(self, reader: ShardReader, store: BoundedStore) -> None:
        self._reader = reader
        self._store = store

    def read_at(self, offset: int, length: int) -> bytes:
        """As `ShardReader.read_at`; a node past the deadline fails it as a read error does
        (TimeoutError, an OSError): repair takes the shard for bad, as for any failed read."""
        try:
            return self._store.run(self._reader.read_at, offset, length)
        except StorageError as exc:
            raise TimeoutError(errno.ETIMEDOUT, str(exc)) from None

    def close(self) -> None:
        with contextlib.suppress(StorageError):  # its thread is stuck: the fd goes at exit
            self._store.run(self._reader.close)


class BoundedWriter:
    """A shard writer whose calls are bounded as its store's are."""

    def __init__(self, writer: ShardWriter, store: BoundedStore) -> None:
        self._writer = writer
        self._store = store
        self.location: str | None = None

    def write(self, data: bytes | memoryview) -> None:
        self._store.run(self._writer.write, data)

    def commit(self, durable: bool = True) -> None:
        self._store.run(self._writer.commit, durable)
        self.location = self._writer.location

    def sync(self) -> None:
        self._store.run(self._writer.sync)

    def abort(self) -> None:
        """Safe after any failure, as the port says: on a hung node, what was written
        stays in its tmp/ (gc's temporaries) or unsynced in memory."""
        with contextlib.suppress(StorageError):
            self._store.run(self._writer.abort)
