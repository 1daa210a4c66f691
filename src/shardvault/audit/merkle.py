"""RFC 9162 Merkle tree math with SHA-256: hashes, roots, proofs (pure, no I/O).

Leaves and nodes are domain-separated (``0x00`` / ``0x01`` prefixes) so that a
leaf can never be passed off as an interior node. The proof algorithms follow
RFC 9162 sections 2.1.3 and 2.1.4 step by step, so that a proof we produce is
checked by any other RFC 9162 / RFC 6962 implementation, and the other way round.

Verification failures raise `IntegrityError`; malformed arguments (an index out
of range, a hash of the wrong length) raise `InvalidInput`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from functools import partial

from shardvault.errors import IntegrityError, InvalidInput

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The root of the empty tree: SHA-256 of the empty string (RFC 9162 2.1.1)."""

_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """H(0x00 || entry)."""
    return hashlib.sha256(_LEAF + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """H(0x01 || left || right)."""
    return hashlib.sha256(_NODE + left + right).digest()


def split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise InvalidInput(f"{what} must be {HASH_SIZE} bytes")


class Frontier:
    """The right edge of a growing tree: one perfect-subtree root per set bit of the size.

    Appending costs O(log n) amortised and the root of the whole tree is O(log n),
    which is what lets the log sign a head without rereading its leaves.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []  # subtree roots, largest (leftmost) first

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> None:
        """Add one leaf *hash* (not entry bytes)."""
        node = leaf
        n = self._size
        stack = self._stack
        while n & 1:
            node = node_hash(stack.pop(), node)
            n >>= 1
        stack.append(node)
        self._size += 1

    def root(self) -> bytes:
        """MTH of every leaf appended so far (RFC 9162 2.1.1)."""
        if not self._stack:
            return EMPTY_ROOT
        node = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node

    def copy(self) -> Frontier:
        return Frontier.restore(self._size, self._stack)

    @property
    def stack(self) -> tuple[bytes, ...]:
        """The subtree roots, largest first: with the size, all a frontier is."""
        return tuple(self._stack)

    @classmethod
    def restore(cls, size: int, stack: Sequence[bytes]) -> Frontier:
        """A frontier from its size and `stack`; ValueError if they cannot go together."""
        if size < 0 or len(stack) != size.bit_count() or any(len(h) != 32 for h in stack):
            raise ValueError(f"a frontier of {size} leaves has {size.bit_count()} subtree roots")
        frontier = cls()
        frontier._size = size
        frontier._stack = list(stack)
        return frontier


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of a list of leaf hashes."""
    frontier = Frontier()
    for leaf in leaf_hashes:
        frontier.append(leaf)
    return frontier.root()


Subtree = Callable[[int, int], bytes]
"""MTH of leaves ``lo..hi`` of some tree: what the proofs below are made of, so a log
can answer from stored interior nodes instead of from every leaf hash."""


def _subtree(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return leaves[lo]
    return root_of(leaves[lo:hi])


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 2.1.3.1 for the tree of all ``leaf_hashes``."""
    return inclusion_path(len(leaf_hashes), index, partial(_subtree, leaf_hashes))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 2.1.4.1, from ``old_size`` to ``len(leaf_hashes)``."""
    return consistency_path(len(leaf_hashes), old_size, partial(_subtree, leaf_hashes))


def inclusion_path(n: int, index: int, subtree: Subtree) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 2.1.3.1, its hashes asked of ``subtree``."""
    if not 0 <= index < n:
        raise InvalidInput(f"leaf index {index} is outside a tree of size {n}")
    proof: list[bytes] = []
    lo, hi, m = 0, n, index
    while hi - lo > 1:
        k = split(hi - lo)
        if m - lo < k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo += k
    proof.reverse()
    return proof


def consistency_path(n: int, old_size: int, subtree: Subtree) -> list[bytes]:
    """PROOF(old_size, D[n]) of RFC 9162 2.1.4.1, its hashes asked of ``subtree``."""
    if not 0 <= old_size <= n:
        raise InvalidInput(f"old size {old_size} is outside 0..{n}")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, n, old_size, True
    while True:
        size = hi - lo
        if m == size:
            if not complete:
                proof.append(subtree(lo, hi))
            break
        k = split(size)
        if m <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo += k
            m -= k
            complete = False
    proof.reverse()
    return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) is at ``index`` in the tree of ``size`` with ``root``.

    RFC 9162 2.1.3.2. Raises `IntegrityError` if it is not.
    """
    _check_hash(leaf, "leaf hash")
    _check_hash(root, "root hash")
    for p in proof:
        _check_hash(p, "proof hash")
    if not 0 <= index < size:
        raise IntegrityError(f"inclusion proof: index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise IntegrityError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise IntegrityError("inclusion proof is too short")
    if not hmac.compare_digest(r, root):
        raise IntegrityError("inclusion proof does not lead to the root hash")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (new_size, new_root) extends the tree (old_size, old_root).

    RFC 9162 2.1.4.2, plus the trivial cases it leaves to the caller (equal sizes,
    an empty old tree). Raises `IntegrityError` if they are not consistent.
    """
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    for p in proof:
        _check_hash(p, "proof hash")
    if not 0 <= old_size <= new_size:
        raise IntegrityError(f"consistency: a tree cannot shrink from {old_size} to {new_size}")
    if old_size == new_size:
        if proof:
            raise IntegrityError("consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise IntegrityError(f"two different roots for the same tree size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise IntegrityError("consistency proof from the empty tree must be empty")
        if not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise IntegrityError("the root of an empty tree is not SHA-256 of nothing")
        return
    if not proof:
        raise IntegrityError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise IntegrityError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise IntegrityError("consistency proof is too short")
    if not (hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root)):
        raise IntegrityError(f"tree of size {new_size} does not extend the tree of size {old_size}")


__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "Subtree",
    "consistency_path",
    "consistency_proof",
    "inclusion_path",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_of",
    "split",
    "verify_consistency",
    "verify_inclusion",
]
