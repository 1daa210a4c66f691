"""The rebuild: a version's bad shards written anew from k good blocks per segment.

A bad shard is rebuilt whole, segment by segment: k good blocks are decoded and the
segment encoded again, and every rebuilt block must hash to the manifest's, so repair
never writes a block that did not verify. Where the copies go is
`vault/repair_targets.py`'s choice; the swap that names them, `vault/copy_swap.py`.
"""

from __future__ import annotations

from shardvault.codec.erasure import ErasureCode
from shardvault.codec.hashing import block_matches
from shardvault.errors import IntegrityError, NotFound, ShardvaultError
from shardvault.manifest import Manifest
from shardvault.nodes.port import ShardReader, ShardStore, ShardWriter, shard_name
from shardvault.vault.cells import Cell
from shardvault.vault.copy_swap import write_copies
from shardvault.vault.repair_targets import Target
from shardvault.vault.shard_check import BadShards, verified_block


def rebuild_shards(
    cell: Cell,
    code: ErasureCode,
    manifest: Manifest,
    bad: BadShards,
    targets: dict[int, Target],
) -> dict[int, str | None]:
    """Write every bad shard anew on its target; their locations. If this fails, what
    was written is removed (a committed copy is deleted, leaving a trace that the
    next repair keeps away from; one that cannot be stays noted for gc). A bad shard
    whose other blocks are good is read too: another may be bad where it is not."""
    readers = {
        i: reader
        for i in range(manifest.n)
        if bad.get(i, frozenset()) is not None
        and (reader := _open(cell.store(manifest.nodes[i]), manifest, i))
    }

    def fill(writers: dict[int, ShardWriter]) -> None:
        for index, writer in writers.items():
            writer.write(manifest.stripe_header().to_bytes(index))
        for segment in range(manifest.segments):
            blocks = _rebuilt_blocks(code, manifest, segment, readers, bad)
            for index, writer in writers.items():
                writer.write(blocks[index])

    try:
        return write_copies(cell, manifest, targets, fill)
    finally:
        for reader in readers.values():
            reader.close()


def _open(store: ShardStore, manifest: Manifest, index: int) -> ShardReader | None:
    name = shard_name(manifest.object_id, manifest.version, index, manifest.generation(index))
    try:
        return store.open_reader(name, manifest.location(index))
    except (NotFound, ShardvaultError, OSError):
        return None


def _rebuilt_blocks(
    code: ErasureCode,
    manifest: Manifest,
    segment: int,
    readers: dict[int, ShardReader],
    bad: BadShards,
) -> list[bytes]:
    """The segment's n blocks, from k good ones; each rebuilt one checked against its hash."""
    good = []
    for index, reader in readers.items():
        if segment in (bad.get(index) or ()):
            continue  # found bad already: not read again
        block = verified_block(reader, manifest, segment, index)
        if block is not None:
            good.append(block)
            if len(good) == manifest.k:
                break
    if len(good) < manifest.k:
        raise IntegrityError(f"segment {segment}: only {len(good)} good blocks of {manifest.k}")
    blocks = code.encode(code.decode(good))
    for index in bad:
        if not block_matches(blocks[index], manifest.block_hash(segment, index)):
            raise IntegrityError(f"segment {segment}: rebuilt shard {index} does not match")
    return blocks
