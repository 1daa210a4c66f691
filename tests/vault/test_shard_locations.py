"""Manifests keep where each packed shard went, so a reader need not scan the packs."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import make_deployment
from governance_support import forget_approved
from shardvault.config import load
from shardvault.manifest import Manifest
from shardvault.model import ObjectRef
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.packs import PackSet
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault, compaction_moves, gc

REFS = [ObjectRef("intl", "alice", f"notes/{i}") for i in range(20)]


def refuse(self: PackSet) -> None:
    raise AssertionError("scanned the packs")


def packed_shards(vault: Vault, ref: ObjectRef) -> list[bytes]:
    """The bytes of each packed shard of ref's current version, found by location."""
    cell = vault.cells["US"]
    record = cell.catalog.get_version(ref)
    assert record is not None and record.manifest is not None
    manifest = Manifest.from_bytes(record.manifest)
    found = []
    for index, node in enumerate(manifest.nodes):
        store = cell.store(node)
        assert isinstance(store, LocalDirShardStore)
        location = manifest.location(index)
        assert location is not None
        packed = store.packs.at(shard_name(manifest.object_id, manifest.version, index), location)
        assert packed is not None and packed.prefetched is not None
        found.append(packed.prefetched)
    return found


def read_without_scanning(config_path: Path, payloads: dict[ObjectRef, bytes]) -> None:
    """Read every object in a new vault (a new process's view), with scans refused."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PackSet, "refresh", refuse)
        with Vault.open(load(config_path)) as fresh:
            for ref, data in payloads.items():
                with fresh.open_read(ref) as reader:
                    assert reader.read_all() == data
                assert reader.damage == []


def test_a_new_process_reads_small_objects_without_scanning_any_pack(tmp_path: Path) -> None:
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

    read_without_scanning(config_path, payloads)


def test_after_gc_compacts_the_packs_a_new_process_still_reads_without_scanning(
    tmp_path: Path,
) -> None:
    # a compaction moves shards into the collector's pack; the manifests kept the old
    # locations, so after every gc each process reading a moved shard indexed the packs
    config_path = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    payloads = {ref: os.urandom(1000 + i) for i, ref in enumerate(REFS)}
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
    for start in range(0, len(REFS), 5):  # four processes' worth of packs, each left behind
        with Vault.open(load(config_path)) as writer:
            for ref in REFS[start : start + 5]:
                writer.put(ref, payloads[ref])
    with Vault.open(load(config_path)) as collector:
        collector.delete(REFS[0])
        report = collector.gc(grace_seconds=0)
        assert report.versions == 1 and report.moved == 19 * 6  # every live shard, each node

    del payloads[REFS[0]]
    read_without_scanning(config_path, payloads)


def test_forgetting_a_user_takes_their_packed_shards_without_scanning_any_pack(
    tmp_path: Path,
) -> None:
    # a forget found each shard it deleted by indexing every pack of the node: its
    # time and memory grew with everyone's objects, not the forgotten user's
    config_path = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    bob = [ObjectRef("intl", "bob", f"b/{i}") for i in range(3)]
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "bob", "US")
        for ref in [*REFS, *bob]:
            vault.put(ref, ref.key.encode() * 50)
        ciphertext = [shard for ref in bob for shard in packed_shards(vault, ref)]
    with pytest.MonkeyPatch.context() as patch, Vault.open(load(config_path)) as fresh:
        patch.setattr(PackSet, "refresh", refuse)
        assert forget_approved(fresh, "intl", "bob").shards_removed == 3 * 6
    packs = b"".join(p.read_bytes() for p in (tmp_path / "deploy").rglob("*.pack"))
    assert len(ciphertext) == 3 * 6 and not any(shard in packs for shard in ciphertext)
    read_without_scanning(config_path, {ref: ref.key.encode() * 50 for ref in REFS})


_COMPACTION_KILLED = """
import os, signal, sys
from pathlib import Path
from shardvault.nodes.localdir import LocalDirShardStore

