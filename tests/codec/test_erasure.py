"""Reed-Solomon k+m: every loss pattern of up to m blocks decodes; more does not."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shardvault.codec.erasure import BACKEND, MAX_SHARDS, ErasureCode
from shardvault.errors import IntegrityError, InvalidInput

COMBOS = [(4, 2), (3, 2), (2, 1), (6, 3)]
SIZES = [1, 1000, 65536 + 16]


@pytest.mark.parametrize(("k", "m"), COMBOS)
@pytest.mark.parametrize("size", SIZES)
def test_every_loss_of_up_to_m_blocks_decodes(k: int, m: int, size: int) -> None:
    code = ErasureCode(k, m)
    segment = os.urandom(size)
    blocks = code.encode(segment)
    assert len(blocks) == k + m
    assert len({len(block) for block in blocks}) == 1
    assert len(blocks[0]) == code.block_size(size)
    for lost in range(m + 1):
        for gone in itertools.combinations(range(k + m), lost):
            kept = [block for index, block in enumerate(blocks) if index not in gone]
            assert code.decode(kept) == segment, (k, m, gone)


@pytest.mark.parametrize(("k", "m"), COMBOS)
def test_any_k_blocks_in_any_order_decode(k: int, m: int) -> None:
    code = ErasureCode(k, m)
    segment = os.urandom(777)
    blocks = code.encode(segment)
    for chosen in itertools.combinations(range(k + m), k):
        assert code.decode([blocks[i] for i in reversed(chosen)]) == segment


@pytest.mark.parametrize(("k", "m"), COMBOS)
def test_losing_more_than_m_blocks_is_an_integrity_error(k: int, m: int) -> None:
    code = ErasureCode(k, m)
    blocks = code.encode(os.urandom(500))
    for gone in itertools.combinations(range(k + m), m + 1):
        kept = [block for index, block in enumerate(blocks) if index not in gone]
        with pytest.raises(IntegrityError, match=f"need {k} blocks to decode, have {k - 1}"):
            code.decode(kept)
    with pytest.raises(IntegrityError):
        code.decode([])


@given(sizes=st.lists(st.integers(0, 3 << 20), min_size=1, max_size=6))
@example(sizes=[0, 65536])  # a size asked after another is not the other's
@settings(max_examples=25, deadline=None)
def test_a_block_size_asked_again_is_the_one_encoding_gives(sizes: list[int]) -> None:
    code = ErasureCode(4, 2)
    for size in sizes + sizes:  # each asked twice: the second answer is the remembered one
        assert code.block_size(size) == len(code.encode(bytes(size))[0])


def test_empty_segment_round_trips() -> None:
    code = ErasureCode(4, 2)
    blocks = code.encode(b"")
    assert code.decode(blocks[2:]) == b""
    assert code.block_size(0) == len(blocks[0])


@pytest.mark.parametrize(("k", "m"), [(0, 2), (4, 0), (30, 3), (-1, 1)])
def test_invalid_parameters_are_refused(k: int, m: int) -> None:
    with pytest.raises(InvalidInput, match="erasure code"):
        ErasureCode(k, m)


@pytest.mark.parametrize(("k", "m"), [(1, 1), (1, MAX_SHARDS - 1), (MAX_SHARDS - 1, 1), (16, 16)])
def test_the_smallest_and_widest_codes_are_accepted(k: int, m: int) -> None:
    """k=1 (plain replication) and k+m = MAX_SHARDS are inside the documented limits."""
    code = ErasureCode(k, m)
    assert (code.k, code.m, code.n, code.backend) == (k, m, k + m, BACKEND)
    segment = os.urandom(300)
    blocks = code.encode(segment)
    assert len(blocks) == code.n
    assert code.decode(blocks[m:]) == segment


@settings(max_examples=40, deadline=None)
@given(
    segment=st.binary(max_size=2000),
    params=st.sampled_from(COMBOS),
    data=st.data(),
)
def test_random_segment_and_loss_pattern(
    segment: bytes, params: tuple[int, int], data: st.DataObject
) -> None:
    k, m = params
    code = ErasureCode(k, m)
    blocks = code.encode(segment)
    keep = data.draw(st.sets(st.integers(0, k + m - 1), min_size=k, max_size=k + m))
    assert code.decode([blocks[i] for i in sorted(keep)]) == segment


def test_blocks_that_fail_pyeclibs_own_check_are_an_integrity_error() -> None:
    code = ErasureCode(4, 2)
    blocks = [bytes(len(block)) for block in code.encode(os.urandom(1000))]
    with pytest.raises(IntegrityError, match="erasure decode failed"):
        code.decode(blocks[:4])


def test_an_object_of_another_code_is_decoded_with_its_own() -> None:
    """An object written under an earlier storage.k/m, or another backend, reads with the
    code its manifest names: decoding another backend's parity gives wrong bytes."""
    code = ErasureCode(4, 2)
    assert code.matching(4, 2, BACKEND) is code
    segment = os.urandom(1000)
    narrower = code.matching(3, 2, BACKEND)
    assert (narrower.k, narrower.m) == (3, 2)
    assert narrower.decode(ErasureCode(3, 2).encode(segment)[2:]) == segment
    cauchy = code.matching(4, 2, "isa_l_rs_cauchy")
    assert cauchy.backend == "isa_l_rs_cauchy"
    assert cauchy.decode(ErasureCode(4, 2, "isa_l_rs_cauchy").encode(segment)[2:]) == segment
