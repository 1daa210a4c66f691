"""crowded_stripe: which versions hold more than m shards in a facility, from manifests alone,
and whether the cell's active nodes could spread them now; spread_plan: how far they can."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardvault.crowding import (
    CellNodes,
    CrowdedStripe,
    SpreadPlan,
    crowded_stripe,
    spread_plan,
)
from shardvault.manifest import Manifest
from shardvault.model import NodeSpec, NodeState, ObjectRef
from shardvault.placement import facility_shortfall, placement_seed, rank_nodes

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


# spread_plan: how far a crowded stripe can be spread ---------------------------------


def test_a_cell_that_can_hold_a_stripe_to_m_has_each_facilitys_excess_moved() -> None:
    plan = spread_plan(manifest(PUT_WHILE_F3_WAS_OUT), cell())
    assert (dict(plan.leaving), plan.full, plan.moves) == ({"f1": 1, "f2": 1}, True, 2)
    assert set(plan.limit.values()) == {2}  # to any facility under m, as the spares rank


def test_a_cell_that_cannot_has_the_version_spread_part_of_the_way() -> None:
    # f3 has one node of two: 3 + 3 + 0 became no better, though 3 + 2 + 1 (or 2 + 3 + 1)
    # leaves one facility whose loss loses the version rather than two
    plan = spread_plan(manifest(PUT_WHILE_F3_WAS_OUT), cell("n6"))
    assert (plan.moves, plan.full, plan.limit["f3"]) == (1, False, 1)
    assert sorted(plan.limit.values()) == [1, 2, 3]
    assert sum(plan.leaving.values()) == 1 and set(plan.leaving) <= {"f1", "f2"}


def test_which_facility_keeps_its_excess_goes_by_the_objects_rank_as_placement_does() -> None:
    # by facility name, every crowded version of a cell would keep its excess in the
    # same facility, so that one facility's loss would lose them all
    kept_by = set()
    for i in range(40):
        ref = ObjectRef("intl", "a", f"k{i}")
        plan = spread_plan(replace(manifest(PUT_WHILE_F3_WAS_OUT), ref=ref), cell("n6"))
        (kept,) = [name for name, count in plan.limit.items() if count > 2]
        ranked = rank_nodes(placement_seed(ref), cell("n6").active)
        assert kept == next(x.facility for x in ranked if x.facility != "f3")
        kept_by.add(kept)
    assert kept_by == {"f1", "f2"}


def test_a_facility_gains_past_m_only_to_leave_fewer_facilities_over_m() -> None:
    # two facilities, 3 + 3, and a fourth node in f1: 4 + 2 loses the version with f1
    # alone, as placement puts a new stripe there
    two = [node("n1", "f1"), node("n2", "f2"), node("n4", "f1"), node("n5", "f2"),
           node("n7", "f1"), node("n8", "f2"), node("n9", "f1")]  # fmt: skip
    plan = spread_plan(manifest(PUT_WHILE_F3_WAS_OUT), CellNodes.of(two, "US"))
    assert (dict(plan.leaving), plan.limit["f1"], plan.moves) == ({"f2": 1}, 4, 1)
    # without the fourth node nothing helps: 3 + 3 is left as it is
    assert spread_plan(manifest(PUT_WHILE_F3_WAS_OUT), CellNodes.of(two[:-1], "US")).moves == 0


def test_nothing_moves_while_a_shard_is_on_a_node_not_active() -> None:
    assert spread_plan(manifest(PUT_WHILE_F3_WAS_OUT), cell("n7")) == SpreadPlan({}, {}, False)


def compositions(caps: list[int], total: int) -> Iterator[tuple[int, ...]]:
    """Every way of holding TOTAL shards with at most caps[i] in facility i."""
    if not caps:
        if total == 0:
            yield ()
        return
    for first in range(min(caps[0], total) + 1):
        for rest in compositions(caps[1:], total - first):
            yield (first, *rest)


def how_spread(after: dict[str, int], held: Counter[str], m: int) -> tuple[int, int, int, int]:
    """What spread_plan minimises, in order: the facilities over m (each one whose loss
    loses the version), the largest excess, the shards put past m in a facility that did
    not hold them, the shards moved."""
    over = [count - m for count in after.values() if count > m]
    past = sum(max(0, count - max(held[name], m)) for name, count in after.items())
    moved = sum(max(0, count - after.get(name, 0)) for name, count in held.items())
    return len(over), max(over, default=0), past, moved


def best_spread(nodes: list[NodeSpec], stripe: list[str], m: int) -> tuple[int, int, int, int]:
    """The oracle: every number of shards per facility its active nodes can hold, the best."""
    facility = {x.id: x.facility for x in nodes}
    room = Counter(x.facility for x in nodes if x.state is NodeState.ACTIVE)
    held = Counter(facility[x] for x in stripe)
    names = sorted(room)
    return min(
        how_spread(dict(zip(names, counts, strict=True)), held, m)
        for counts in compositions([room[name] for name in names], len(stripe))
    )


def moved_as_planned(
    plan: SpreadPlan, nodes: list[NodeSpec], stripe: list[str], m: int
) -> list[str]:
    """The stripe once the plan's shards have moved: off each facility it names, to free
    active nodes of facilities below their limit (any of them, in any order)."""
    facility = {x.id: x.facility for x in nodes}
    used = Counter(facility[x] for x in stripe)
    held = list(stripe)
    free = [x.id for x in nodes if x.state is NodeState.ACTIVE and x.id not in stripe]
    for name, count in plan.leaving.items():
        for leaving in [x for x in held if facility[x] == name][:count]:
            to = next(x for x in free if used[facility[x]] < plan.limit.get(facility[x], 0))
            free.remove(to)
            used[facility[to]] += 1
            held[held.index(leaving)] = to
    return held


@st.composite
def cells_and_active_stripes(draw: st.DrawFn) -> tuple[list[NodeSpec], list[str], int, int]:
    """A cell of up to 12 nodes in 1 to 4 facilities (so often too few to hold a stripe to
    m per facility), some not active, and a stripe on distinct active nodes of it."""
    k, m = draw(st.sampled_from([(4, 2), (2, 1), (3, 3), (1, 1), (6, 3), (5, 1), (3, 1)]))
    facilities = draw(st.integers(1, 4))
    count = draw(st.integers(k + m, 12))
    nodes = [node(f"n{i}", f"f{draw(st.integers(1, facilities))}") for i in range(count)]
    stripe = draw(st.permutations([x.id for x in nodes]))[: k + m]
    states = [NodeState.ACTIVE] * 3 + [NodeState.DOWN, NodeState.DRAINING]
    nodes = [
        x if x.id in stripe else replace(x, state=draw(st.sampled_from(states))) for x in nodes
    ]
    return nodes, stripe, k, m


@settings(max_examples=500, deadline=None)
@given(drawn=cells_and_active_stripes())
def test_the_plan_spreads_a_stripe_as_far_as_any_placement_of_the_cell_could(
    drawn: tuple[list[NodeSpec], list[str], int, int],
) -> None:
    nodes, stripe, k, m = drawn
    plan = spread_plan(manifest(stripe, k, m), CellNodes.of(nodes, "US"))
    facility = {x.id: x.facility for x in nodes}
    held = Counter(facility[x] for x in stripe)
    after = moved_as_planned(plan, nodes, stripe, m)
    assert len(set(after)) == k + m  # never two shards of the stripe on one node
    counts = Counter(facility[x] for x in after)
    assert how_spread(dict(counts), held, m) == best_spread(nodes, stripe, m)
    excess = sum(max(0, count - m) for count in held.values())
    assert plan.moves <= excess  # never more than the full spread's
    for name, count in plan.leaving.items():  # only off a facility over m, never below m
        assert held[name] > m and held[name] - count >= m
    assert plan.full is (facility_shortfall(nodes, "US", k, m) == 0)
    if plan.full:
        assert max(counts.values()) <= m and plan.moves == excess
    again = spread_plan(manifest(after, k, m), CellNodes.of(nodes, "US"))
    assert again.moves == 0  # the next repair moves nothing back
