"""Damage a node's compaction found: shards whose stored record failed the store's own
check (a pack record's CRC), queued for repair as a read's damage is.

Compaction cannot ask a manifest whether the record is one a version still needs: it
keeps the bytes (nodes/pack_compaction.py), unless their shard header is not the
one their name says (no read could use them), and names them; this looks each name up. Only a
shard its committed version's manifest names on that node is queued: a record of a
deleted version, or a stale copy, is gc's to take, not repair's. Repair then checks
the shard block by block, and rebuilds it unless every block matches its hash.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from shardvault.catalog.port import DamageRecord, VersionState
from shardvault.manifest import Manifest
from shardvault.nodes.port import parse_shard_name
from shardvault.vault.cells import Cell

REASON = "pack record failed its checksum (kept by compaction)"


def queue_kept_damage(cell: Cell, node: str, names: Iterable[str]) -> None:
    """Record damage for each named shard its committed version's manifest names on `node`."""
    wanted = {parse_shard_name(name) for name in names}
    if not wanted:
        return
    records = cell.catalog.versions_with({object_id for object_id, _, _, _ in wanted})
    for record in records:
        if record.state is not VersionState.COMMITTED or record.manifest is None:
            continue
        manifest = Manifest.from_bytes(record.manifest)
        for object_id, version, index, generation in wanted:
            if (object_id, version) == (
                record.object_id,
                record.version,
            ) and manifest.names_copy(index, node, generation):
                cell.catalog.record_damage(
                    DamageRecord(record.ref, version, 0, index, node, REASON, time.time())
                )
