"""Collectors of one cell at once (two gcs, a gc and a forget): each report says only what
its own run collected, and together they say what was really collected."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_deployment, manifest_of
from race_support import held, other_goes_within
from shardvault.catalog.port import Leftover
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault
from shardvault.vault.gc import GcReport

_SUBJECTS = {"alice": "US", "sue": "SG"}
_KEYS = 5


def _data(key: int) -> bytes:
    return f"obj{key}".encode() * 3000


def _deployment_with_garbage(tmp_path: Path) -> Path:
    """Small packs, objects of two cells, each key written twice and two of them
    deleted: versions to collect, their shards in packs compaction then folds."""
    config = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    with Vault.open(load(config)) as vault:
        for subject, jurisdiction in _SUBJECTS.items():
            vault.register_subject("intl", subject, jurisdiction)
            for key in range(_KEYS):
                ref = ObjectRef("intl", subject, f"k{key}")
                vault.put(ref, b"first " + _data(key))
                vault.put(ref, _data(key))
                vault.delete(ref, version=1)
            vault.delete(ObjectRef("intl", subject, "k0"))
    return config


@contextlib.contextmanager
def _collected_twice_open(tmp_path: Path) -> Iterator[tuple[Path, Vault, Vault]]:
    """The deployment of `_deployment_with_garbage` collected, nothing left to collect
    but what a test leaves, and open twice: (config, one vault, another)."""
    config = _deployment_with_garbage(tmp_path)
    with Vault.open(load(config)) as first, Vault.open(load(config)) as second:
        first.gc()
        yield config, first, second


def _assert_reports_add_up(
    config: Path,
    reports: list[GcReport],
    before: tuple[int, set[tuple[str, str]]],
    versions: int,
) -> set[tuple[str, str]]:
    """The two reports add up to what `held` finds gone since BEFORE: VERSIONS rows, and
    every shard they removed, each once; the shards held after."""
    assert len(reports) == 2
    rows_before, shards_before = before
    rows_after, shards_after = held(config)
    total = sum(reports, GcReport())
    assert total.versions == rows_before - rows_after == versions
    assert total.shards + total.orphans + total.stale == len(shards_before - shards_after)
    assert not shards_after - shards_before
    return shards_after


def _check_live(config: Path) -> None:
    with Vault.open(load(config)) as vault:
        for subject in _SUBJECTS:
            for key in range(1, _KEYS):
                assert vault.get(ObjectRef("intl", subject, f"k{key}")) == _data(key)


def test_two_gcs_at_once_report_together_what_was_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # found by two `shardvault gc` started at once: both said versions 1, shards 6,
    # for the one version (of six shards) there was
    config = _deployment_with_garbage(tmp_path)
    before = held(config)
    reports: list[GcReport] = []
    with Vault.open(load(config)) as first, Vault.open(load(config)) as second:
        other = other_goes_within(
            first.cells["US"].catalog,
            "claim_collectable",
            lambda: reports.append(second.gc()),
            monkeypatch,
            found=True,
        )
        reports.append(first.gc())
        other.join()
    _assert_reports_add_up(config, reports, before, len(_SUBJECTS) * (_KEYS + 1))
    _check_live(config)


def test_a_version_collected_while_gc_sweeps_its_node_is_not_counted_again_as_orphans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sweep listed the node's shards, another collector then deleted a version's
    # shards and its row: the sweep found them listed and known to no row, and each
    # delete of a packed one said it was there
    gone = ObjectRef("intl", "alice", "k1")
    reports: list[GcReport] = []
    with _collected_twice_open(tmp_path) as (config, first, second):
        before = held(config)

        def delete_and_collect() -> None:
            second.delete(gone)
            reports.append(second.gc())

        other = other_goes_within(
            first.cells["US"].catalog, "known_among", delete_and_collect, monkeypatch, found=False
        )
        reports.append(first.gc(grace_seconds=0))  # the version is older than its cutoff
        other.join()
    _assert_reports_add_up(config, reports, before, 1)
    with Vault.open(load(config)) as vault:
        for key in range(2, _KEYS):
            assert vault.get(ObjectRef("intl", "alice", f"k{key}")) == _data(key)


def test_a_copy_repair_left_of_a_version_collected_meanwhile_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one gc resolving repair's leftovers looked them up, another then collected the
    # version with its noted copy (`_replaced_copies`): the first deleted the copy
    # again, and a packed one's delete said it was there to each
    ref = ObjectRef("intl", "alice", "k1")
    reports: list[GcReport] = []
    with _collected_twice_open(tmp_path) as (config, first, second):
        cell = first.cells["US"]
        record = cell.catalog.get_version(ref)
        assert record is not None
        manifest = manifest_of(first, ref)
        node = manifest.nodes[0]
        writer = cell.stores[node].open_writer(shard_name(record.object_id, record.version, 0, 1))
        writer.write(b"a copy a repair wrote and never named")
        writer.commit()
        copy = Leftover(record.object_id, record.version, 0, node, writer.location, 1)
        cell.catalog.note_leftovers([copy])
        before = held(config)

        def delete_and_collect() -> None:
            first.delete(ref)
            reports.append(first.gc())

        other = other_goes_within(
            second.cells["US"].catalog, "leftovers", delete_and_collect, monkeypatch, found=True
        )
        reports.append(second.gc())
        other.join()
    shards_after = _assert_reports_add_up(config, reports, before, 1)
    assert (node, shard_name(record.object_id, record.version, 0, 1)) not in shards_after
