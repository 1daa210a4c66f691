"""place_stripe: residency, distinctness, facility spread, determinism, capacity balance."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardvault import placement
from shardvault.errors import ResidencyRefused, TooFewNodes
from shardvault.model import NodeSpec, NodeState, ObjectRef
from shardvault.placement import place_stripe, placement_seed, rank_nodes

CODES = ["US", "SG", "EU"]


def node(
    ident: str,
    jurisdiction: str = "US",
    facility: str = "f1",
    capacity: int = 1,
    state: NodeState = NodeState.ACTIVE,
) -> NodeSpec:
    return NodeSpec(ident, jurisdiction, facility, "memory", "", capacity=capacity, state=state)


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeSpec]:
    count = draw(st.integers(0, 30))
    nodes = []
    for number in range(count):
        nodes.append(
            node(
                f"n{number}",
                draw(st.sampled_from(CODES)),
                f"fac-{draw(st.integers(0, 5))}",
                draw(st.integers(1, 4)),
                draw(st.sampled_from(list(NodeState))),
            )
        )
    return nodes


params = st.sampled_from([(4, 2), (3, 2), (2, 1), (6, 3), (1, 1)])


@settings(max_examples=150)
@given(nodes=clusters(), km=params, seed=st.binary(min_size=1, max_size=32))
def test_stripe_properties(nodes: list[NodeSpec], km: tuple[int, int], seed: bytes) -> None:
    k, m = km
    n = k + m
    home = [x for x in nodes if x.jurisdiction == "US"]
    active = [x for x in home if x.state is NodeState.ACTIVE]
    if not home:
        with pytest.raises(ResidencyRefused):
            place_stripe(seed, nodes, "US", k, m)
        return
    if len(active) < n:
        with pytest.raises(TooFewNodes):
            place_stripe(seed, nodes, "US", k, m)
        return
    chosen = place_stripe(seed, nodes, "US", k, m)
    assert len(chosen) == n
    assert len({x.id for x in chosen}) == n
    assert all(x.jurisdiction == "US" for x in chosen)
    assert all(x.state is NodeState.ACTIVE for x in chosen)
    per_facility = Counter(x.facility for x in active)
    room = sum(min(count, m) for count in per_facility.values())
    chosen_per_facility = Counter(x.facility for x in chosen).values()
    over = sum(count > m for count in chosen_per_facility)
    # what `nodes` warns about is what placement does: the shards it put past m
    assert placement.facility_shortfall(nodes, "US", k, m) == sum(
        max(0, count - m) for count in chosen_per_facility
    )
    if room >= n:
        assert over == 0
    else:  # as few facilities past m as can take the shards the others cannot
        spare = sorted((count - m for count in per_facility.values() if count > m), reverse=True)
        assert over == next(j for j in range(1, len(spare) + 1) if sum(spare[:j]) >= n - room)
    assert place_stripe(seed, list(reversed(nodes)), "US", k, m) == chosen


@settings(max_examples=100)
@given(seed=st.binary(min_size=1, max_size=16), foreign=st.integers(0, 60))
def test_never_another_jurisdiction_even_when_it_is_much_bigger(seed: bytes, foreign: int) -> None:
    nodes = [node(f"sg{i}", "SG", f"sg-f{i % 6}", capacity=4) for i in range(foreign)]
    nodes += [node(f"us{i}", "US", f"us-f{i % 3}") for i in range(6)]
    chosen = place_stripe(seed, nodes, "US", 4, 2)
    assert {x.jurisdiction for x in chosen} == {"US"}
    assert sorted(x.id for x in chosen) == [f"us{i}" for i in range(6)]


def test_no_nodes_in_the_jurisdiction_is_a_residency_refusal() -> None:
    nodes = [node(f"sg{i}", "SG", f"f{i}") for i in range(20)]
    with pytest.raises(ResidencyRefused, match="no storage nodes in jurisdiction US"):
        place_stripe(b"seed", nodes, "US", 4, 2)


def test_too_few_active_nodes_gives_the_numbers() -> None:
    nodes = [node(f"us{i}", facility=f"f{i}") for i in range(4)]
    nodes += [node("us-down", state=NodeState.DOWN), node("us-drain", state=NodeState.DRAINING)]
    nodes += [node(f"sg{i}", "SG", f"f{i}") for i in range(10)]
    with pytest.raises(TooFewNodes) as caught:
        place_stripe(b"seed", nodes, "US", 4, 2)
    message = str(caught.value)
    assert "has 4 active nodes of 6" in message
    assert "needs 6 (k=4, m=2)" in message


@given(seed=st.binary(min_size=1, max_size=16))
def test_down_and_draining_nodes_are_never_chosen(seed: bytes) -> None:
    nodes = [node(f"a{i}", facility=f"f{i % 3}", capacity=4) for i in range(6)]
    nodes += [
        node(f"d{i}", facility=f"f{i % 3}", capacity=4, state=NodeState.DOWN) for i in range(6)
    ]
    nodes += [
        node(f"r{i}", facility=f"f{i % 3}", capacity=4, state=NodeState.DRAINING) for i in range(6)
    ]
    chosen = place_stripe(seed, nodes, "US", 3, 2)
    assert all(x.id.startswith("a") for x in chosen)


def test_facility_spread_limits_each_facility_to_m() -> None:
    # facility f0 holds most nodes and most capacity, yet gets at most m shards
    nodes = [node(f"big{i}", facility="f0", capacity=4) for i in range(10)]
    nodes += [node(f"s{i}", facility=f"f{1 + i % 2}") for i in range(4)]
    for number in range(200):
        chosen = place_stripe(number.to_bytes(4, "big"), nodes, "US", 4, 2)
        assert Counter(x.facility for x in chosen)["f0"] == 2


def test_unspreadable_cell_still_places_on_distinct_nodes() -> None:
    nodes = [node(f"n{i}", facility="only") for i in range(6)]
    chosen = place_stripe(b"x", nodes, "US", 4, 2)
    assert sorted(x.id for x in chosen) == sorted(x.id for x in nodes)


def test_an_unspreadable_cell_puts_more_than_m_shards_in_one_facility_only() -> None:
    """Facilities of 3, 3 and 1 nodes cannot keep a 4+2 stripe to 2 per facility, but
    only one need hold 3: with two holding 3, losing either lost the object."""
    nodes = [node(f"a{i}", facility="fa") for i in range(3)]
    nodes += [node(f"b{i}", facility="fb") for i in range(3)] + [node("c0", facility="fc")]
    for number in range(200):
        chosen = place_stripe(number.to_bytes(4, "big"), nodes, "US", 4, 2)
        assert len({x.id for x in chosen}) == 6
        assert sorted(Counter(x.facility for x in chosen).values()) == [1, 2, 3]


def test_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    nodes = [node(f"n{i}", facility=f"f{i % 4}") for i in range(16)]
    first = place_stripe(b"object-1", nodes, "US", 4, 2)
    assert place_stripe(b"object-1", nodes, "US", 4, 2) == first
    layouts = {tuple(x.id for x in place_stripe(bytes([i]), nodes, "US", 4, 2)) for i in range(50)}
    assert len(layouts) > 20


def test_rank_nodes_is_a_total_order_of_all_nodes() -> None:
    nodes = [node(f"n{i}") for i in range(10)]
    ranked = rank_nodes(b"seed", nodes)
    assert sorted(x.id for x in ranked) == sorted(x.id for x in nodes)
    assert rank_nodes(b"seed", reversed(nodes)) == ranked


def test_balanced_by_capacity() -> None:
    """Over many seeds a capacity-3 node holds about 3x the shards of a capacity-1 node."""
    nodes = [node(f"one{i}", facility=f"f{i}") for i in range(20)]
    nodes += [node(f"three{i}", facility=f"g{i}", capacity=3) for i in range(20)]
    counts: Counter[str] = Counter()
    for number in range(6000):
        for chosen in place_stripe(number.to_bytes(4, "big"), nodes, "US", 1, 1):
            counts[chosen.id] += 1
    light = sum(counts[f"one{i}"] for i in range(20))
    heavy = sum(counts[f"three{i}"] for i in range(20))
    assert 2.5 < heavy / light < 3.5
    # and no single node is starved or hogging
    assert min(counts[f"one{i}"] for i in range(20)) > 0.5 * light / 20
    assert max(counts[f"three{i}"] for i in range(20)) < 1.5 * heavy / 20


def test_first_choice_frequency_is_proportional_to_capacity() -> None:
    nodes = [node("c1", capacity=1), node("c3", capacity=3), node("c6", capacity=6)]
    firsts = Counter(rank_nodes(i.to_bytes(4, "big"), nodes)[0].id for i in range(20000))
    assert firsts["c1"] / 20000 == pytest.approx(0.1, abs=0.02)
    assert firsts["c3"] / 20000 == pytest.approx(0.3, abs=0.02)
    assert firsts["c6"] / 20000 == pytest.approx(0.6, abs=0.02)


def test_extreme_hash_values_rank_first_and_last_without_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The all-ones hash maps to 1.0 (log 0) and all-zeros to the smallest unit: both rank."""
    digests = {b"top": b"\xff" * 8, b"mid": b"\x80" + bytes(7), b"bottom": bytes(8)}

    class FixedHash:
        def __init__(self, data: bytes) -> None:
            self._digest = next(d for name, d in digests.items() if data.endswith(name))

        def digest(self, length: int) -> bytes:
            return self._digest[:length]

    monkeypatch.setattr(placement, "blake3", FixedHash)
    nodes = [node("bottom"), node("mid"), node("top")]
    assert [x.id for x in rank_nodes(b"seed", nodes)] == ["top", "mid", "bottom"]


