"""Where repair rebuilds a bad shard: the node, and the generation of its name there.

In this order: a node of the same cell that is active, holds no shard of the
version and no trace of any of its names (`ShardStore.has_trace`), under the
shard's name; else the node the bad copy is on, if that node is active, under
the shard's next generation that has no trace there (`shard_name`: the
generation is kept in the manifest); else an active node holding no shard of
the version but a trace of some of its names (a stale copy kept while it was
unreachable, an undone repair's tombstone), under the lowest generation, from
the shard's own up, that has no trace there. No node is ever given a name twice:
pack files rely on it (nodes/packs.py), and a fresh generation is all they need.
Its own node comes before a traced one, as it did before traced nodes could be
chosen: a repair that healed then heals the same way, the stripe keeps its nodes,
and a trace marks a node a repair failed on, was undone on or could not reach.
The bad shards of a version are placed together: each takes the first of its
candidates that keeps at most m of the stripe's shards per facility while the
shards after it can still be placed so (the placement rule; spares ranked as
placement ranks). Chosen one shard at a time, the first took a spare in the
facility the second's own node is in, and the second went back there, a third
shard in that facility though the first could have stayed on its own node. Only
when no choice keeps every facility to m does each take the first that keeps
its own, or the first at all. The choice reads the cell's nodes, the manifest
and the nodes' traces, and writes nothing; the rebuild is `vault/rebuild.py`'s.

A version whose good shards sit more than m to a facility (written while a
facility was out) has the fewest of them moved that bring every facility to m, or,
in a cell whose active nodes cannot hold a stripe so, that spread it as far as they
allow (`spread_targets`, as `crowding.spread_plan` says how far; the move is
`vault/spread.py`'s): from each facility the plan names, the shards on the nodes
placement ranks last, each to the best-ranked spare of a facility below its limit
in the plan, under a name new there (as above).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from shardvault.crowding import CellNodes, spread_plan
from shardvault.errors import ShardvaultError
from shardvault.manifest import MAX_GENERATION, Manifest
from shardvault.model import NodeSpec, NodeState
from shardvault.nodes.port import ShardStore, shard_name
from shardvault.placement import placement_seed, rank_nodes
from shardvault.vault.cells import Cell

_GENERATIONS_TRIED = 64  # names of a shard looked for on a node before giving up
_SEARCH_STEPS = 4096  # placements tried for a choice keeping every facility to m


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
    """Where to rebuild each bad shard (see the module docstring), on none of the nodes
    TRIED, or None if not everywhere. Shards whose own node cannot take them choose
    first, so a spare goes to one that needs it: with one spare, two bad shards of a
    version on active nodes were left as they were."""
    facility = {node.id: node.facility for node in cell.nodes}
    used = Counter(facility.get(manifest.nodes[i]) for i in range(manifest.n) if i not in bad)
    active = active_nodes(cell)
    fresh, traced = _spares(cell, manifest, active, tried)
    own = {
        i: home for i in bad if (home := _own_node(cell, manifest, i, active, tried)) is not None
    }
    order = sorted(bad, key=lambda i: i in own)  # False first: no own node to go back to
    options = {
        index: [
            *(Target(node, manifest.generation(index)) for node in fresh),  # name new there
            *([own[index]] if index in own else []),
            *_traced_targets(cell, manifest, index, traced),
        ]
        for index in order
    }
    alike = {node.id for node in fresh}  # for the facility cap, one is as good as another
    keeping = _Keeping(options, alike, manifest.m)
    if keeping.place(order, used.copy()):
        return keeping.chosen
    return _first_each(order, options, used, manifest.m)


def spread_targets(cell: Cell, manifest: Manifest, tried: set[str]) -> dict[int, Target] | None:
    """Where to move the shards of a crowded version that spread it as far as the cell's
    active nodes, but those TRIED, allow (`crowding.spread_plan`: every facility to m if
    they can hold a stripe so, else the fewest facilities left over m), each to a node
    holding none of its shards (see the module docstring); None if no move would spread
    it further, or the moves cannot all be placed so. Every shard's node must be active:
    bad shards are the rebuild's, which comes first."""
    usable = (node for node in cell.placeable_nodes() if node.id not in tried)
    plan = spread_plan(manifest, CellNodes.of(usable, cell.jurisdiction))
    if not plan.moves:
        return None
    facility = {node.id: node.facility for node in cell.nodes}
    used = Counter(facility[node] for node in manifest.nodes)
    fresh, traced = _spares(cell, manifest, active_nodes(cell), tried)
    chosen: dict[int, Target] = {}
    for index in _leaving(cell, manifest, plan.leaving):
        options = [
            *(Target(node, manifest.generation(index)) for node in fresh),  # name new there
            *_traced_targets(cell, manifest, index, traced),
        ]
        taken = {target.node.id for target in chosen.values()}
        target = next(
            (
                t
                for t in options
                if t.node.id not in taken
                and used[t.node.facility] < plan.limit.get(t.node.facility, 0)
            ),
            None,
        )
        if target is None:
            return None
        chosen[index] = target
        used[target.node.facility] += 1
    return chosen


