"""The vault over packed nodes (the demo's default): small shards appended to pack files.

The rest of tests/vault runs with one file per shard so damage can be done by
path; here the same promises are checked with shards inside packs: round
trips, reads around damaged or missing packs, residency, forget and gc, and a
kill -9 in the middle of a put.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SEGMENT, Flushes, make_deployment, manifest_of
from governance_support import forget_approved
from shardvault.cli.app import main
from shardvault.config import load
from shardvault.errors import IntegrityError, StorageError
from shardvault.group_commit import GroupSync
from shardvault.model import ObjectRef
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.pack_records import PackedShard
from shardvault.nodes.packs import PackSet
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault

PACK_LIMIT = 64 << 10


@pytest.fixture
def packed_config(tmp_path: Path) -> Path:
    return make_deployment(tmp_path / "deploy", pack_limit=PACK_LIMIT)


@pytest.fixture
def packed(packed_config: Path) -> Iterator[Vault]:
    vault = Vault.open(load(packed_config))
    vault.register_subject("intl", "alice", "US")
    vault.register_subject("intl", "bao", "SG")
    yield vault
    vault.close()


def packs_of(vault: Vault, ref: ObjectRef) -> list[Path]:
    """The pack directory of each node holding a shard of ref, by shard index."""
    manifest = manifest_of(vault, ref)
    cell = vault.cells[vault.subject(ref.tenant, ref.subject).jurisdiction]
    dirs = []
    for node in manifest.nodes:
        store = cell.store(node)
        assert isinstance(store, LocalDirShardStore)
        dirs.append(store.packs.directory)
    return dirs


@pytest.mark.parametrize("size", [0, 1, 1000, SEGMENT, 3 * SEGMENT + 7])
def test_round_trip_with_every_shard_in_a_pack(packed: Vault, size: int) -> None:
    ref = ObjectRef("intl", "alice", f"obj/{size}")
    data = os.urandom(size)
    packed.put(ref, data)
    assert packed.get(ref) == data
    root = Path(packed.config.nodes[0].location).parent.parent
    assert not [p for p in root.rglob("shards/*/*/*") if p.is_file()]  # nothing outside packs


def test_damage_inside_a_pack_is_read_around_and_reported(packed: Vault) -> None:
    ref = ObjectRef("intl", "alice", "damaged")
    data = os.urandom(20_000)
    packed.put(ref, data)
    manifest = manifest_of(packed, ref)
    cell = packed.cells["US"]
    store = cell.store(manifest.nodes[0])
    assert isinstance(store, LocalDirShardStore)
    located = store.packs.locate(shard_name(manifest.object_id, manifest.version, 0))
    assert located is not None
    pack = store.packs.directory / located.pack
    raw = bytearray(pack.read_bytes())
    raw[located.offset + located.length - 10] ^= 0x40  # inside shard 0's block
    pack.write_bytes(bytes(raw))
    with packed.open_read(ref) as reader:
        assert reader.read_all() == data
    assert [(d.index, d.reason) for d in reader.damage] == [(0, "hash mismatch")]


def test_losing_m_packs_loses_nothing_and_more_is_an_integrity_error(packed: Vault) -> None:
    ref = ObjectRef("intl", "alice", "lossy")
    data = os.urandom(5000)
    packed.put(ref, data)
    dirs = packs_of(packed, ref)
    m = packed.code.m
    for directory in dirs[:m]:
        for pack in directory.glob("*.pack"):
            pack.unlink()
    fresh = Vault.open(packed.config)  # a process that never saw those packs
    try:
        assert fresh.get(ref) == data
        for pack in dirs[m].glob("*.pack"):
            pack.unlink()
        again = Vault.open(packed.config)
        try:
            with pytest.raises(IntegrityError, match="segment 0"):
                again.get(ref)
        finally:
            again.close()
    finally:
        fresh.close()


def test_packs_stay_in_the_home_jurisdiction(packed: Vault) -> None:
    packed.put(ObjectRef("intl", "alice", "a"), b"alice's")
    packed.put(ObjectRef("intl", "bao", "b"), b"bao's")
    root = Path(packed.config.nodes[0].location).parents[1]
    by_cell = {
        cell: sorted(p for p in (root / cell).rglob("*.pack") if p.stat().st_size > 8)
        for cell in ("US", "SG", "EU")
    }
    assert len(by_cell["US"]) == 6 and len(by_cell["SG"]) == 6 and by_cell["EU"] == []


def test_a_pack_removed_under_a_live_vault_fails_one_put_not_a_shard_of_each(
    packed: Vault, packed_config: Path
) -> None:
    """The vault kept appending to the node's unlinked pack: every later put was
    acknowledged with that node's shard in a file no other process, nor this one
    restarted, would see. The put that finds it fails, naming the node; the next
    goes to a new pack."""
    packed.put(ObjectRef("intl", "alice", "before"), os.urandom(3000))
    store = packed.cells["US"].store(packed.cells["US"].nodes[0].id)
    assert isinstance(store, LocalDirShardStore)
    for pack in store.packs.directory.glob("*.pack"):
        pack.unlink()  # an operator's mistaken rm
    with pytest.raises(StorageError, match=f"node {store.node_id}: pack .* removed"):
        packed.put(ObjectRef("intl", "alice", "found it"), os.urandom(3000))
    acknowledged = {ObjectRef("intl", "alice", f"after/{i}"): os.urandom(3000) for i in range(2)}
    for ref, data in acknowledged.items():
        packed.put(ref, data)
    with Vault.open(load(packed_config)) as fresh:
        for ref, data in acknowledged.items():
            manifest = manifest_of(fresh, ref)
            index = manifest.nodes.index(store.node_id)
            name = shard_name(manifest.object_id, manifest.version, index)
            fresh.cells["US"].store(store.node_id).open_reader(name).close()  # not NotFound
            with fresh.open_read(ref) as reader:
                assert reader.read_all() == data
            assert reader.damage == []


@pytest.mark.parametrize("size", [3000, 3 * SEGMENT], ids=["one segment", "three segments"])
def test_packs_removed_on_several_nodes_fail_one_put_naming_each(packed: Vault, size: int) -> None:
    """One incident (a cleanup run over several nodes' directories) cost a failed put
    per node: the put stopped at the first node found, and left the others' packs
    in place for the next puts to find one by one."""
    packed.put(ObjectRef("intl", "alice", "before"), os.urandom(size))
    cell = packed.cells["US"]
    cut = [node.id for node in cell.nodes[:3]]
    for node in cut:
        store = cell.store(node)
        assert isinstance(store, LocalDirShardStore)
        for pack in store.packs.directory.glob("*.pack"):
            pack.unlink()
    with pytest.raises(StorageError) as failed:
        packed.put(ObjectRef("intl", "alice", "found them"), os.urandom(size))
    said = str(failed.value)
    assert sorted(re.findall(r"node (\S+): pack \S+ was removed", said)) == cut
    assert "\n" not in said
    assert said.count("shardvault repair --scrub") == 1, said  # said once, not per node
    assert said.endswith("and run 'shardvault repair --scrub' for what they held"), said
    after = ObjectRef("intl", "alice", "after")
    data = os.urandom(size)
    packed.put(after, data)  # every node writes to a new pack
    assert packed.get(after) == data


@pytest.mark.parametrize("size", [3000, 3 * SEGMENT], ids=["one segment", "three segments"])
def test_directories_made_again_on_two_nodes_fail_a_put_naming_each_advice_once(
    packed: Vault, size: int
) -> None:
    """Two nodes' disks unmounted under the process (their shards/ and packs/ made again
    on the mount points): the put that needs a new pack names both, and says to reopen
    the vault once, as a put naming packs lost on several nodes says to scrub once. It
    named only the first, the other found by the next put."""
    packed.put(ObjectRef("intl", "alice", "before"), os.urandom(size))
    cell = packed.cells["US"]
    unmounted = sorted(node.id for node in cell.nodes[:2])
    for node in unmounted:
        store = cell.store(node)
        assert isinstance(store, LocalDirShardStore)
        for kept in (store.shard_dir, store.packs.directory):
            kept.rename(kept.with_name(f"{kept.name}.aside"))
            kept.mkdir()
    with pytest.raises(StorageError, match="repair --scrub"):  # the packs it was writing
        packed.put(ObjectRef("intl", "alice", "found the packs gone"), os.urandom(size))
    with pytest.raises(StorageError) as failed:
        packed.put(ObjectRef("intl", "alice", "found the directories"), os.urandom(size))
    said = str(failed.value)
    named = re.findall(r"node (\S+): \S+ is not the directory this process opened", said)
    assert sorted(named) == unmounted, said
    assert "\n" not in said
    assert said.count("reopen the vault") == 1, said
    assert said.endswith("reopen the vault once the nodes' own directories are back"), said


def test_the_cli_says_packs_removed_on_two_nodes_in_one_line_with_its_advice_once(
    packed_config: Path,
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each node's message carried the same call to retry and scrub, said once per node."""
    command = ["--config", str(packed_config)]
    assert main([*command, "subject", "add", "intl", "alice", "-j", "US"]) == 0
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(3000))
    cut = sorted(node.id for node in load(packed_config).nodes_in("US")[:2])
    confirm, gone = PackSet.confirm, set()

    def removed_first(packs: PackSet, located: PackedShard) -> None:
        if packs.node_id in cut and packs.node_id not in gone:  # a cleanup, mid-put
            gone.add(packs.node_id)
            for pack in packs.directory.glob("*.pack"):
                pack.unlink()
        confirm(packs, located)

    monkeypatch.setattr(PackSet, "confirm", removed_first)
    capsysbinary.readouterr()
    assert main([*command, "put", "intl", "alice", "k", str(source)]) == 1
    err = capsysbinary.readouterr().err.decode()
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: node ")
    assert sorted(re.findall(r"node (\S+): pack \S+ was removed", line)) == cut
    assert line.count("shardvault repair --scrub") == 1, line


