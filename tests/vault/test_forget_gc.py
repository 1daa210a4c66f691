"""Forgetting a subject, and garbage collection that never touches committed data."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import SEGMENT, files_under, make_deployment, manifest_of, shard_paths
from governance_support import approve, forget_approved
from shardvault.catalog.port import Leftover, VersionRecord
from shardvault.config import load
from shardvault.errors import (
    ApprovalRequired,
    Conflict,
    KeyUnavailable,
    NotFound,
    StorageError,
    SubjectForgotten,
)
from shardvault.keys.memory import MemoryCustodian
from shardvault.keys.tombstones import tombstones_path
from shardvault.model import Justification, ObjectRef, RequestContext, new_request_id
from shardvault.nodes import packs
from shardvault.nodes.port import shard_name
from shardvault.policy import Principal, PrincipalKind
from shardvault.vault import Vault, forget_collection
from shardvault.vault import gc as gc_module


def test_forget_destroys_the_key_and_the_shards(config_path: Path, tmp_path: Path) -> None:
    base = config_path.parent
    backup = tmp_path / "backup"
    refs = [ObjectRef("intl", "alice", f"k{i}") for i in range(3)]
    bob = ObjectRef("intl", "bob", "k0")
    with Vault.open(load(config_path)) as vault:
        record = vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "bob", "US")
        for ref in refs:
            vault.put(ref, os.urandom(SEGMENT + 1))
            vault.put(ref, b"second version")
        vault.put(bob, b"bob stays")
        alice_shards = {p for ref in refs for v in (1, 2) for p in shard_paths(vault, ref, v)}
        assert len(alice_shards) == 36
    # a full backup of the cell: catalog and every node directory
    shutil.copytree(base / "state", backup / "state")
    shutil.copytree(base / "nodes", backup / "nodes")

    with Vault.open(load(config_path)) as vault:
        result = forget_approved(vault, "intl", "alice")
        assert (result.versions_deleted, result.shards_removed) == (6, 36)
        assert result.key_id == record.key_id and result.jurisdiction == "US"
        for ref in refs:
            with pytest.raises(SubjectForgotten, match="forgotten"):
                vault.get(ref)
        with pytest.raises(SubjectForgotten):
            vault.put(refs[0], b"new")
        # decided and audited like any access, then answered (it used to answer first):
        # with the receipt of the forget that was done, for its lost receipt's sake
        audited = vault.governance.cell("US").log.size
        again = forget_approved(vault, "intl", "alice")
        assert (again.audit_index, again.shards_removed) == (result.audit_index, 36)
        log = vault.governance.cell("US").log
        last = log.entry(log.size - 1)
        assert log.size > audited and (last.action, last.decision) == ("forget", "allow")
        assert last.result == "allowed"  # a decision; no second outcome
        assert vault.get(bob) == b"bob stays"
    assert not any(path.exists() for path in alice_shards)
    with sqlite3.connect(tombstones_path(base / "keys" / "keyring.json")) as tombstones:
        assert list(tombstones.execute("SELECT * FROM destroyed")) == [("intl/US", record.key_id)]

    # restoring the catalog and the shards from before the forget does not bring alice back
    shutil.rmtree(base / "state")
    shutil.rmtree(base / "nodes")
    shutil.copytree(backup / "state", base / "state")
    shutil.copytree(backup / "nodes", base / "nodes")
    with Vault.open(load(config_path)) as vault:
        assert vault.subject("intl", "alice").wrapped_key is not None  # the old catalog
        for ref in refs:
            with pytest.raises(SubjectForgotten, match=f"{record.key_id} of intl/US was destroyed"):
                vault.get(ref)
        assert vault.get(bob) == b"bob stays"


def test_every_key_use_carries_the_callers_justification(config_path: Path) -> None:
    custodian = MemoryCustodian()
    ctx = RequestContext("svc-feed", "serve-user", "req-42")
    with Vault.open(load(config_path), custodian=custodian) as vault:
        service = Principal("svc-feed", "intl", PrincipalKind.SERVICE, "US")
        vault.governance.registry.add(service, token_ttl=None)
        vault.register_subject("intl", "alice", "US", ctx)
        ref = ObjectRef("intl", "alice", "k")
        vault.put(ref, b"data", ctx=ctx)
        vault.get(ref, ctx=ctx)
        with vault.open_read(ref, ctx=ctx) as reader:
            reader.read_all()
        forgotten = forget_approved(vault, "intl", "alice")
        with pytest.raises(SubjectForgotten):
            vault.get(ref, ctx=ctx)
    ops = [op for op, *_ in custodian.justifications]
    assert ops == ["wrap", "unwrap", "unwrap", "unwrap", "destroy"]
    # the registered location, not a claimed one, is what the custodian sees
    whys = [why for *_, why in custodian.justifications[:4]]
    assert {dataclasses.replace(why, audit=None) for why in whys} == {
        Justification("svc-feed", "serve-user", "req-42", "US")
    }
    # and where each decision's entry is: one per request, in the home cell's log
    positions = [why.audit for why in whys]
    assert all(p is not None and p.cell == "US" for p in positions)
    assert len({p.entry_index for p in positions if p is not None}) == 4
    destroy = custodian.justifications[4][3]
    assert (destroy.principal, destroy.purpose) == ("local-admin", "forget-subject")
    assert (destroy.approval_id or "").startswith("apr-us-") and forgotten.audit_index > 0


def test_default_context_still_justifies_each_call(vault: Vault) -> None:
    custodian = MemoryCustodian()
    vault.custodian = custodian
    vault.register_subject("intl", "alice", "US")
    vault.put(ObjectRef("intl", "alice", "k"), b"x")
    vault.get(ObjectRef("intl", "alice", "k"))
    purposes = [(op, why.purpose) for op, _, _, why in custodian.justifications]
    assert purposes == [("wrap", "register-subject"), ("unwrap", "write"), ("unwrap", "read")]
    assert all(why.principal and why.request_id for *_, why in custodian.justifications)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_gc_and_forget_work_through_a_backlog_in_batches(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # claims come a batch at a time (bounded memory): every batch must be collected
    monkeypatch.setattr(gc_module, "_CLAIM_BATCH", 2)
    alice = [ObjectRef("intl", "alice", f"a{i}") for i in range(5)]
    bob = [ObjectRef("intl", "bob", f"b{i}") for i in range(5)]
    with Vault.open(load(config_path)) as vault:
        for name in ("alice", "bob"):
            vault.register_subject("intl", name, "US")
        for ref in alice + bob:
            vault.put(ref, os.urandom(SEGMENT + 1))
        paths = {ref: shard_paths(vault, ref) for ref in alice + bob}
        for ref in bob:
            vault.delete(ref)
        report = vault.gc(grace_seconds=0)
        assert (report.versions, report.shards) == (5, 30)
        assert not any(path.exists() for ref in bob for path in paths[ref])
        result = forget_approved(vault, "intl", "alice")
        assert (result.versions_deleted, result.shards_removed) == (5, 30)
        assert not any(path.exists() for ref in alice for path in paths[ref])


def test_gc_collects_leftovers_and_never_committed_shards(tmp_path: Path) -> None:
    config_path = make_deployment(tmp_path / "deploy")
    clock = Clock()
    with Vault.open(load(config_path), clock=clock) as vault:
        vault.register_subject("intl", "alice", "US")
        kept = ObjectRef("intl", "alice", "kept")
        vault.put(kept, os.urandom(2 * SEGMENT))
        vault.put(kept, b"v2")
        committed = {p for v in (1, 2) for p in shard_paths(vault, kept, v)}
        cell = vault.cells["US"]
        nodes = manifest_of(vault, kept).nodes

        def leftover(key: str, object_id: bytes, age: float) -> set[Path]:
            """What a put killed after writing its shards leaves behind."""
            ref = ObjectRef("intl", "alice", key)
            version = cell.catalog.reserve(ref, object_id, clock.now - age)
            paths = set()
            for index, node in enumerate(nodes):
                store = cell.store(node)
                writer = store.open_writer(shard_name(object_id, version, index))
                writer.write(b"half")
                writer.commit()
                paths.add(store.shard_path(shard_name(object_id, version, index)))  # type: ignore[attr-defined]
            return paths

        stale = leftover("stale", b"\x01" * 16, 7200)
        fresh = leftover("fresh", b"\x02" * 16, 10)
        orphan_store = cell.store(nodes[0])
        orphan_name = shard_name(b"\x03" * 16, 1, 0)
        writer = orphan_store.open_writer(orphan_name)
        writer.write(b"nobody knows me")
        writer.commit()
        old_temp = orphan_store.open_writer(shard_name(b"\x04" * 16, 1, 0))
        old_temp.write(b"abandoned temp")
        new_temp = orphan_store.open_writer(shard_name(b"\x05" * 16, 1, 0))
        new_temp.write(b"in progress")
        temps = sorted(orphan_store.tmp_dir.iterdir())  # type: ignore[attr-defined]
        old_path = next(p for p in temps if p.name.startswith("04"))
        os.utime(old_path, (clock.now - 7200, clock.now - 7200))

        report = vault.gc(grace_seconds=3600)
        assert (report.versions, report.shards, report.orphans, report.temporaries) == (1, 6, 1, 1)
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in fresh)
        assert not orphan_store.shard_path(orphan_name).exists()  # type: ignore[attr-defined]
        assert not old_path.exists()
        assert [p.name[:2] for p in orphan_store.tmp_dir.iterdir()] == ["05"]  # type: ignore[attr-defined]

        clock.now += 60
        report = vault.gc(grace_seconds=0)
        assert (report.versions, report.shards, report.temporaries) == (1, 6, 1)
        assert not any(p.exists() for p in fresh)
        nodes_root = config_path.parent / "nodes"
        assert files_under(nodes_root) == committed
        assert vault.get(kept) == b"v2"
        assert len(vault.get(kept, 1)) == 2 * SEGMENT
        assert vault.gc(grace_seconds=0).versions == 0
        with pytest.raises(NotFound):
            vault.get(ObjectRef("intl", "alice", "stale"))
        new_temp.abort()
        old_temp.abort()


@pytest.mark.parametrize(
    "stray",
    [
        "notes.txt",
        ".0123456789abcdef0123456789abcdef.v1.s0.Xa1b2",
        "0123456789abcdef0123456789abcdef.v1.s0.bak",
    ],
)
def test_gc_leaves_a_file_not_named_as_a_shard_and_sweeps_the_node(
    tmp_path: Path, stray: str
) -> None:
    """A note, an editor's backup or a copy tool's temporary among the shard files is
    none of gc's business: it once crashed gc (a traceback) or skipped the node every run."""
    config_path = make_deployment(tmp_path / "deploy")
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        ref = ObjectRef("intl", "alice", "k")
        vault.put(ref, os.urandom(SEGMENT))
        shard = shard_paths(vault, ref)[0]
        (shard.parent / stray).write_bytes(b"not a shard")
        store = vault.cells["US"].store(manifest_of(vault, ref).nodes[0])
        orphan = shard_name(b"\x03" * 16, 1, 0)
        writer = store.open_writer(orphan)
        writer.write(os.urandom(SEGMENT))
        writer.commit()
        report = vault.gc(grace_seconds=0)
        assert (report.orphans, report.skipped_nodes) == (1, ())
        assert (shard.parent / stray).exists()
        assert vault.get(ref) is not None