@pytest.mark.parametrize(
    ("sizes", "k", "m", "spread"),
    [((5, 3), 4, 2, [2, 4]), ((3, 3), 4, 1, [2, 3]), ((4, 2, 2), 5, 1, [1, 1, 4])],
    ids=["one-facility-can-take-it-all", "two-facilities-needed", "biggest-first"],
)
def test_the_shards_past_m_go_to_the_facilities_with_most_nodes_left(
    sizes: tuple[int, ...], k: int, m: int, spread: list[int]
) -> None:
    """Facilities of 5 and 3 nodes hold a 4+2 stripe as 4+2, not 3+3: then losing the
    smaller keeps the object, where with 3+3 losing either lost it. The biggest take them
    first, and when they need two facilities, the second takes only the ones wanted."""
    nodes = [
        node(f"f{f}n{i}", facility=f"f{f}") for f, size in enumerate(sizes) for i in range(size)
    ]
    for number in range(200):
        chosen = place_stripe(number.to_bytes(4, "big"), nodes, "US", k, m)
        assert len({x.id for x in chosen}) == k + m
        assert sorted(Counter(x.facility for x in chosen).values()) == spread


def test_which_of_two_equal_facilities_takes_the_extra_shard_follows_the_rank() -> None:
    """Facilities of 3, 3 and 1 nodes: one of the two big ones holds 3 shards of a 4+2
    stripe, chosen per object by its ranking, so neither holds 3 of every object."""
    nodes = [node(f"a{i}", facility="fa") for i in range(3)]
    nodes += [node(f"b{i}", facility="fb") for i in range(3)] + [node("c0", facility="fc")]
    holding_three: Counter[str] = Counter()
    for number in range(200):
        chosen = place_stripe(number.to_bytes(4, "big"), nodes, "US", 4, 2)
        holding_three.update(
            f for f, count in Counter(x.facility for x in chosen).items() if count == 3
        )
    assert set(holding_three) == {"fa", "fb"}
    assert min(holding_three.values()) > 50


