"""A forget leaves nothing of the subject's packed shards in any pack, damaged records
included, and costs no other subject's shard: read from the pack files' bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import make_deployment, manifest_of
from governance_support import forget_approved
from shardvault.config import Config, load
from shardvault.model import ObjectRef
from shardvault.nodes.pack_records import RECORD
from shardvault.vault import Vault

NAME_LENGTH = len("0123456789abcdef0123456789abcdef.v1.s1")
# where a bit of alice's record of shard 1 is flipped, from the record's start, and which
DAMAGE = {
    "data": (RECORD.size + NAME_LENGTH + 100, 0),
    "crc": (None, 0),  # its first byte, after the data
    "name-time": (RECORD.size, 0),  # the id's first hex digit: minted in the far future
    "name-not-hex": (RECORD.size + 33, 0),  # the "v" of ".v1": no shard name then
    "magic": (0, 0),
    "data-length": (10, 2),  # 1024 bytes more (its shards are about 800): into bob's
}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = load(make_deployment(tmp_path / "d", pack_limit=64 << 10))
    with Vault.open(config) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "bob", "US")
    return config


def _packs(config: Config) -> list[Path]:
    return sorted(p for node in config.nodes for p in Path(node.location).rglob("*.pack"))


def _flip(path: Path, offset: int, bit: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _written(config: Config) -> tuple[list[bytes], dict[ObjectRef, bytes]]:
    """Alice's objects, one per kind of damage, and bob's between them, from a process
    gone after; each of alice's records of shard 1 damaged its way. What identifies
    alice's records (each object id's random part, raw and in hex, and 32 bytes of
    each shard's data past its header), and bob's data."""
    bobs = {ObjectRef("intl", "bob", f"b{i}"): os.urandom(3000) for i in range(len(DAMAGE) + 1)}
    secrets: list[bytes] = []
    damaged = []
    with Vault.open(config) as vault:
        for i, (bob, data) in enumerate(bobs.items()):
            vault.put(bob, data)
            if i == len(DAMAGE):
                break
            ref = ObjectRef("intl", "alice", list(DAMAGE)[i])
            vault.put(ref, os.urandom(3000))
            manifest = manifest_of(vault, ref)
            secrets += [manifest.object_id[8:], manifest.object_id[8:].hex().encode()]
            for index, node in enumerate(manifest.nodes):
                location = manifest.location(index)
                assert location is not None
                pack, offset = location.split(":")
                path = Path(config.node(node).location) / "packs" / pack
                secrets.append(path.read_bytes()[int(offset) + 200 : int(offset) + 232])
                if index == 1:
                    damaged.append((path, int(offset) - NAME_LENGTH - RECORD.size, ref.key))
    for path, record, kind in damaged:
        where, bit = DAMAGE[kind]
        if where is None:
            where = RECORD.size + NAME_LENGTH + RECORD.unpack_from(path.read_bytes(), record)[4]
        _flip(path, record + where, bit)
    return secrets, bobs


def _found(config: Config, secrets: list[bytes]) -> list[tuple[str, bytes]]:
    return [(p.name, s) for p in _packs(config) for s in secrets if s in p.read_bytes()]


def test_a_forget_and_gc_leave_nothing_of_the_subjects_records_damaged_or_not(
    config: Config,
) -> None:
    secrets, bobs = _written(config)
    assert len(_found(config, secrets)) >= len(secrets)  # every id is in the packs now
    with Vault.open(config) as vault:
        forget_approved(vault, "intl", "alice")
    with Vault.open(config) as vault:
        vault.gc(grace_seconds=0)
    with Vault.open(config) as vault:
        vault.gc(grace_seconds=0)
    assert _found(config, secrets) == []
    with Vault.open(config) as vault:
        for ref, data in bobs.items():
            with vault.open_read(ref) as reader:
                assert reader.read_all() == data
            assert reader.damage == []
        assert vault.repair(scrub=True, dry_run=True).rebuilt == 0
