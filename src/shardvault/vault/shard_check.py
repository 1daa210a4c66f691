"""The scrub's shard checks: which shards of a version are bad, block by block.

Every block of every shard is read and checked against the manifest's hashes. A
shard is bad if its header or any block is missing, short or wrong, if its node
is not active (draining, down, no longer configured, or unavailable), or if the
store's own check of its bytes fails (a pack record's CRC: `ShardStore.intact`),
which no block hash covers: left, compaction could not tell it from a deleted one. A node whose
read fails (rather than finding the shard missing or wrong) is asked whether it
answers at all (`node_lost`), and one that does not is unavailable for the rest of
the run. Repair (`vault/repair.py`) rebuilds what these checks find; the spread
(`vault/spread.py`) reads blocks through `verified_block` too.
"""

from __future__ import annotations

from collections import Counter

from shardvault.codec.hashing import block_matches
from shardvault.codec.shardfile import block_offset
from shardvault.errors import NotFound, ShardvaultError
from shardvault.manifest import Manifest
from shardvault.nodes.port import ShardReader, ShardStore, shard_name
from shardvault.nodes.unavailable import UnavailableStore
from shardvault.vault.bounded import on_node
from shardvault.vault.cells import Cell
from shardvault.vault.repair_targets import active_nodes

BadShards = dict[int, frozenset[int] | None]
"""Each bad shard's index: the segments whose blocks are bad (none, for a shard whose
blocks are all good but whose stored record fails the store's own check), or None if
none of it can be used (its node not active, the shard or its header missing or wrong)."""


def bad_shards(cell: Cell, manifest: Manifest) -> BadShards:
    """The shards on a node that is not active, or not whole and verified (see BadShards)."""
    active = active_nodes(cell)
    bad: BadShards = {}
    for index, node in enumerate(manifest.nodes):
        found, intact = _bad_segments(cell, node, manifest, index) if node in active else _UNUSABLE
        if found is None or found or not intact:
            bad[index] = found
    return bad


def node_lost(cell: Cell, node: str) -> None:
    """After a call to the node failed (not for a shard missing or wrong): if the node
    itself fails, its directory gone, its disk unmounted or failing (it does not answer
    a probe), it is unavailable for the rest of the run, as one that could not be
    opened: its shards are bad, no rebuild goes to it, its old copies stay noted for
    gc, and the report names it. `cell` is the run's own view (`BoundedStores.cell`)."""
    store = cell.store(node)
    if isinstance(store, UnavailableStore):
        return
    try:
        store.probe()
    except (ShardvaultError, OSError) as exc:
        why = str(exc).removeprefix(f"node {node}: ")
        cell.replace_store(UnavailableStore(node, f"failed during the repair: {why}"))


def fewest_good(manifest: Manifest, bad: BadShards) -> int:
    """The good blocks of the segment with fewest: a shard bad in one segment still
    serves the others (without a segment, the usable shards)."""
    unusable = sum(segments is None for segments in bad.values())
    lost = Counter(s for segments in bad.values() if segments is not None for s in segments)
    return manifest.n - unusable - max(lost.values(), default=0)


Checked = tuple[frozenset[int] | None, bool]
"""A shard's bad segments (None: none of it usable), and whether the store's own check
of its stored bytes passed (`ShardStore.intact`)."""
_UNUSABLE: Checked = (None, True)


def _bad_segments(cell: Cell, node: str, manifest: Manifest, index: int) -> Checked:
    """The segments whose block of the shard is missing or does not match the manifest;
    None if the shard, or its header, is missing or wrong, or cannot be read (then the
    node is asked whether it answers at all: `node_lost`). All of it on the node's
    thread at once: a hand-off per read made a scrub several times slower."""
    try:
        return on_node(cell.store(node), _bad_segments_of, manifest, index)
    except (ShardvaultError, OSError):
        node_lost(cell, node)
        return _UNUSABLE


def _bad_segments_of(store: ShardStore, manifest: Manifest, index: int) -> Checked:
    """As `_bad_segments`; raises what opening or reading the shard raised, but NotFound."""
    name = shard_name(manifest.object_id, manifest.version, index, manifest.generation(index))
    location = manifest.location(index)
    try:
        reader = store.open_reader(name, location)
    except NotFound:
        return _UNUSABLE
    try:
        expected = manifest.stripe_header().to_bytes(index)
        if reader.read_at(0, len(expected)) != expected:
            return _UNUSABLE
        bad = frozenset(
            segment
            for segment in range(manifest.segments)
            if verified_block(reader, manifest, segment, index) is None
        )
    finally:
        reader.close()
    try:
        return bad, store.intact(name, location)
    except NotFound:  # deleted since it was read: as if not found then
        return _UNUSABLE


def verified_block(
    reader: ShardReader, manifest: Manifest, segment: int, index: int
) -> bytes | None:
    """The shard's block of `segment`, if it hashes to the manifest's."""
    length = manifest.block_length(segment)
    block = reader.read_at(block_offset(segment, manifest.block_size), length)
    if len(block) != length or not block_matches(block, manifest.block_hash(segment, index)):
        return None
    return block
