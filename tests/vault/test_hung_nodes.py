"""A node whose disk hangs costs a bounded wait (storage.node_timeout), then is routed around.

The hung disk is a stand-in (`HungDisk`): the node's flushes and reads block on an
Event until the test releases it, as a dying disk's or a hard-mounted NFS share's
never return. Only that node's: the test's nodes share one filesystem, so its
pack set gets a group sync of its own (a real node has its own disk).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import (
    SEGMENT,
    make_deployment,
    manifest_of,
    open_files,
    tmpfs_mounted,
    wait_until_inside,
)
from governance_support import approve, forget_approved
from shard_spots import spot
from shardvault.catalog.port import Catalog
from shardvault.cli.app import main
from shardvault.codec.shardfile import block_offset
from shardvault.config import load
from shardvault.errors import (
    ApprovalRequired,
    IntegrityError,
    NotFound,
    StorageError,
    SubjectForgotten,
    TooFewNodes,
    VaultClosed,
)
from shardvault.group_commit import GroupSync
from shardvault.model import NodeSpec, ObjectRef
from shardvault.nodes import held_file
from shardvault.nodes.hints import HungHints
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.pack_records import PackedShard
from shardvault.nodes.packs import PackSet
from shardvault.nodes.port import shard_name
from shardvault.nodes.unavailable import UnavailableStore
from shardvault.placement import place_stripe, placement_seed
from shardvault.vault import Vault, node_opening
from shardvault.vault import cells as cells_module
from shardvault.vault.reader import READ_AHEAD

DEADLINE = 0.5
T = TypeVar("T")
SPARE = """
[[nodes]]
id = "us-n7"
jurisdiction = "US"
facility = "us-fac-1"
backend = "local"
path = "nodes/US/us-n7"
"""


class HungDisk:
    """A stand-in for a hung disk under one node: its flushes and preads (and, with
    ``stats``, stats of its paths; with ``closes``, closes of its files, as a
    hard-mounted NFS share's) never return until `release` is set; `entered` says a
    call has reached it, `reads` holds each pread's offset."""

    def __init__(
        self,
        store: LocalDirShardStore,
        monkeypatch: pytest.MonkeyPatch,
        stats: bool = False,
        closes: bool = False,
    ) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.reads: list[int] = []
        shared = store.packs.group
        store.packs.group = GroupSync(lambda: self._block(shared), f"disk of {store.node_id}")
        real_pread, real_stat, real_close = os.pread, os.stat, os.close
        root = f"{store.root}/"

        def pread(fd: int, length: int, offset: int) -> bytes:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(root):
                self.reads.append(offset)
                self._block(None)
            return real_pread(fd, length, offset)

        def close(fd: int) -> None:
            with contextlib.suppress(OSError):  # not a descriptor: the real close says so
                if os.readlink(f"/proc/self/fd/{fd}").startswith(root):
                    self._block(None)
            real_close(fd)

        def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if not isinstance(path, int) and os.fsdecode(path).startswith(root):
                self._block(None)
            return real_stat(path, *args, **kwargs)

        monkeypatch.setattr(os, "pread", pread)
        if stats:
            monkeypatch.setattr(os, "stat", stat)
        if closes:
            monkeypatch.setattr(os, "close", close)

    def _block(self, shared: GroupSync | None) -> None:
        self.entered.set()
        self.release.wait()
        if shared is not None:
            shared.sync(shared.note_write())


def spare_deployment(tmp_path: Path, deadline: float) -> Path:
    """A packed deployment whose US cell has a seventh node; its config's path."""

    def edit(text: str) -> str:
        return text.replace("k = 4\n", f"k = 4\nnode_timeout = {deadline}\n", 1) + SPARE

    config_path = make_deployment(tmp_path / "deploy", pack_limit=64 << 10, edit=edit)
    (tmp_path / "deploy" / "nodes" / "US" / "us-n7").mkdir()
    return config_path


@pytest.fixture
def spare_vault(tmp_path: Path) -> Iterator[Vault]:
    """A packed deployment whose US cell has a seventh node, and a short deadline."""
    with Vault.open(load(spare_deployment(tmp_path, DEADLINE))) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "bob", "SG")
        yield vault


def first_node(vault: Vault, ref: ObjectRef) -> str:
    cell = vault.cells["US"]
    return place_stripe(placement_seed(ref), cell.placeable_nodes(), "US", 4, 2)[0].id


def hang(
    vault: Vault,
    node: str,
    monkeypatch: pytest.MonkeyPatch,
    stats: bool = False,
    closes: bool = False,
) -> HungDisk:
    store = vault.cells["US"].stores[node]
    assert isinstance(store, LocalDirShardStore)
    return HungDisk(store, monkeypatch, stats, closes)


def test_a_put_to_a_hung_node_fails_within_the_deadline_and_later_puts_go_around_it(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the put waited for the node's flush for ever, and so did every later put placed there
    vault, cell = spare_vault, spare_vault.cells["US"]
    ref = ObjectRef("intl", "alice", "first")
    hung = first_node(vault, ref)
    disk = hang(vault, hung, monkeypatch)
    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match=f"^node {hung}: no answer within 0.5 s "):
            vault.put(ref, b"x" * 1000)
        assert time.monotonic() - started < DEADLINE + 3
        assert disk.entered.is_set()
        with pytest.raises(NotFound):  # nothing was committed
            vault.get(ref)
        assert cell.unavailable_nodes() == [hung]
        usage = {u.node.id: u.unavailable for u in vault.node_usage()}
        assert "no answer within 0.5 s" in usage[hung]
        for i in range(6):  # placed around it while the cell has six others
            other = ObjectRef("intl", "alice", f"k{i}")
            vault.put(other, other.key.encode())
            assert hung not in manifest_of(vault, other).nodes
            assert vault.get(other) == other.key.encode()
        elsewhere = ObjectRef("intl", "bob", "sg")  # another cell, meanwhile
        vault.put(elsewhere, b"sg data")
        assert vault.get(elsewhere) == b"sg data"
        probe = vault.deadline.probes[hung]
    finally:
        disk.release.set()
    probe.join(10)  # the hang ended: the next probe answers
    assert not probe.is_alive() and cell.unavailable_nodes() == []
    vault.put(ref, b"y" * 1000)  # placed on it again
    assert hung in manifest_of(vault, ref).nodes and vault.get(ref) == b"y" * 1000