def shard_tails(vault: Vault, ref: ObjectRef) -> list[bytes]:
    """The last 32 bytes of each of the version's shards, as stored."""
    manifest = manifest_of(vault, ref)
    cell = vault.cells[vault.subject(ref.tenant, ref.subject).jurisdiction]
    tails = []
    for index, node in enumerate(manifest.nodes):
        reader = cell.store(node).open_reader(
            shard_name(manifest.object_id, manifest.version, index)
        )
        tails.append(reader.read_at(40, 1 << 16)[-32:])
    return tails


def packed_bytes(config: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (config.parent / "nodes").rglob("*.pack"))


def test_forget_removes_the_packed_bytes_at_once(packed_config: Path) -> None:
    # the packs are live and shared with another user: compaction would not touch them,
    # so forget's "shards removed" (and its signed receipt) used to be untrue
    vault = Vault.open(load(packed_config))
    vault.register_subject("intl", "alice", "US")
    vault.register_subject("intl", "carol", "US")
    ref, kept = ObjectRef("intl", "alice", "secret"), ObjectRef("intl", "carol", "kept")
    vault.put(kept, b"carol before")
    vault.put(ref, os.urandom(3000))
    vault.put(kept, b"carol after")
    tails = shard_tails(vault, ref)
    assert all(tail in packed_bytes(packed_config) for tail in tails)
    result = forget_approved(vault, "intl", "alice")  # forget needs a k-of-n approval
    assert result.shards_removed == 6
    assert not any(tail in packed_bytes(packed_config) for tail in tails)
    assert vault.get(kept) == b"carol after"
    assert vault.get(kept, 1) == b"carol before"
    vault.close()
    with Vault.open(load(packed_config)) as again:  # a fresh scan steps over the zeroed records
        assert again.get(kept) == b"carol after"


