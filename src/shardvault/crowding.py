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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from shardvault.manifest import Manifest
from shardvault.model import NodeSpec, NodeState, ObjectRef
from shardvault.placement import facility_shortfall


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


def crowded_stripes(manifests: Iterable[Manifest], cell: CellNodes) -> Iterator[CrowdedStripe]:
    """Each of these versions that holds more than m shards in one facility, in order."""
    for manifest in manifests:
        found = crowded_stripe(manifest, cell)
        if found is not None:
            yield found