def _leaving(cell: Cell, manifest: Manifest, leaving: Mapping[str, int]) -> list[int]:
    """The shards that leave each facility LEAVING names, as many as it says: those on the
    nodes placement ranks last, so the stripe keeps its best nodes."""
    specs = {node.id: node for node in cell.nodes}
    chosen = []
    for name, count in sorted(leaving.items()):
        held = [specs[node] for node in manifest.nodes if specs[node].facility == name]
        last = rank_nodes(placement_seed(manifest.ref), held)[-count:]
        chosen += [manifest.nodes.index(node.id) for node in last]
    return sorted(chosen)


class _Keeping:
    """A choice of targets keeping every facility to m shards of the stripe: each shard,
    in order, takes its first candidate after which the rest can still be so placed.
    A depth-first search; it gives up (no choice) past `_SEARCH_STEPS` placements."""

    def __init__(self, options: dict[int, list[Target]], alike: set[str], m: int) -> None:
        self.options, self.alike, self.m = options, alike, m
        self.chosen: dict[int, Target] = {}
        self.steps = 0

    def place(self, order: list[int], used: Counter[str | None]) -> bool:
        """Whether the shards of ORDER can all be placed so (then in `chosen`)."""
        if not order:
            return True
        index, rest = order[0], order[1:]
        taken = {target.node.id for target in self.chosen.values()}
        failed: set[str] = set()  # facilities whose fresh spare failed: so would the others
        for target in self.options[index]:
            node = target.node
            fresh = node.id in self.alike
            if (
                node.id in taken
                or used[node.facility] >= self.m
                or (fresh and node.facility in failed)
            ):
                continue
            self.steps += 1
            if self.steps > _SEARCH_STEPS:
                return False
            self.chosen[index] = target
            used[node.facility] += 1
            if self.place(rest, used):
                return True
            used[node.facility] -= 1
            del self.chosen[index]
            if fresh:
                failed.add(node.facility)
        return False


def _first_each(
    order: list[int], options: dict[int, list[Target]], used: Counter[str | None], m: int
) -> dict[int, Target] | None:
    """When no choice keeps every facility to m: each shard in turn takes its first
    candidate that keeps its own facility to m, or the first at all (None if it has none)."""
    chosen: dict[int, Target] = {}
    for index in order:
        taken = {target.node.id for target in chosen.values()}
        target = _first_keeping((t for t in options[index] if t.node.id not in taken), used, m)
        if target is None:
            return None
        chosen[index] = target
        used[target.node.facility] += 1
    return chosen


def _spares(
    cell: Cell, manifest: Manifest, active: dict[str, NodeSpec], tried: set[str]
) -> tuple[list[NodeSpec], list[NodeSpec]]:
    """The active nodes holding no shard of the version and not TRIED, ranked as placement
    ranks: those with no trace of any of its names, and those with one."""
    names = [
        shard_name(manifest.object_id, manifest.version, i, manifest.generation(i))
        for i in range(manifest.n)
    ]
    others = [n for n in active.values() if n.id not in manifest.nodes and n.id not in tried]
    ranked = rank_nodes(placement_seed(manifest.ref), others)
    fresh = [node for node in ranked if _untouched(cell, node, names)]
    return fresh, [node for node in ranked if node not in fresh]


def _first_keeping(
    candidates: Iterable[Target], used: Counter[str | None], m: int
) -> Target | None:
    """The first candidate whose facility holds fewer than m of the stripe's shards, else
    the first at all (the placement rule, kept whenever the cell allows); None if none."""
    first = None
    for target in candidates:
        if used[target.node.facility] < m:
            return target
        first = first or target
    return first


def _traced_targets(
    cell: Cell, manifest: Manifest, index: int, traced: list[NodeSpec]
) -> Iterator[Target]:
    """The spares with a trace of the version, each under the lowest generation of shard
    index, from its current one up, whose name it has no trace of: a fresh name is all
    a pack needs (nodes/packs.py), so a tombstone an undone repair left, or a stale copy,
    no longer keeps a node from every shard of the version."""
    for node in traced:
        first = manifest.generation(index)
        generation = _free_generation(cell.store(node.id), manifest, index, first)
        if generation is not None:
            yield Target(node, generation)


def _own_node(
    cell: Cell, manifest: Manifest, index: int, active: dict[str, NodeSpec], tried: set[str]
) -> Target | None:
    """The node the bad copy of shard index is on, if it is active and not TRIED, under
    the shard's next generation that has no trace there; None otherwise. Never the bad
    copy's own generation: a swap deletes the copy it replaces, by node and name."""
    node = active.get(manifest.nodes[index])
    if node is None or node.id in tried:
        return None
    first = manifest.generation(index) + 1
    generation = _free_generation(cell.store(node.id), manifest, index, first)
    return None if generation is None else Target(node, generation)


def _free_generation(store: ShardStore, manifest: Manifest, index: int, first: int) -> int | None:
    """The first generation of shard index from FIRST whose name the node has no trace of
    (an earlier rebuild there that failed or was undone leaves one), or None if it cannot
    say or gives up (`_GENERATIONS_TRIED`)."""
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
