"""Opening a cell's node stores: each on a thread the caller gives up on past the
nodes' deadline, and not at all while another process's note says the node hangs.

Apart from the cells (cells.py) because it is a job of its own, with its own
threads and failure rules: a hung disk must cost one deadline, not every command
for ever (vault/deadline.py takes over the nodes it leaves unopened). With
cells.py, the only place that names the node adapters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from shardvault.errors import ConfigError, NewerFormat, ShardvaultError, StorageError
from shardvault.io_threads import IoThread, Stalled
from shardvault.model import NodeSpec
from shardvault.nodes.hints import Hint, HungHints
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.marker import claim
from shardvault.nodes.memory import MemoryShardStore
from shardvault.nodes.port import ShardStore
from shardvault.nodes.unavailable import UnavailableStore


class UnopenedStore(UnavailableStore):
    """A node whose store did not open within the nodes' deadline (its disk hangs: a stat of
    its directory never returned). Unavailable in this process; ``opening`` ends with its
    store, or why it cannot be opened, should the disk answer (vault/deadline.py)."""

    def __init__(self, node_id: str, reason: str, opening: Future[ShardStore]) -> None:
        super().__init__(node_id, reason)
        self.opening = opening


def open_stores(
    nodes: list[NodeSpec], marked: Path | None, seconds: float, hints: HungHints | None = None
) -> dict[str, ShardStore]:
    """Each node's store (`open_store`), opened one after another on a thread: the caller
    gives up on an open once that thread has not run for ``seconds`` (a call stuck on a
    hung disk sleeps unscheduled: `IoThread.wait`), so one hung node costs a deadline,
    not every command for ever. That node is an `UnopenedStore`; the nodes after it
    are opened on a new thread. A node another process found hung (``hints``) is not
    opened at all while its note is fresh: a `HintedStore` (`_hinted`)."""
    stores: dict[str, ShardStore] = {}
    if hints is not None:
        notes = hints.read()
        for node in nodes:
            if node.id in notes:
                stores[node.id] = _hinted(node, marked, seconds, hints, notes[node.id])
    left = [node for node in nodes if node.id not in stores]
    while left:
        thread = IoThread("shardvault-open")
        opening = [(node, thread.submit(open_store, node, marked)) for node in left]
        left = []
        try:
            for at, (node, future) in enumerate(opening):
                try:
                    stores[node.id] = thread.wait(future, seconds)
                except Stalled:
                    reason = f"no answer within {seconds:g} s (storage.node_timeout)"
                    stores[node.id] = UnopenedStore(node.id, reason, future)
                    left = [later for later, _ in opening[at + 1 :]]
                    break
        finally:
            for _, future in opening:
                future.cancel()  # those queued behind a hung one (or an error) never run
            thread.shutdown()
    return {node.id: stores[node.id] for node in nodes}


class HintedStore(UnopenedStore):
    """A node another process found hung (nodes/hints.py), not opened by this one: unavailable
    here until a test of it answers (``opening`` then ends with its store, as an
    `UnopenedStore`'s does). ``test``: the test still to make once the note is no longer
    trusted (vault/deadline.py); None if one is under way already."""

    def __init__(
        self,
        node: NodeSpec,
        reason: str,
        opening: Future[ShardStore],
        hint: Hint,
        test: Callable[[], ShardStore] | None,
    ) -> None:
        super().__init__(node.id, reason, opening)
        self.hint = hint
        self.test = test


TEST_GRACE = 1.0
"""How long a process waits for its test of a node whose note is no longer trusted, before
taking the node for hung still (at most the deadline): a disk that answers does so in
far less; one that hangs costs this, once per deadline for the whole deployment."""


def _hinted(
    node: NodeSpec, marked: Path | None, seconds: float, hints: HungHints, hint: Hint
) -> ShardStore:
    """The store of a node found hung by another process. A fresh note is trusted: the node
    is not opened. One older than the deadline is tested now (by one process at a time:
    `HungHints.claim_test`), and waited for a moment (`TEST_GRACE`): the node's store if
    it answers (its note dropped), else a `HintedStore` whose test goes on."""
    test = functools.partial(test_node, node, marked)
    if not hint.trusted_for(hints.now(), seconds):
        claimed = hints.claim_test(node.id, seconds)
        if claimed is None:
            return _tested_now(node, seconds, hints, hint, test)
        hint = claimed
    return HintedStore(node, _hinted_reason(hint, seconds), Future(), hint, test)


def _tested_now(
    node: NodeSpec, seconds: float, hints: HungHints, hint: Hint, test: Callable[[], ShardStore]
) -> ShardStore:
    thread = IoThread("shardvault-test")
    future = thread.submit(test)
    thread.shutdown(wait=False)  # the thread ends after its test, whenever that is
    try:
        store = future.result(timeout=min(TEST_GRACE, seconds))
    except TimeoutError:
        return HintedStore(node, _hinted_reason(hint, seconds), future, hint, None)
    hints.clear(node.id, hints.now())
    return store


def _hinted_reason(hint: Hint, seconds: float) -> str:
    return (
        f"found hung by another process (pid {hint.pid}) at {hint.when()}: no answer "
        f"within {seconds:g} s (storage.node_timeout); not used until it answers"
    )


def test_node(node: NodeSpec, marked: Path | None) -> ShardStore:
    """The node's store, once it answers a probe (`ShardStore.probe`: its directory, and a
    flush of its disk that begins now), or an unavailable one saying why: either is an
    answer. Asked of a node found hung, so it may block as long."""
    store = open_store(node, marked)
    if isinstance(store, UnavailableStore):
        return store
    try:
        store.probe()
    except (ShardvaultError, OSError) as exc:
        store.close()
        return UnavailableStore(node.id, f"its probe failed: {exc}")
    return store


def open_store(node: NodeSpec, marked: Path | None = None) -> ShardStore:
    """The node's store, or an unavailable one saying why it cannot be opened.
    ``marked``: the deployment's record of the nodes ever marked (nodes/marker.py)."""
    try:
        return _open_adapter(node, marked)
    except (StorageError, NewerFormat) as exc:  # NewerFormat: a marker of a newer shardvault
        return UnavailableStore(node.id, str(exc).removeprefix(f"node {node.id}: "))
    except OSError as exc:
        return UnavailableStore(node.id, f"opening {node.location} failed: {exc.strerror}")


def _open_adapter(node: NodeSpec, marked: Path | None) -> ShardStore:
    if node.backend == "local":
        claim(Path(node.location), node, marked)
        return LocalDirShardStore(node.id, Path(node.location), node.pack_limit)
    if node.backend == "memory":
        return MemoryShardStore(node.id)
    raise ConfigError(f"node {node.id}: unknown backend {node.backend!r}")
