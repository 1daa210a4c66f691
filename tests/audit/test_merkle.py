"""Merkle math against the RFC 6962 reference vectors and a naive RFC 9162 transcription."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardvault.audit import merkle
from shardvault.errors import IntegrityError, InvalidInput

# The leaves and roots of the Certificate Transparency reference tests (RFC 6962).
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes.fromhex("606162636465666768696a6b6c6d6e6f"),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [  # (index, size, path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CT_CONSISTENCY = [  # (old, new, proof)
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- naive transcription of RFC 9162 2.1.1, 2.1.3.1 and 2.1.4.1, on entries --------


def k_of(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    if not d:
        return sha(b"")
    if len(d) == 1:
        return sha(b"\x00" + d[0])
    k = k_of(len(d))
    return sha(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = k_of(len(d))
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [naive_mth(d)]
    k = k_of(len(d))
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def leaves_of(entries: list[bytes]) -> list[bytes]:
    return [merkle.leaf_hash(e) for e in entries]


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert merkle.leaf_hash(b"ab") == sha(b"\x00ab")
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == sha(b"\x01" + b"a" * 32 + b"b" * 32)
    assert merkle.root_of([]) == sha(b"") == merkle.EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_rfc6962_reference_roots(size: int) -> None:
    assert merkle.root_of(leaves_of(CT_LEAVES[:size])).hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_rfc6962_reference_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    leaves = leaves_of(CT_LEAVES[:size])
    assert [p.hex() for p in merkle.inclusion_proof(leaves, index)] == path
    root = bytes.fromhex(CT_ROOTS[size - 1])
    merkle.verify_inclusion(leaves[index], index, size, [bytes.fromhex(p) for p in path], root)


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_rfc6962_reference_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    leaves = leaves_of(CT_LEAVES[:new])
    assert [p.hex() for p in merkle.consistency_proof(leaves, old)] == path
    merkle.verify_consistency(
        old,
        new,
        [bytes.fromhex(p) for p in path],
        bytes.fromhex(CT_ROOTS[old - 1]),
        bytes.fromhex(CT_ROOTS[new - 1]),
    )


def test_rfc6962_wrong_old_root_fails() -> None:
    old, new, path = CT_CONSISTENCY[1]
    with pytest.raises(IntegrityError):
        merkle.verify_consistency(
            old, new, [bytes.fromhex(p) for p in path],
            bytes.fromhex(CT_ROOTS[4]), bytes.fromhex(CT_ROOTS[7]),
        )  # fmt: skip


# unique: with two equal leaves, a proof for one index is also a proof for the other
entries_st = st.lists(st.binary(max_size=8), min_size=1, max_size=40, unique=True)


@settings(max_examples=60, deadline=None)
@given(entries_st)
def test_matches_naive_rfc_transcription(entries: list[bytes]) -> None:
    leaves = leaves_of(entries)
    assert merkle.root_of(leaves) == naive_mth(entries)
    for m in range(len(entries)):
        assert merkle.inclusion_proof(leaves, m) == naive_path(m, entries)
    for m in range(1, len(entries) + 1):
        assert merkle.consistency_proof(leaves, m) == naive_subproof(m, entries, True)


@settings(max_examples=60, deadline=None)
@given(entries_st, st.data())
def test_every_inclusion_proof_verifies_and_any_change_fails(entries: list[bytes], data) -> None:
    leaves = leaves_of(entries)
    n, root = len(leaves), merkle.root_of(leaves)
    for i in range(n):
        proof = merkle.inclusion_proof(leaves, i)
        merkle.verify_inclusion(leaves[i], i, n, proof, root)
    i = data.draw(st.integers(0, n - 1))
    proof = merkle.inclusion_proof(leaves, i)
    # any changed byte anywhere in (leaf, proof, root) fails
    parts = [leaves[i], *proof, root]
    which = data.draw(st.integers(0, len(parts) - 1))
    pos = data.draw(st.integers(0, 31))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(parts[which])
    bad[pos] ^= 1 << bit
    parts[which] = bytes(bad)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(parts[0], i, n, parts[1:-1], parts[-1])
    # and so do a wrong index, a shortened or a lengthened proof. (A wrong size
    # alone can give the same path and root, e.g. leaf 0 of 3 and of 4: the size
    # is bound by the signed checkpoint, not by the proof.)
    if n > 1:
        with pytest.raises(IntegrityError):
            merkle.verify_inclusion(leaves[i], (i + 1) % n, n, proof, root)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaves[i], i, n, [*proof, root], root)
    if proof:
        with pytest.raises(IntegrityError):
            merkle.verify_inclusion(leaves[i], i, n, proof[:-1], root)


@settings(max_examples=60, deadline=None)
@given(entries_st, st.data())
def test_every_consistency_proof_verifies_and_any_change_fails(entries: list[bytes], data) -> None:
    leaves = leaves_of(entries)
    n = len(leaves)
    roots = [merkle.root_of(leaves[:m]) for m in range(n + 1)]
    for m in range(n + 1):
        merkle.verify_consistency(m, n, merkle.consistency_proof(leaves, m), roots[m], roots[n])
    m = data.draw(st.integers(1, n))
    proof = merkle.consistency_proof(leaves, m)
    parts = [roots[m], *proof, roots[n]]
    which = data.draw(st.integers(0, len(parts) - 1))
    pos = data.draw(st.integers(0, 31))
    bad = bytearray(parts[which])
    bad[pos] ^= 0x80
    parts[which] = bytes(bad)
    with pytest.raises(IntegrityError):
        merkle.verify_consistency(m, n, parts[1:-1], parts[0], parts[-1])
    if m < n:
        with pytest.raises(IntegrityError):
            merkle.verify_consistency(m, n, proof, roots[m - 1], roots[n])
        with pytest.raises(IntegrityError):
            merkle.verify_consistency(m, n, proof[:-1], roots[m], roots[n])
        with pytest.raises(IntegrityError):
            merkle.verify_consistency(n, m, proof, roots[n], roots[m])


@given(st.lists(st.binary(max_size=4), max_size=70))
def test_frontier_root_equals_full_recomputation(entries: list[bytes]) -> None:
    frontier = merkle.Frontier()
    for i, e in enumerate(entries):
        frontier.append(merkle.leaf_hash(e))
        assert frontier.size == i + 1
    assert frontier.root() == naive_mth(entries)
    assert frontier.copy().root() == frontier.root()


def test_frontier_copy_carries_its_size_and_grows_on_its_own() -> None:
    leaves = leaves_of(CT_LEAVES)
    frontier = merkle.Frontier()
    for leaf in leaves[:5]:
        frontier.append(leaf)
    copy = frontier.copy()
    assert copy.size == 5
    for leaf in leaves[5:]:
        copy.append(leaf)
    assert (copy.size, copy.root()) == (8, merkle.root_of(leaves))
    assert (frontier.size, frontier.root()) == (5, merkle.root_of(leaves[:5]))


def test_inclusion_at_an_index_one_past_the_end_is_refused() -> None:
    """A one-leaf tree's root is its leaf: index 1 of size 1 must not pass on that alone."""
    leaf = merkle.leaf_hash(b"entry")
    merkle.verify_inclusion(leaf, 0, 1, [], leaf)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaf, 1, 1, [], leaf)


def test_bad_arguments_are_reported_clearly() -> None:
    leaves = leaves_of(CT_LEAVES)
    with pytest.raises(InvalidInput, match="outside"):
        merkle.inclusion_proof(leaves, 8)
    with pytest.raises(InvalidInput, match="outside"):
        merkle.consistency_proof(leaves, 9)
    with pytest.raises(InvalidInput, match="32 bytes"):
        merkle.verify_inclusion(b"short", 0, 1, [], merkle.EMPTY_ROOT)
    with pytest.raises(IntegrityError, match="shrink"):
        merkle.verify_consistency(5, 4, [], merkle.EMPTY_ROOT, merkle.EMPTY_ROOT)
    with pytest.raises(IntegrityError, match="different roots"):
        merkle.verify_consistency(3, 3, [], leaves[0], leaves[1])
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaves[0], 0, 0, [], merkle.EMPTY_ROOT)