def test_a_put_given_up_on_a_hung_node_names_too_a_node_whose_pack_its_sync_found_removed(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every node is synced though one fails: the put that then waited for a hung node
    named only that one, and the removed pack found before it (with its call for a
    scrub, for what the pack held) was said to nobody."""
    vault = spare_vault
    ref = ObjectRef("intl", "alice", "first")
    vault.put(ref, b"x" * 1000)  # each of the stripe's nodes holds a pack
    cut, hung = manifest_of(vault, ref).nodes[:2]
    cut_store = vault.cells["US"].stores[cut]
    assert isinstance(cut_store, LocalDirShardStore)
    for pack in cut_store.packs.directory.glob("*.pack"):
        pack.unlink()
    disk = hang(vault, hung, monkeypatch)
    try:
        started = time.monotonic()
        with pytest.raises(StorageError) as failed:
            vault.put(ref, b"y" * 1000)  # the same stripe: synced in its order, cut first
        assert time.monotonic() - started < DEADLINE + 3
        said = str(failed.value)
        assert re.search(f"node {cut}: pack \\S+ was removed", said), said
        assert f"node {hung}: no answer within 0.5 s " in said
        assert vault.cells["US"].unavailable_nodes() == [hung]
    finally:
        disk.release.set()
    assert vault.get(ref) == b"x" * 1000  # the failed put left the version before


def test_a_get_reads_around_a_node_that_hangs_within_the_deadline(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the reader waited for the node's block for ever, on a thread of the shared pool
    vault, cell = spare_vault, spare_vault.cells["US"]
    large, small = ObjectRef("intl", "alice", "large"), ObjectRef("intl", "alice", "small")
    data = os.urandom(300_000)  # several segments: its blocks are read on I/O threads
    vault.put(large, data)
    vault.put(small, b"small")
    hung = manifest_of(vault, large).nodes[0]  # a data shard: read first
    disk = hang(vault, hung, monkeypatch)
    try:
        started = time.monotonic()
        with vault.open_read(large) as reader:
            assert reader.read_all() == data
        assert time.monotonic() - started < DEADLINE + 3
        assert disk.entered.is_set()
        assert [(d.segment, d.node) for d in reader.damage] == [(0, hung)]  # asked once
        assert "no answer within 0.5 s" in reader.damage[0].reason
        assert cell.unavailable_nodes() == [hung]
        if hung in manifest_of(vault, small).nodes:  # read in the caller: routed around now
            assert vault.get(small) == b"small"
        elsewhere = ObjectRef("intl", "bob", "sg")  # another cell, meanwhile
        vault.put(elsewhere, data)
        assert vault.get(elsewhere) == data
        probe = vault.deadline.probes[hung]
    finally:
        disk.release.set()
    probe.join(10)
    assert not probe.is_alive() and cell.unavailable_nodes() == []
    with vault.open_read(large) as reader:
        assert reader.read_all() == data and reader.damage == []


def flip_blocks(vault: Vault, ref: ObjectRef, index: int, segments: Iterable[int]) -> None:
    """A bit flipped in shard INDEX's block of each of SEGMENTS: a hash mismatch each."""
    manifest = manifest_of(vault, ref)
    where = spot(vault, ref, manifest.version, index)
    for segment in segments:
        where.flip(where.start + block_offset(segment, manifest.block_size), 0)


def test_a_get_asks_a_node_it_found_hung_no_more_though_another_shard_fails_each_segment(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each segment whose block failed on another shard took the hung node's shard for
    # its spare again: a deadline's wait, a damage record and a thread stuck each time
    vault = spare_vault
    ref, segments = ObjectRef("intl", "alice", "large"), READ_AHEAD + 4
    data = os.urandom(segments * SEGMENT)
    vault.put(ref, data)
    hung = manifest_of(vault, ref).nodes[0]  # a data shard: read first
    flip_blocks(vault, ref, 1, range(segments))
    disk = hang(vault, hung, monkeypatch)
    try:
        with vault.open_read(ref) as reader:
            assert reader.read_all() == data
        assert [d.segment for d in reader.damage if d.node == hung] == [0]
        assert len(disk.reads) <= READ_AHEAD  # the segments started before it was found
        assert [(d.index, d.reason) for d in reader.damage if d.node != hung] == [
            (1, "hash mismatch")
        ] * segments
    finally:
        disk.release.set()


def test_a_reader_opened_before_a_node_was_found_hung_asks_it_no_more_until_it_is_back(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a reader opened before another found the node hung kept the node's real store:
    # it went on asking it, a deadline's wait and up to READ_AHEAD stuck threads more
    vault, cell = spare_vault, spare_vault.cells["US"]
    ref, segments = ObjectRef("intl", "alice", "large"), READ_AHEAD + 4
    data = os.urandom(segments * SEGMENT)
    vault.put(ref, data)
    hung = manifest_of(vault, ref).nodes[0]  # a data shard: read first
    disk = hang(vault, hung, monkeypatch)
    try:
        with vault.open_read(ref) as first, vault.open_read(ref) as second:
            assert first.read_all() == data  # finds the node hung, past the deadline
            asked = READ_AHEAD + 1  # stuck: the first's segments ahead, the second's first
            deadline = time.monotonic() + 10
            while len(disk.reads) < asked and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(disk.reads) == asked and cell.unavailable_nodes() == [hung]
            chunks = iter(second)
            assert next(chunks) == data[:SEGMENT]  # its stuck fetch dropped, not waited for
            assert len(disk.reads) == asked  # the segments ahead were started around it
            probe = vault.deadline.probes[hung]
            disk.release.set()
            probe.join(10)  # the hang ended: the next probe answers
            assert not probe.is_alive() and cell.unavailable_nodes() == []
            assert b"".join(chunks) == data[SEGMENT:]
            assert len(disk.reads) > asked  # back: read again by a reader opened before
        assert [d.node for d in first.damage] == [hung]
        # each segment started while it was hung: as one opened after, whose `HungStore`
        # fails at once; the first READ_AHEAD were started ahead, the last as it read one
        started_hung = [(segment, hung) for segment in range(READ_AHEAD + 1)]
        assert [(d.segment, d.node) for d in second.damage] == started_hung
        assert second.damage[0].reason == first.damage[0].reason
    finally:
        disk.release.set()


def test_a_node_whose_flush_answers_stays_hung_while_a_read_given_up_on_is_stuck_in_it(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the reader did not say which read it gave up on: a probe's flush that answered
    # brought the node back with the read still stuck (a bad sector, a share whose reads
    # hang), and every get after sent it reads that stuck too, a thread each, for a
    # deadline until it was found hung again, and again after each probe
    vault, cell = spare_vault, spare_vault.cells["US"]
    ref = ObjectRef("intl", "alice", "large")
    data = os.urandom(3 * SEGMENT)
    vault.put(ref, data)
    hung = manifest_of(vault, ref).nodes[0]  # a data shard: read first
    store = cell.stores[hung]
    assert isinstance(store, LocalDirShardStore)
    flushes = store.packs.group
    disk = hang(vault, hung, monkeypatch)
    try:
        with vault.open_read(ref) as reader:
            assert reader.read_all() == data
        store.packs.group = flushes  # its flushes answer again; its reads still hang
        probe = vault.deadline.probes[hung]
        probe.join(4 * DEADLINE)
        assert probe.is_alive() and cell.unavailable_nodes() == [hung]
    finally:
        disk.release.set()
    probe.join(10)  # the read ended: the next probe brings the node back
    assert not probe.is_alive() and cell.unavailable_nodes() == []


def test_a_segment_lost_once_a_node_was_found_hung_says_to_bring_the_node_back(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hung node's shard is not asked again for a later segment, so that segment's
    failure is told with the record that found the node hung: the advice is to bring
    the node back, not that the shards were deleted or damaged."""
    vault = spare_vault
    ref = ObjectRef("intl", "alice", "large")
    vault.put(ref, os.urandom(4 * SEGMENT))
    hung = manifest_of(vault, ref).nodes[0]
    for index in (1, 2):
        flip_blocks(vault, ref, index, [2])
    disk = hang(vault, hung, monkeypatch)
    try:
        with vault.open_read(ref) as reader, pytest.raises(IntegrityError) as failed:
            reader.read_all()
        assert re.search(
            r"segment 2: only 3 of the 4 shards needed are intact \(1 on a node that could "
            rf"not be read, 2 hash mismatch\); .* bring node\(s\) {hung} back",
            str(failed.value),
        ), failed.value
        assert [d.segment for d in reader.damage if d.node == hung] == [0]
    finally:
        disk.release.set()


def test_a_vault_closes_without_waiting_for_a_thread_stuck_on_a_hung_node(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = ObjectRef("intl", "alice", "first")
    disk = hang(spare_vault, first_node(spare_vault, ref), monkeypatch)
    try:
        with pytest.raises(StorageError, match="no answer within"):
            spare_vault.put(ref, b"x")
        closing = threading.Thread(target=spare_vault.close)
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "close waited for the hung disk"
    finally:
        disk.release.set()


def test_a_read_whose_healthy_node_closes_under_it_says_the_vault_closed_not_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a node hung, the close does not wait for the I/O threads, so it closed a
    healthy node's packs under a fetch still reading them: the fetch failed (EBADF) and
    the reader took it for damage, a record "read failed: Bad file descriptor" queued
    for repair of a shard nothing was wrong with. (A deadline no test waits for: the
    node is marked hung as a fetch past it marks it.)"""
    vault = Vault.open(load(spare_deployment(tmp_path, 60)))
    vault.register_subject("intl", "alice", "US")
    ref, data = ObjectRef("intl", "alice", "large"), os.urandom(3 * 65536)
    vault.put(ref, data)  # its blocks packed, read on I/O threads
    nodes = manifest_of(vault, ref).nodes
    vault.deadline.expired(next(n.id for n in vault.config.nodes_in("US") if n.id not in nodes))
    assert vault.deadline.any_hung()
    healthy = vault.cells["US"].stores[nodes[0]]  # a data shard's: read first
    assert isinstance(healthy, LocalDirShardStore)
    reading, closed = threading.Event(), threading.Event()
    real_pread, root = os.pread, f"{healthy.root}/"

    def pread(fd: int, length: int, offset: int) -> bytes:
        if not reading.is_set() and os.readlink(f"/proc/self/fd/{fd}").startswith(root):
            reading.set()
            closed.wait(30)  # the vault closes meanwhile
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    stream = vault.open_read(ref)  # its first segment's fetches start
    assert reading.wait(10)
    within(BOUND, vault.close)
    closed.set()
    with pytest.raises(VaultClosed, match="the vault was closed"):
        stream.read_all()
    assert stream.damage == []


def test_a_put_whose_healthy_nodes_close_under_it_says_the_vault_closed_and_holds_no_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a node hung, the close does not wait for the I/O threads, so a put's appends
    that ran after it made each healthy node a new pack, whose descriptors nothing would
    close. A store once closed makes none, and the put's failure is the close's."""
    deploy = tmp_path / "deploy"
    vault = Vault.open(load(spare_deployment(tmp_path, 60)))
    vault.register_subject("intl", "alice", "US")
    first = ObjectRef("intl", "alice", "first")
    vault.put(first, b"x")  # the cell's stores opened
    nodes = manifest_of(vault, first).nodes  # a hung node's store is left open: none of these
    vault.deadline.expired(next(n.id for n in vault.config.nodes_in("US") if n.id not in nodes))
    assert vault.deadline.any_hung()
    appending, closed = threading.Event(), threading.Event()
    real_add = PackSet.add

    def add(packs: PackSet, name: str, data: bytes) -> tuple[int, PackedShard]:
        if not appending.is_set():
            appending.set()
            closed.wait(30)  # the vault closes meanwhile
        return real_add(packs, name, data)

    monkeypatch.setattr(PackSet, "add", add)
    put = functools.partial(vault.put, ObjectRef("intl", "alice", "small"), b"x" * 1000)
    failed = closed_during(vault, put, appending, closed)
    assert open_files(deploy / "nodes") == []
    assert failed == [  # not each node's "its store is closed"
        "VaultClosed: the vault was closed while the put was under way: open it again "
        "and put the object again"
    ]


def test_a_vault_closes_without_a_look_at_a_pack_on_a_disk_that_hung_since_without_proc(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without /proc, the look at a node's pack as its store closed was a stat of the
    pack's name, made on the closing thread: a vault closing with a node whose disk had
    hung since its last call (nothing had marked it) waited for as long as it hung."""
    monkeypatch.setattr(held_file, "FD_LINKS", "/nonexistent")
    ref = ObjectRef("intl", "alice", "first")
    spare_vault.put(ref, b"x" * 1000)  # each node of its stripe holds a pack, looked at
    disk = hang(spare_vault, first_node(spare_vault, ref), monkeypatch, stats=True)
    try:
        within(BOUND, spare_vault.close)
        assert not disk.entered.is_set()
    finally:
        disk.release.set()


def test_a_vault_closes_within_the_deadline_though_a_node_hangs_in_its_close(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store was closed on the closing caller's own thread, which no deadline bounds: a
    node whose disk hung in the close itself (a hard-mounted NFS share: its pack's
    flock released, its descriptor closed) held the vault's close for as long as it
    hung. It is given up on after the deadline and named; the rest still close."""
    ref = ObjectRef("intl", "alice", "first")
    spare_vault.put(ref, b"x" * 1000)
    node = first_node(spare_vault, ref)
    deploy = spare_vault.config.state_dir.parent

    def nodes_held() -> set[str]:
        return {path.split("/")[-3] for path in open_files(deploy / "nodes")}

    assert len(nodes_held()) == 6  # each node of the stripe holds its pack open
    disk = hang(spare_vault, node, monkeypatch, closes=True)
    try:
        within(BOUND, spare_vault.close)
        assert disk.entered.is_set()  # the close did reach the hung disk
        assert nodes_held() == {node}  # the other stores closed
        assert not [p for p in open_files(deploy) if p.endswith("catalog.sqlite")]
        assert node in spare_vault.deadline.hung
        assert [n for n in spare_vault.deadline.hint_notices() if node in n] == [
            f"node {node}: its store did not close within {DEADLINE:g} s "
            "(storage.node_timeout): left to its thread, which the process's exit ends"
        ]
        notes = HungHints(spare_vault.config.state_dir).read()
        assert list(notes) == [node]  # the processes after take it for hung from the start
        within(BOUND, spare_vault.close)  # a second close closes nothing again
        assert len([n for n in spare_vault.deadline.hint_notices() if node in n]) == 1
    finally:
        disk.release.set()


def test_nodes_hung_in_their_close_together_cost_the_close_one_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stores' closes were waited for in turn, each a whole deadline after the one
    before it was given up on (a cell's started at once; the next cell's only then):
    two nodes of one cell and one of another, hung in their close, held the vault's
    close three deadlines. (A deadline long beside the test's own overhead: the waits
    in turn take two at least, whatever the load.)"""
    seconds = 1.5

    def edit(text: str) -> str:
        return text.replace("k = 4\n", f"k = 4\nnode_timeout = {seconds}\n", 1)

    vault = Vault.open(load(make_deployment(tmp_path / "deploy", pack_limit=64 << 10, edit=edit)))
    hung: list[tuple[str, str]] = []
    for subject, cell, count in (("alice", "US", 2), ("bob", "SG", 1)):
        vault.register_subject("intl", subject, cell)
        ref = ObjectRef("intl", subject, "first")
        vault.put(ref, b"x" * 1000)  # each node of its stripe holds its pack open
        hung += [(cell, node) for node in manifest_of(vault, ref).nodes[:count]]
    disks = []
    for cell, node in hung:
        store = vault.cells[cell].stores[node]
        assert isinstance(store, LocalDirShardStore)
        disks.append(HungDisk(store, monkeypatch, closes=True))
    try:
        started = time.monotonic()
        within(4 * seconds + 3, vault.close)
        took = time.monotonic() - started
        assert all(disk.entered.is_set() for disk in disks)  # each close reached its disk
        assert vault.deadline.hung >= {node for _, node in hung}
        # not tighter: a close is found stalled a deadline after its thread last ran, as
        # seen every quarter deadline (io_threads.py), so one wait takes 1.25-1.5 deadlines
        # (2.28 s here, idle); waits in turn take two at least
        assert seconds <= took < 2 * seconds, f"the close took {took:.1f} s"
    finally:
        for disk in disks:
            disk.release.set()


def test_a_store_whose_close_fails_leaves_nothing_open_and_says_which_node(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store's close that failed (EIO from a descriptor's close) left the cell's stores
    after it, and every catalog, open; then the node's own other pack descriptors, and
    it said a bare OSError, no node named. Everything closes, then a StorageError names
    the node."""
    ref = ObjectRef("intl", "alice", "first")
    spare_vault.put(ref, b"x" * 1000)  # each node of its stripe holds its pack open
    assert spare_vault.get(ref) == b"x" * 1000  # and a descriptor to read it by
    stripe = set(manifest_of(spare_vault, ref).nodes)
    node = next(n for n in spare_vault.cells["US"].stores if n in stripe)  # closed first
    deploy = spare_vault.config.state_dir.parent
    root, real_close = f"{deploy}/nodes/US/{node}/", os.close
    assert len([path for path in open_files(deploy) if path.startswith(root)]) >= 2
    failed: list[int] = []

    def close(fd: int) -> None:
        target = ""
        with contextlib.suppress(OSError):  # not a descriptor: the real close says so
            target = os.readlink(f"/proc/self/fd/{fd}")
        real_close(fd)
        if target.startswith(root) and not failed:  # released all the same, as close(2) is
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "close", close)
    with pytest.raises(StorageError, match=f"node {node}: .*Input/output error"):
        spare_vault.close()
    assert failed
    assert not open_files(deploy / "nodes")
    assert not [p for p in open_files(deploy) if p.endswith("catalog.sqlite")]
    assert not [p for p in open_files(deploy) if p.endswith("directory.sqlite")]


def pack_path(vault: Vault, ref: ObjectRef, index: int) -> Path:
    """The pack file holding shard `index` of the object (a small one's shards are packed)."""
    manifest = manifest_of(vault, ref)
    location = manifest.location(index)
    assert location is not None
    store = vault.cells["US"].stores[manifest.nodes[index]]
    assert isinstance(store, LocalDirShardStore)
    return store.root / "packs" / location.split(":")[0]


def nowait_read(path: Path) -> bytes | None:
    """What a read that must not wait for the disk gets of the file's start (RWF_NOWAIT):
    None if its pages are not in the page cache; skips where the file system cannot say."""
    fd = os.open(path, os.O_RDONLY)
    try:
        buffer = bytearray(8)
        got = os.preadv(fd, [buffer], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        pytest.skip(f"no RWF_NOWAIT reads on this file system: {exc.strerror}")
    finally:
        os.close(fd)
    return bytes(buffer[:got])


def evict(path: Path) -> None:
    """Take the file's pages out of the page cache (written back first: only clean pages
    go), as a node's disk holds what nobody has read for a while. Not checked with a
    read that cannot wait: one that misses starts the kernel's readahead, which a real
    hung disk would hold but the stand-in does not, and the pages are back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def get_within(vault: Vault, ref: ObjectRef, seconds: float) -> tuple[bytes, list[str]]:
    """The object and its damage's nodes, read on a thread of its own: the test fails, rather
    than hangs, if the read waits longer than `seconds`."""
    got: list[tuple[bytes, list[str]]] = []

    def read() -> None:
        with vault.open_read(ref) as reader:
            got.append((reader.read_all(), [d.node for d in reader.damage]))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the get still waited after {seconds} s"
    return got[0]


def test_a_small_get_on_a_node_just_hung_reads_its_cached_shard_without_waiting(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a small object's shards were read in the caller with a plain pread: it waited for
    # the hung disk though the page cache held the shard
    vault, cell = spare_vault, spare_vault.cells["US"]
    ref = ObjectRef("intl", "alice", "small")
    vault.put(ref, b"small")
    hung = manifest_of(vault, ref).nodes[0]
    assert nowait_read(pack_path(vault, ref, 0)) is not None  # just written: cached
    disk = hang(vault, hung, monkeypatch)
    try:
        assert get_within(vault, ref, 10) == (b"small", [])
        assert not disk.entered.is_set() and cell.unavailable_nodes() == []  # never asked it
    finally:
        disk.release.set()


def test_a_small_get_on_a_node_just_hung_waits_for_an_uncached_shard_until_the_deadline(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the get waited for the hung disk for ever: nothing had marked the node yet
    vault, cell = spare_vault, spare_vault.cells["US"]
    ref = ObjectRef("intl", "alice", "small")
    vault.put(ref, b"small")
    hung = manifest_of(vault, ref).nodes[0]  # a data shard: read first
    evict(pack_path(vault, ref, 0))
    disk = hang(vault, hung, monkeypatch)
    try:
        started = time.monotonic()
        assert get_within(vault, ref, DEADLINE + 3) == (b"small", [hung])  # read around it
        assert time.monotonic() - started >= DEADLINE
        assert disk.entered.is_set() and cell.unavailable_nodes() == [hung]
        assert get_within(vault, ref, 10) == (b"small", [hung])  # routed around now
        probe = vault.deadline.probes[hung]
    finally:
        disk.release.set()
    probe.join(10)
    assert not probe.is_alive() and cell.unavailable_nodes() == []


# maintenance: gc, repair and node usage call the stores themselves ----------------


def warned_about(node: str, err: str) -> list[str]:
    """The lines of ERR that name NODE."""
    return [line for line in err.splitlines() if node in line]


def within(seconds: float, call: Callable[[], T]) -> T:
    """call(), on a thread of its own: the test fails, rather than hangs, if it takes longer."""
    got: list[T] = []
    thread = threading.Thread(target=lambda: got.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    assert got, "it raised (see the thread's traceback above)"
    return got[0]


BOUND = 2 * DEADLINE + 3  # a call is given up on once its thread has not run for a deadline


def closed_during(
    vault: Vault, call: Callable[[], object], entered: threading.Event, answer: threading.Event
) -> list[str]:
    """Close VAULT, within a bound, while CALL (on a thread of its own) is stuck in an open
    (`entered`), then let the open answer: what CALL failed with ("Class: message")."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            failed.append(exc)

    running = threading.Thread(target=run, daemon=True)
    running.start()
    assert entered.wait(10)
    within(BOUND, lambda: vault.close())
    answer.set()
    running.join(10)
    assert not running.is_alive()
    return [f"{type(exc).__name__}: {exc}" for exc in failed]


def test_gc_skips_a_node_that_hangs_and_collects_on_the_others(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gc waited for the node's flush for ever, in a process where nothing had marked it
    vault, cell = spare_vault, spare_vault.cells["US"]
    ref = ObjectRef("intl", "alice", "deleted")
    vault.put(ref, b"x" * 1000)
    manifest = manifest_of(vault, ref)
    vault.delete(ref)
    hung = manifest.nodes[0]
    disk = hang(vault, hung, monkeypatch)
    try:
        report = within(BOUND, lambda: vault.gc(grace_seconds=0))
        assert disk.entered.is_set()
        assert (report.versions, report.skipped_nodes) == (1, (hung,))
        for index, node in enumerate(manifest.nodes[1:], 1):  # collected on the others
            name = shard_name(manifest.object_id, manifest.version, index)
            assert name not in set(cell.stores[node].names())
        assert cell.unavailable_nodes() == [hung] and vault.deadline.hung == {hung}
        probe = vault.deadline.probes[hung]
    finally:
        disk.release.set()
    probe.join(10)
    assert not probe.is_alive() and cell.unavailable_nodes() == []
    assert within(10, lambda: vault.gc(grace_seconds=0)).skipped_nodes == ()


def test_repair_takes_a_shard_on_a_node_that_hangs_for_bad_and_rebuilds_it_elsewhere(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # repair waited for the node's read for ever
    vault, cell = spare_vault, spare_vault.cells["US"]
    ref = ObjectRef("intl", "alice", "scrubbed")
    vault.put(ref, b"y" * 1000)
    hung = manifest_of(vault, ref).nodes[0]
    disk = hang(vault, hung, monkeypatch)
    try:
        report = within(BOUND, lambda: vault.repair(scrub=True))
        assert disk.entered.is_set()
        assert (report.rebuilt, report.problems, report.hung_nodes) == (1, (), (hung,))
        assert manifest_of(vault, ref).nodes[0] == "us-n7"  # the spare
        assert [x.node for x in cell.catalog.leftovers()] == [hung]  # its copy: gc's, later
        assert vault.get(ref) == b"y" * 1000
        probe = vault.deadline.probes[hung]
    finally:
        disk.release.set()
    probe.join(10)
    assert not probe.is_alive()


def test_node_usage_shows_a_node_that_hangs_and_counts_the_others(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # counting the node's shards read its packs and waited for ever
    vault = spare_vault
    ref = ObjectRef("intl", "alice", "counted")
    vault.put(ref, b"z" * 1000)
    nodes = manifest_of(vault, ref).nodes
    hung = nodes[0]
    vault.cells["US"].stores[hung].drop_caches()  # as a fresh process: its packs unread
    disk = hang(vault, hung, monkeypatch)
    try:
        usage = {u.node.id: u for u in within(BOUND, vault.node_usage)}
        assert disk.entered.is_set()
        assert usage[hung].unavailable.startswith("no answer within 0.5 s (storage.node_timeout)")
        assert all(usage[node].shards == 1 and not usage[node].unavailable for node in nodes[1:])
        assert vault.deadline.hung == {hung}
    finally:
        disk.release.set()


def test_a_forget_finishes_around_a_node_that_hangs(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a forget removes the subject's shards as gc does, and waited for the node as gc did
    vault, cell = spare_vault, spare_vault.cells["US"]
    ref = ObjectRef("intl", "alice", "mine")
    vault.put(ref, b"w" * 1000)
    manifest = manifest_of(vault, ref)
    hung = manifest.nodes[0]
    disk = hang(vault, hung, monkeypatch)
    try:
        forgotten = within(BOUND, lambda: forget_approved(vault, "intl", "alice"))
        assert disk.entered.is_set() and forgotten.versions_deleted == 1
        assert forgotten.skipped_nodes == (hung,)  # the CLI names it, exit 1
        for index, node in enumerate(manifest.nodes[1:], 1):  # removed on the others
            name = shard_name(manifest.object_id, manifest.version, index)
            assert name not in set(cell.stores[node].names())
        assert cell.unavailable_nodes() == [hung]
    finally:
        disk.release.set()


def test_a_long_call_on_a_node_that_keeps_working_is_waited_for(
    spare_vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing of a large node reads pack after pack, for longer than the deadline: it is
    no hang, and giving up on it would have skipped that node in every gc."""
    vault, cell = spare_vault, spare_vault.cells["US"]
    store = cell.stores["us-n1"]
    listed = store.names

    def slow_names() -> Iterator[str]:
        for _ in range(int(3 * DEADLINE / 0.01)):  # many short waits, as reads of a disk
            time.sleep(0.01)
        return listed()

    monkeypatch.setattr(store, "names", slow_names)
    started = time.monotonic()
    assert within(30, lambda: vault.gc(grace_seconds=0)).skipped_nodes == ()
    assert time.monotonic() - started >= 3 * DEADLINE
    assert cell.unavailable_nodes() == [] and vault.deadline.hung == set()


def test_the_cli_names_a_node_whose_disk_hangs_and_exits_1(tmp_path: Path) -> None:
    # `shardvault nodes` and `gc` in a process of their own waited for the node for ever.
    # The hang is real here: a FIFO where a pack should be, whose open() blocks until
    # someone opens it for writing, as a hung disk's open never returns. The node still
    # answers flushes, so only the stuck call itself tells.
    def edit(text: str) -> str:
        return text.replace("k = 4\n", f"k = 4\nnode_timeout = {DEADLINE}\n", 1)

    config = make_deployment(tmp_path / "deploy", pack_limit=64 << 10, edit=edit)
    ref = ObjectRef("intl", "alice", "gone")
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ref, b"x" * 1000)
        hung = manifest_of(vault, ref).nodes[0]
        vault.delete(ref)
    os.mkfifo(tmp_path / "deploy" / "nodes" / "US" / hung / "packs" / "0123456789abcdef.pack")
    command = [sys.executable, "-m", "shardvault.cli.app", "--config", str(config)]

    started = time.monotonic()
    done = subprocess.run([*command, "nodes", "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    by_id = {node["id"]: node for node in json.loads(done.stdout)["nodes"]}
    assert by_id[hung]["unavailable"].startswith("no answer within 0.5 s (storage.node_timeout)")
    assert [n for n, node in by_id.items() if node["unavailable"]] == [hung]
    assert (
        sum(node["shards"] for node in by_id.values()) == 5
    )  # the deleted version's, on the others
    assert warned_about(hung, done.stderr) == [  # once: its reason says it hung
        f"warning: node {hung} is unavailable: no answer within 0.5 s (storage.node_timeout); "
        "it is unavailable to this process until it answers"
    ]
    # `nodes` noted the node for the processes after it (`hints_file`). A gc starting
    # within a deadline of that would trust the note and skip the node whole (as a get
    # reads around it: test_a_fresh_note_is_trusted_...), so the note goes: this gc
    # must find the hang in its own listing, its delete there done
    assert hung in json.loads(hints_file(config).read_text())["nodes"]
    hints_file(config).unlink()

    done = subprocess.run(
        [*command, "gc", "--grace", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "collected 1 version(s), 6 shard(s)" in done.stderr  # the hung node's delete too
    assert done.stderr.endswith(  # named once, as hung: it was opened, not unavailable
        f"warning: node(s) {hung} did not answer within 0.5 s (storage.node_timeout): "
        "skipped; run again once they answer\n"
    )
    assert "unavailable" not in done.stderr and "failed during the sweep" not in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 40


# situation -> (gc, repair --scrub, nodes) exit codes: docs/cli.md, "Exit codes of gc,
# repair, nodes and forget". A node the config marks down is known to be gone: no alarm. One it
# does not (active here) that cannot be opened or does not answer: its work was skipped.
EXIT_CODES = {
    "every node answers": 0,
    "a down node is missing": 0,
    "a down node hangs": 0,
    "an active node is missing": 1,
    "a draining node is missing": 1,
    "an active node hangs": 1,
}


@pytest.fixture(scope="module")
def exit_code_deployment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A packed deployment (US with a spare node, so repair can rebuild a lost shard)
    holding one object; returns the deployment directory and a node holding a shard."""
    root = tmp_path_factory.mktemp("exit-codes")

    def edit(text: str) -> str:
        return text.replace("k = 4\n", f"k = 4\nnode_timeout = {DEADLINE}\n", 1) + SPARE

    config = make_deployment(root / "deploy", pack_limit=64 << 10, edit=edit)
    (root / "deploy" / "nodes" / "US" / "us-n7").mkdir()
    ref = ObjectRef("intl", "alice", "kept")
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ref, b"k" * 1000)
        node = manifest_of(vault, ref).nodes[0]
    return root / "deploy", node


def situated(deployment: Path, node: str, situation: str, into: Path) -> Path:
    """A copy of the deployment with the node in that situation; its config path."""
    copy = into / "deploy"
    shutil.copytree(deployment, copy, symlinks=True)
    config = copy / "shardvault.toml"
    for marked in ("down", "draining"):
        if marked in situation:
            text = config.read_text().replace(
                f'id = "{node}"\n', f'id = "{node}"\nstate = "{marked}"\n'
            )
            config.write_text(text)
    directory = copy / "nodes" / "US" / node
    if "missing" in situation:
        shutil.rmtree(directory)
    if "hangs" in situation:  # a FIFO where its pack was: its open() never returns
        (pack,) = (directory / "packs").glob("*.pack")
        pack.unlink()
        os.mkfifo(pack)
    return config


def run_or_show_stacks(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ARGV; past TIMEOUT, fail with where each of its threads is (faulthandler, on
    SIGABRT), not a bare timeout: `nodes` with a down node that hangs outlived 60 s once
    in a CI run, and never in a hundred runs since."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)
            _, err = child.communicate()
            pytest.fail(f"{' '.join(argv[3:])} outlived {timeout:g} s; its threads:\n{err}")
    return subprocess.CompletedProcess(argv, child.returncode, out, err)


@pytest.mark.parametrize("command", [["gc", "--grace", "0"], ["repair", "--scrub"], ["nodes"]])
@pytest.mark.parametrize("situation", list(EXIT_CODES))
def test_gc_repair_and_nodes_exit_1_only_for_a_node_not_marked_down_that_was_skipped(
    exit_code_deployment: tuple[Path, str], situation: str, command: list[str], tmp_path: Path
) -> None:
    # a node missing from the start made gc and nodes exit 0, one that hung exit 1, even
    # when the config marked it down; repair exited 0 for a missing one
    deployment, node = exit_code_deployment
    config = situated(deployment, node, situation, tmp_path)
    argv = [sys.executable, "-m", "shardvault.cli.app", "--config", str(config), *command]
    done = run_or_show_stacks([*argv, "--json"], timeout=60)
    assert done.returncode == EXIT_CODES[situation], done.stderr
    assert "Traceback" not in done.stderr
    json.loads(done.stdout)  # the report, whatever the exit code
    if EXIT_CODES[situation]:
        assert any(
            f"node {node} " in line or f"node(s) {node}" in line
            for line in done.stderr.splitlines()
        ), done.stderr
    else:
        assert node not in done.stderr, done.stderr  # nothing to alarm about


@pytest.mark.parametrize(
    "argv", [["gc", "--grace", "-1"], ["repair", "--bogus"], ["nodes", "--bogus"]]
)
def test_gc_repair_and_nodes_exit_2_on_bad_usage(
    exit_code_deployment: tuple[Path, str], argv: list[str]
) -> None:
    command = [sys.executable, "-m", "shardvault.cli.app", "--config"]
    done = subprocess.run(
        [*command, str(exit_code_deployment[0] / "shardvault.toml"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


# opening: every node's store is opened, and a hung disk's directory never answers -----

_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2


@contextlib.contextmanager
def hung_mount(directory: Path) -> Iterator[Callable[[], None]]:
    """A real hung disk on `directory`: a FUSE file system mounted there whose daemon never
    answers, not even its first request, so every stat, lookup or open under it waits in
    the kernel, as a dead NFS server's or a dying disk's does. Yields `release`, which ends
    the connection (the calls waiting, and every later one, fail: ENOTCONN); unmounted on
    exit. Needs /dev/fuse and the right to mount (root): skips otherwise."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        pytest.skip(f"no FUSE device here: {exc.strerror}")
    options = f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}"
    target = os.fsencode(directory)
    if libc.mount(b"hung-disk", target, b"fuse", _MS_NOSUID | _MS_NODEV, options.encode()):
        reason = os.strerror(ctypes.get_errno())
        os.close(fd)
        pytest.skip(f"cannot mount a FUSE file system here: {reason}")
    released = []

    def release() -> None:
        if not released:
            released.append(True)
            os.close(fd)

    try:
        yield release
    finally:
        release()
        libc.umount2(target, _MNT_DETACH)


def hung_node_deployment(tmp_path: Path) -> tuple[Path, ObjectRef, str]:
    """A packed deployment with a short deadline holding one object; (config, the object,
    a node holding one of its data shards)."""

    def edit(text: str) -> str:
        return text.replace("k = 4\n", f"k = 4\nnode_timeout = {DEADLINE}\n", 1)

    config = make_deployment(tmp_path / "deploy", pack_limit=64 << 10, edit=edit)
    ref = ObjectRef("intl", "alice", "kept")
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ref, b"k" * 1000)
        node = manifest_of(vault, ref).nodes[0]
    return config, ref, node


def test_opening_a_cells_nodes_gives_up_on_a_node_whose_disk_hangs_and_reads_around_it(
    tmp_path: Path,
) -> None:
    # Vault.open checked every node's marker in the calling thread: one node whose disk
    # hung held up every command for ever, a get that could read around it included
    config, ref, hung = hung_node_deployment(tmp_path)
    with hung_mount(tmp_path / "deploy" / "nodes" / "US" / hung) as release:
        started = time.monotonic()
        vault = within(BOUND, lambda: Vault.open(load(config)))
        try:
            assert within(BOUND, vault.cells["US"].unavailable_nodes) == [hung]  # opened now
            assert time.monotonic() - started < 2 * BOUND
            assert hung in vault.deadline.hung  # the CLI names it, as any node that hung
            with vault.open_read(ref) as reader:  # read around it, within the deadline
                assert reader.read_all() == b"k" * 1000
            assert [d.node for d in reader.damage] == [hung]
            usage = {u.node.id: u.unavailable for u in within(BOUND, vault.node_usage)}
            assert usage[hung] == "no answer within 0.5 s (storage.node_timeout)"
            with pytest.raises(TooFewNodes, match=f"{hung} \\(no answer within 0.5 s"):
                vault.put(ObjectRef("intl", "alice", "new"), b"n")  # fail closed: 5 of 6
            release()  # its open fails now: the store says why, from then on
            for _ in range(100):
                if "no answer" not in vault.cells["US"].unavailable_reasons():
                    break
                time.sleep(0.05)
            assert "Transport endpoint is not connected" in vault.cells["US"].unavailable_reasons()
        finally:
            vault.close()


def test_a_node_whose_disk_hangs_costs_nothing_to_the_commands_of_another_cell(
    tmp_path: Path,
) -> None:
    # opening the vault opened every node's store: a hung SG node cost every process (a
    # get or put of a US subject included) one node_timeout before it did anything
    seconds = 3.0
    config, ref, _ = hung_node_deployment(tmp_path)
    config.write_text(config.read_text().replace(f"node_timeout = {DEADLINE}", "node_timeout = 3"))
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "bob", "SG")
    with hung_mount(tmp_path / "deploy" / "nodes" / "SG" / "sg-n1"):
        started = time.monotonic()
        vault = within(BOUND + seconds, lambda: Vault.open(load(config)))
        try:
            with vault.open_read(ref) as reader:
                assert reader.read_all() == b"k" * 1000
            vault.put(ObjectRef("intl", "alice", "new"), b"n")
            assert time.monotonic() - started < seconds  # not one deadline
            assert vault.deadline.hung == set() and reader.damage == []
            # what needs the SG cell's nodes still sees each, and names the one that hangs
            usage = {u.node.id: u.unavailable for u in within(BOUND + seconds, vault.node_usage)}
            assert usage["sg-n1"] == "no answer within 3 s (storage.node_timeout)"
            assert [node for node, why in usage.items() if why] == ["sg-n1"]
            assert vault.deadline.hung == {"sg-n1"}
            with pytest.raises(TooFewNodes, match="sg-n1 \\(no answer within 3 s"):
                vault.put(ObjectRef("intl", "bob", "sg"), b"s")  # fail closed: 5 of 6
        finally:
            vault.close()


def stalled_claims(
    monkeypatch: pytest.MonkeyPatch, node: str
) -> tuple[list[str], threading.Event, threading.Event]:
    """Every node's marker check counted (the node ids, in order); NODE's waits, once
    `entered` is set, for `answer`: a stand-in for a disk that answers late."""
    claimed: list[str] = []
    entered, answer = threading.Event(), threading.Event()
    checked = node_opening.claim

    def claim(root: Path, spec: NodeSpec, marked: Path | None = None) -> None:
        claimed.append(spec.id)
        if spec.id == node:
            entered.set()
            answer.wait(30)
        checked(root, spec, marked)

    monkeypatch.setattr(node_opening, "claim", claim)
    return claimed, entered, answer


def test_a_cells_stores_asked_by_two_threads_at_once_are_opened_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (the vault is thread-safe: a cell's stores are opened on first use, under a lock)
    config, ref, node = hung_node_deployment(tmp_path)
    config.write_text(config.read_text().replace(f"node_timeout = {DEADLINE}", "node_timeout = 30"))
    claimed, entered, answer = stalled_claims(monkeypatch, node)
    with Vault.open(load(config)) as vault:
        assert claimed == []  # none until a request needs the cell
        got: list[bytes] = []
        first = threading.Thread(target=lambda: got.append(vault.get(ref)))
        second = threading.Thread(target=lambda: got.append(vault.get(ref)))
        first.start()
        assert entered.wait(10)
        second.start()
        wait_until_inside(second, cells_module.StoreOpening.stores.__code__)
        answer.set()
        first.join(10)
        second.join(10)
        assert got == [b"k" * 1000] * 2
        assert sorted(claimed) == sorted(n.id for n in vault.config.nodes_in("US"))
        vault.put(ObjectRef("intl", "alice", "new"), b"n")
        assert len(claimed) == 6  # once per process


def test_stores_whose_open_ends_after_the_vault_closed_are_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close does not wait for a cell's stores being opened (up to a deadline per hung
    node), so an open that ends after it must not let its request go on: it closes what
    it opened and fails."""
    config, ref, node = hung_node_deployment(tmp_path)
    config.write_text(config.read_text().replace(f"node_timeout = {DEADLINE}", "node_timeout = 30"))
    _, entered, answer = stalled_claims(monkeypatch, node)
    vault = Vault.open(load(config))
    failures = closed_during(vault, lambda: vault.get(ref), entered, answer)
    assert failures == ["VaultClosed: cell US: the vault is closed: open it again"]


def test_a_node_whose_open_answers_after_the_deadline_is_used_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node given up on at its open comes back once that open ends, as a hung node does once
    it answers a probe. The hang here is a stand-in (the marker check waits for an
    Event): a FUSE daemon that never answered cannot answer later."""
    config, _, hung = hung_node_deployment(tmp_path)
    answer, entered = threading.Event(), threading.Event()
    checked = node_opening.claim

    def claim(root: Path, node: NodeSpec, marked: Path | None = None) -> None:
        if node.id == hung:
            entered.set()
            answer.wait()
        checked(root, node, marked)

    monkeypatch.setattr(node_opening, "claim", claim)
    with within(BOUND, lambda: Vault.open(load(config))) as vault:
        assert not entered.is_set()  # opened when the cell is first needed
        assert vault.cells["US"].unavailable_nodes() == [hung] and entered.is_set()
        answer.set()
        for _ in range(100):
            if not vault.cells["US"].unavailable_nodes():
                break
            time.sleep(0.05)
        assert vault.cells["US"].unavailable_nodes() == []
        new = ObjectRef("intl", "alice", "new")
        vault.put(new, b"n")  # placed on all six again
        assert hung in manifest_of(vault, new).nodes and vault.get(new) == b"n"


def answers_late(monkeypatch: pytest.MonkeyPatch, config: Path) -> str:
    """The US cell's first node answers each open of the cell late: given up on a deadline
    after, its open ends while the cell's last node opens (on a thread of its own, once
    the late one was given up on), which waits until the thread that ran it has ended.
    Returns the late node."""
    nodes = load(config).nodes_in("US")
    late, last = nodes[0].id, nodes[-1].id  # opened first and last
    waiting: list[tuple[threading.Thread, threading.Event]] = []  # the late open's, and its answer
    checked = node_opening.claim

    def claim(root: Path, node: NodeSpec, marked: Path | None = None) -> None:
        if node.id == late:
            answer = threading.Event()
            waiting.append((threading.current_thread(), answer))
            answer.wait(30)
        elif node.id == last:
            thread, answer = waiting.pop()
            answer.set()
            thread.join(30)  # its open has ended: the first thread has no more to do
            assert not thread.is_alive()
        checked(root, node, marked)

    monkeypatch.setattr(node_opening, "claim", claim)
    return late


def test_a_node_whose_open_answers_before_its_cells_other_nodes_are_open_is_used_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node given up on at its open whose open ended while a later node of the cell
    was still opening: the open was done when the vault came to put it back, which it
    did then and there, asking the cell for its stores while their open held the lock,
    and waited for ever (most likely how `shardvault nodes` outlived 60 s once, in a
    busy CI run)."""
    config, _, _ = hung_node_deployment(tmp_path)
    late = answers_late(monkeypatch, config)
    vault = within(BOUND, lambda: Vault.open(load(config)))
    try:
        assert within(BOUND, vault.cells["US"].unavailable_nodes) == []
        assert vault.deadline.hung == {late}  # it did not answer in time (the CLI: below)
    finally:
        within(BOUND, vault.close)


def test_the_cli_names_no_node_as_skipped_whose_open_answered_before_it_was_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A node given up on at its open that answered before `nodes` counted it, or before gc
    swept it, was counted and swept: neither command names it as skipped, and both exit 0.
    Both named it ("did not answer ...: skipped"), and gc exited 1."""
    config, _, _ = hung_node_deployment(tmp_path)
    late = answers_late(monkeypatch, config)
    given = ["--config", str(config)]
    assert within(BOUND, lambda: main([*given, "nodes", "--json"])) == 0
    out, err = capsysbinary.readouterr()
    by_id = {node["id"]: node for node in json.loads(out)["nodes"]}
    assert (by_id[late]["unavailable"], by_id[late]["shards"]) == (None, 1)
    assert late not in err.decode() and "did not answer" not in err.decode()
    assert within(BOUND, lambda: main([*given, "gc", "--grace", "0"])) == 0
    _, err = capsysbinary.readouterr()
    assert late not in err.decode() and "did not answer" not in err.decode()


def test_the_cli_names_a_node_still_unopened_once_saying_what_befell_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A node whose store did not open within the deadline was named twice by `nodes` (as
    unavailable, then as not answering) and by gc (as a skipped unavailable node, then
    as not answering): once is enough, in the line that says what befell it. `nodes`
    gives each node's reason; gc's unavailable line gives none, its deadline's does."""
    config, _, hung = hung_node_deployment(tmp_path)
    _, _, answer = stalled_claims(monkeypatch, hung)  # its open never answers, here
    given = ["--config", str(config)]
    try:
        assert within(BOUND, lambda: main([*given, "nodes"])) == 1
        assert warned_about(hung, capsysbinary.readouterr().err.decode()) == [
            f"warning: node {hung} is unavailable: no answer within 0.5 s (storage.node_timeout)"
        ]
        hints_file(config).unlink()  # as a gc with no process before it: its own open gives up
        assert within(BOUND, lambda: main([*given, "gc", "--grace", "0"])) == 1
        assert warned_about(hung, capsysbinary.readouterr().err.decode()) == [
            f"warning: node(s) {hung} did not answer within 0.5 s (storage.node_timeout): "
            "skipped; run again once they answer"
        ]
        assert within(BOUND, lambda: main([*given, "nodes"])) == 1  # the gc's note trusted
        (line,) = warned_about(hung, capsysbinary.readouterr().err.decode())
        assert line.startswith(f"warning: node {hung} is unavailable: found hung by another ")
    finally:
        answer.set()


def test_a_store_put_in_place_of_a_nodes_never_opens_the_cells_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline puts a store in place of a node's (hung, or back) under its lock, which
    an open's watchers take: one that opened the cell's stores there could wait for
    itself, as a node put back by the thread opening its cell did. Before the cell's
    stores are open there is nothing to replace; once they are, the one given is used."""
    config, _, node = hung_node_deployment(tmp_path)
    claimed, _, _ = stalled_claims(monkeypatch, "none")
    with Vault.open(load(config)) as vault:
        cell = vault.cells["US"]
        placed = cell.replace_store(UnavailableStore(node, "given up on"))
        assert claimed == [] and placed is False  # not opened, so nothing to replace
        assert cell.unavailable_nodes() == []  # opened now: its own store
        assert cell.replace_store(UnavailableStore(node, "given up on")) is True
        assert cell.unavailable_reasons() == f"{node} (given up on)"


def test_a_get_in_a_process_of_its_own_reads_around_a_node_whose_disk_hangs(
    tmp_path: Path,
) -> None:
    # `shardvault get` waited for ever (reading the config resolved the node's directory,
    # then its marker was checked); `nodes` too, and said nothing
    config, _, hung = hung_node_deployment(tmp_path)
    command = [sys.executable, "-m", "shardvault.cli.app", "--config", str(config)]
    out = tmp_path / "out"
    with hung_mount(tmp_path / "deploy" / "nodes" / "US" / hung):
        got = subprocess.run(
            [*command, "get", "intl", "alice", "kept", "-o", str(out)],  # -o: checked first
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == b"k" * 1000
        listed = subprocess.run([*command, "nodes"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 1, listed.stderr
    # the get found it hung (its open gave up on it): `nodes`, after it, waits for it no more
    assert f"node {hung} is unavailable: found hung by another process (pid " in listed.stderr
    assert "Traceback" not in listed.stderr + got.stderr


LATER = 10.0  # the later processes' deadline: far above what their commands take


def hints_file(config: Path) -> Path:
    return config.parent / "state" / "hung-nodes.json"


def run(command: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=60)


def with_deadline(config: Path, seconds: float, name: str) -> Path:
    """A config of the same deployment, beside CONFIG, with another node_timeout."""
    other = config.with_name(name)
    other.write_text(
        config.read_text().replace(f"node_timeout = {DEADLINE}", f"node_timeout = {seconds:g}")
    )
    return other


def test_a_node_found_hung_by_one_process_costs_the_processes_after_it_no_deadline(
    tmp_path: Path,
) -> None:
    # each process found a hung node for itself: every command needing its cell waited
    # storage.node_timeout (30 s by default) before reading around it, 100 commands 100 times
    config, _, hung = hung_node_deployment(tmp_path)
    later = [sys.executable, "-m", "shardvault.cli.app", "--config"]
    later.append(str(with_deadline(config, LATER, "later.toml")))
    with hung_mount(tmp_path / "deploy" / "nodes" / "US" / hung) as release:
        vault = within(BOUND, lambda: Vault.open(load(config)))  # process A: this one
        try:
            assert within(BOUND, vault.cells["US"].unavailable_nodes) == [hung]
            assert list(json.loads(hints_file(config).read_bytes())["nodes"]) == [hung]
            started = time.monotonic()
            got = run(later, "get", "intl", "alice", "kept")
            assert got.returncode == 0, got.stderr
            assert got.stdout == "k" * 1000 and time.monotonic() - started < LATER / 2
            listed = run(later, "nodes", "--json")
            assert listed.returncode == 1, listed.stderr
            by_id = {node["id"]: node["unavailable"] for node in json.loads(listed.stdout)["nodes"]}
            assert by_id[hung].startswith(f"found hung by another process (pid {os.getpid()}) at ")
            assert [node for node, why in by_id.items() if why] == [hung]
            assert "Traceback" not in got.stderr + listed.stderr
            release()  # A's open of the node ends (not connected): it answered
            for _ in range(100):
                if not hints_file(config).exists():
                    break
                time.sleep(0.05)
            assert not hints_file(config).exists()
        finally:
            vault.close()
    listed = run(later, "nodes", "--json")
    assert listed.returncode == 0, listed.stderr  # unmounted: the node's own disk, used again
    assert all(node["unavailable"] is None for node in json.loads(listed.stdout)["nodes"])


def test_a_fresh_note_is_trusted_and_the_node_tested_a_deadline_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node another process found hung just now is not opened (nor waited for): read
    around; once the note is a deadline old this process tests the node, which answers
    here, and the note goes."""
    config, ref, node = hung_node_deployment(tmp_path)
    config = with_deadline(config, 5, "five.toml")
    claimed, _, _ = stalled_claims(monkeypatch, "none")
    HungHints(config.parent / "state").mark(node)  # another process's finding
    with Vault.open(load(config)) as vault:
        cell = vault.cells["US"]
        assert cell.unavailable_nodes() == [node] and node not in claimed
        assert f"{node} (found hung by another process (pid " in cell.unavailable_reasons()
        with vault.open_read(ref) as reader:
            assert reader.read_all() == b"k" * 1000
        assert [d.node for d in reader.damage] == [node]
        assert node in vault.deadline.hung
        vault.deadline.tests[node].join(20)
        assert cell.unavailable_nodes() == [] and claimed.count(node) == 1
        assert not hints_file(config).exists()
        new = ObjectRef("intl", "alice", "new")
        vault.put(new, b"n")  # placed on all six again
        assert node in manifest_of(vault, new).nodes


def test_a_note_older_than_the_deadline_is_tested_at_once_not_trusted(
    tmp_path: Path,
) -> None:
    config, ref, node = hung_node_deployment(tmp_path)
    config = with_deadline(config, 30, "thirty.toml")  # a trusted note: untested for 30 s
    HungHints(config.parent / "state", clock=lambda: time.time() - 60).mark(node)
    with Vault.open(load(config)) as vault:
        assert vault.get(ref) == b"k" * 1000
        for _ in range(200):  # answered within TEST_GRACE, or a little after on a busy disk
            if not vault.cells["US"].unavailable_nodes():
                break
            time.sleep(0.05)
        assert vault.cells["US"].unavailable_nodes() == []
    assert not hints_file(config).exists()


def test_a_damaged_notes_file_is_ignored_with_one_warning(tmp_path: Path) -> None:
    # a note only spares a deadline: refusing every command for its damage would cost far
    # more than it saves; ignored, it costs at most that deadline, and the next note
    # found replaces the file
    config, _, _ = hung_node_deployment(tmp_path)
    hints_file(config).write_bytes(b"\x00garbage")
    command = [sys.executable, "-m", "shardvault.cli.app", "--config", str(config)]
    got = run(command, "get", "intl", "alice", "kept")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "k" * 1000
    assert got.stderr == (
        f"warning: {hints_file(config)}: is damaged (not a hung-node notes file): ignored\n"
    )


def linked_file(path: Path) -> Path:
    """An empty file at PATH with a second name beside it (what a shard's hard link is)."""
    path.touch()
    os.link(path, path.with_name(f"{path.name}.link"))
    return path


def test_a_get_into_a_descriptor_reads_around_a_node_whose_disk_hangs(tmp_path: Path) -> None:
    # a descriptor open on a file with other names may be a shard, so `get -o /dev/fd/N`
    # (or `-o FILE` that stdout writes) statted every node's directory to see whether the
    # file was on its disk: a hung one's never answered, and the get waited for ever
    config, _, hung = hung_node_deployment(tmp_path)
    command = [sys.executable, "-m", "shardvault.cli.app", "--config", str(config), "get"]
    command += ["intl", "alice", "kept", "-o"]
    (tmp_path / "elsewhere").mkdir()
    with tmpfs_mounted(tmp_path / "elsewhere") as elsewhere:
        out, redirected = linked_file(elsewhere / "out"), linked_file(elsewhere / "redirected")
        near = linked_file(tmp_path / "near")  # on the disk of the nodes that answer
        cases = [(out, "/dev/fd/{fd}"), (redirected, "{path}"), (near, "/dev/fd/{fd}")]
        with hung_mount(tmp_path / "deploy" / "nodes" / "US" / hung):
            for target, given in cases:
                fd = os.open(target, os.O_WRONLY)
                try:
                    got = subprocess.run(
                        [*command, given.format(fd=fd, path=target)],
                        pass_fds=(fd,),
                        stdout=fd,  # the file `-o FILE` names: written into as /dev/fd/N is
                        stderr=subprocess.PIPE,
                        text=True,
                        timeout=60,
                    )
                finally:
                    os.close(fd)
                assert "Traceback" not in got.stderr
                if target is near:  # still refused: it may be a shard
                    assert got.returncode == 2, got.stderr
                    assert "perhaps a shard" in got.stderr and target.read_bytes() == b""
                else:
                    assert got.returncode == 0, got.stderr
                    assert target.read_bytes() == b"k" * 1000


# the state disk: a command gives up on it (cli/watchdog.py) -----------------------------

STATE_DEADLINE = 1.0


def state_deployment(tmp_path: Path) -> tuple[list[str], ObjectRef]:
    """`hung_node_deployment` with a short state deadline: (the command's start, the object)."""
    config, ref, _ = hung_node_deployment(tmp_path)
    text = config.read_text().replace("k = 4\n", f"k = 4\nstate_timeout = {STATE_DEADLINE}\n", 1)
    config.write_text(text)
    return [sys.executable, "-m", "shardvault.cli.app", "--config", str(config)], ref


@pytest.mark.parametrize(
    "where",
    [
        "state",  # every command's
        "state/cells/US",  # the get's own cell: its catalog
        "state/cells/US/audit",  # reached once the vault is open, by the get's audit entry
    ],
)
def test_a_command_gives_up_on_a_state_disk_that_hangs_with_one_line(
    tmp_path: Path, where: str
) -> None:
    # every command waited for ever: SQLite, the audit log's fsync and the config's stats
    # block in C, and nothing bounded them
    command, ref = state_deployment(tmp_path)
    out = tmp_path / "out"
    hung = tmp_path / "deploy" / where
    with hung_mount(hung):
        started = time.monotonic()
        got = subprocess.run(
            [*command, "get", ref.tenant, ref.subject, ref.key, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
    assert got.returncode == 1, got.stderr
    [line] = got.stderr.splitlines()
    assert line.startswith(
        f"error: no answer within 1 s (storage.state_timeout) from the disk of {hung}"
    ), line
    assert line.endswith(", which may hang: the command gave up")
    assert took < 2 * STATE_DEADLINE + 10  # the interpreter's start, on a loaded machine
    assert sorted(tmp_path.glob("*out*")) == []  # no file, no temporary


ONE_CELL = [  # every one touches the US cell alone
    ["get", "intl", "alice", "kept"],
    ["stat", "intl", "alice", "kept"],
    ["where", "intl", "alice", "kept"],
    ["ls", "intl", "alice"],
    ["versions", "intl", "alice", "kept"],
    ["put", "intl", "alice", "new", "-"],
    ["rm", "intl", "alice", "new"],
]
EVERY_CELL = [  # each needs the hung cell: given up on, naming its disk
    ["get", "intl", "bob", "sg"],  # homed there
    ["nodes"],
    ["gc"],
    ["repair"],
    ["approval", "ls"],
]


def test_a_cell_whose_state_disk_hangs_holds_up_only_the_commands_that_need_it(
    tmp_path: Path,
) -> None:
    # opening the vault opened every cell's catalog: one cell's hung state disk stopped
    # every command of every cell, a get of another cell's subject included
    command, _ = state_deployment(tmp_path)
    with Vault.open(load(Path(command[-1]))) as vault:
        vault.register_subject("intl", "bob", "SG")
        vault.put(ObjectRef("intl", "bob", "sg"), b"s" * 100)
    hung = tmp_path / "deploy" / "state" / "cells" / "SG"
    with hung_mount(hung):
        for argv in ONE_CELL:
            got = subprocess.run(
                [*command, *argv], input="new", capture_output=True, text=True, timeout=60
            )
            assert got.returncode == 0, (argv, got.stderr)
        for argv in EVERY_CELL:
            got = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=60)
            assert got.returncode == 1, (argv, got.stderr)
            [line] = got.stderr.splitlines()
            assert line.startswith(
                f"error: no answer within 1 s (storage.state_timeout) from the disk of {hung}/"
            ), (argv, line)


def test_a_forget_and_a_registration_complete_while_another_cells_state_disk_hangs(
    tmp_path: Path,
) -> None:
    # both took the subject's id out of every cell's approvals in the command's thread: a
    # hung SG state disk held a US subject's forget (its key not destroyed) until the
    # command gave up, and a US registration too
    command, ref = state_deployment(tmp_path)
    config = load(Path(command[-1]))
    with Vault.open(config) as vault:
        with pytest.raises(ApprovalRequired) as caught:
            vault.forget("intl", "alice")
        assert caught.value.approval_id is not None
        approve(vault.governance, caught.value.approval_id)
    hung = tmp_path / "deploy" / "state" / "cells" / "SG"
    with hung_mount(hung):
        started = time.monotonic()
        got = subprocess.run(
            [*command, "--approval", caught.value.approval_id, "forget", "intl", "alice"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        added = subprocess.run(
            [*command, "subject", "add", "intl", "carol", "--jurisdiction", "US"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        took = time.monotonic() - started
    assert got.returncode == 0, got.stderr
    assert "cell-us" in got.stdout  # the receipt
    said, line = got.stderr.splitlines()
    assert said.startswith("forgot intl/alice: key ")
    assert line.startswith("warning: the approvals of cell(s) SG could not be reached"), line
    assert added.returncode == 0, added.stderr
    assert took < 2 * (2 * STATE_DEADLINE + 10)
    with Vault.open(config) as vault:
        with pytest.raises(SubjectForgotten):
            vault.get(ref)
        assert vault.subject("intl", "carol").jurisdiction == "US"
        owed = {who: vault.directory.still_owed("intl", who) for who in ("alice", "carol")}
        assert owed == {"alice": ["SG"], "carol": ["SG"]}
        vault.gc(0)  # SG holds no approvals book: gc drops what it owes
        assert vault.directory.owing_cells() == []


def in_kernel_wait_of(thread: threading.Thread, call: str) -> bool:
    """Whether THREAD sleeps in the kernel function named CALL (its wchan)."""
    with contextlib.suppress(OSError):
        return call in Path(f"/proc/self/task/{thread.native_id}/wchan").read_text()
    return False


def test_a_vault_closes_without_waiting_for_a_thread_stuck_opening_a_hung_catalog(
    tmp_path: Path,
) -> None:
    # a request opening a cell's catalog held the cell's lock while its disk hung, and
    # Vault.close took that lock to close the catalog: the close, and the process's exit
    # after it, waited for ever
    config, _, _ = hung_node_deployment(tmp_path)
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "bob", "SG")
    vault = Vault.open(load(config))
    with hung_mount(tmp_path / "deploy" / "state" / "cells" / "SG") as release:
        failed: list[BaseException] = []

        def collect() -> None:
            try:
                vault.gc(0)  # opens every catalog: the SG one's stat never returns
            except BaseException as exc:
                failed.append(exc)

        collecting = threading.Thread(target=collect, daemon=True)
        collecting.start()
        for _ in range(200):
            if in_kernel_wait_of(collecting, "fuse") or not collecting.is_alive():
                break
            time.sleep(0.05)
        assert collecting.is_alive() and in_kernel_wait_of(collecting, "fuse")
        within(BOUND, lambda: vault.close())  # the stuck thread is left to the exit
        release()  # its open fails now; nothing it opened stays open
        collecting.join(10)
    assert not collecting.is_alive() and len(failed) == 1  # its open failed: ENOTCONN


def test_a_catalog_whose_open_ends_after_the_vault_closed_is_closed_by_that_open(
    tmp_path: Path,
) -> None:
    """The close does not wait for an open under way (above), so an open that ends after it
    (the disk answered at last) must close what it opened. The late answer is a stand-in
    (the catalog's factory waits for an Event): a FUSE daemon that never answered cannot."""
    config, _, _ = hung_node_deployment(tmp_path)
    state = load(config).state_dir
    factory = cells_module.sqlite_catalogs(state)
    entered, answer = threading.Event(), threading.Event()

    def catalogs(code: str) -> Catalog:
        if code == "SG":
            entered.set()
            answer.wait(30)
        return factory(code)

    vault = Vault.open(load(config), catalogs=catalogs)
    failures = closed_during(vault, lambda: vault.gc(0), entered, answer)
    assert failures == ["VaultClosed: cell SG: the vault is closed: open it again"]
    assert open_files(state) == []


def waiting_in(process: subprocess.Popen[str], call: str) -> None:
    """Until the process's main thread sleeps in the kernel function named CALL (its wchan),
    or 10 s if the kernel does not say."""
    for _ in range(200):
        with contextlib.suppress(OSError):
            if call in Path(f"/proc/{process.pid}/wchan").read_text():
                return
        time.sleep(0.05)


def test_a_command_waiting_on_a_lock_or_its_input_is_not_given_up_on(tmp_path: Path) -> None:
    """Only a call into a disk is given up on: a wait for another process's lock (here the
    audit log's flock) or for stdin sleeps interruptibly, and is waited for however long."""
    command, ref = state_deployment(tmp_path)
    lock = tmp_path / "deploy" / "state" / "cells" / "US" / "audit" / "log" / "LOCK"
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        getting = subprocess.Popen(
            [*command, "get", ref.tenant, ref.subject, ref.key],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        waiting_in(getting, "lock")
        time.sleep(3 * STATE_DEADLINE)  # the wait under test: longer than the deadline
    finally:
        os.close(fd)  # releases the flock
    got, said = getting.communicate(timeout=60)
    assert getting.returncode == 0, said
    assert got == "k" * 1000
    putting = subprocess.Popen(
        [*command, "put", ref.tenant, ref.subject, "typed", "-"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiting_in(putting, "pipe")
    time.sleep(3 * STATE_DEADLINE)
    _, said = putting.communicate("typed slowly", timeout=60)
    assert putting.returncode == 0, said
