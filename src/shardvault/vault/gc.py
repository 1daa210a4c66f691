"""Garbage collection of one cell: what no committed version needs any more.

Deleted versions and pending versions older than the grace period lose their
shards, then their rows. Shards whose object id the catalog does not know at
all (a put killed before its reservation became durable, or a small put killed
before its commit) are orphans and go too once their id's minted time is older
than the grace period, as do temporary files. A small put writes its shards
before the catalog knows them (no reservation), so the sweep first notes its
cutoff in the catalog: such a put's commit then refuses shards minted before it
and writes them again (shardvault.objectid). A node that is unavailable is
skipped and named in the report: what it holds of collected versions becomes
an orphan there, which a later sweep takes once the node is back. First, unless
a repair holds the cell's maintenance lock, gc resolves the copies repair noted
as leftovers: deleted where no manifest names them (`_resolve_leftovers`).

Each node in turn is swept, then compacts its packs and lets go of what it
learned of its shards, so one node's names are in memory at a time. A shard
record compaction kept though it failed its checksum is queued for repair
(`vault/kept_damage.py`) and counted in the report. Last, the
manifests of the shards compaction moved are given their new locations:
without that, every process reading one of them would have to index the
node's packs (nodes/packs.py). Until then the moves wait on disk, not in
memory, and each version is rewritten once, however many of its nodes moved
it (vault/compaction_moves.py).

Each step that deletes shards and then the rows or notes naming them (a claimed
batch, a node's orphan sweep, the leftovers' resolution) takes its turn with the
cell's other collectors, gcs and forgets of other processes (`Cell.collection`):
so each deletes, and counts in its report, only what no other has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shardvault.catalog.port import Leftover, VersionRecord, VersionState
from shardvault.errors import ShardvaultError
from shardvault.manifest import Manifest
from shardvault.nodes.port import Compacted, ShardStore, object_id_of, shard_name
from shardvault.objectid import minted_after
from shardvault.vault.bounded import on_node
from shardvault.vault.cells import Cell
from shardvault.vault.compaction_moves import CompactionMoves, relocate
from shardvault.vault.kept_damage import queue_kept_damage


@dataclass(frozen=True, slots=True)
class NodeFailure:
    """A node that was opened but whose sweep failed part-way, and the error it gave."""

    node: str
    error: str  # without the "node N: " a store's errors start with: `node` names it

    @classmethod
    def of(cls, node: str, exc: BaseException) -> NodeFailure:
        return cls(node, str(exc).removeprefix(f"node {node}: "))


@dataclass(frozen=True, slots=True)
class GcReport:
    versions: int = 0
    shards: int = 0
    orphans: int = 0
    temporaries: int = 0
    skipped_nodes: tuple[str, ...] = ()  # unavailable or failing: not (wholly) swept
    moved: int = 0  # shards a compaction moved, their manifests told where
    stale: int = 0  # copies repair left (noted) that no manifest names, deleted
    unavailable_nodes: tuple[str, ...] = ()  # could not be opened: nothing there was swept
    failed_nodes: tuple[NodeFailure, ...] = ()  # opened, but the sweep failed part-way
    strays: tuple[str, ...] = ()  # found where shards are kept, not files: left alone
    damaged: int = 0  # records compaction kept though failing their checksum: for repair

    def __add__(self, other: GcReport) -> GcReport:
        return GcReport(
            self.versions + other.versions,
            self.shards + other.shards,
            self.orphans + other.orphans,
            self.temporaries + other.temporaries,
            self.skipped_nodes + other.skipped_nodes,
            self.moved + other.moved,
            self.stale + other.stale,
            self.unavailable_nodes + other.unavailable_nodes,
            self.failed_nodes + other.failed_nodes,
            self.strays + other.strays,
            self.damaged + other.damaged,
        )


_CLAIM_BATCH = 1000  # versions per claim: gc's memory stays bounded however many wait
_ORPHAN_BATCH = 5000  # shards whose ids are asked of the catalog at once


def collect_claimed(
    cell: Cell,
    n: int,
    pending_before: float,
    created_until: float,
    subject: tuple[str, str] | None = None,
    counted: Callable[[int], None] | None = None,
) -> tuple[int, int, set[str]]:
    """Claim and collect what is collectable, a batch at a time: (versions, shards, the
    nodes skipped: see `collect_versions`). ``counted`` is told the shards each batch
    removed once its rows are gone (a forget keeps the count, so one cut short still
    states what it removed)."""
    versions = shards = 0
    skipped: set[str] = set()
    while True:
        with cell.collection():  # what it claims is its own until its rows are gone
            batch = cell.catalog.claim_collectable(
                pending_before, created_until=created_until, subject=subject, limit=_CLAIM_BATCH
            )
            removed, missed = collect_versions(cell, batch, n)
        if counted is not None and removed:
            counted(removed)
        shards += removed
        versions += len(batch)
        skipped |= missed
        if len(batch) < _CLAIM_BATCH:
            return versions, shards, skipped


def collect_versions(cell: Cell, records: list[VersionRecord], n: int) -> tuple[int, set[str]]:
    """Delete the shards of these versions, then their rows: (shards removed, the nodes
    skipped, which may still hold some of them).

    A committed or deleted version's manifest names its nodes; a pending one
    has none yet, so every node of the cell is tried. Anything missed (on a node
    that could not be opened, that hung, or that failed the delete) is an orphan
    once the row is gone, and the next sweep that reaches its node takes it. A
    node the config no longer lists is not counted as skipped: no sweep reaches it.
    """
    stores = cell.usable_stores()
    unreachable = set(cell.stores) - set(stores)
    shards: dict[str, list[tuple[str, str | None]]] = {node: [] for node in stores}
    skipped: set[str] = set()
    for record in records:
        if record.manifest is not None:
            manifest = Manifest.from_bytes(record.manifest)
            skipped.update(unreachable.intersection(manifest.nodes))
            targets = [
                (node, index, manifest.location(index), manifest.generation(index))
                for index, node in enumerate(manifest.nodes)
                if node in stores
            ]
        else:  # no repair rebuilt a shard of it: repair reads committed versions only
            skipped |= unreachable  # any node may hold a pending write's shards
            targets = [(node, index, None, 0) for node in stores for index in range(n)]
        for node, index, location, generation in targets:
            name = shard_name(record.object_id, record.version, index, generation)
            shards[node].append((name, location))
    replaced = _replaced_copies(cell, records, stores, shards)
    removed = 0
    for node, named in shards.items():
        try:  # all of a node's on its thread at once: a hand-off per delete doubled gc
            deleted, failed = on_node(stores[node], _delete_each, named)
        except (ShardvaultError, OSError):
            skipped.add(node)  # it hung: as on a node that could not be opened
            continue
        removed += deleted
        if failed:
            skipped.add(node)
    # the shards are gone for good before their rows go
    skipped.update(node for node in _sync(stores) if shards[node])
    cell.catalog.purge((record.ref, record.version) for record in records)
    cell.catalog.drop_leftovers(x for x in replaced if x.node not in skipped)
    return removed, skipped


def _replaced_copies(
    cell: Cell,
    records: list[VersionRecord],
    stores: Mapping[str, ShardStore],
    shards: dict[str, list[tuple[str, str | None]]],
) -> list[Leftover]:
    """The noted copies of these versions on nodes it can reach (those a repair or spread
    replaced, kept for the gets still reading them: `_resolve_leftovers`), added to
    SHARDS to be deleted with the rest: nothing of a deleted or forgotten version may
    outlast its collection. Those noted on a node out of reach stay for gc."""
    if not records:
        return []
    wanted = {(record.object_id, record.version) for record in records}
    found = [
        x
        for x in cell.catalog.leftovers()
        if (x.object_id, x.version) in wanted and x.node in stores
    ]
    for x in found:
        name = shard_name(x.object_id, x.version, x.shard, x.generation)
        if (name, x.location) not in shards[x.node]:
            shards[x.node].append((name, x.location))
    return found


def _delete_each(store: ShardStore, shards: list[tuple[str, str | None]]) -> tuple[int, bool]:
    """Delete these shards (name, location) from the store: how many were there, and
    whether any delete failed."""
    removed, failed = 0, False
    for name, location in shards:
        try:
            removed += store.delete(name, location)
        except (ShardvaultError, OSError):
            failed = True  # as on a node that could not be opened: an orphan once the row goes
    return removed, failed


def _sync(stores: Mapping[str, ShardStore]) -> set[str]:
    """Make the deletions durable: a pack's tombstones and zeroed bytes share one sync.
    The nodes that failed it: as a node that failed a delete, not the whole gc's end
    (one failing disk stopped every cell's gc); a shard whose delete it may have lost
    is an orphan once its row goes, and the next sweep that reaches the node takes it."""
    failed = set()
    for node, store in stores.items():
        try:
            store.sync()
        except (ShardvaultError, OSError):
            failed.add(node)
    return failed


def collect_cell(cell: Cell, cutoff: float, started: float, n: int) -> GcReport:
    # a node that missed a delete is swept below (its orphans taken), or named if it fails
    versions, shards, _ = collect_claimed(cell, n, cutoff, started)
    cell.catalog.note_sweep(cutoff)  # from here, unreserved shards minted by then cannot commit
    orphans = temporaries = 0
    stale_copies = 0  # not while repairs run
    with cell.maintenance(wait=False) as turn:  # held only for this: repairs need not wait
        if turn:
            with cell.collection():
                stale_copies = _resolve_leftovers(cell, cutoff)
    failing: list[NodeFailure] = []
    strays: list[str] = []
    damaged = 0
    with contextlib.closing(CompactionMoves(cell.work_dir)) as moves:
        for node, store in cell.usable_stores().items():  # one at a time: one node's names held
            try:
                swept, stale, compacted = _sweep_node(cell, store, cutoff)
            except (ShardvaultError, OSError) as exc:
                failing.append(NodeFailure.of(node, exc))  # the next sweep tries again
                continue
            orphans += swept
            temporaries += stale
            moves.add(node, compacted.moved)  # before the strays: a sweep done keeps its moves
            queue_kept_damage(cell, node, compacted.damaged)
            damaged += len(compacted.damaged)
            try:
                strays += store.strays()
            except (ShardvaultError, OSError) as exc:
                failing.append(NodeFailure.of(node, exc))
        relocate(cell, moves)
    unavailable = tuple(sorted(cell.unavailable_nodes()))
    skipped = tuple(sorted([*unavailable, *(failed.node for failed in failing)]))
    return GcReport(
        versions,
        shards,
        orphans,
        temporaries,
        skipped,
        moves.count,
        stale_copies,
        unavailable,
        tuple(failing),
        tuple(strays),
        damaged,
    )


def _sweep_node(cell: Cell, store: ShardStore, cutoff: float) -> tuple[int, int, Compacted]:
    """One node's orphans and temporaries, then its compaction: (orphans, temporaries,
    what it moved and kept damaged). The store then lets go of what it learned of its
    shards meanwhile."""
    with cell.collection():
        orphans = _collect_orphans(cell, store, cutoff)
    temporaries = store.collect_temporaries(cutoff)
    store.sync()
    compacted = store.compact()
    store.drop_caches()
    return orphans, temporaries, compacted


def _collect_orphans(cell: Cell, store: ShardStore, cutoff: float) -> int:
    """Delete the node's shards no row names, minted before the cutoff: how many. Taking
    its turn with the cell's other collectors (`Cell.collection`): one that collected a
    version between the listing and the look would leave its shards listed here, and
    not known, and a packed shard's delete says it was there to each."""
    # List shards before reading the known ids: a reserved shard was reserved
    # before it was written, and an unreserved one committed by now is known.
    names = list(store.names())
    orphans = 0
    for start in range(0, len(names), _ORPHAN_BATCH):
        chunk = names[start : start + _ORPHAN_BATCH]
        batch = {name: bytes.fromhex(object_id_of(name)) for name in chunk}
        candidates = {oid for oid in batch.values() if not minted_after(oid, cutoff)}
        known = cell.catalog.known_among(candidates)
        for name, object_id in batch.items():
            if object_id in candidates and object_id not in known and store.delete(name):
                orphans += 1
    return orphans


