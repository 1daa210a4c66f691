"""A node whose disk hangs costs a bounded wait, then is routed around.

A shard store's call can block for good: an fdatasync, pread or open on a dying
disk or a hard-mounted NFS share that never returns. The thread in it cannot be
freed, so a caller never makes such a call itself where it could hang: the I/O
runs on a thread of `io_threads.IoThreads`, and the caller stops waiting when the node's
deadline (`storage.node_timeout`) passes. The node is then marked unavailable
in this process (`NodeDeadline.expired`: its store is replaced by a `HungStore`),
so no new work goes to it: placement counts it as down, reads go around it, gc
and repair skip it (their own calls are bounded so too: vault/bounded.py). A
probe thread asks the real store to answer a flush (`ShardStore.probe`) every
deadline; the first time it does, once no call that a caller gave up on with
the store's lock perhaps held is still stuck in it, the node is back. A node
whose store did not even open within the deadline (`node_opening.UnopenedStore`) is
so from the start, and is back once its open ends.

The deployment notes each node found so (nodes/hints.py), for the processes that
come after: one that finds a fresh note takes the node for hung from the start
(`node_opening.HintedStore`: not opened, not waited for) and tests it once the note is
a deadline old, as this process probes it (`_retest`). A test or probe that gets
an answer drops the note, in every process.

Closing is bounded so too (`close_stores`): a store that does not close within the
deadline (a hard-mounted NFS share holding a descriptor's close) is left to its
thread, named for the user (`hint_notices`) and noted for the processes after.
Every store of every cell starts closing before any is waited for, and all are
waited for until one common end (`closing_together`): nodes hung in their close
cost the vault's close one deadline, however many.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, NamedTuple

from shardvault.errors import ShardvaultError, StorageError
from shardvault.io_threads import IoThread, Stalled
from shardvault.nodes.hints import HungHints
from shardvault.nodes.port import ShardStore
from shardvault.nodes.unavailable import UnavailableStore
from shardvault.vault.cells import Cell
from shardvault.vault.node_opening import HintedStore, UnopenedStore


class _Closing(NamedTuple):
    """A store's close under way on a thread of its own."""

    cell: Cell
    store: ShardStore
    thread: IoThread
    call: Future[None]


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
        self._cell_of = {node.id: cell for cell in cells for node in cell.nodes}
        self._hints = list({id(cell.hints): cell.hints for cell in cells if cell.hints}.values())
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # a hung node's, until it answers: its keys are the nodes hung now (readers look)
        self.probes: dict[str, threading.Thread] = {}
        self.tests: dict[str, threading.Thread] = {}  # a node another process found hung
        self.hung: set[str] = set()  # every node that ran past it in this process
        self._stuck: dict[str, list[Future[Any]]] = {}  # calls given up on, still running
        self._notices: list[str] = []  # stores given up on as they closed
        self._gathered: list[_Closing] | None = None  # closes started, within `closing_together`
        for cell in cells:  # a cell's stores open when it is first needed
            cell.node_opening.when_opened(functools.partial(self._unopened, cell))
            cell.node_opening.close_by(functools.partial(self.close_stores, cell))

    def _unopened(self, cell: Cell, stores: dict[str, ShardStore]) -> None:
        """The cell's stores are open: a node whose open ran past the deadline, or that
        another process found hung, is hung in this process, and back once its open (or
        test) ends (`_opened`). One found so here is noted for the processes after."""
        for node, store in stores.items():
            if not isinstance(store, UnopenedStore):
                continue
            with self._lock:
                self.hung.add(node)
            if not isinstance(store, HintedStore) and cell.hints is not None:
                cell.hints.mark(node)  # first: an open that ended meanwhile drops it (`_opened`)
            store.opening.add_done_callback(functools.partial(self._opened, cell, node))
            if isinstance(store, HintedStore):
                self._start_test(cell, store)

    def _start_test(self, cell: Cell, store: HintedStore) -> None:
        test = store.test
        if test is None or cell.hints is None:  # its test is under way already
            return
        thread = threading.Thread(
            target=self._retest,
            args=(cell.hints, store, test),
            name=f"shardvault-test-{store.node_id}",
            daemon=True,  # one stuck on the disk must not hold up the exit
        )
        with self._lock:
            self.tests[store.node_id] = thread
        thread.start()

    def _retest(self, hints: HungHints, store: HintedStore, test: Callable[[], ShardStore]) -> None:
        """Test a node another process found hung once its note is a deadline old (as that
        process probes it every deadline), unless a process found or tested it since;
        the answer ends the store's ``opening`` (`_opened`)."""
        hint = store.hint
        while not self._closed.wait(hint.trusted_for(hints.now(), self.seconds)):
            claimed = hints.claim_test(store.node_id, self.seconds)
            if claimed is not None:  # another process tested it meanwhile: trust it
                hint = claimed
                continue
            try:
                store.opening.set_result(test())
            except BaseException as exc:
                store.opening.set_exception(exc)
            return

    def expired(self, node_id: str, stuck: Future[Any] | None = None) -> StorageError:
        """The node ran past its deadline: mark it unavailable in this process and probe
        it until it answers. Returns the error for the caller that gave up on it.
        ``stuck``: the call given up on, if the node must not come back before it ends
        (it may hold the store's lock: a store closed or called meanwhile waits for it)."""
        reason = self._reason()
        cell = self._cell_of.get(node_id)
        stores = cell.opened_stores() if cell is not None else {}  # one of them was called
        with self._lock:
            self.hung.add(node_id)
            if stuck is not None:
                self._stuck.setdefault(node_id, []).append(stuck)
            store = stores.get(node_id)
            marked = False
            if cell is not None and store is not None and not self._closed.is_set():
                marked = self._mark(cell, store, reason)
        if marked and cell is not None and cell.hints is not None:
            cell.hints.mark(node_id)  # for the processes after this one
        return self.unanswered(node_id)

    def _reason(self) -> str:
        return f"no answer within {self.seconds:g} s (storage.node_timeout)"

    def unanswered(self, node_id: str) -> StorageError:
        """The error of a call to a node marked hung: a reader opened before it was so
        tells a shard it does not ask it for as the reader that found it hung did."""
        return StorageError(
            f"node {node_id}: {self._reason()}; it is unavailable to this process until it answers"
        )

    def _mark(self, cell: Cell, store: ShardStore, reason: str) -> bool:
        """Holding the lock: route around the node, and probe it, unless already so (False)."""
        if isinstance(store, UnavailableStore):
            return False
        if not cell.replace_store(HungStore(store, reason)):  # the vault closed meanwhile
            return False
        probe = threading.Thread(
            target=self._probe,
            args=(cell, store),
            name=f"shardvault-probe-{store.node_id}",
            daemon=True,  # one stuck on the disk must not hold up the exit
        )
        self.probes[store.node_id] = probe
        probe.start()
        return True

    def _probe(self, cell: Cell, store: ShardStore) -> None:
        while not self._closed.wait(self.seconds):
            if self._holds(store.node_id):
                continue
            try:
                store.probe()
            except (ShardvaultError, OSError):
                continue
            with self._lock:
                if not self._closed.is_set():
                    cell.replace_store(store)
                del self.probes[store.node_id]
            if cell.hints is not None:
                cell.hints.clear(store.node_id, cell.hints.now())
            return

    def _opened(self, cell: Cell, node_id: str, opening: Future[ShardStore]) -> None:
        """A node whose open ran past the deadline answered at last (on its opening
        thread): its store, or why it cannot be opened, takes its place."""
        if opening.cancelled():
            return
        try:
            store = opening.result()
        except ShardvaultError as exc:  # a damaged marker, say: as `Vault.open` would say
            store = UnavailableStore(node_id, str(exc))
        if cell.hints is not None:  # it answered, if only to say it cannot be opened
            cell.hints.clear(node_id, cell.hints.now())
        with self._lock:
            if self._closed.is_set() or not cell.replace_store(store):
                store.close()  # the vault closed meanwhile: it would stay open

    def _holds(self, node_id: str) -> bool:
        """Whether a call given up on is still stuck in the node."""
        with self._lock:
            running = [call for call in self._stuck.get(node_id, ()) if not call.done()]
            self._stuck[node_id] = running
            return bool(running)

    def close_stores(self, cell: Cell, stores: Iterable[ShardStore]) -> None:
        """Close the cell's stores, each on a thread of its own, all at once: one whose
        thread has not run for a deadline (a hung disk) is left to it, as a put given up
        on a hung node is, said in `hint_notices` and noted for the processes after.
        Within `closing_together`, waited for with every other cell's as it ends. A
        store's own error is raised once the rest are closed."""
        calls = []
        for store in stores:
            thread = IoThread(f"shardvault-close-{store.node_id}")
            calls.append(_Closing(cell, store, thread, thread.submit(store.close)))
            thread.shutdown()  # the thread ends once its close has run
        with self._lock:
            if self._gathered is not None:
                self._gathered.extend(calls)
                return
        self._wait_closed(calls)

    @contextlib.contextmanager
    def closing_together(self) -> Iterator[None]:
        """The stores every cell closes meanwhile are waited for as it ends, until one
        common end: nodes hung in their close, in one cell or several, cost the vault's
        close one deadline, not one each in turn."""
        with self._lock:
            self._gathered = []
        try:
            yield
        finally:
            with self._lock:  # a cell whose open ends after this closes its own stores
                gathered, self._gathered = self._gathered, None
            self._wait_closed(gathered or [])

    def _wait_closed(self, calls: list[_Closing]) -> None:
        """Each close started by now is given a deadline from now at least."""
        started = time.monotonic()
        failed: list[Exception] = []
        for closing in calls:
            try:
                closing.thread.wait(closing.call, self.seconds, since=started)
            except Stalled:
                self._not_closed(closing.cell, closing.store.node_id)
            except Exception as exc:  # the store's own: the others are closed all the same
                failed.append(exc)
        if failed:
            raise failed[0]

    def _not_closed(self, cell: Cell, node_id: str) -> None:
        with self._lock:
            self.hung.add(node_id)
            self._notices.append(
                f"node {node_id}: its store did not close within {self.seconds:g} s "
                "(storage.node_timeout): left to its thread, which the process's exit ends"
            )
        if cell.hints is not None:
            cell.hints.mark(node_id)  # for the processes after this one

    def close_given_up(self, seconds: float) -> None:
        """A close waiting for the vault's close under way on another thread gave up on it
        past what it may take (vault/close_once.py): said as a store's close given up on is."""
        notice = (
            f"the vault's close under way on another thread did not end within {seconds:g} s "
            "(twice storage.node_timeout, plus storage.state_timeout): left to its thread, "
            "which the process's exit ends"
        )
        with self._lock:
            if notice not in self._notices:  # said once, however many closes gave up
                self._notices.append(notice)

    def hint_notices(self) -> list[str]:
        """What the user is told besides a call's own error: what went wrong with the
        deployment's notes of hung nodes (ignored, or not written: nodes/hints.py), and
        the nodes whose stores were given up on as they closed."""
        with self._lock:
            given_up = list(self._notices)
        return [notice for hints in self._hints for notice in hints.notices()] + given_up

    def any_hung(self) -> bool:
        """Whether a node hung in this process and has not answered since: threads
        may still be stuck on it."""
        return bool(self.probes)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """No node is put back from now on (the vault closes the stores it holds next)."""
        with self._lock:
            self._closed.set()
