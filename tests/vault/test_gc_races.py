"""Collectors of one cell at once (two gcs, a gc and a forget): each report says only what
its own run collected, and together they say what was really collected."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import make_deployment
from shardvault.catalog.port import Catalog
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.vault import Vault
from shardvault.vault.gc import GcReport

_SUBJECTS = {"alice": "US", "sue": "SG"}
_KEYS = 5
_LATE = 10.0  # seconds a collector waits for the other it let go (`_other_goes_within`)


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


def _held(config: Path) -> tuple[int, set[tuple[str, str]]]:
    """Counted apart from any report: the catalog rows of every cell, and every shard
    name its nodes hold."""
    rows, shards = 0, set()
    with Vault.open(load(config)) as vault:
        for cell in vault.cells.values():
            catalog = cell.catalog
            rows += len(catalog.versions_with(catalog.known_object_ids()))
            for node, store in cell.stores.items():
                shards.update((node, name) for name in store.names())
    return rows, shards


def _other_goes_within(
    catalog: Catalog,
    call: str,
    run: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
    *,
    found: bool,
) -> threading.Thread:
    """RUN (another collector) on its thread, let go within the first CALL of CATALOG
    (once it has found something, if FOUND; before it looks, if not) and waited for
    there, for up to `_LATE` seconds, before the caller goes on: unless collectors take
    turns, the other then collects what the caller is amid collecting."""
    method = getattr(catalog, call)
    other = threading.Thread(target=run)

    def let_the_other_go() -> None:
        if other.ident is None:
            other.start()
            other.join(_LATE)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if not found:
            let_the_other_go()
        answer = method(*args, **kwargs)
        if found and answer:
            let_the_other_go()
        return answer

    monkeypatch.setattr(catalog, call, hooked)
    return other


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
    rows_before, shards_before = _held(config)
    reports: list[GcReport] = []
    with Vault.open(load(config)) as first, Vault.open(load(config)) as second:
        other = _other_goes_within(
            first.cells["US"].catalog,
            "claim_collectable",
            lambda: reports.append(second.gc()),
            monkeypatch,
            found=True,
        )
        reports.append(first.gc())
        other.join()
    assert len(reports) == 2
    rows_after, shards_after = _held(config)
    total = sum(reports, GcReport())
    assert total.versions == rows_before - rows_after == len(_SUBJECTS) * (_KEYS + 1)
    assert total.shards + total.orphans + total.stale == len(shards_before - shards_after)
    assert not shards_after - shards_before
    _check_live(config)


def test_a_version_collected_while_gc_sweeps_its_node_is_not_counted_again_as_orphans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sweep listed the node's shards, another collector then deleted a version's
    # shards and its row: the sweep found them listed and known to no row, and each
    # delete of a packed one said it was there
    config = _deployment_with_garbage(tmp_path)
    gone = ObjectRef("intl", "alice", "k1")
    reports: list[GcReport] = []
    with Vault.open(load(config)) as first, Vault.open(load(config)) as second:
        first.gc()  # nothing left to collect but what is deleted while it sweeps
        rows_before, shards_before = _held(config)

        def delete_and_collect() -> None:
            second.delete(gone)
            reports.append(second.gc())

        other = _other_goes_within(
            first.cells["US"].catalog, "known_among", delete_and_collect, monkeypatch, found=False
        )
        reports.append(first.gc(grace_seconds=0))  # the version is older than its cutoff
        other.join()
    assert len(reports) == 2
    rows_after, shards_after = _held(config)
    total = sum(reports, GcReport())
    assert total.versions == rows_before - rows_after == 1
    assert total.shards + total.orphans + total.stale == len(shards_before - shards_after)
    assert not shards_after - shards_before
    with Vault.open(load(config)) as vault:
        for key in range(2, _KEYS):
            assert vault.get(ObjectRef("intl", "alice", f"k{key}")) == _data(key)