def test_forget_leaves_no_name_of_the_subject_in_its_cell_files(config_path: Path) -> None:
    # damage records and approvals kept the subject id and object keys in the clear
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "dmgvictim", "US")
        ref = ObjectRef("intl", "dmgvictim", "medical/diagnosis-hiv.pdf")
        vault.put(ref, os.urandom(5000))
        shard_paths(vault, ref)[0].unlink()
        assert vault.get(ref)  # read around the loss, and record it for repair
        assert [d.ref for d in vault.cells["US"].catalog.damage()] == [ref]
        earlier = ObjectRef("intl", "dmgvictim", "medical/earlier-hiv-test.pdf")
        vault.put(earlier, b"negative")
        vault.delete(earlier)
        vault.gc(grace_seconds=0)  # collected: its number is kept, so its key too
        forget_approved(vault, "intl", "dmgvictim")  # leaves an approval naming the subject
        assert vault.cells["US"].catalog.damage() == []
        [approval] = vault.governance.approvals.all("US")
        assert approval.subject is not None and approval.subject.startswith("hmac-sha256:")
        cell_dir = config_path.parent / "state" / "cells" / "US"
        for path in sorted(cell_dir.glob("*.sqlite*")):  # the files themselves, WAL included
            raw = path.read_bytes()
            assert b"diagnosis-hiv" not in raw and b"earlier-hiv" not in raw, path.name
            if path.name.startswith("approvals"):
                assert b"dmgvictim" not in raw, path.name
        # the catalog keeps the subject's own row, keyless, so that it answers "forgotten"
        # and refuses a new registration of that id


