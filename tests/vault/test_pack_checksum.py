"""A packed shard whose record fails its CRC while its blocks may all be good: scrub
rebuilds it, and gc's compaction keeps it and queues it for repair, never drops it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import make_deployment, manifest_of
from shardvault.config import Config, load
from shardvault.model import ObjectRef
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault

TARGET, OTHER = ObjectRef("intl", "alice", "t"), ObjectRef("intl", "alice", "o")
INDEX = 1  # the damaged shard's


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = load(make_deployment(tmp_path / "d", pack_limit=64 << 10))
    with Vault.open(config) as vault:
        vault.register_subject("intl", "alice", "US")
    return config


def written_then_damaged(config: Config, where: str) -> dict[tuple[ObjectRef, int], bytes]:
    """Three small objects from a process that is gone after (its packs can be compacted);
    one bit of TARGET v2's shard INDEX flipped: its record's CRC, or a block's byte."""
    stored = {w: os.urandom(3000) for w in ((TARGET, 1), (TARGET, 2), (OTHER, 1))}
    with Vault.open(config) as writer:
        for (ref, _), data in stored.items():
            writer.put(ref, data)
        manifest = manifest_of(writer, TARGET, 2)
        store = writer.cells["US"].store(manifest.nodes[INDEX])
        assert isinstance(store, LocalDirShardStore)
        location = manifest.location(INDEX)
        assert location is not None
        located = store.packs.at(shard_name(manifest.object_id, 2, INDEX), location)
        assert located is not None
        offset = located.offset + (located.length if where == "crc" else 100)
        path = store.packs.directory / located.pack
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << 3
    path.write_bytes(bytes(raw))
    return stored


def all_read_back(vault: Vault, stored: dict[tuple[ObjectRef, int], bytes]) -> None:
    for (ref, version), data in stored.items():
        with vault.open_read(ref, version) as reader:
            assert reader.read_all() == data
        assert reader.damage == [], (ref, version)


def test_a_scrub_rebuilds_a_packed_shard_whose_record_fails_its_crc(config: Config) -> None:
    stored = written_then_damaged(config, "crc")
    with Vault.open(config) as vault:
        all_read_back(vault, stored)  # the blocks all match: a read sees no damage
        assert vault.repair(scrub=True).rebuilt == 1
    with Vault.open(config) as vault:
        vault.gc(grace_seconds=0)  # takes the damaged record, once repair replaced it
    with Vault.open(config) as vault:
        all_read_back(vault, stored)
        assert vault.repair(scrub=True, dry_run=True).rebuilt == 0


@pytest.mark.parametrize(("where", "rebuilt"), [("crc", 0), ("block", 1)])
def test_gc_keeps_a_damaged_packed_shard_and_queues_it_for_repair(
    config: Config, where: str, rebuilt: int
) -> None:
    """Compaction used to drop such a record as if deleted: redundancy lost, unreported."""
    stored = written_then_damaged(config, where)
    with Vault.open(config) as vault:
        report = vault.gc(grace_seconds=0)
        assert report.moved and report.damaged == 1
        queued = vault.cells["US"].catalog.damage()
        assert [(d.ref, d.version, d.index) for d in queued] == [(TARGET, 2, INDEX)]
    with Vault.open(config) as vault:
        with vault.open_read(TARGET, 2) as reader:  # the shard is still there
            assert reader.read_all() == stored[TARGET, 2]
        assert [(d.index, d.reason) for d in reader.damage] == (
            [] if where == "crc" else [(INDEX, "hash mismatch")]
        )
        repaired = vault.repair()  # the queue alone: what gc found
        assert repaired.rebuilt == rebuilt and not repaired.problems
        assert vault.cells["US"].catalog.damage() == []
    with Vault.open(config) as vault:
        vault.gc(grace_seconds=0)
    with Vault.open(config) as vault:
        all_read_back(vault, stored)
        assert vault.repair(scrub=True, dry_run=True).rebuilt == 0