def killed_after(owner, name, applies):
    real = getattr(owner, name)
    def call(*args, **kwargs):
        if applies(*args) and name == "unlink":
            os.kill(os.getpid(), signal.SIGKILL)  # before it: copies synced, old packs kept
        result = real(*args, **kwargs)
        if applies(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(owner, name, call)

if sys.argv[3] == "journal written":  # before any copy
    killed_after(os, "replace", lambda old, new, *rest: str(new).endswith("compact.journal"))
else:  # "copies synced": every live record copied, no old pack removed yet
    killed_after(Path, "unlink", lambda path, *rest: path.suffix == ".pack")
LocalDirShardStore(sys.argv[1], Path(sys.argv[2])).compact()
"""


@pytest.mark.parametrize("step", ["journal written", "copies synced"])
@pytest.mark.parametrize("collector", ["forget", "gc"])
def test_a_delete_that_finds_a_killed_compaction_leaves_every_location_right(
    tmp_path: Path, step: str, collector: str
) -> None:
    # a delete (a forget's, gc's) that found a dead compaction's journal settled it: it
    # folded the old packs, moving the live shards in them, and told no manifest, so
    # every process reading one of them indexed the node's packs, for good (the copies'
    # pack was never compacted again); a compaction settling one told no manifest of the
    # copies the dead one had made
    config_path = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    bob = [ObjectRef("intl", "bob", f"b/{i}") for i in range(4)]
    payloads = {ref: os.urandom(1000 + i) for i, ref in enumerate(REFS[:8])}
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "bob", "US")
    for start in range(0, 8, 2):  # four processes' packs, each holding both subjects' shards
        with Vault.open(load(config_path)) as writer:
            for ref in [*REFS[start : start + 2], bob[start // 2]]:
                writer.put(ref, payloads.get(ref, b"bob's" * 200))
    with Vault.open(load(config_path)) as vault:
        node = vault.cells["US"].nodes[0]
        ciphertext = packed_shards(vault, bob[0])
    killed = subprocess.run(
        [sys.executable, "-c", _COMPACTION_KILLED, node.id, node.location, step], check=False
    )
    assert killed.returncode == -9
    packs = Path(node.location) / "packs"
    assert (packs / "compact.journal").exists()
    with Vault.open(load(config_path)) as vault:
        if collector == "forget":
            assert forget_approved(vault, "intl", "bob").shards_removed == 4 * 6
        else:
            for ref in bob:
                vault.delete(ref)
            assert vault.gc(grace_seconds=0).versions == 4
    assert not any(s in p.read_bytes() for p in packs.glob("*.pack") for s in ciphertext)
    read_without_scanning(config_path, payloads)  # by every manifest's location
    with Vault.open(load(config_path)) as vault:
        vault.gc(grace_seconds=0)  # settles the journal, if still there, and compacts
    assert not (packs / "compact.journal").exists()
    read_without_scanning(config_path, payloads)


def test_gc_lets_go_of_each_nodes_index_when_done_with_it(tmp_path: Path) -> None:
    # gc indexed every pack of every node and kept it all: about 2 KB a small object
    config_path = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    with Vault.open(load(config_path)) as live, Vault.open(load(config_path)) as collector:
        live.register_subject("intl", "alice", "US")
        for ref in REFS:  # into packs the live writer holds: not compacted, but indexed
            live.put(ref, ref.key.encode())
        collector.delete(REFS[0])
        assert collector.gc(grace_seconds=0).versions == 1
        for node in collector.cells["US"].nodes:
            packs = collector.cells["US"].store(node.id).packs  # type: ignore[attr-defined]
            assert {found.pack for found in packs._index.values()} <= {packs._active}
            assert packs.locate(shard_name(b"\0" * 16, 1, 0)) is None  # it can look again
        assert collector.get(REFS[1]) == REFS[1].key.encode()


def test_counting_shards_per_node_keeps_one_nodes_index_at_a_time(tmp_path: Path) -> None:
    # `shardvault nodes` indexed every pack of every node and kept them all (250 MiB
    # at 100,000 objects, a scale probe)
    config_path = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        for ref in REFS:
            vault.put(ref, ref.key.encode())
    with Vault.open(load(config_path)) as fresh:
        counts = {u.node.id: u.shards for u in fresh.node_usage()}
        assert [counts[node.id] for node in fresh.cells["US"].nodes] == [len(REFS)] * 6
        for node in fresh.cells["US"].nodes:
            assert fresh.cells["US"].store(node.id).packs._index == {}  # type: ignore[attr-defined]


def test_counting_shards_leaves_the_pack_a_writer_appends_to(tmp_path: Path) -> None:
    # counting retired each node's pack: a process polling node usage between puts
    # made a new pack per node per poll, and kept a descriptor of each (found in review)
    config_path = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        for ref in REFS[:5]:
            vault.put(ref, ref.key.encode())
            vault.node_usage()
    packs = sorted((tmp_path / "deploy").rglob("*.pack"))
    assert len(packs) == 6  # one per node of the cell


def test_gc_holds_moves_on_disk_and_gives_them_back_a_version_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # held in a dict they took about 0.5 KB each: 222 MiB for a gc folding 50,000
    # small objects' packs; each version must still be rewritten once, all nodes at once
    monkeypatch.setattr(compaction_moves, "_RELOCATE_BATCH", 2)
    ids = [bytes([i]) * 16 for i in (5, 1, 3)]
    with contextlib.closing(compaction_moves.CompactionMoves()) as moves:
        for node, index in (("us-n1", 0), ("us-n2", 1)):
            moves.add(node, {shard_name(i, 1, index): f"{node}:{i[0]}" for i in ids})
        moves.add("us-n3", {shard_name(ids[0], 2, 4): "p:9", shard_name(ids[0], 2, 4, 2): "q:9"})
        batches = list(moves.by_version())
        assert moves.count == 8
    assert batches == [
        {(ids[1], 1): {(0, 0, "us-n1"): "us-n1:1", (1, 0, "us-n2"): "us-n2:1"},
         (ids[2], 1): {(0, 0, "us-n1"): "us-n1:3", (1, 0, "us-n2"): "us-n2:3"}},
        {(ids[0], 1): {(0, 0, "us-n1"): "us-n1:5", (1, 0, "us-n2"): "us-n2:5"},
         (ids[0], 2): {(4, 0, "us-n3"): "p:9", (4, 2, "us-n3"): "q:9"}},
    ]  # fmt: skip


class _SmallCaches:
    """sqlite3 for gc, but every database it opens keeps 10 pages in memory: its moves
    spill to disk after a few hundred, not after tens of thousands."""

    def __getattr__(self, name: str) -> Any:
        return getattr(sqlite3, name)

    def connect(self, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = sqlite3.connect(*args, **kwargs)
        db.execute("PRAGMA cache_size=10")
        return db


def _open_files() -> set[str]:
    """What this process's descriptors point at (an unlinked file ends in "(deleted)")."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def test_gc_keeps_where_it_moved_shards_in_the_cells_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the moves waited in SQLite's private temporary database, which it writes to the
    # system's directory (/var/tmp) once past its cache: the object ids, versions,
    # nodes and packs of a cell's shards outside the cell (100,000 moves went there)
    config_path = make_deployment(tmp_path / "deploy", pack_limit=64 << 10)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
    for start in range(0, 300, 150):  # two processes' packs on each node: worth folding
        with Vault.open(load(config_path)) as writer:
            for number in range(start, start + 150):
                writer.put(ObjectRef("intl", "alice", f"notes/{number}"), b"x")
    monkeypatch.setattr(compaction_moves, "sqlite3", _SmallCaches())
    opened: set[str] = set()
    relocate = gc.relocate

    def noting(cell: Any, moves: Any) -> None:
        opened.update(_open_files() - before)  # while the moves are all held
        relocate(cell, moves)

    monkeypatch.setattr(gc, "relocate", noting)
    with Vault.open(load(config_path)) as vault:
        before = _open_files()
        assert vault.gc(grace_seconds=0).moved == 300 * 6
    deployment = str(tmp_path / "deploy") + os.sep
    assert opened and not {path for path in opened if not path.startswith(deployment)}
    assert not list((tmp_path / "deploy" / "state" / "cells" / "US").glob(".gc-*"))
