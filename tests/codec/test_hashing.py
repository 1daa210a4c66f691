"""The keyed BLAKE3 block hash: pinned, domain-separated, and bit-flip sensitive."""

from __future__ import annotations

from blake3 import blake3
from hypothesis import given
from hypothesis import strategies as st

from shardvault.codec.hashing import HASH_BYTES, block_hash, block_matches


def test_known_answers() -> None:
    assert block_hash(b"").hex() == (
        "c3a86fc92a97fcfbe240a2f778d13dc426d8efc36119b446133554dc69bdef2b"
    )
    assert block_hash(b"shardvault").hex() == (
        "a3065d01df8405194f8cb039860145fed23130c88b91b771c65c07824897c9e7"
    )


def test_keyed_with_the_documented_domain_tag() -> None:
    key = b"shardvault shard block hash v1\x00\x00"
    assert block_hash(b"block") == blake3(b"block", key=key).digest()
    assert block_hash(b"block") != blake3(b"block").digest()


def test_accepts_memoryview() -> None:
    data = bytearray(b"abcdef")
    assert block_hash(memoryview(data)[1:4]) == block_hash(b"bcd")


@given(block=st.binary(min_size=1, max_size=4096), data=st.data())
def test_any_flipped_bit_changes_the_hash(block: bytes, data: st.DataObject) -> None:
    digest = block_hash(block)
    assert len(digest) == HASH_BYTES
    assert block_matches(block, digest)
    bit = data.draw(st.integers(0, len(block) * 8 - 1))
    flipped = bytearray(block)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not block_matches(bytes(flipped), digest)


@given(block=st.binary(max_size=256), extra=st.binary(min_size=1, max_size=8))
def test_appended_or_cut_bytes_change_the_hash(block: bytes, extra: bytes) -> None:
    digest = block_hash(block + extra)
    assert not block_matches(block, digest)
    assert not block_matches(block + extra + b"\x00", digest)


def test_a_digest_differing_in_any_byte_or_cut_short_does_not_match() -> None:
    digest = block_hash(b"block")
    for position in (0, HASH_BYTES // 2, HASH_BYTES - 1):
        other = bytearray(digest)
        other[position] ^= 1
        assert not block_matches(b"block", bytes(other))
    assert not block_matches(b"block", digest[:16])
    assert not block_matches(b"block", b"")
