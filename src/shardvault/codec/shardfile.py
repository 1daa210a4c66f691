"""The header at the start of every shard file.

Blocks of one shard index for every segment follow the header back to back,
so block `s` starts at ``HEADER.size + s * block_size``. The header lets a
node's contents be identified without the catalog, and a reader refuses a
header version it does not know (docs/formats.md, "shard file")::

    b"SVSH" | u8 version (1) | u8 index | u8 k | u8 m | 16-byte object id
    | u64 BE object version | u32 BE segment size | u32 BE block size
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shardvault.slot_init import slot_init

MAGIC = b"SVSH"
FORMAT_VERSION = 1
HEADER = struct.Struct(">4sBBBB16sQII")


@slot_init
@dataclass(frozen=True, slots=True)
class ShardHeader:
    index: int
    k: int
    m: int
    object_id: bytes
    version: int
    segment_size: int
    block_size: int

    def to_bytes(self, index: int | None = None) -> bytes:
        """The header's bytes; `index` gives those of the same stripe's shard `index`."""
        return HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            self.index if index is None else index,
            self.k,
            self.m,
            self.object_id,
            self.version,
            self.segment_size,
            self.block_size,
        )

    @classmethod
    def parse(cls, data: bytes) -> ShardHeader | None:
        """The header, or None when the bytes are not a version-1 shard header."""
        if len(data) < HEADER.size:
            return None
        magic, version, index, k, m, object_id, obj_version, seg, block = HEADER.unpack_from(data)
        if magic != MAGIC or version != FORMAT_VERSION:
            return None
        return cls(index, k, m, object_id, obj_version, seg, block)


def block_offset(segment: int, block_size: int) -> int:
    return HEADER.size + segment * block_size