def test_a_large_put_reserving_after_a_forget_writes_nothing(
    vault: Vault, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large put that found the subject live and reserved its version once the forget
    was done (its receipt given) wrote every shard under the destroyed key, and left
    the object's name in the catalog's files, until the unwrap refused it."""
    vault.register_subject("intl", "alice", "US")
    catalog = vault.cells["US"].catalog
    reserve = catalog.reserve

    def reserve_after_the_forget(ref: ObjectRef, object_id: bytes, when: float) -> int:
        forget_approved(vault, "intl", "alice")
        return reserve(ref, object_id, when)

    monkeypatch.setattr(catalog, "reserve", reserve_after_the_forget)
    steps: list[str] = []
    monkeypatch.setattr(vault, "_on_step", steps.append)
    nodes = config_path.parent / "nodes"
    before = files_under(nodes)
    with pytest.raises(SubjectForgotten):
        vault.put(ObjectRef("intl", "alice", "medical/scan-result.bin"), os.urandom(3 * SEGMENT))
    assert steps == [] and files_under(nodes) == before
    cell_dir = config_path.parent / "state" / "cells" / "US"
    raw = b"".join(path.read_bytes() for path in cell_dir.glob("catalog.sqlite*"))
    assert b"scan-result" not in raw


def test_gc_racing_a_large_put_never_loses_an_acknowledged_version(config_path: Path) -> None:
    # gc read a pending row, the put then committed it and returned, and gc went on to
    # delete its shards and its row: an acknowledged version was gone (a stress run)
    config = load(config_path)
    ref = ObjectRef("intl", "alice", "big")
    with Vault.open(config) as setup:
        setup.register_subject("intl", "alice", "US")
        setup.put(ref, b"version one")
    collector = Vault.open(config)
    catalog = collector.cells["US"].catalog
    claim = catalog.claim_collectable
    start_gc, gc_has_read, put_is_done = (threading.Event() for _ in range(3))

    def claim_then_wait(pending_before: float, **batch: Any) -> list[VersionRecord]:
        found = claim(pending_before, **batch)
        gc_has_read.set()
        put_is_done.wait(10)  # the put commits (or fails to) while gc holds its list
        return found

    catalog.claim_collectable = claim_then_wait  # type: ignore[method-assign]
    gc_thread = threading.Thread(target=lambda: start_gc.wait(10) and collector.gc(0))
    gc_thread.start()

    def gc_just_before_the_commit(step: str) -> None:
        if step == "shards-committed":
            start_gc.set()
            assert gc_has_read.wait(10)

    try:
        with Vault.open(config, on_step=gc_just_before_the_commit) as writer:
            try:
                writer.put(ref, os.urandom(3 * SEGMENT))  # large: reserved first
                acknowledged = True
            except Conflict:
                acknowledged = False
            finally:
                put_is_done.set()
            gc_thread.join(10)
            expected_versions = [2, 1] if acknowledged else [1]
            assert [info.version for info in writer.versions(ref)] == expected_versions
            assert not acknowledged  # gc claimed the version first, so the put said so
            assert writer.get(ref, 1) == b"version one"
    finally:
        put_is_done.set()
        gc_thread.join(10)
        collector.close()


def test_a_collected_keys_version_numbers_are_not_given_again(vault: Vault) -> None:
    # after delete and gc, numbering restarted at 1: `--if-match 2` from a writer that
    # had seen the old v2 then overwrote content it never saw
    vault.register_subject("intl", "alice", "US")
    ref = ObjectRef("intl", "alice", "profile.json")
    for data in (b"old one", b"old two"):
        vault.put(ref, data)
    vault.delete(ref)
    assert vault.gc(grace_seconds=0).versions == 2
    assert vault.put(ref, b"new").version == 3
    with pytest.raises(Conflict, match="expected version 2, current is 3"):
        vault.put(ref, b"stale writer", if_match=2)
    assert vault.put(ref, os.urandom(3 * SEGMENT)).version == 4  # reserved first: same rule


def test_a_collected_versions_row_goes_only_after_its_shards_deletions_are_durable(
    vault: Vault, alice: ObjectRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a crash between the two then leaves a row to collect again, never a row gone
    # with its shards' zeroing still in the page cache
    events: list[str] = []
    cell = vault.cells["US"]
    for node in cell.nodes:
        store = cell.store(node.id)
        real_sync = store.sync
        monkeypatch.setattr(store, "sync", lambda s=real_sync: events.append("sync") or s())
    real_purge = cell.catalog.purge
    monkeypatch.setattr(
        cell.catalog, "purge", lambda versions: events.append("purge") or real_purge(versions)
    )
    vault.put(alice, b"to be collected")
    vault.delete(alice)
    events.clear()  # the put's own syncs
    assert vault.gc(grace_seconds=0).versions == 1
    first_purge = events.index("purge")
    assert events[:first_purge].count("sync") == len(cell.nodes)


def test_one_node_failing_its_sync_does_not_stop_gc(
    vault: Vault, alice: ObjectRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it ended the whole gc, every cell's, with one line: one bad disk stopped all
    cell = vault.cells["US"]
    bad, good = cell.nodes[0].id, cell.nodes[1].id

    def failing() -> None:
        raise StorageError(f"node {bad}: syncing: Input/output error")

    vault.register_subject("intl", "sam", "SG")
    sam = ObjectRef("intl", "sam", "k")
    for ref in (alice, sam):
        vault.put(ref, b"to be collected")
        vault.delete(ref)
    monkeypatch.setattr(cell.store(bad), "sync", failing)  # from here: the puts sync too
    oid = bytes(16)
    cell.catalog.note_leftovers([Leftover(oid, 1, 0, bad, None), Leftover(oid, 1, 1, good, None)])
    assert vault.gc(grace_seconds=0).versions == 2  # both cells' rows, the bad node's too
    assert cell.catalog.list_versions(alice) == []
    # a note whose deletion may not be durable stays, for the next gc
    assert [x.node for x in cell.catalog.leftovers()] == [bad]


def test_a_lost_keyring_is_never_made_again_by_another_process(tmp_path: Path) -> None:
    # a second review: with the keys directory gone, a fresh process (a CLI forget or
    # put) took the deployment for a new one and made an empty tombstone file, and a
    # server still holding the roots then unwrapped every key destroyed before
    config = load(make_deployment(tmp_path / "deploy"))
    with Vault.open(config) as server:
        server.register_subject("intl", "alice", "US")
        server.register_subject("intl", "bob", "US")
        server.put(ObjectRef("intl", "bob", "x"), b"bob's")
        forget_approved(server, "intl", "bob")
        keys = config.keyring_path.parent
        keys.rename(tmp_path / "keys-lost")
        with Vault.open(config) as fresh:
            with pytest.raises(KeyUnavailable, match="restore it with its tombstones"):
                fresh.register_subject("intl", "carol", "US")
            with pytest.raises(KeyUnavailable):
                fresh.put(ObjectRef("intl", "alice", "y"), b"y")
        assert not config.keyring_path.exists()
        assert not tombstones_path(config.keyring_path).exists()
        with pytest.raises((KeyUnavailable, SubjectForgotten)):
            server.get(ObjectRef("intl", "bob", "x"))


@pytest.mark.parametrize("pack_limit", [0, 64 << 10], ids=["files", "packs"])
def test_gc_skips_a_node_whose_directory_went_after_it_was_opened_and_sweeps_it_later(
    tmp_path: Path, pack_limit: int
) -> None:
    """A disk unmounted under a running process: gc names the node as skipped rather
    than stopping at a raw FileNotFoundError, and the copies it could not delete there
    are orphans the first gc after the remount takes."""
    config = make_deployment(tmp_path / "d", pack_limit=pack_limit)
    gone, kept = ObjectRef("intl", "alice", "gone"), ObjectRef("intl", "alice", "kept")
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(gone, os.urandom(3000))
        vault.put(kept, b"stays")
        manifest = manifest_of(vault, gone)
        node = manifest.nodes[0]
        name = shard_name(manifest.object_id, manifest.version, 0)
        vault.delete(gone)
        store = vault.cells["US"].store(node)
        node_dir = Path(load(config).node(node).location)
        node_dir.rename(tmp_path / "aside")  # unmounted under the open store
        report = vault.gc(grace_seconds=0)
        assert report.skipped_nodes == (node,)
        assert report.versions == 1  # the rest of the cell was collected
        (tmp_path / "aside").rename(node_dir)  # mounted again
        # a shard file could not be deleted there; a packed one was, through the pack
        # file this process held open (a tombstone)
        assert (name in set(store.names())) == (pack_limit == 0)
        again = vault.gc(grace_seconds=0)
        assert again.skipped_nodes == ()
        assert again.orphans == (1 if pack_limit == 0 else 0)
        assert name not in set(store.names())
        assert vault.get(kept) == b"stays"


def test_node_usage_names_a_node_whose_directory_went_after_it_was_opened(
    tmp_path: Path,
) -> None:
    """The listing said nothing of it (0 shards, available), or after the node check
    failed as a whole; it shows the node as unavailable, with why, and the rest."""
    config = make_deployment(tmp_path / "d")
    with Vault.open(load(config)) as vault:
        assert all(not u.unavailable for u in vault.node_usage())  # every store opened
        node_dir = Path(load(config).node("us-n1").location)
        node_dir.rename(tmp_path / "aside")
        usage = {u.node.id: u for u in vault.node_usage()}
        assert "us-n1" in usage["us-n1"].unavailable and "finding" in usage["us-n1"].unavailable
        assert all(not u.unavailable for node, u in usage.items() if node != "us-n1")
        (tmp_path / "aside").rename(node_dir)
        assert all(not u.unavailable for u in vault.node_usage())


def test_node_usage_names_a_node_whose_packs_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read error listing one node's packs (a bad sector, say) escaped as a bare
    OSError and failed the whole listing."""
    with Vault.open(load(make_deployment(tmp_path / "d", pack_limit=64 << 10))) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ObjectRef("intl", "alice", "k"), b"small")  # packed on every US node
        store = vault.cells["US"].store("us-n1")
        real = packs.PackSet._scan

        def failing(self: packs.PackSet, pack: str) -> None:
            if self is store.packs:  # type: ignore[attr-defined]
                raise OSError(errno.EIO, "Input/output error")
            return real(self, pack)

        monkeypatch.setattr(packs.PackSet, "_scan", failing)
        store.drop_caches()  # as in a fresh `shardvault nodes`
        usage = {u.node.id: u for u in vault.node_usage()}
        assert "listing shards failed: Input/output error" in usage["us-n1"].unavailable
        assert usage["us-n2"].shards == 1 and not usage["us-n2"].unavailable