def test_rm_then_gc_removes_the_packed_bytes(packed: Vault, packed_config: Path) -> None:
    ref = ObjectRef("intl", "alice", "old")
    packed.put(ref, os.urandom(2000))
    tails = shard_tails(packed, ref)
    packed.put(ref, b"new")
    packed.delete(ref, 1)
    assert packed.gc(grace_seconds=0).shards == 6
    assert not any(tail in packed_bytes(packed_config) for tail in tails)
    assert packed.get(ref) == b"new"


CHILD = r"""
import io, os, signal, sys
from pathlib import Path
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.vault import Vault

def on_step(name):
    if name == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)

vault = Vault.open(load(Path(sys.argv[1])), on_step=on_step)
data = b"new" * 1000
source = io.BytesIO(data) if sys.argv[3] == "stream" else data
vault.put(ObjectRef("intl", "alice", "target"), source)
"""


@pytest.mark.parametrize(
    ("source", "step"),
    [
        # a stream reserves its version first; bytes of one segment do not
        ("stream", "reserved"),
        ("stream", "shards-written"),
        ("stream", "shards-committed"),
        ("bytes", "segment-written"),
        ("bytes", "shards-written"),
        ("bytes", "shards-committed"),
    ],
)
def test_kill_9_mid_put_leaves_the_old_version_and_gc_collects_the_rest(
    packed_config: Path, source: str, step: str
) -> None:
    vault = Vault.open(load(packed_config))
    vault.register_subject("intl", "alice", "US")
    ref = ObjectRef("intl", "alice", "target")
    vault.put(ref, b"old" * 1000)
    vault.close()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(packed_config), step, source], check=False
    )
    assert child.returncode == -signal.SIGKILL
    after = Vault.open(load(packed_config))

    def names() -> set[str]:
        return {
            name
            for cell in after.cells.values()
            for s in cell.stores.values()
            for name in s.names()
        }

    try:
        assert after.get(ref) == b"old" * 1000
        left = names()
        after.gc(grace_seconds=3600)  # the dead put's shards could be a live put's: kept
        assert names() == left
        after.gc(grace_seconds=0)
        live = manifest_of(after, ref)
        assert names() == {shard_name(live.object_id, live.version, i) for i in range(6)}
        assert after.get(ref) == b"old" * 1000
    finally:
        after.close()


