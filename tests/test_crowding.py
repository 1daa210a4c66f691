"""crowded_stripe: which versions hold more than m shards in a facility, from manifests alone,
and whether the cell's active nodes could spread them now."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardvault.crowding import CellNodes, CrowdedStripe, crowded_stripe, crowded_stripes
from shardvault.manifest import Manifest
from shardvault.model import NodeSpec, NodeState, ObjectRef

REF = ObjectRef("intl", "alice", "k")


def node(ident: str, facility: str, state: NodeState = NodeState.ACTIVE) -> NodeSpec:
    return NodeSpec(ident, "US", facility, "memory", "", state=state)


def manifest(nodes: list[str], k: int = 4, m: int = 2, segments: int = 1) -> Manifest:
    """A manifest naming NODES for its shards; nothing else in it matters here."""
    return Manifest(
        REF, 1, b"\x00" * 16, 10, 10, segments, k, m, "isa_l_rs_vand", tuple(nodes),
        1, 1, b"\x00" * 32 * segments * (k + m), b"", "key", 0.0,
    )  # fmt: skip


# the demo's US cell with a third node in us-fac-1 and us-fac-2 (tests/vault/test_spread.py)
CELL = [
    node("n1", "f1"), node("n2", "f2"), node("n3", "f3"), node("n4", "f1"),
    node("n5", "f2"), node("n6", "f3"), node("n7", "f1"), node("n8", "f2"),
]  # fmt: skip
PUT_WHILE_F3_WAS_OUT = ["n1", "n2", "n4", "n5", "n7", "n8"]  # 3 + 3 + 0


def cell(*down: str, nodes: list[NodeSpec] = CELL) -> CellNodes:
    return CellNodes.of(
        [
            NodeSpec(x.id, x.jurisdiction, x.facility, x.backend, x.location, state=NodeState.DOWN)
            if x.id in down
            else x
            for x in nodes
        ],
        "US",
    )


@pytest.mark.parametrize(
    ("stripe", "down", "facilities", "inactive", "shortfall"),
    [
        # spread as placement leaves it with every facility up: not crowded
        (["n1", "n2", "n3", "n4", "n5", "n6"], (), None, (), 0),
        # put while f3 was out, f3 back: crowded, and the cell can spread it now
        (PUT_WHILE_F3_WAS_OUT, (), (("f1", 3), ("f2", 3)), (), 0),
        # f3 still out: 2 + 2 + 0 < 6, two shards over
        (PUT_WHILE_F3_WAS_OUT, ("n3", "n6"), (("f1", 3), ("f2", 3)), (), 2),
        # one node of f3 back: one shard over
        (PUT_WHILE_F3_WAS_OUT, ("n6",), (("f1", 3), ("f2", 3)), (), 1),
        # a shard's own node is down: the rebuild's first, whatever the rest
        (PUT_WHILE_F3_WAS_OUT, ("n7",), (("f1", 3), ("f2", 3)), ("n7",), 0),
        # one facility crowded, the other at m
        (["n1", "n4", "n7", "n2", "n5", "n3"], (), (("f1", 3),), (), 0),
        # a node the config no longer lists is in no facility: it crowds none, and is not active
        (["n1", "n4", "gone", "n2", "n5", "n3"], (), None, (), 0),
        (["n1", "n4", "n7", "gone", "n5", "n3"], (), (("f1", 3),), ("gone",), 0),
    ],
)
def test_crowding_of_a_stripe(
    stripe: list[str],
    down: tuple[str, ...],
    facilities: tuple[tuple[str, int], ...] | None,
    inactive: tuple[str, ...],
    shortfall: int,
) -> None:
    found = crowded_stripe(manifest(stripe, segments=3), cell(*down))
    if facilities is None:
        assert found is None
        return
    assert found == CrowdedStripe(REF, 1, 3, 2, facilities, inactive, shortfall)
    assert found.spreadable is (not inactive and not shortfall)


def test_it_says_what_is_over_m_in_words() -> None:
    found = crowded_stripe(manifest(PUT_WHILE_F3_WAS_OUT), cell())
    assert found is not None and found.described() == "3 shards in f1, 3 shards in f2"


def test_the_stripes_m_counts_not_the_cells() -> None:
    # a version written under another k+m than the config's now is judged by its own
    two_and_one = manifest(["n1", "n4", "n2"], k=2, m=1)
    found = crowded_stripe(two_and_one, cell())
    assert found is not None and (found.facilities, found.m) == ((("f1", 2),), 1)


def test_nodes_of_other_jurisdictions_are_not_the_cells() -> None:
    foreign = [NodeSpec(f"sg{i}", "SG", "f3", "memory", "") for i in range(4)]
    found = crowded_stripe(manifest(PUT_WHILE_F3_WAS_OUT), cell("n3", "n6", nodes=CELL + foreign))
    assert found is not None and found.shortfall == 2  # SG's f3 nodes hold no US shard


def test_crowded_stripes_yields_the_crowded_versions_in_order() -> None:
    stripes = [
        manifest(["n1", "n2", "n3", "n4", "n5", "n6"]),
        manifest(PUT_WHILE_F3_WAS_OUT),
        manifest(["n1", "n4", "n7", "n2", "n5", "n3"], segments=2),
    ]
    found = list(crowded_stripes(stripes, cell()))
    assert [(x.segments, x.facilities) for x in found] == [
        (1, (("f1", 3), ("f2", 3))),
        (2, (("f1", 3),)),
    ]


@st.composite
def cells_and_stripes(draw: st.DrawFn) -> tuple[list[NodeSpec], list[str], int, int]:
    """A cell of up to 12 nodes in up to 4 facilities, some not active, and a stripe on
    distinct nodes of it (as placement or a repair leaves one)."""
    k, m = draw(st.sampled_from([(4, 2), (2, 1), (3, 3), (1, 1), (6, 3)]))
    count = draw(st.integers(k + m, 12))
    nodes = [
        node(
            f"n{i}",
            f"f{draw(st.integers(0, 3))}",
            draw(st.sampled_from([NodeState.ACTIVE] * 4 + [NodeState.DOWN, NodeState.DRAINING])),
        )
        for i in range(count)
    ]
    stripe = draw(st.permutations([x.id for x in nodes]))[: k + m]
    return nodes, stripe, k, m


def spreadable_by_moves(nodes: list[NodeSpec], stripe: list[str], m: int) -> bool:
    """The oracle: move a shard off a facility over m to any active node free of the
    stripe in a facility under m, while one is over; spreadable if none is left over.
    (Each move takes one shard off the excess and adds none: the order does not matter.)"""
    facility = {x.id: x.facility for x in nodes}
    active = {x.id for x in nodes if x.state is NodeState.ACTIVE}
    if not set(stripe) <= active:
        return False
    held = list(stripe)
    while over := [f for f, c in Counter(facility[x] for x in held).items() if c > m]:
        used = Counter(facility[x] for x in held)
        free = [x for x in sorted(active - set(held)) if used[facility[x]] < m]
        if not free:
            return False
        leaving = next(x for x in held if facility[x] == over[0])
        held[held.index(leaving)] = free[0]
    return True


@settings(max_examples=300, deadline=None)
@given(drawn=cells_and_stripes())
def test_crowded_exactly_when_a_facility_holds_more_than_m_and_spreadable_as_moves_can(
    drawn: tuple[list[NodeSpec], list[str], int, int],
) -> None:
    nodes, stripe, k, m = drawn
    found = crowded_stripe(manifest(stripe, k, m), CellNodes.of(nodes, "US"))
    facility = {x.id: x.facility for x in nodes}
    counts = Counter(facility[x] for x in stripe)
    over = {f: c for f, c in counts.items() if c > m}
    if not over:
        assert found is None
        return
    assert found is not None
    assert dict(found.facilities) == over
    assert found.inactive == tuple(
        sorted(x.id for x in nodes if x.id in stripe and x.state is not NodeState.ACTIVE)
    )
    assert found.spreadable is spreadable_by_moves(nodes, stripe, m)