@pytest.mark.parametrize("retry", ["with-its-approval", "asking-anew"])
def test_a_forget_cut_short_after_its_catalog_mark_is_finished_by_a_retry(
    vault: Vault, monkeypatch: pytest.MonkeyPatch, retry: str
) -> None:
    """A forget killed once the subject was marked forgotten left its shards, and its
    approval naming the subject in clear; every retry only said "already forgotten".
    A retry without an approval asked a new one, naming the subject again."""
    refs = [ObjectRef("intl", "alice", f"k{i}") for i in range(3)]
    vault.register_subject("intl", "alice", "US")
    for ref in refs:
        vault.put(ref, os.urandom(SEGMENT + 1))
    shards = {p for ref in refs for p in shard_paths(vault, ref)}

    def killed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed here")

    monkeypatch.setattr(forget_collection, "collect_claimed", killed)
    with pytest.raises(RuntimeError, match="killed here"):
        forget_approved(vault, "intl", "alice")
    monkeypatch.undo()
    approvals = vault.governance.approvals
    assert "alice" in {a.subject for a in approvals.all("US")}  # what the kill left
    assert all(p.exists() for p in shards)
    if retry == "with-its-approval":
        [met] = approvals.all("US")
        again = RequestContext(
            "local-admin", "forget-subject", new_request_id(), approval_id=met.id
        )
        done = vault.forget("intl", "alice", again)
        assert (done.versions_deleted, done.shards_removed) == (3, 18)
    else:
        with pytest.raises(ApprovalRequired):
            vault.forget("intl", "alice")
    assert not any(p.exists() for p in shards)
    assert "alice" not in {a.subject for a in approvals.all("US")}  # nor a new one's
    assert len(approvals.all("US")) == (1 if retry == "with-its-approval" else 2)


