"""Where repair rebuilds a bad shard: the node, and the generation of its name there.

Kept apart from the rebuild itself (`vault/repair.py`, whose module docstring gives
the order of preference): the choice reads only the cell's nodes, the manifest and
the nodes' traces of the version's names (`ShardStore.has_trace`), and writes nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from shardvault.errors import ShardvaultError
from shardvault.manifest import MAX_GENERATION, Manifest
from shardvault.model import NodeSpec, NodeState
from shardvault.nodes.port import ShardStore, shard_name
from shardvault.placement import placement_seed, rank_nodes
from shardvault.vault.cells import Cell

_GENERATIONS_TRIED = 64  # names above a bad copy's looked for on its node before giving up


@dataclass(frozen=True, slots=True)
class Target:
    """Where a bad shard is rebuilt: the node, and the generation of its name there."""

    node: NodeSpec
    generation: int


def active_nodes(cell: Cell) -> dict[str, NodeSpec]:
    """The cell's active nodes whose stores could be opened, as placement sees them."""
    return {node.id: node for node in cell.placeable_nodes() if node.state is NodeState.ACTIVE}


def rebuild_targets(
    cell: Cell, manifest: Manifest, bad: list[int], tried: set[str]
) -> dict[int, Target] | None:
    """Where to rebuild each bad shard (see repair's module docstring), on none of the nodes
    TRIED, or None if not everywhere. Shards whose own node cannot take them choose
    first, so a spare goes to one that needs it: with one spare, two bad shards of a
    version on active nodes were left as they were."""
    facility = {node.id: node.facility for node in cell.nodes}
    used = Counter(facility.get(manifest.nodes[i]) for i in range(manifest.n) if i not in bad)
    active = active_nodes(cell)
    names = [
        shard_name(manifest.object_id, manifest.version, i, manifest.generation(i))
        for i in range(manifest.n)
    ]
    spare = [
        node
        for node in active.values()
        if node.id not in manifest.nodes and node.id not in tried and _untouched(cell, node, names)
    ]
    fresh = rank_nodes(placement_seed(manifest.ref), spare)
    own = {
        i: home for i in bad if (home := _own_node(cell, manifest, i, active, tried)) is not None
    }
    chosen: dict[int, Target] = {}
    for index in sorted(bad, key=lambda i: i in own):  # False first: no own node to go back to
        spares = [Target(node, manifest.generation(index)) for node in fresh]  # name new there
        candidates = [*spares, *([own[index]] if index in own else [])]
        if not candidates:
            return None
        keeping = [t for t in candidates if used[t.node.facility] < manifest.m]
        target = (keeping or candidates)[0]
        if target.node in fresh:
            fresh.remove(target.node)
        chosen[index] = target
        used[target.node.facility] += 1
    return chosen


def _own_node(
    cell: Cell, manifest: Manifest, index: int, active: dict[str, NodeSpec], tried: set[str]
) -> Target | None:
    """The node the bad copy of shard index is on, if it is active and not TRIED, under
    the shard's next generation that has no trace there; None otherwise."""
    node = active.get(manifest.nodes[index])
    if node is None or node.id in tried:
        return None
    generation = _next_generation(cell.store(node.id), manifest, index)
    return None if generation is None else Target(node, generation)


def _next_generation(store: ShardStore, manifest: Manifest, index: int) -> int | None:
    """The first generation above the bad copy's whose name the node has no trace of (an
    earlier rebuild there that failed or was undone leaves one), or None if it cannot
    say or gives up (`_GENERATIONS_TRIED`). Never the bad copy's own: a swap deletes
    the copy it replaces, by node and name."""
    first = manifest.generation(index) + 1
    for generation in range(first, min(first + _GENERATIONS_TRIED, MAX_GENERATION + 1)):
        name = shard_name(manifest.object_id, manifest.version, index, generation)
        try:
            if not store.has_trace(name):
                return generation
        except (ShardvaultError, OSError):
            return None
    return None


def _untouched(cell: Cell, node: NodeSpec, names: list[str]) -> bool:
    """Whether the node holds no trace of any of the version's names: no copy (a stale
    one left while it was unreachable), no record of a delete (an earlier repair's,
    interrupted or undone)."""
    store = cell.store(node.id)
    try:
        return not any(store.has_trace(name) for name in names)
    except (ShardvaultError, OSError):
        return False
