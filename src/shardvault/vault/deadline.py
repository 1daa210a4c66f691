"""A node whose disk hangs costs a bounded wait, then is routed around.

A shard store's call can block for good: an fdatasync, pread or open on a dying
disk or a hard-mounted NFS share that never returns. The thread in it cannot be
freed, so a caller never makes such a call itself where it could hang: the I/O
runs on a thread of `IoThreads`, and the caller stops waiting when the node's
deadline (`storage.node_timeout`) passes. The node is then marked unavailable
in this process (`NodeDeadline.expired`: its store is replaced by a `HungStore`),
so no new work goes to it: placement counts it as down, reads go around it, gc
and repair skip it. A probe thread asks the real store to answer a flush
(`ShardStore.probe`) every deadline; the first time it does, the node is back.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

from shardvault.errors import ShardvaultError, StorageError
from shardvault.nodes.port import ShardStore
from shardvault.nodes.unavailable import UnavailableStore
from shardvault.vault.cells import Cell

_P = ParamSpec("_P")
_T = TypeVar("_T")
_IDLE_SECONDS = 60.0  # an idle I/O thread ends after this long
_Task = tuple[Future[object], Callable[..., object], tuple[object, ...], dict[str, object]]


class IoThreads(Executor):
    """Threads for shard I/O: a task never waits for a thread a hung disk holds.

    A thread is started whenever none is idle: a bounded pool filled with threads
    stuck on one node, and every put and get of every cell then queued behind
    them. The callers bound the number: each waits for its own few tasks, and no
    new task goes to a node once it is marked hung. Idle threads are reused (no
    hand-off is added to what a bounded pool costs) and end after a minute.
    Daemon threads: one stuck on a hung disk must not hold up the process's exit.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one per idle thread no task has claimed
        self._lock = threading.Lock()  # guards _threads and _shut: not taken per task
        self._threads: set[threading.Thread] = set()
        self._shut = False

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        if self._shut:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future[_T] = Future()
        self._tasks.put((future, fn, args, kwargs))  # type: ignore[arg-type]
        if not self._idle.acquire(blocking=False):
            self._start_thread()
        return future

    def _start_thread(self) -> None:
        with self._lock:
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.add(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                if self._idle.acquire(blocking=False):  # nobody counts on this thread: end
                    break
                continue  # a task was promised to an idle thread: it is on its way
            if task is None:
                break
            future, fn, args, kwargs = task
            del task
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs
            self._idle.release()
        with self._lock:
            self._threads.discard(threading.current_thread())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; with ``wait``, wait for those running (none may be stuck)."""
        with self._lock:
            self._shut = True
            threads = list(self._threads)
        for _ in threads:
            self._tasks.put(None)
        if wait:
            for thread in threads:
                thread.join()


class HungStore(UnavailableStore):
    """A node that did not answer within its deadline: unavailable in this process
    until its real store answers a probe."""

    def __init__(self, store: ShardStore, reason: str) -> None:
        super().__init__(store.node_id, reason)
        self.store = store


class NodeDeadline:
    """How long a caller waits for a node's shard I/O, and what befalls a node past it."""

    def __init__(self, seconds: float, cells: list[Cell]) -> None:
        self.seconds = seconds
        self._cell_of = {node: cell for cell in cells for node in cell.stores}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.probes: dict[str, threading.Thread] = {}  # a hung node's, until it answers

    def expired(self, node_id: str) -> StorageError:
        """The node ran past its deadline: mark it unavailable in this process and probe
        it until it answers. Returns the error for the caller that gave up on it."""
        reason = f"no answer within {self.seconds:g} s (storage.node_timeout)"
        cell = self._cell_of.get(node_id)
        with self._lock:
            store = cell.stores.get(node_id) if cell is not None else None
            if cell is not None and store is not None and not self._closed.is_set():
                self._mark(cell, store, reason)
        return StorageError(
            f"node {node_id}: {reason}; it is unavailable to this process until it answers"
        )

    def _mark(self, cell: Cell, store: ShardStore, reason: str) -> None:
        """Holding the lock: route around the node, and probe it, unless already so."""
        if isinstance(store, UnavailableStore):
            return
        cell.replace_store(HungStore(store, reason))
        probe = threading.Thread(
            target=self._probe,
            args=(cell, store),
            name=f"shardvault-probe-{store.node_id}",
            daemon=True,  # one stuck on the disk must not hold up the exit
        )
        self.probes[store.node_id] = probe
        probe.start()

    def _probe(self, cell: Cell, store: ShardStore) -> None:
        while not self._closed.wait(self.seconds):
            try:
                store.probe()
            except (ShardvaultError, OSError):
                continue
            with self._lock:
                if not self._closed.is_set():
                    cell.replace_store(store)
                del self.probes[store.node_id]
            return

    def any_hung(self) -> bool:
        """Whether a node hung in this process and has not answered since: threads
        may still be stuck on it."""
        return bool(self.probes)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        self._closed.set()
