"""A cell per jurisdiction: its catalog and its nodes' shard stores.

This is the wiring module: with node_opening.py (how the stores are opened), the
only place that names adapters.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

from shardvault.catalog.memory import MemoryCatalog
from shardvault.catalog.port import Catalog
from shardvault.catalog.sqlite import SqliteCatalog
from shardvault.config import Config
from shardvault.durability import failure_reason
from shardvault.errors import StorageError, VaultClosed
from shardvault.file_locks import flocked
from shardvault.keys.attestation import StatementSigner
from shardvault.keys.keyring import KeyringCustodian
from shardvault.keys.memory import MemoryCustodian
from shardvault.keys.port import KeyCustodian, KeyScope
from shardvault.keys.rootkey import CustodianGate
from shardvault.model import NodeSpec, NodeState
from shardvault.nodes.hints import HungHints
from shardvault.nodes.port import ShardStore
from shardvault.nodes.unavailable import UnavailableStore
from shardvault.vault.node_opening import open_stores

_T = TypeVar("_T")


class _OpenedOnce(abc.ABC, Generic[_T]):
    """What a cell opens when a request first needs it, once per process however many
    threads ask at once; an open that fails is tried again by the next request (the
    file may be restored). Closing does not wait for an open under way (one stuck on a
    hung disk would hold the close, and the process's exit, for ever): that open
    releases what it opened late, and fails."""

    def __init__(self, jurisdiction: str, open_it: Callable[[], _T], opened: _T | None) -> None:
        self.jurisdiction = jurisdiction
        self._open_it = open_it
        self._opening = threading.Lock()  # held through an open, which may hang
        self._state = threading.Lock()  # held for a moment only: close takes this one
        self._opened: _T | None = opened
        self._closed = False

    def _get(self) -> _T:
        with self._opening:
            with self._state:
                if self._closed:  # what opened after close would stay open
                    raise self._closed_error()
                if self._opened is not None:
                    return self._opened
            opened = self._open_it()
            with self._state:
                closed = self._closed
                if not closed:
                    self._opened = opened
            if closed:  # while it opened: the close did not wait for it
                self._release(opened)
                raise self._closed_error()
        # out of the open's lock: a watcher asking for what was opened (a node whose open
        # answered meanwhile, put back at once: vault/deadline.py) waited for ever for it
        self._kept(opened)
        return opened

    def _kept(self, opened: _T) -> None:
        """Told, out of the locks, of what an open kept (a request on another thread may
        use it meanwhile)."""

    @abc.abstractmethod
    def _release(self, opened: _T) -> None:
        """Close what an open made (each kind of thing opened closes its own way)."""

    def _closed_error(self) -> VaultClosed:
        return VaultClosed(f"cell {self.jurisdiction}: the vault is closed: open it again")

    def close(self) -> None:
        """Release what was opened, once; nothing is opened after. An open under way is
        not waited for: it releases what it opens itself."""
        with self._state:
            self._closed = True
            opened, self._opened = self._opened, None
        if opened is not None:
            self._release(opened)


class CatalogOpening(_OpenedOnce[Catalog]):
    """A cell's catalog, opened on first need (`_OpenedOnce`). Opening the vault opened
    every cell's catalog: one cell's catalog hung or unreadable stopped the commands of
    every cell."""

    def __init__(self, jurisdiction: str, open_catalog: Callable[[str], Catalog]) -> None:
        super().__init__(jurisdiction, functools.partial(open_catalog, jurisdiction), None)

    def catalog(self) -> Catalog:
        """The catalog, opened now if it is not yet (what opening checks, it checks now)."""
        return self._get()

    def _release(self, opened: Catalog) -> None:
        opened.close()


class _OpenedOnUse:
    """`Cell.catalog`: opened by the cell's `CatalogOpening` on first use, then kept in
    the cell's own attributes, so a request pays no call for it (a non-data descriptor:
    the instance's attribute wins once set)."""

    def __get__(self, cell: Cell | None, owner: type[Cell] | None = None) -> Catalog:
        if cell is None:
            raise AttributeError("catalog is a cell's, not the class's")
        catalog = cell.opening.catalog()
        cell.__dict__["catalog"] = catalog
        return catalog


StoresOpened = Callable[[dict[str, ShardStore]], None]
StoresClosing = Callable[[list[ShardStore]], None]


def close_each(stores: list[ShardStore]) -> None:
    """Close the stores in turn, on this thread: what a `StoreOpening` does unless told."""
    for store in stores:
        store.close()


class StoreOpening(_OpenedOnce[dict[str, ShardStore]]):
    """A cell's node stores, opened when a request first needs the cell's nodes
    (`_OpenedOnce`), as its catalog is. Opening the vault opened every node's store: a
    node whose disk hangs cost every command, of every cell, one deadline."""

    def __init__(
        self,
        jurisdiction: str,
        open_all: Callable[[], dict[str, ShardStore]],
        opened: dict[str, ShardStore] | None = None,
    ) -> None:
        super().__init__(jurisdiction, open_all, opened)
        self._watchers: list[StoresOpened] = []
        self._close_stores: StoresClosing = close_each

    @classmethod
    def of(cls, jurisdiction: str, stores: dict[str, ShardStore]) -> StoreOpening:
        """Stores opened already (a maintenance run's view of its cell: vault/bounded.py)."""
        return cls(jurisdiction, lambda: stores, stores)

    def stores(self) -> dict[str, ShardStore]:
        """The stores, opened now if they are not yet; each watcher is told of them."""
        return self._get()

    def _kept(self, opened: dict[str, ShardStore]) -> None:
        with self._state:  # a watcher added after the stores were kept calls itself
            watchers, self._watchers = self._watchers, []
        for watcher in watchers:  # out of the lock: a watcher may ask for the stores
            watcher(opened)

    def opened(self) -> dict[str, ShardStore] | None:
        """The stores if they are open (and not closed), else None: never opens them, so
        a caller holding a lock an open's watcher takes cannot wait for itself."""
        with self._state:
            return self._opened

    def when_opened(self, watcher: StoresOpened) -> None:
        """Call ``watcher`` with the stores once they are opened (now, if they are)."""
        with self._state:
            stores = self._opened
            if stores is None:
                self._watchers.append(watcher)
        if stores is not None:
            watcher(stores)

    def close_by(self, close_stores: StoresClosing) -> None:
        """Close the stores with ``close_stores`` (the vault's own, bounded by the nodes'
        deadline: `NodeDeadline.close_stores`), not in turn on the closing thread."""
        self._close_stores = close_stores

    def _release(self, opened: dict[str, ShardStore]) -> None:
        """The stores (and those put in their place since: `Cell.replace_store`)."""
        self._close_stores(list(opened.values()))


@dataclass
class Cell:
    jurisdiction: str
    opening: CatalogOpening
    nodes: list[NodeSpec]
    node_opening: StoreOpening
    maintenance_lock: Path | None = None
    collection_lock: Path | None = None  # `collection`: None for a cell of memory catalogs
    collection_turns: threading.Lock = field(
        default_factory=threading.Lock, repr=False, compare=False
    )
    work_dir: Path | None = None  # where maintenance keeps its working files (the cell's)
    hints: HungHints | None = None  # the deployment's notes of nodes found hung
    _placeable: list[NodeSpec] | None = field(default=None, init=False, repr=False)
    _stores: dict[str, ShardStore] | None = field(default=None, init=False, repr=False)
    catalog = _OpenedOnUse()  # the cell's catalog, opened on first use

    @property
    def stores(self) -> dict[str, ShardStore]:
        """Its nodes' stores (node id: store), opened on first use (`StoreOpening`)."""
        stores = self._stores
        if stores is None:
            stores = self._stores = self.node_opening.stores()
        return stores

    def opened_stores(self) -> dict[str, ShardStore]:
        """Its nodes' stores if a request opened them and the vault is not closed, else
        none: never opens them, nor refuses."""
        return self._stores or {}

    def store(self, node_id: str) -> ShardStore:
        """The node's store; one the config no longer lists reads as unavailable. The hot
        path: a plain attribute, not `stores` (a descriptor's attribute is not specialised)."""
        found = (self._stores or self.stores).get(node_id)
        if found is None:
            return UnavailableStore(node_id, "it is not in the configuration")
        return found

    def replace_store(self, store: ShardStore) -> bool:
        """Put a node's store in place of the one it had (a node that hung or came back:
        vault/deadline.py); placement sees it at the next put. False, and nothing done,
        if the stores are not open (or closed): it never opens them, as the deadline
        calls it under the lock an open's watchers take (opening, it waited for itself)."""
        stores = self.node_opening.opened()
        if stores is None:
            return False
        stores[store.node_id] = store
        self._placeable = None
        return True

    def close(self) -> None:
        """Close its catalog and its nodes' stores (those a request opened), then forget
        them: a request after asks the openings, which refuse (VaultClosed), rather than
        the closed catalog kept here, which might still answer (an in-memory one does)."""
        with contextlib.ExitStack() as closing:  # each closes though one before it failed
            closing.callback(self._forget_opened)
            closing.callback(self.node_opening.close)
            closing.callback(self.opening.close)

    def _forget_opened(self) -> None:
        self.__dict__.pop("catalog", None)
        self._stores = None
        self._placeable = None

    def usable_stores(self) -> dict[str, ShardStore]:
        """The stores that could be opened: maintenance skips the others."""
        return {
            node: store
            for node, store in self.stores.items()
            if not isinstance(store, UnavailableStore)
        }

    def unavailable_nodes(self) -> list[str]:
        return sorted(set(self.stores) - set(self.usable_stores()))

    @contextlib.contextmanager
    def maintenance(self, wait: bool) -> Iterator[bool]:
        """Repair and gc's resolution of repair's leftovers take turns, across processes:
        gc could take a shard repair has written and not yet named. Yields whether it
        is held (always, if ``wait``)."""
        if self.maintenance_lock is None:
            yield True
            return
        what = f"cell {self.jurisdiction}: maintenance lock"
        with flocked(self.maintenance_lock, wait=wait, what=what) as held:
            yield held

    @contextlib.contextmanager
    def collection(self) -> Iterator[None]:
        """Collectors of the cell (gc, forget) take turns, across processes, at a step
        that deletes shards and the rows or notes naming them (`vault/gc.py`): each
        deletes, and counts in its report, only what no other collector has. Two at
        once each found the same rows, deleted the same shards (a packed one's delete
        says it was there to each), and both counted them."""
        if self.collection_lock is None:  # a memory catalog: this process's alone
            with self.collection_turns:
                yield
            return
        what = f"cell {self.jurisdiction}: collection lock"
        with flocked(self.collection_lock, wait=True, what=what):
            yield

    def placeable_nodes(self) -> list[NodeSpec]:
        """The nodes as placement should see them: one whose store could not be opened
        counts as down, so writes go to the others while the cell has enough."""
        if self._placeable is None:
            usable = self.usable_stores()
            self._placeable = [
                node if node.id in usable else replace(node, state=NodeState.DOWN)
                for node in self.nodes
            ]
        return self._placeable

    def unavailable_reasons(self) -> str:
        """'node (why), ...' for the nodes whose stores could not be opened."""
        return ", ".join(
            f"{node} ({store.reason})"
            for node, store in sorted(self.stores.items())
            if isinstance(store, UnavailableStore)
        )


CatalogFactory = Callable[[str], Catalog]


def sqlite_catalogs(
    state_dir: Path, may_create: Callable[[str], bool] | None = None
) -> CatalogFactory:
    """Each cell's SQLite catalog. One that is missing or empty is made anew only if
    ``may_create(cell)``: a cell whose subjects' catalog was lost must not start a
    blank one, or gc would take every shard on its nodes for an orphan. Looked at
    again once the cell homes a subject: a registration opens the catalog before it
    homes the subject, so another process may have made it in between, and a process
    opening a cell nobody used before took the catalog so made for a lost one."""

    def open_catalog(code: str) -> SqliteCatalog:
        path = state_dir / "cells" / code / "catalog.sqlite"
        if may_create is not None and _blank(path) and not may_create(code) and _blank(path):
            raise StorageError(
                f"catalog {path} is missing or empty, though subjects live in cell {code}: "
                "restore it (with its -wal file) from a backup; a new one would lose "
                "every object of the cell"
            )
        return SqliteCatalog(path)

    return open_catalog


def _blank(path: Path) -> bool:
    """Whether the catalog file is missing or empty; a stat that fails otherwise (a
    dead mount, a symlink loop) is the cell's storage failing, said as such."""
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise StorageError(f"catalog {path}: {failure_reason(exc, path)}") from exc


def memory_catalogs() -> CatalogFactory:
    return lambda code: MemoryCatalog()


def open_cells(config: Config, catalogs: CatalogFactory) -> dict[str, Cell]:
    """Every cell; neither its catalog nor its nodes' stores are opened here, each is
    opened by the first request that needs it (`CatalogOpening`, `StoreOpening`)."""
    cells: dict[str, Cell] = {}
    hints = HungHints(config.state_dir)
    for code in config.jurisdictions:
        nodes = config.nodes_in(code)
        open_all = functools.partial(
            open_stores, nodes, config.state_dir / "nodes", config.node_timeout, hints
        )
        cells[code] = Cell(
            jurisdiction=code,
            opening=CatalogOpening(code, catalogs),
            nodes=nodes,
            node_opening=StoreOpening(code, open_all),
            maintenance_lock=config.state_dir / "cells" / code / "maintenance.lock",
            collection_lock=config.state_dir / "cells" / code / "collection.lock",
            work_dir=config.state_dir / "cells" / code,
            hints=hints,
        )
    return cells


def open_custodian(
    config: Config,
    gate: CustodianGate | None = None,
    may_create: Callable[[], bool] | None = None,
    signer: StatementSigner | None = None,
) -> KeyCustodian:
    """The configured custodian; ``gate`` (the partner's custodian policy) runs before
    every wrap, unwrap and destroy; a missing keyring is made only if ``may_create``;
    ``signer`` (the partner's key) signs its destroy attestations."""
    if config.custodian == "memory":
        return MemoryCustodian(gate, signer)
    return KeyringCustodian(config.keyring_path, gate, may_create, signer)


_PAGE = 1000  # subjects read from a catalog at a time


def name_earlier_keys(custodian: KeyCustodian, cells: Mapping[str, Cell]) -> None:
    """A keyring from before the custodian recorded whose key is whose learns, once, the
    subject of every key a catalog holds for a live subject. It has nothing else to go
    by for those keys (docs/trust-model.md); every key wrapped since names its own."""
    if custodian.needs_subjects():
        custodian.record_subjects(_keys_held(cells))


def _keys_held(cells: Mapping[str, Cell]) -> Iterator[tuple[KeyScope, str, str]]:
    """(scope, key id, subject) of every live subject of every cell, a page at a time."""
    for cell in cells.values():
        after: tuple[str, str] | None = None
        while page := cell.catalog.subjects_with_keys(after, _PAGE):
            for record in page:
                yield KeyScope(record.tenant, record.jurisdiction), record.key_id, record.subject
            after = (page[-1].tenant, page[-1].subject)