def test_a_forgotten_subjects_object_names_are_not_left_in_the_catalog_file(
    vault: Vault, config_path: Path
) -> None:
    """secure_delete=FAST zeroes a row only where that costs no I/O: pages a purge
    freed kept the forgotten subject's key names in the file's bytes."""
    vault.register_subject("intl", "alice", "US")
    vault.register_subject("intl", "bob", "US")
    for i in range(300):
        vault.put(ObjectRef("intl", "alice", f"secretkeyname{i:04d}.bin"), os.urandom(200))
        vault.put(ObjectRef("intl", "bob", f"kept{i}"), os.urandom(200))
    forget_approved(vault, "intl", "alice")
    catalog = load(config_path).state_dir / "cells" / "US" / "catalog.sqlite"
    raw = b"".join(p.read_bytes() for p in catalog.parent.glob("catalog.sqlite*"))
    assert raw.count(b"secretkeyname") == 0
    assert raw.count(b"kept299") >= 1  # the other subject's are there to be found


def test_registering_a_forgotten_subject_again_says_it_was_forgotten(config_path: Path) -> None:
    """It said "already registered", which reads as a live user (found in review)."""
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        forget_approved(vault, "intl", "alice")
        for jurisdiction in ("US", "EU"):
            with pytest.raises(Conflict, match=r"was forgotten on .*give the user a new one"):
                vault.register_subject("intl", "alice", jurisdiction)
        vault.register_subject("intl", "bob", "US")
        with pytest.raises(Conflict, match="already registered"):
            vault.register_subject("intl", "bob", "US")


