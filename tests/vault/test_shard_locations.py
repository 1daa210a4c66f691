"""Manifests keep where each packed shard went, so a reader need not scan the packs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import make_deployment
from shardvault.config import load
from shardvault.manifest import Manifest
from shardvault.model import ObjectRef
from shardvault.nodes.packs import PackSet
from shardvault.vault import Vault

REFS = [ObjectRef("intl", "alice", f"notes/{i}") for i in range(20)]


def test_a_new_process_reads_small_objects_without_scanning_any_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it used to index every pack of a node on its first read: the start of every
    # process, `shardvault get` included, grew with the number of small objects
    config_path = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    payloads = {ref: os.urandom(1000 + i) for i, ref in enumerate(REFS)}
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        for ref, data in payloads.items():
            vault.put(ref, data)
        record = vault.cells["US"].catalog.get_version(REFS[0])
        assert record is not None and record.manifest is not None
        manifest = Manifest.from_bytes(record.manifest)
        assert len(manifest.locations) == manifest.n and all(manifest.locations)

    def refuse(self: PackSet) -> None:
        raise AssertionError("scanned the packs")

    monkeypatch.setattr(PackSet, "refresh", refuse)
    with Vault.open(load(config_path)) as fresh:
        for ref, data in payloads.items():
            with fresh.open_read(ref) as reader:
                assert reader.read_all() == data
            assert reader.damage == []