@given(seed=st.binary(min_size=1, max_size=16))
def test_a_cell_of_one_facility_takes_its_best_ranked_nodes(seed: bytes) -> None:
    """Nothing to spread: the stripe is the top n of the ranking, so capacity still counts."""
    nodes = [node(f"n{i}", facility="only", capacity=1 + i % 4) for i in range(10)]
    chosen = place_stripe(seed, nodes, "US", 4, 2)
    assert chosen == rank_nodes(seed, nodes)[:6]


def test_facility_shortfall_counts_only_the_home_cells_active_nodes() -> None:
    """A cell of one facility is short by n - m whatever other cells and down nodes hold."""
    nodes = [node(f"us{i}", facility="f") for i in range(6)]
    nodes += [node(f"sg{i}", "SG", f"sg-f{i}") for i in range(20)]
    nodes += [node(f"down{i}", facility=f"g{i}", state=NodeState.DOWN) for i in range(6)]
    assert placement.facility_shortfall(nodes, "US", 4, 2) == 4
    chosen = place_stripe(b"seed", nodes, "US", 4, 2)
    assert Counter(x.facility for x in chosen) == {"f": 6}
    spread = [node(f"n{i}", facility=f"f{i}") for i in range(12)]
    assert placement.facility_shortfall(spread, "US", 4, 2) == 0  # room to spare is not below 0


@pytest.mark.parametrize(
    "other",
    [
        ObjectRef("other", "alice", "a.txt"),
        ObjectRef("intl", "bob", "a.txt"),
        ObjectRef("intl", "alice", "b.txt"),
    ],
    ids=["tenant", "subject", "key"],
)
def test_each_part_of_an_objects_name_changes_its_placement_seed(other: ObjectRef) -> None:
    """Each object its own ranking: a subject's objects spread over the cell rather than
    all landing on the same n nodes, and so do the same names under other tenants."""
    assert placement_seed(other) != placement_seed(ObjectRef("intl", "alice", "a.txt"))


def test_the_placement_seed_keeps_its_fields_apart() -> None:
    assert placement_seed(ObjectRef("intl", "ab", "c")) != placement_seed(
        ObjectRef("intl", "a", "bc")
    )
    assert placement_seed(ObjectRef("ab", "c", "k")) != placement_seed(ObjectRef("a", "bc", "k"))