FORGET_CHILD = r"""
import os, signal, sys
from pathlib import Path
from shardvault.config import load
from shardvault.model import RequestContext, new_request_id
from shardvault.vault import Vault, forget_collection, forgetting

config, approval, step = sys.argv[1:4]
vault = Vault.open(load(Path(config)))

def killed_after(owner, name):
    real = getattr(owner, name)
    def call(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(owner, name, call)

if step == "outcome-audited-before-v2":  # as shardvault wrote it before receipts of v2
    step, written = "outcome-audited", vault.governance.record_outcome
    def record_outcome(access, result, subject_commitment, forgotten_at, **details):
        details.pop("destroy_attestation", None)
        return written(access, result, **details)
    vault.governance.record_outcome = record_outcome
if step == "outcome-audited-unattested":  # as it wrote it before committing to the attestation
    step, written = "outcome-audited", vault.governance.record_outcome
    def record_outcome(access, result, destroy_attestation, **details):
        return written(access, result, **details)
    vault.governance.record_outcome = record_outcome

killed_after(*{
    "key-tombstoned": (vault.custodian._tombstones, "add"),  # its attestation not yet kept
    "key-destroyed": (vault.custodian, "destroy"),
    "catalog-marked": (vault.cells["US"].catalog, "forget_subject"),
    "shards-collected": (forget_collection, "collect_claimed"),
    "outcome-audited": (vault.governance, "record_outcome"),
    "head-cosigned": (vault.governance, "publish_head"),
    "receipt-signed": (forgetting, "make_receipt"),
}[step])
ctx = RequestContext("local-admin", "forget-subject", new_request_id(), approval_id=approval)
vault.forget("intl", "alice", ctx)
print("done", flush=True)
"""


