"""What the Vault returns besides bytes: pages, forget results, node usage, a cell's
crowded versions, object info."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, replace

from blake3 import blake3

from shardvault.catalog.port import VersionRecord
from shardvault.crowding import CellNodes, crowded_stripe, spread_plan
from shardvault.errors import IntegrityError, NewerFormat, ShardvaultError
from shardvault.manifest import Manifest
from shardvault.model import NodeSpec, NodeState, ObjectInfo
from shardvault.nodes.port import ShardStore
from shardvault.nodes.unavailable import UnavailableStore
from shardvault.vault.bounded import BoundedStores
from shardvault.vault.cells import Cell


@dataclass(frozen=True, slots=True)
class ListPage:
    items: list[ObjectInfo]
    next_after: str | None


@dataclass(frozen=True, slots=True)
class ForgetResult:
    tenant: str
    subject: str
    jurisdiction: str
    key_id: str
    versions_deleted: int
    shards_removed: int
    forgotten_at: float
    audit_index: int = -1
    receipt: str = ""
    # nodes that may still hold the subject's shards (unreadable: the key is destroyed),
    # unavailable, hung or failing: a gc that reaches them takes them as orphans
    skipped_nodes: tuple[str, ...] = ()
    # cells whose approvals may still name the subject (their files failed or hung):
    # recorded, and scrubbed by the next process that opens them, or by gc
    unscrubbed_cells: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeUsage:
    node: NodeSpec
    shards: int
    bytes_used: int
    unavailable: str = ""  # why the node's store could not be opened (then 0 shards)


def node_usage(cells: Iterable[Cell], bounded: BoundedStores) -> list[NodeUsage]:
    """Shard count and bytes on disk of every node of these cells, or why it is unavailable;
    each node counted on its own thread, as far as the deadline allows (vault/bounded.py)."""
    usage = []
    for cell in cells:
        for node in cell.nodes:
            store = cell.store(node.id)
            if isinstance(store, UnavailableStore):
                usage.append(NodeUsage(node, 0, 0, store.reason))
                continue
            try:
                shards, used = bounded.run(node.id, _usage_of, store, node)
            except ShardvaultError as exc:  # its directory went after it was opened, or it hung
                usage.append(NodeUsage(node, 0, 0, str(exc).removeprefix(f"node {node.id}: ")))
                continue
            usage.append(NodeUsage(node, shards, used))
    return usage


@dataclass(frozen=True, slots=True)
class CellCrowding:
    """A cell's committed versions, those holding more than m shards in one facility
    (losing it loses them), how many of those its active nodes could spread now, and
    how many of the others they could spread part of the way (as `repair` would)."""

    jurisdiction: str
    versions: int
    crowded: int
    spreadable: int
    unreadable: int = 0  # versions whose manifest cannot be parsed: not counted
    unreadable_first: str = ""  # the first of them, and why
    partly_spreadable: int = 0


_BATCH = 500  # committed versions read from the catalog at a time, as a repair reads them


def cell_crowding(cell: Cell, unreachable: Collection[str]) -> CellCrowding:
    """Counted from the cell's manifests and nodes alone (`crowding.py`): no shard is read
    and no node asked. A node in UNREACHABLE (or whose store could not be opened) cannot
    take a shard now, as placement would not give it one."""
    nodes = CellNodes.of(
        (
            replace(node, state=NodeState.DOWN) if node.id in unreachable else node
            for node in cell.placeable_nodes()
        ),
        cell.jurisdiction,
    )
    versions = crowded = spreadable = partly = 0
    unreadable: list[str] = []
    cursor = b""
    while batch := cell.catalog.committed_after(cursor, _BATCH):
        versions += len(batch)
        for manifest in _parsed(batch, unreadable):
            stripe = crowded_stripe(manifest, nodes)
            if stripe is None:
                continue
            crowded += 1
            if stripe.spreadable:
                spreadable += 1
            elif spread_plan(manifest, nodes).moves:  # about 50 µs, for these alone
                partly += 1
        cursor = batch[-1].object_id
    first = unreadable[0] if unreadable else ""
    return CellCrowding(
        cell.jurisdiction, versions, crowded, spreadable, len(unreadable), first, partly
    )


def _parsed(batch: list[VersionRecord], unreadable: list[str]) -> Iterator[Manifest]:
    """The batch's manifests; each that cannot be parsed is added to UNREADABLE, named
    with why, rather than end the count (one damaged row ended `shardvault nodes`)."""
    for row in batch:
        try:
            manifest = Manifest.parse(row.manifest) if row.manifest else None
        except (IntegrityError, NewerFormat) as exc:
            unreadable.append(f"{row.ref} v{row.version}: {exc}")
            continue
        if manifest is not None:
            yield manifest


def _usage_of(store: ShardStore, node: NodeSpec) -> tuple[int, int]:
    """The node's shard count and bytes on disk."""
    try:
        shards = sum(1 for _ in store.names())
    finally:
        store.drop_caches()  # counting indexed the node: one node's index at a time
    return shards, _bytes_used(node)


def _bytes_used(node: NodeSpec) -> int:
    if node.backend != "local":
        return 0
    total = 0
    for root, _dirs, files in os.walk(node.location):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def info_of(manifest: Manifest) -> ObjectInfo:
    """What stat and ls show of a version: never its data or keys."""
    return ObjectInfo(
        ref=manifest.ref,
        version=manifest.version,
        size=manifest.size,
        created_at=manifest.created_at,
        segments=manifest.segments,
        k=manifest.k,
        m=manifest.m,
        nodes=manifest.nodes,
        content_hash=blake3(manifest.block_hashes).hexdigest(),
    )
