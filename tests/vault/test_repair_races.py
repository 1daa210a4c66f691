"""Repair beside the cell's collectors (a gc, a forget) of the same version: each
report says only what its own run removed, and every live object reads back whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import make_deployment, manifest_of, syncs_failing
from governance_support import forget_approved
from race_support import held, other_goes_within
from shardvault.catalog.port import Catalog
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault

_REFS = [ObjectRef("intl", "alice", f"k{key}") for key in range(3)]
_LIVE = ObjectRef("intl", "sue", "k0")  # another subject's, in the same cell


def _data(ref: ObjectRef) -> bytes:
    return f"{ref}".encode() * 3000


def _deployment_with_a_lost_shard(tmp_path: Path) -> Path:
    """Small packs, alice's objects and one of sue's (both US), shard 3 of alice's first
    lost: a repair rebuilds it on its own node, in a pack."""
    config = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "sue", "US")
        for ref in [*_REFS, _LIVE]:
            vault.put(ref, _data(ref))
        manifest = manifest_of(vault, _REFS[0])
        store = vault.cells["US"].store(manifest.nodes[3])
        assert store.delete(
            shard_name(manifest.object_id, 1, 3, manifest.generation(3)), manifest.location(3)
        )
        store.sync()
    return config


def _collect_by_gc(vault: Vault) -> int:
    report = vault.gc(grace_seconds=0)
    return report.shards + report.orphans + report.stale


def _collect_by_forget(vault: Vault) -> int:
    return forget_approved(vault, "intl", "alice").shards_removed


@pytest.mark.parametrize("collect", [_collect_by_gc, _collect_by_forget], ids=["gc", "forget"])
def test_copies_a_repair_undoes_are_not_counted_again_by_a_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collect: Callable[[Vault], int]
) -> None:
    # a version deleted during its rebuild: repair deleted the copies it had written,
    # then dropped their notes; a collector between the two found them noted, and a
    # packed copy's delete, in a process that had indexed its pack, said it was there
    config = _deployment_with_a_lost_shard(tmp_path)
    before = held(config)
    removed: list[int] = []
    with Vault.open(load(config)) as repairer, Vault.open(load(config)) as collector:
        catalog: Catalog = repairer.cells["US"].catalog
        swap = catalog.replace_manifests

        def deleted_meanwhile(*args: Any, **kwargs: Any) -> int:
            collector.delete(_REFS[0])
            for store in collector.cells["US"].stores.values():  # the rebuilt copy known
                list(store.names())
            answer: int = swap(*args, **kwargs)
            return answer

        monkeypatch.setattr(catalog, "replace_manifests", deleted_meanwhile)
        other = other_goes_within(
            catalog,
            "drop_leftovers",
            lambda: removed.append(collect(collector)),
            monkeypatch,
            found=False,
        )
        report = repairer.repair(scrub=True)
        other.join()
    assert (report.rebuilt, report.problems) == (0, ())
    _, shards_after = held(config)
    assert not shards_after - before[1]
    assert removed == [len(before[1] - shards_after)]
    with Vault.open(load(config)) as fresh:
        assert fresh.get(_LIVE) == _data(_LIVE)


def test_copies_a_failed_rebuild_removed_are_not_counted_again_by_gc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a rebuild whose sync failed deleted the copies it had committed and left them
    # noted: a gc of a process that had indexed their pack deleted them again, and
    # each delete said it was there, counted as stale copies though none was
    config = _deployment_with_a_lost_shard(tmp_path)
    before = held(config)
    with Vault.open(load(config)) as repairer, Vault.open(load(config)) as collector:

        def index_the_copy() -> None:
            for store in collector.cells["US"].stores.values():
                list(store.names())

        syncs_failing(monkeypatch, repairer, index_the_copy)
        report = repairer.repair(scrub=True)
        assert [p.split(": ", 1)[1] for p in report.problems] == [
            "rebuild failed: the disk went away"
        ]
        gc = collector.gc(grace_seconds=0)
    _, shards_after = held(config)
    assert gc.shards + gc.orphans + gc.stale == len(before[1] - shards_after) == 0
    assert not shards_after - before[1]
    with Vault.open(load(config)) as fresh:
        for ref in [*_REFS, _LIVE]:
            assert fresh.get(ref) == _data(ref)
