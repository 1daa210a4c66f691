"""One node that cannot be opened, or that the config no longer lists, does not stop the vault."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from conftest import make_deployment, manifest_of
from governance_support import forget_approved
from shardvault import group_commit
from shardvault.catalog.port import Catalog
from shardvault.catalog.sqlite import SqliteCatalog
from shardvault.config import Config, load
from shardvault.errors import (
    IntegrityError,
    NewerFormat,
    NotFound,
    StorageError,
    SubjectForgotten,
    TooFewNodes,
)
from shardvault.governance.receipts import verify_receipt
from shardvault.model import ObjectRef
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.vault import Vault
from shardvault.vault import cells as cells_module

SPARE = """
[[nodes]]
id = "{node}"
jurisdiction = "US"
facility = "{facility}"
backend = "local"
pack_limit = 0
path = "nodes/US/{node}"
"""


def break_node(config: Config, node_id: str) -> None:
    """Replace the node's directory by a file, as a failed mount or a slip of rm would."""
    location = Path(config.node(node_id).location)
    shutil.rmtree(location)
    location.write_bytes(b"not a directory")


def reopen(config_path: Path) -> Vault:
    return Vault.open(load(config_path))


def test_reads_go_around_a_node_whose_directory_is_broken(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    data = os.urandom(100_000)
    vault.put(alice, data)
    first = manifest_of(vault, alice).nodes[0]  # a data shard: the reader needs it first
    vault.close()
    break_node(load(config_path), first)
    with reopen(config_path) as again:
        with again.open_read(alice) as reader:
            assert reader.read_all() == data
        assert [(d.segment, d.node, d.index) for d in reader.damage] == [
            (0, first, 0),
            (1, first, 0),
        ]
        reason = reader.damage[0].reason
        assert reason.startswith(f"unreadable: node {first} is unavailable: opening ")
        assert reason.endswith("failed: Not a directory")
        usage = {u.node.id: u for u in again.node_usage()}
        assert usage[first].unavailable.endswith("failed: Not a directory")
        assert (usage[first].shards, usage[first].bytes_used) == (0, 0)
        assert all(not u.unavailable for node, u in usage.items() if node != first)
        # every put in the US cell needs all six of its nodes: refused, naming the node
        with pytest.raises(TooFewNodes, match=f"5 active nodes of 6.*unavailable: {first} "):
            again.put(ObjectRef("intl", "alice", "new"), b"x")
        assert again.get(alice) == data  # the refused put changed nothing


def test_puts_go_around_a_broken_node_while_the_cell_has_enough_others(tmp_path: Path) -> None:
    # a put placed on it failed: with one disk of a larger cell gone, every put whose
    # stripe ranked that node was refused, though enough other nodes were there
    def spare(text: str) -> str:
        return text + SPARE.format(node="us-n7", facility="us-fac-1")

    config_path = make_deployment(tmp_path / "deploy", edit=spare)
    (tmp_path / "deploy" / "nodes" / "US" / "us-n7").mkdir()
    break_node(load(config_path), "us-n2")
    with reopen(config_path) as vault:
        vault.register_subject("intl", "alice", "US")
        refs = [ObjectRef("intl", "alice", f"k{i}") for i in range(12)]
        for ref in refs:
            vault.put(ref, ref.key.encode())
        for ref in refs:
            assert "us-n2" not in manifest_of(vault, ref).nodes
            assert vault.get(ref) == ref.key.encode()


def test_a_put_of_file_shards_fails_on_nodes_whose_directories_were_made_again(
    vault: Vault, alice: ObjectRef
) -> None:
    """Disks unmounted under the process, each node's shards/ made again on its mount
    point: a put of shards too large for packs renamed them in there and was
    acknowledged, its shards hidden once the disks were back. It fails now, naming each
    node and saying what to do once, and leaves no shard, nor any version."""
    cell = vault.cells["US"]
    made_again = sorted(node.id for node in cell.nodes[:2])
    for node in made_again:
        store = cell.store(node)
        assert isinstance(store, LocalDirShardStore)
        store.shard_dir.rename(store.shard_dir.with_name("shards.aside"))
        store.shard_dir.mkdir()
    data = os.urandom(100_000)
    with pytest.raises(StorageError) as failed:
        vault.put(alice, data)
    said = str(failed.value)
    named = re.findall(r"node (\S+): \S+ is not the directory this process opened", said)
    assert sorted(named) == made_again, said
    assert said.endswith("reopen the vault once the nodes' own directories are back"), said
    nodes = Path(vault.config.nodes[0].location).parent.parent
    left = [p for p in nodes.rglob("*") if p.is_file() and p.name != "NODE"]  # its marker
    assert left == []  # no shard, no temporary
    with pytest.raises(NotFound):
        vault.get(alice)
    for node in made_again:  # the disks back
        store = cell.store(node)
        assert isinstance(store, LocalDirShardStore)
        store.shard_dir.rmdir()
        store.shard_dir.with_name("shards.aside").rename(store.shard_dir)
    vault.put(alice, data)
    assert vault.get(alice) == data


def test_gc_skips_a_broken_node_and_says_so(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    vault.put(alice, b"old")
    vault.put(alice, b"new")
    vault.delete(alice, 1)
    node = manifest_of(vault, alice).nodes[1]
    vault.close()
    config = load(config_path)
    location = Path(config.node(node).location)
    aside = location.with_name("aside")
    location.rename(aside)
    location.write_bytes(b"")
    with reopen(config_path) as again:
        report = again.gc(grace_seconds=0)
        assert report.skipped_nodes == (node,)
        assert (report.versions, report.shards) == (1, 5)  # every node but the broken one
    location.unlink()
    aside.rename(location)
    with reopen(config_path) as again:
        report = again.gc(grace_seconds=0)
        assert (report.skipped_nodes, report.orphans) == ((), 1)  # the one it could not reach
        assert again.get(alice) == b"new"


def test_a_node_dropped_from_the_config_reads_as_lost(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    data = os.urandom(5000)
    vault.put(alice, data)
    dropped = manifest_of(vault, alice).nodes[2]
    vault.close()
    text = config_path.read_text()
    start = text.index(f'id = "{dropped}"')
    block_start = text.rindex("[[nodes]]", 0, start)
    block_end = text.find("[[nodes]]", start)
    config_path.write_text(text[:block_start] + text[block_end:])
    with reopen(config_path) as again:
        with again.open_read(alice) as reader:
            assert reader.read_all() == data
        assert [(d.node, d.reason) for d in reader.damage] == [
            (dropped, f"unreadable: node {dropped} is unavailable: it is not in the configuration")
        ]
        where = {(s.segment, s.index): s for s in again.where(alice)}
        assert (where[0, 2].node, where[0, 2].jurisdiction, where[0, 2].facility) == (
            dropped,
            "US",
            "unknown",
        )
        assert where[0, 0].facility.startswith("us-fac-")


@pytest.mark.parametrize("pack_limit", [0, 1 << 20], ids=["files", "packs"])
def test_a_deployment_removed_while_the_process_lives_does_not_stop_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pack_limit: int
) -> None:
    """A library user's temporary deployment, closed and deleted, then another on the same
    disk: the second one's writes must not try to sync through the first one's directories."""
    monkeypatch.setattr(group_commit, "_devices", {})  # as in a new process
    ref = ObjectRef("intl", "alice", "k")
    for name in ("first", "second"):
        with reopen(make_deployment(tmp_path / name, pack_limit=pack_limit)) as vault:
            vault.register_subject("intl", "alice", "US")
            vault.put(ref, b"kept")
            assert vault.get(ref) == b"kept"
        shutil.rmtree(tmp_path / name)


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_lost_catalog_is_not_made_anew_where_subjects_live(
    vault: Vault, alice: ObjectRef, config_path: Path, how: str
) -> None:
    # a blank catalog was made in its place: every subject of the cell "not registered",
    # and gc then took every shard on its nodes for an orphan
    vault.put(alice, os.urandom(3000))
    vault.close()
    catalog = load(config_path).state_dir / "cells" / "US" / "catalog.sqlite"
    if how == "deleted":
        for path in catalog.parent.glob("catalog.sqlite*"):
            path.unlink()
    else:
        catalog.write_bytes(b"")
    with reopen(config_path) as again:  # refused by every request that needs the cell
        with pytest.raises(StorageError, match="missing or empty, though subjects live in cell US"):
            again.get(alice)
        with pytest.raises(StorageError, match="missing or empty, though subjects live in cell US"):
            again.gc(0)
    nodes = load(config_path).state_dir.parent / "nodes" / "US"
    shards = [p for p in nodes.rglob("*") if p.is_file() and p.name != "NODE"]
    assert len(shards) == 6  # still there, for the catalog restored from a backup


def test_a_cell_with_no_subject_yet_gets_a_new_catalog(config_path: Path) -> None:
    """A jurisdiction added to a deployment, or one never used, starts blank."""
    with reopen(config_path) as vault:
        vault.register_subject("intl", "alice", "US")
    catalog = load(config_path).state_dir / "cells" / "SG" / "catalog.sqlite"
    for path in catalog.parent.glob("catalog.sqlite*"):
        path.unlink()
    with reopen(config_path) as vault:
        vault.register_subject("intl", "sook", "SG")
        assert vault.subject("intl", "sook").jurisdiction == "SG"


def _damaged(path: Path) -> None:
    path.write_bytes(b"not a database" * 300)


def _newer(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    db.close()


BROKEN: dict[str, tuple[Callable[[Path], None], type[Exception], str]] = {
    "damaged": (_damaged, IntegrityError, "is damaged"),
    "newer": (_newer, NewerFormat, "upgrade shardvault"),
}


def _bob_in_sg(vault: Vault, alice: ObjectRef, config_path: Path) -> tuple[ObjectRef, Path]:
    """Bob homed in SG and alice in US, an object each; the vault closed and SG's catalog
    checkpointed into its one file: (bob's object, SG's catalog)."""
    vault.register_subject("intl", "bob", "SG")
    bob = ObjectRef("intl", "bob", "sg")
    vault.put(bob, b"sg")
    vault.put(alice, b"us")
    vault.close()
    catalog = load(config_path).state_dir / "cells" / "SG" / "catalog.sqlite"
    with sqlite3.connect(catalog) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return bob, catalog


@pytest.mark.parametrize(("break_catalog", "error", "says"), BROKEN.values(), ids=BROKEN.keys())
def test_a_cell_whose_catalog_cannot_be_opened_stops_only_the_requests_that_need_it(
    vault: Vault,
    alice: ObjectRef,
    config_path: Path,
    break_catalog: Callable[[Path], None],
    error: type[Exception],
    says: str,
) -> None:
    # opening the vault opened every cell's catalog: one cell's damaged (or newer) catalog
    # refused every request of every cell
    bob, catalog = _bob_in_sg(vault, alice, config_path)
    break_catalog(catalog)
    named = f"catalog {catalog} .*{says}"
    with reopen(config_path) as again:
        assert again.get(alice) == b"us"
        again.put(ObjectRef("intl", "alice", "new"), b"new")
        assert again.stat(ObjectRef("intl", "alice", "new")).size == 3
        assert [o.ref.key for o in again.list("intl", "alice").items] == ["new", alice.key]
        assert [o.version for o in again.versions(alice)] == [1]
        assert {s.jurisdiction for s in again.where(alice)} == {"US"}
        assert again.delete(ObjectRef("intl", "alice", "new")) == 1
        again.register_subject("intl", "carol", "US")
        assert {u.node.jurisdiction for u in again.node_usage()} == {"US", "SG", "EU"}
        for needs_sg in (
            lambda: again.get(bob),
            lambda: again.gc(0),
            again.repair,
            again.crowding,
        ):
            with pytest.raises(error, match=named):
                needs_sg()
    with reopen(config_path) as again:  # nor did gc collect the deleted version
        assert len(again.cells["US"].catalog.known_object_ids()) == 2  # "new" not purged


@pytest.mark.parametrize(("break_catalog", "error", "says"), BROKEN.values(), ids=BROKEN.keys())
def test_a_forget_needs_no_other_cells_catalog(
    vault: Vault,
    alice: ObjectRef,
    config_path: Path,
    break_catalog: Callable[[Path], None],
    error: type[Exception],
    says: str,
) -> None:
    # a forget opened every cell's catalog first: a US subject's forget was refused while
    # the SG cell's catalog was damaged or of a newer schema, though it needs none of it
    bob, catalog = _bob_in_sg(vault, alice, config_path)
    break_catalog(catalog)
    with reopen(config_path) as again:
        done = forget_approved(again, "intl", "alice")
        assert (done.jurisdiction, done.versions_deleted) == ("US", 1)
        key = again.governance.cell("US").signer.verifier_key()
        assert verify_receipt(done.receipt.encode(), key)["key_id"] == done.key_id
        with pytest.raises(SubjectForgotten):
            again.get(alice)
        with pytest.raises(error, match=f"catalog {catalog} .*{says}"):  # still as it was
            again.get(bob)


def _in_call(thread: threading.Thread, code: object) -> bool:
    """Whether THREAD is (blocked) in a call of the function whose code is CODE."""
    frame: FrameType | None = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def test_a_cell_opened_by_two_threads_at_once_is_opened_once(config_path: Path) -> None:
    # (the vault is thread-safe: a cell's catalog is opened on first use, under a lock)
    with reopen(config_path) as vault:
        vault.register_subject("intl", "bob", "SG")
        bob = ObjectRef("intl", "bob", "sg")
        vault.put(bob, b"sg")
    factory = cells_module.sqlite_catalogs(load(config_path).state_dir)
    opened: list[str] = []
    armed, entered, release = threading.Event(), threading.Event(), threading.Event()

    def catalogs(code: str) -> Catalog:
        opened.append(code)
        if code == "SG" and armed.is_set():
            entered.set()
            release.wait(30)
        return factory(code)

    with Vault.open(load(config_path), catalogs=catalogs) as vault:
        assert opened == []  # none until a request needs it
        armed.set()
        got: list[bytes] = []
        first = threading.Thread(target=lambda: got.append(vault.get(bob)))
        second = threading.Thread(target=lambda: got.append(vault.get(bob)))
        first.start()
        assert entered.wait(10)
        second.start()
        opening = cells_module.CatalogOpening.catalog.__code__
        while opened.count("SG") < 2 and not _in_call(second, opening):
            time.sleep(0.01)
        release.set()
        first.join(10)
        second.join(10)
        assert got == [b"sg", b"sg"]
        assert opened == ["SG"]
        with pytest.raises(NotFound):
            vault.stat(ObjectRef("intl", "bob", "none"))
        assert opened == ["SG"]


def test_a_catalog_whose_stat_fails_is_a_storage_error_naming_it(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    # only a missing file was caught when a lazily opened catalog was looked at: any other
    # failure of its stat (a symlink loop here; ENOTCONN on a dead mount) left the library
    # as a bare OSError, which no caller of the vault expects
    bob, catalog = _bob_in_sg(vault, alice, config_path)
    for path in catalog.parent.glob("catalog.sqlite*"):
        path.unlink()
    catalog.symlink_to(catalog.name)  # its stat: ELOOP
    with reopen(config_path) as again:
        assert again.get(alice) == b"us"
        with pytest.raises(StorageError, match=f"catalog {catalog}: .*symbolic links"):
            again.get(bob)


def test_a_catalog_another_process_makes_meanwhile_is_not_taken_for_lost(
    tmp_path: Path,
) -> None:
    """Two processes on a cell nobody used yet: one found no catalog, then the directory
    homing a subject there, whom the other registered in between (it makes the catalog
    before the home), and refused the cell as if its catalog were lost."""
    state = tmp_path / "state"

    def registered_meanwhile(code: str) -> bool:
        SqliteCatalog(state / "cells" / code / "catalog.sqlite").close()  # the other process
        return False  # then homed its subject in the cell

    catalog = cells_module.sqlite_catalogs(state, registered_meanwhile)("SG")
    catalog.close()