def forgotten_outcomes(vault: Vault, subject: str) -> list[int]:
    """Indexes of the US log's outcome entries of a forget of ``subject``."""
    cell = vault.governance.cell("US")
    resource = cell.hasher.resource("intl", subject)
    log = cell.log
    return [
        index
        for index in range(log.size)
        if (entry := log.entry(index)).action == "forget"
        and entry.result == "forgotten"
        and entry.resource == resource
    ]


@pytest.mark.parametrize(
    "step",
    [
        "key-tombstoned",
        "key-destroyed",
        "catalog-marked",
        "shards-collected",
        "outcome-audited",
        "head-cosigned",
        "receipt-signed",
    ],
)
def test_a_forget_killed_before_its_receipt_gives_one_when_run_again(
    vault: Vault, config_path: Path, tmp_path: Path, step: str
) -> None:
    """kill -9 after the key was destroyed and before the receipt was returned: every
    retry answered "already forgotten", and the user never got a receipt."""
    refs = [ObjectRef("intl", "alice", f"k{i}") for i in range(3)]
    record = vault.register_subject("intl", "alice", "US")
    nodes = config_path.parent / "nodes"
    before = files_under(nodes)
    for ref in refs:
        vault.put(ref, os.urandom(SEGMENT + 1))  # two segments: 6 shard files each
    with pytest.raises(ApprovalRequired) as pending:
        vault.forget("intl", "alice")
    approval = pending.value.approval_id
    assert approval is not None
    approve(vault.governance, approval)

    child = subprocess.run(
        [sys.executable, "-c", FORGET_CHILD, str(config_path), approval, step],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "done" not in child.stdout

    again = RequestContext("local-admin", "forget-subject", new_request_id(), approval_id=approval)
    result = vault.forget("intl", "alice", again)
    assert (result.key_id, result.versions_deleted, result.shards_removed) == (
        record.key_id, 3, 18,
    )  # fmt: skip
    [outcome] = forgotten_outcomes(vault, "alice")  # one, whichever request wrote it
    assert result.audit_index == outcome
    receipt = tmp_path / "receipt.note"
    receipt.write_text(result.receipt)
    governance = vault.governance
    checked = subprocess.run(
        [Path(sys.executable).parent / "shardvault", "receipt", "verify", str(receipt),
         "--key", governance.cell("US").signer.verifier_key(),
         "--cosigner", governance.partner.vkey(),
         "--custodian", governance.custodian_key.vkey(), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    body = json.loads(checked.stdout)
    assert (body["subject"], body["key_id"], body["shards_removed"]) == ("alice", record.key_id, 18)
    # whichever run wrote the outcome, and whichever signed the custodian's attestation
    assert (body["v"], body["binds_subject"], body["destroy_attested"]) == (3, True, True)
    assert vault.subject("intl", "alice").forgotten_at == _attested_at(result.receipt)
    # and the rest of the forget is done: shards, rows, approvals
    assert files_under(nodes) == before
    assert vault.cells["US"].catalog.known_object_ids() == set()
    assert "alice" not in {a.subject for a in governance.approvals.all("US")}
    with pytest.raises(SubjectForgotten):
        vault.get(refs[0])


def test_a_forget_whose_outcome_an_older_version_wrote_gives_a_receipt_of_version_1(
    vault: Vault, config_path: Path, tmp_path: Path
) -> None:
    """An outcome entry written before entries committed to their subject cannot give a
    receipt that binds it: the run that finishes that forget gives one of version 1,
    which the outsider's check accepts saying plainly that it does not bind."""
    record = vault.register_subject("intl", "alice", "US")
    with pytest.raises(ApprovalRequired) as pending:
        vault.forget("intl", "alice")
    approval = pending.value.approval_id
    assert approval is not None
    approve(vault.governance, approval)
    child = subprocess.run(
        [sys.executable, "-c", FORGET_CHILD, str(config_path), approval,
         "outcome-audited-before-v2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    again = RequestContext("local-admin", "forget-subject", new_request_id(), approval_id=approval)
    result = vault.forget("intl", "alice", again)
    [outcome] = forgotten_outcomes(vault, "alice")
    assert result.audit_index == outcome and result.key_id == record.key_id
    receipt = tmp_path / "receipt.note"
    receipt.write_text(result.receipt)
    checked = subprocess.run(
        [Path(sys.executable).parent / "shardvault", "receipt", "verify", str(receipt),
         "--key", vault.governance.cell("US").signer.verifier_key()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    valid, binding, destroy = checked.stderr.splitlines()
    assert valid.startswith("valid receipt: intl/alice forgotten")
    assert binding.startswith("warning: this is a version 1 receipt: it does not bind its subject")
    assert destroy.startswith("warning: the key's destroy is not attested by the custodian")


def test_a_forget_whose_outcome_commits_to_no_attestation_gives_a_receipt_as_before(
    vault: Vault, config_path: Path, tmp_path: Path
) -> None:
    """An outcome entry written before entries committed to the custodian's attestation:
    the run that finishes the forget gives a receipt of version 3, which verifies, with
    the custodian's key and without, as it did."""
    vault.register_subject("intl", "alice", "US")
    with pytest.raises(ApprovalRequired) as pending:
        vault.forget("intl", "alice")
    approval = pending.value.approval_id
    assert approval is not None
    approve(vault.governance, approval)
    child = subprocess.run(
        [sys.executable, "-c", FORGET_CHILD, str(config_path), approval,
         "outcome-audited-unattested"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    again = RequestContext("local-admin", "forget-subject", new_request_id(), approval_id=approval)
    result = vault.forget("intl", "alice", again)
    [outcome] = forgotten_outcomes(vault, "alice")
    details = vault.governance.cell("US").log.entry(outcome).details
    assert "subject_commitment" in details and "destroy_attestation" not in details
    receipt = tmp_path / "receipt.note"
    receipt.write_text(result.receipt)
    governance = vault.governance
    for custodian in ([], ["--custodian", governance.custodian_key.vkey()]):
        checked = subprocess.run(
            [Path(sys.executable).parent / "shardvault", "receipt", "verify", str(receipt),
             "--key", governance.cell("US").signer.verifier_key(), *custodian, "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout)["v"] == 3


def _attested_at(receipt: str) -> float:
    """The time of the destroy the custodian attests in RECEIPT (POSIX seconds)."""
    from shardvault.audit.note import SignedNote
    from shardvault.keys.attestation import parse_statement

    body = json.loads(SignedNote.parse(receipt.encode()).text)
    attestation = SignedNote.parse(body["destroy_attestation"].encode())
    return float(parse_statement(attestation.text).epoch())
