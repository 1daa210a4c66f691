"""Crowded stripes: the versions holding more than m shards in one facility, told from
their manifests and the cell's nodes alone (pure: no I/O, no shard read).

Placement keeps a stripe to m shards per facility whenever the cell's active nodes
allow it, so losing a whole facility loses no object. A version put while a facility
was out (its nodes down or unavailable, or too few) has more than m in another and
keeps them there: losing that facility loses the object. A manifest names the node of
each shard and the config each node's facility, so which versions are crowded is
known without reading a shard. Every segment of a version is on the same n nodes
(placement is per object), so a crowded version is crowded in every segment.

Whether the cell could spread one now is what `vault/spread.py` needs before moving
anything: every shard's node must be active (a shard elsewhere is the rebuild's
first: `repair --scrub`), and the cell's active nodes must be able to hold a stripe to
m per facility at all (`placement.facility_shortfall`, as placement and `shardvault
nodes` count). Then moves to nodes holding no shard of the stripe can always bring
every facility to m: each facility can take up to min(its active nodes, m), and
those add up to n or more.

When they cannot add up to n, no stripe of the cell can be kept to m per facility,
but a crowded one can often be made less fragile: 3 + 3 + 0 of a 4+2 stripe is lost
with either of two facilities; with one node of the third facility active, 3 + 2 + 1
is lost with one only. `spread_plan` says how far to go: the fewest
facilities left over m (each one whose loss loses the version), then the smallest
excess in any of them, then the fewest shards put past m in a facility that did
not hold them, then the fewest moves (never more than the full spread's, the
excess over m: every move leaves a facility over m and none is taken below m). A
facility gains a shard past m only where the fewest facilities over m, or the
smallest excess, cannot be had otherwise: 3 + 3 in a cell of two facilities, one
of four nodes, becomes 4 + 2, as placement (`placement._overflow`) puts a new
stripe there. Ties go to the facilities placement ranks first for the object, as
placement's do, so a cell's crowded versions do not all keep their excess in one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from shardvault.manifest import Manifest
from shardvault.model import NodeSpec, NodeState, ObjectRef
from shardvault.placement import facility_shortfall, placement_seed, rank_nodes


@dataclass(frozen=True, slots=True)
class CellNodes:
    """A cell's nodes as the check needs them: each node's facility, and which may take a
    shard now (state active, and, for a caller that knows, its store reachable)."""

    jurisdiction: str
    facility: Mapping[str, str]
    active: tuple[NodeSpec, ...]

    @classmethod
    def of(cls, nodes: Iterable[NodeSpec], jurisdiction: str) -> CellNodes:
        """NODES as placement sees them (`Cell.placeable_nodes`, or the config's): those of
        other jurisdictions are ignored."""
        home = [node for node in nodes if node.jurisdiction == jurisdiction]
        return cls(
            jurisdiction,
            {node.id: node.facility for node in home},
            tuple(node for node in home if node.state is NodeState.ACTIVE),
        )


@dataclass(frozen=True, slots=True)
class CrowdedStripe:
    """A version with more than m shards in one facility, and whether the cell could
    spread it now."""

    ref: ObjectRef
    version: int
    segments: int  # every one crowded: a version's segments are on the same n nodes
    m: int
    facilities: tuple[tuple[str, int], ...]  # (facility, shards) of each over m, by name
    inactive: tuple[str, ...] = ()  # the stripe's nodes that are not active, by name
    shortfall: int = 0  # shards the cell's active nodes cannot keep to m per facility

    @property
    def spreadable(self) -> bool:
        """Whether moving shards now can leave every facility m or fewer."""
        return not self.inactive and self.shortfall == 0

    def described(self) -> str:
        """'3 shards in us-fac-1, 3 shards in us-fac-2': the facilities over m."""
        return ", ".join(f"{count} shards in {name}" for name, count in self.facilities)


def over_m(manifest: Manifest, facility: Mapping[str, str]) -> dict[str, int]:
    """The facilities holding more than m of the version's shards, and how many. A node
    the config does not list (any more) is in no facility, so it crowds none."""
    used = Counter(facility[node] for node in manifest.nodes if node in facility)
    return {name: count for name, count in used.items() if count > manifest.m}


def crowded_stripe(manifest: Manifest, cell: CellNodes) -> CrowdedStripe | None:
    """The version's crowding, or None if no facility holds more than m of its shards."""
    crowded = over_m(manifest, cell.facility)
    if not crowded:
        return None
    active = {node.id for node in cell.active}
    return CrowdedStripe(
        manifest.ref,
        manifest.version,
        manifest.segments,
        manifest.m,
        tuple(sorted(crowded.items())),
        tuple(sorted({node for node in manifest.nodes if node not in active})),
        facility_shortfall(cell.active, cell.jurisdiction, manifest.k, manifest.m),
    )


@dataclass(frozen=True, slots=True)
class SpreadPlan:
    """How far to spread a crowded version, by facility: how many shards leave each (the
    mover takes those on the nodes placement ranks last), and the most each may hold
    once they have moved (a shard goes to a facility below its limit). FULL: every
    facility ends with m or fewer."""

    leaving: Mapping[str, int]
    limit: Mapping[str, int]
    full: bool

    @property
    def moves(self) -> int:
        """Shards to move: 0 when the cell's active nodes allow no better."""
        return sum(self.leaving.values())


def spread_plan(manifest: Manifest, cell: CellNodes) -> SpreadPlan:
    """Where the cell's active nodes let the version's shards be spread (see the module
    docstring): every facility to m if they can hold a stripe so, else as far as they
    allow. Nothing moves while one of its shards is on a node not active: that shard
    is the rebuild's, which comes first."""
    active = {node.id for node in cell.active}
    if not set(manifest.nodes) <= active:
        return SpreadPlan({}, {}, full=False)
    m = manifest.m
    held = Counter(cell.facility[node] for node in manifest.nodes)
    room = Counter(node.facility for node in cell.active)
    if facility_shortfall(cell.active, cell.jurisdiction, manifest.k, m) == 0:
        leaving = {name: count - m for name, count in held.items() if count > m}
        return SpreadPlan(leaving, dict.fromkeys(room, m), full=True)
    ranked = rank_nodes(placement_seed(manifest.ref), cell.active)
    order = tuple(dict.fromkeys(node.facility for node in ranked))  # best node first
    targets = _as_spread_as_allowed(
        tuple(held[name] for name in order), tuple(room[name] for name in order), m
    )
    limit = dict(zip(order, targets, strict=True))
    leaving = {name: held[name] - limit[name] for name in order if limit[name] < held[name]}
    return SpreadPlan(leaving, limit, full=False)


_Cost = tuple[int, int, int]  # facilities over m, shards put past m, shards moved


@lru_cache(maxsize=256)
def _as_spread_as_allowed(held: tuple[int, ...], room: tuple[int, ...], m: int) -> tuple[int, ...]:
    """The shards each facility should hold (HELD: now; ROOM: its active nodes, at least
    HELD), best first: the fewest facilities over m, then the smallest excess, then the
    fewest shards put past m, then the fewest moves; ties to the facilities first in
    order. Cached: a cell's crowded versions share a few shapes."""
    widest = min(max(room), sum(held)) - m  # the most past m any facility can hold
    unbounded = _least_cost(held, room, m, widest)
    if unbounded is None:  # cannot be: the shards where they are are one way
        return held
    for excess in range(widest + 1):
        found = _least_cost(held, room, m, excess)
        if found is not None and found[0][0] == unbounded[0][0]:
            return found[1]
    return unbounded[1]


def _least_cost(
    held: tuple[int, ...], room: tuple[int, ...], m: int, excess: int
) -> tuple[_Cost, tuple[int, ...]] | None:
    """The cheapest shards per facility (`_cost`, summed) with none more than EXCESS past
    m, and its cost; None if the facilities cannot hold them so. A dynamic program over
    the facilities and the shards they hold between them."""
    n, caps = sum(held), [min(count, m + excess) for count in room]
    # after[i][s]: the least cost of facilities i.. holding s shards between them
    after: list[list[_Cost | None]] = [[None] * (n + 1) for _ in range(len(held) + 1)]
    after[-1][0] = (0, 0, 0)
    for i in reversed(range(len(held))):
        for total in range(n + 1):
            after[i][total] = min(
                (
                    _plus(_cost(held[i], t, m), rest)
                    for t in range(min(caps[i], total) + 1)
                    if (rest := after[i + 1][total - t]) is not None
                ),
                default=None,
            )
    best = after[0][n]
    if best is None:
        return None
    targets, total = [], n
    for i in range(len(held)):  # most to the first facilities that cost no more
        target = next(
            t
            for t in range(min(caps[i], total), -1, -1)
            if (rest := after[i + 1][total - t]) is not None
            and _plus(_cost(held[i], t, m), rest) == after[i][total]
        )
        targets.append(target)
        total -= target
    return best, tuple(targets)


def _cost(held: int, target: int, m: int) -> _Cost:
    """A facility holding TARGET shards rather than HELD: whether its loss loses the
    version, the shards it holds past both m and HELD, the shards that leave it."""
    return int(target > m), max(0, target - max(held, m)), max(0, held - target)


def _plus(one: _Cost, other: _Cost) -> _Cost:
    return one[0] + other[0], one[1] + other[1], one[2] + other[2]
