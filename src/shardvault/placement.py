"""Where a stripe's shards go: one pure function, no I/O.

Weighted rendezvous hashing (highest random weight) ranks every eligible node
for an object; the stripe takes nodes in rank order, skipping a node whose
facility already holds m shards, so losing a whole facility loses at most m
shards and the object stays readable (a cell too small for that puts the
shards past m in as few facilities as it can). Only active nodes of the
subject's home jurisdiction are eligible: a node elsewhere is never chosen, and
if the home cell is too small the write is refused rather than spilled.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from blake3 import blake3

from shardvault.errors import ResidencyRefused, TooFewNodes
from shardvault.model import NodeSpec, NodeState, ObjectRef

_SCALE = float(1 << 64)


def _score(seed: bytes, node: NodeSpec) -> float:
    digest = blake3(seed + b"\x00" + node.id.encode()).digest(8)
    # uniform in (0, 1], never 0 so the log is finite
    unit = (int.from_bytes(digest, "big") + 1) / _SCALE
    return -node.capacity / math.log(unit) if unit < 1.0 else math.inf


def placement_seed(ref: ObjectRef) -> bytes:
    """What ranks the nodes for an object: its name, so each key has its own order."""
    return blake3(f"{ref.tenant}\x00{ref.subject}\x00{ref.key}".encode()).digest()


def rank_nodes(seed: bytes, nodes: Iterable[NodeSpec]) -> list[NodeSpec]:
    """All nodes, best first, for this seed (stable: ties break on node id)."""
    return sorted(nodes, key=lambda node: (-_score(seed, node), node.id))


def place_stripe(
    seed: bytes, nodes: Iterable[NodeSpec], jurisdiction: str, k: int, m: int
) -> list[NodeSpec]:
    """Choose n = k + m distinct nodes for shard indices 0..n-1.

    Raises ResidencyRefused when the jurisdiction has no nodes at all, and
    TooFewNodes (with the numbers) when it has fewer active nodes than n.
    """
    all_nodes = list(nodes)
    home = [node for node in all_nodes if node.jurisdiction == jurisdiction]
    if not home:
        raise ResidencyRefused(
            f"no storage nodes in jurisdiction {jurisdiction}: the write is refused "
            "rather than stored elsewhere"
        )
    eligible = [node for node in home if node.state is NodeState.ACTIVE]
    n = k + m
    if len(eligible) < n:
        raise TooFewNodes(
            f"jurisdiction {jurisdiction} has {len(eligible)} active nodes of {len(home)}, "
            f"a stripe needs {n} (k={k}, m={m}); add nodes or bring them back"
        )
    ranked = rank_nodes(seed, eligible)
    chosen = _capped(ranked, m, n)
    if len(chosen) < n:
        chosen += _overflow(ranked, chosen, n - len(chosen))
    return chosen


def facility_shortfall(nodes: Iterable[NodeSpec], jurisdiction: str, k: int, m: int) -> int:
    """How many of a stripe's shards a cell's active nodes cannot keep to m per facility.

    0 when a whole facility can be lost without losing an object. Above 0, some
    facility holds more than m shards of a stripe (`place_stripe` still writes
    rather than refuses: a cell is allowed to be small, but its operator should
    know what a facility's loss costs).
    """
    per_facility = Counter(
        node.facility
        for node in nodes
        if node.jurisdiction == jurisdiction and node.state is NodeState.ACTIVE
    )
    return max(0, k + m - sum(min(count, m) for count in per_facility.values()))


def _capped(ranked: list[NodeSpec], cap: int, n: int) -> list[NodeSpec]:
    """Up to n nodes in rank order, at most `cap` per facility."""
    chosen: list[NodeSpec] = []
    used: dict[str, int] = {}  # not a Counter: each facility's first look was a Python call
    for node in ranked:
        taken = used.get(node.facility, 0)
        if taken < cap:
            chosen.append(node)
            used[node.facility] = taken + 1
            if len(chosen) == n:
                break
    return chosen


def _overflow(ranked: list[NodeSpec], chosen: list[NodeSpec], wanted: int) -> list[NodeSpec]:
    """The shards a cell too small to spread cannot keep to m per facility, in as few
    facilities as can take them (those with most nodes left first, then by rank).

    Each facility past m is one whose loss loses the object: taking the best
    ranked nodes instead put 3+3 of a 4+2 stripe in two facilities where 3+2+1
    was possible, so losing either of two facilities lost it instead of one.
    """
    taken = {node.id for node in chosen}
    left: dict[str, list[NodeSpec]] = {}
    for node in ranked:  # facilities in the rank order of their best node left
        if node.id not in taken:
            left.setdefault(node.facility, []).append(node)
    extra: list[NodeSpec] = []
    for facility in sorted(left, key=lambda name: -len(left[name])):  # stable: rank breaks ties
        extra += left[facility][: wanted - len(extra)]
        if len(extra) == wanted:
            break
    return extra
