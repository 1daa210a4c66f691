"""Pure transforms between plaintext segments and verified shard blocks (no I/O)."""

from shardvault.codec.erasure import ErasureCode
from shardvault.codec.hashing import block_hash
from shardvault.codec.segment import SegmentBinding, SegmentCipher

__all__ = ["ErasureCode", "SegmentBinding", "SegmentCipher", "block_hash"]
