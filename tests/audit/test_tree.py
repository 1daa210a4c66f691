"""Stored tree nodes: the same roots and proofs as from every leaf, from O(log n) hashes."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.audit.conftest import make_entry

from shardvault.audit import merkle
from shardvault.audit.log import AuditLog
from shardvault.audit.tree import WIDTH, TreeNodes
from shardvault.errors import IntegrityError, InvalidInput

LEAVES = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(WIDTH**2 + 3 * WIDTH + 5)]
RECORD = 69  # u8 marker, 32-byte node hash, 32-byte last leaf hash, u32 CRC-32


class CountingLeaves:
    """The leaf source a log gives its tree, counting the leaf hashes it hands out."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.read = 0

    def __call__(self, lo: int, hi: int) -> list[bytes]:
        assert 0 <= lo < hi <= len(self.leaves)
        self.read += hi - lo
        return self.leaves[lo:hi]


def record(level: int, index: int, node: bytes, last: bytes) -> bytes:
    """A record as docs/audit-log.md describes it, built here independently of tree.py."""
    crc = zlib.crc32(struct.pack(">BQ", level, index) + node + last)
    return b"\x01" + node + last + struct.pack(">I", crc)


def test_the_first_root_stores_nodes_and_the_next_reads_few_leaves(tmp_path: Path) -> None:
    source = CountingLeaves(LEAVES)
    tree = TreeNodes(tmp_path, source)
    size = len(LEAVES)
    assert tree.subtree(0, size) == merkle.root_of(LEAVES)
    assert size <= source.read < size + size // WIDTH + 10  # every leaf, and each node's last
    level1 = (tmp_path / "tree-1.log").read_bytes()
    assert level1[:8] == b"SVAUDT\x00\x01"
    assert len(level1) == 8 + (size // WIDTH) * RECORD
    assert level1[8 + 5 * RECORD :][:RECORD] == record(
        1, 5, merkle.root_of(LEAVES[1280:1536]), LEAVES[1535]
    )
    assert (tmp_path / "tree-2.log").stat().st_size == 8 + RECORD
    tree.close()

    again = CountingLeaves(LEAVES)
    reopened = TreeNodes(tmp_path, again)
    assert reopened.subtree(0, size) == merkle.root_of(LEAVES)
    # the leaves past the last stored node, and the last leaf of each node used
    assert again.read == size % WIDTH + 1 + (size - WIDTH**2) // WIDTH
    reopened.close()


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_proofs_from_stored_nodes_are_the_proofs_from_every_leaf(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    tree = TreeNodes(tmp_path_factory.mktemp("tree"), CountingLeaves(LEAVES))
    size = data.draw(st.integers(1, len(LEAVES)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    old = data.draw(st.integers(0, size), label="old size")
    leaves = LEAVES[:size]
    assert tree.subtree(0, size) == merkle.root_of(leaves)
    assert merkle.inclusion_path(size, index, tree.subtree) == merkle.inclusion_proof(leaves, index)
    assert merkle.consistency_path(size, old, tree.subtree) == merkle.consistency_proof(leaves, old)
    tree.close()


@pytest.mark.parametrize("damage", ["bit flipped", "moved", "torn", "never written"])
def test_a_record_that_does_not_hold_is_computed_again_and_written_back(
    tmp_path: Path, damage: str
) -> None:
    size = 4 * WIDTH
    TreeNodes(tmp_path, CountingLeaves(LEAVES)).subtree(0, size)
    path = tmp_path / "tree-1.log"
    good = path.read_bytes()
    records = [good[8 + i * RECORD : 8 + (i + 1) * RECORD] for i in range(4)]
    records[1] = {
        "bit flipped": records[1][:9] + bytes([records[1][9] ^ 1]) + records[1][10:],
        "moved": records[2],
        "torn": records[1][:20] + bytes(RECORD - 20),
        "never written": bytes(RECORD),
    }[damage]
    path.write_bytes(good[:8] + b"".join(records))
    source = CountingLeaves(LEAVES)
    assert TreeNodes(tmp_path, source).subtree(0, size) == merkle.root_of(LEAVES[:size])
    assert source.read == WIDTH + 4  # that node's leaves, and each node's last leaf
    assert path.read_bytes() == good


def test_a_file_of_another_version_is_left_alone_and_nodes_are_computed(tmp_path: Path) -> None:
    path = tmp_path / "tree-1.log"
    path.write_bytes(b"SVAUDT\x00\x02" + b"\xff" * 100)
    source = CountingLeaves(LEAVES)
    assert TreeNodes(tmp_path, source).subtree(0, 2 * WIDTH) == merkle.root_of(LEAVES[: 2 * WIDTH])
    assert source.read == 2 * WIDTH + 2  # and each node's last leaf
    assert path.read_bytes() == b"SVAUDT\x00\x02" + b"\xff" * 100


def filled_log(path: Path, n: int) -> AuditLog:
    log = AuditLog.open(path)
    log.append_many([make_entry(i) for i in range(n)])
    return log


def test_a_log_answers_roots_and_proofs_from_stored_nodes(tmp_path: Path) -> None:
    n = 2 * WIDTH + 7
    log = filled_log(tmp_path / "log", n)
    leaves = log.leaf_hashes(0, n)
    root = log.root()
    assert log.root_at(n) == root == merkle.root_of(leaves)
    for index in (0, WIDTH - 1, WIDTH, n - 1):
        proof = log.inclusion_proof(index)
        assert proof == merkle.inclusion_proof(leaves, index)
        merkle.verify_inclusion(leaves[index], index, n, proof, root)
    for old in (1, WIDTH, WIDTH + 1, n - 1):
        proof = log.consistency_proof(old)
        merkle.verify_consistency(old, n, proof, log.root_at(old), root)
    assert (tmp_path / "log" / "tree-1.log").stat().st_size == 8 + 2 * RECORD
    with pytest.raises(InvalidInput):
        log.root_at(n + 1)
    with pytest.raises(InvalidInput):
        log.inclusion_proof(0, n + 1)
    log.close()


def test_a_log_rebuilt_from_its_whole_index_drops_its_stored_nodes(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = filled_log(path, WIDTH + 1)
    log.root_at(WIDTH + 1)
    log.close()
    assert (path / "tree-1.log").exists()
    with AuditLog.open(path) as trusted:  # the frontier holds: the nodes stay
        assert (path / "tree-1.log").exists()
        root = trusted.root()
    (path / "frontier").unlink()
    with AuditLog.open(path) as rebuilt:
        assert not (path / "tree-1.log").exists()
        assert rebuilt.root_at(WIDTH + 1) == root
        assert (path / "tree-1.log").exists()


def test_a_forged_node_fails_the_proofs_checks_and_removing_the_files_repairs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log"
    n = 2 * WIDTH
    log = filled_log(path, n)
    root = log.root()
    log.root_at(n)
    last = log.leaf_hashes(WIDTH - 1, WIDTH)[0]
    log.close()  # leaves its frontier, so the next open keeps the stored nodes
    forged = record(1, 0, b"\x07" * 32, last)  # a valid CRC: written on purpose
    data = (path / "tree-1.log").read_bytes()
    (path / "tree-1.log").write_bytes(data[:8] + forged + data[8 + RECORD :])
    reopened = AuditLog.open(path)
    leaf = reopened.leaf_hashes(n - 1, n)[0]
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaf, n - 1, n, reopened.inclusion_proof(n - 1), root)
    reopened.close()
    for stored in path.glob("tree-*.log"):
        stored.unlink()
    with AuditLog.open(path) as repaired:
        merkle.verify_inclusion(leaf, n - 1, n, repaired.inclusion_proof(n - 1), root)


def test_nodes_left_by_another_history_of_the_log_are_computed_again(tmp_path: Path) -> None:
    # a review restored a log's files (its frontier too) under newer tree files and
    # appended other entries: roots and proofs came from the old history's nodes
    path = tmp_path / "log"
    log = filled_log(path, 300)
    log.close()
    saved = {name: (path / name).read_bytes() for name in ("entries.log", "index.log", "frontier")}
    with AuditLog.open(path) as grown:
        grown.append_many([make_entry(i) for i in range(300, 600)])
        grown.root_at(600)  # stores level-1 nodes 0 and 1
    for name, data in saved.items():
        (path / name).write_bytes(data)
    with AuditLog.open(path) as restored:
        restored.append_many([make_entry(i, "deny") for i in range(300, 600)])
        leaves = restored.leaf_hashes(0, 600)
        assert restored.root_at(600) == merkle.root_of(leaves) == restored.root()
        assert restored.inclusion_proof(290) == merkle.inclusion_proof(leaves, 290)