def test_gc_skips_a_node_where_a_flush_its_own_deletes_needed_failed(
    packed: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc's sync waited for the node's latest write: a flush that failed after its first
    delete (led by another caller on the disk) was hidden by the next one, which
    succeeded, and gc went on as if the delete were durable (it compacted the node and
    reported it swept). The failing flush is a stand-in for a disk's write-back error."""
    cell = packed.cells["US"]
    node = cell.nodes[0].id
    store = cell.store(node)
    assert isinstance(store, LocalDirShardStore)
    flush = Flushes()
    group = GroupSync(flush, "test")
    store.packs.group = group
    orphans = [shard_name(bytes([i]) * 16, 1, 0) for i in (3, 4)]
    for name in orphans:  # what puts killed before their commit leave
        writer = store.open_writer(name)
        writer.write(b"orphan")
        writer.commit()
    real_delete = store.delete

    def delete(name: str, location: str | None = None) -> bool:
        deleted = real_delete(name, location)
        if name == orphans[0]:  # another caller's flush then fails: this delete may be lost
            flush.fail_next = True
            with pytest.raises(StorageError):
                group.sync()
        return deleted

    monkeypatch.setattr(store, "delete", delete)
    compacted: list[str] = []
    monkeypatch.setattr(store, "compact", lambda: compacted.append(node) or {})
    report = packed.gc(grace_seconds=0)
    assert node in report.skipped_nodes
    assert compacted == [], "gc went on with the node as if its deletes were durable"