def _resolve_leftovers(cell: Cell, cutoff: float) -> int:
    """Copies repair noted (`Catalog.note_leftovers`): each one its version's manifest
    names on its node is live; one a swap replaced after CUTOFF (the grace period) of a
    version still committed is kept, for the gets that loaded the manifest before the
    swap; any other, on a node that can be reached, is deleted (a repair killed before
    or after its swap, a node it could not reach). How many were. Holding the cell's
    maintenance lock, so no repair is between its steps, and its collection turn
    (`Cell.collection`), so no collector deletes a collected version's copies here too
    (`_replaced_copies`), each of them counting it."""
    leftovers = cell.catalog.leftovers()
    stores = cell.usable_stores()
    reachable = [x for x in leftovers if x.node in stores]
    records = {r.object_id: r for r in cell.catalog.versions_with({x.object_id for x in reachable})}
    done, touched, removed = [], set(), 0
    for x in reachable:
        record = records.get(x.object_id)
        if record is not None and record.manifest is not None:
            manifest = Manifest.from_bytes(record.manifest)
            if manifest.names_copy(x.shard, x.node, x.generation):
                done.append(x)  # named: the version's own copy
                continue
            if _still_read(x, record, cutoff):
                continue  # noted still: a later gc takes it
        try:
            removed += stores[x.node].delete(
                shard_name(x.object_id, x.version, x.shard, x.generation), x.location
            )
        except (ShardvaultError, OSError):
            continue  # noted still: the next gc tries again
        touched.add(x.node)
        done.append(x)
    failed = _sync({node: stores[node] for node in touched})  # gone before their notes go
    cell.catalog.drop_leftovers(x for x in done if x.node not in failed)
    return removed


def _still_read(copy: Leftover, record: VersionRecord, cutoff: float) -> bool:
    """Whether a replaced copy may still be read: its version is committed and the swap
    that replaced it came after the cutoff (a get under way reads the manifest it
    loaded; more than m of its copies deleted under it cost the get a reload of the
    manifest, vault/reader.py)."""
    replaced = copy.replaced_at
    return replaced is not None and replaced > cutoff and record.state is VersionState.COMMITTED
