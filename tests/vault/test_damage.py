"""Reads around lost and damaged shards: right bytes and a damage report, or a clear error."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SEGMENT, manifest_of, shard_paths
from shardvault.errors import IntegrityError
from shardvault.model import ObjectRef
from shardvault.nodes.port import ShardReader
from shardvault.vault import Vault

K, M = 4, 2
N = K + M
HEADER = 40


def expected_tried_losses(gone: set[int]) -> set[int]:
    """The reader takes shards in index order until it has k good ones."""
    good, reported = 0, set()
    for index in range(N):
        if good == K:
            break
        if index in gone:
            reported.add(index)
        else:
            good += 1
    return reported


def read(vault: Vault, ref: ObjectRef) -> tuple[bytes, list[tuple[int, int, str]]]:
    with vault.open_read(ref) as reader:
        data = reader.read_all()
        return data, [(d.segment, d.index, d.reason) for d in reader.damage]


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def test_every_loss_pattern_up_to_m(vault: Vault, alice: ObjectRef, tmp_path: Path) -> None:
    data = os.urandom(2 * SEGMENT + 100)
    vault.put(alice, data)
    paths = shard_paths(vault, alice)
    nodes = manifest_of(vault, alice).nodes
    aside = tmp_path / "aside"
    aside.mkdir()
    patterns = [g for lost in range(M + 1) for g in itertools.combinations(range(N), lost)]
    assert len(patterns) == 22
    for gone in patterns:
        for index in gone:
            shutil.move(paths[index], aside / str(index))
        with vault.open_read(alice) as reader:
            assert reader.read_all() == data, gone
            damage = reader.damage
        want = expected_tried_losses(set(gone))
        assert {d.index for d in damage} == want, gone
        assert {d.index for d in damage if d.segment == 0} == want
        assert all(d.reason == "missing" for d in damage)
        assert all(d.node == nodes[d.index] for d in damage)
        assert all(d.ref == alice and d.version == 1 for d in damage)
        data_shards_lost = {i for i in gone if i < K}
        assert data_shards_lost <= {d.index for d in damage}
        for index in gone:
            shutil.move(aside / str(index), paths[index])


def test_a_missing_shard_is_reported_once_and_not_tried_again(
    vault: Vault, alice: ObjectRef
) -> None:
    data = os.urandom(3 * SEGMENT)
    vault.put(alice, data)
    shard_paths(vault, alice)[1].unlink()
    got, damage = read(vault, alice)
    assert got == data
    assert damage == [(0, 1, "missing")]


def test_a_shard_cut_short_is_reported_once_and_not_tried_again(
    vault: Vault, alice: ObjectRef
) -> None:
    """A shard that ends early is short in every later segment too: reading it again for
    each one doubled their reads and kept a damage record (and catalog row) per segment,
    without bound for a large object."""
    data = os.urandom(12 * SEGMENT)
    vault.put(alice, data)
    path = shard_paths(vault, alice)[1]
    with path.open("r+b") as handle:
        handle.truncate(HEADER + 10)
    got, damage = read(vault, alice)
    assert got == data
    assert damage == [(0, 1, "truncated")]


def test_get_records_damage_for_repair(vault: Vault, alice: ObjectRef) -> None:
    vault.put(alice, b"some bytes")
    shard_paths(vault, alice)[1].unlink()
    assert vault.get(alice) == b"some bytes"
    recorded = vault.cells["US"].catalog.damage()
    assert [(d.ref, d.segment, d.index, d.reason) for d in recorded] == [(alice, 0, 1, "missing")]


@pytest.mark.parametrize(
    ("offset", "field"),
    [
        (0, "magic"),
        (4, "format version"),
        (5, "index"),
        (6, "k"),
        (7, "m"),
        (8, "object id"),
        (31, "object version"),
        (34, "segment size"),
        (39, "block size"),
        (HEADER, "first block byte"),
        (-1, "last block byte"),
    ],
)
def test_flipped_bit_anywhere_in_a_shard_is_reported(
    vault: Vault, alice: ObjectRef, offset: int, field: str
) -> None:
    data = os.urandom(SEGMENT + 10)
    vault.put(alice, data)
    path = shard_paths(vault, alice)[2]
    flip_bit(path, offset if offset >= 0 else path.stat().st_size - 1, 3)
    got, damage = read(vault, alice)
    assert got == data
    assert damage and {index for _, index, _ in damage} == {2}, field


def test_flipped_bits_in_data_are_hash_mismatches(vault: Vault, alice: ObjectRef) -> None:
    data = os.urandom(3 * SEGMENT)
    vault.put(alice, data)
    block = manifest_of(vault, alice).block_size
    paths = shard_paths(vault, alice)
    flip_bit(paths[0], HEADER + 2 * block + 5)  # segment 2 of shard 0
    flip_bit(paths[3], HEADER + 100)  # segment 0 of shard 3
    got, damage = read(vault, alice)
    assert got == data
    assert sorted(damage) == [(0, 3, "hash mismatch"), (2, 0, "hash mismatch")]


@pytest.mark.parametrize(("keep", "reason"), [(0, "bad header"), (10, "bad header"), (-7, None)])
def test_truncated_shard(vault: Vault, alice: ObjectRef, keep: int, reason: str | None) -> None:
    data = os.urandom(2 * SEGMENT + 1)
    vault.put(alice, data)
    path = shard_paths(vault, alice)[1]
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(keep if keep >= 0 else size + keep)
    got, damage = read(vault, alice)
    assert got == data
    assert {index for _, index, _ in damage} == {1}
    if reason is None:  # only the last block is short
        assert damage == [(2, 1, "truncated")]
    else:
        assert damage == [(0, 1, reason)]


def test_shard_swapped_with_one_of_another_object(vault: Vault, alice: ObjectRef) -> None:
    data = os.urandom(SEGMENT)
    vault.put(alice, data)
    other = ObjectRef("intl", "alice", "other")
    vault.put(other, os.urandom(SEGMENT))
    ours, theirs = shard_paths(vault, alice), shard_paths(vault, other)
    ours[0].write_bytes(theirs[0].read_bytes())  # same index, same size, wrong object
    ours[1].write_bytes(theirs[1].read_bytes())
    got, damage = read(vault, alice)
    assert got == data
    assert damage == [(0, 0, "bad header"), (0, 1, "bad header")]


def test_shards_swapped_within_the_object(vault: Vault, alice: ObjectRef) -> None:
    data = os.urandom(SEGMENT)
    vault.put(alice, data)
    paths = shard_paths(vault, alice)
    first, second = paths[0].read_bytes(), paths[1].read_bytes()
    paths[0].write_bytes(second)
    paths[1].write_bytes(first)
    got, damage = read(vault, alice)
    assert got == data
    assert damage == [(0, 0, "bad header"), (0, 1, "bad header")]


def test_old_version_shard_restored_in_place_of_the_new_one(vault: Vault, alice: ObjectRef) -> None:
    old, new = os.urandom(SEGMENT), os.urandom(SEGMENT)
    vault.put(alice, old)
    old_paths = shard_paths(vault, alice, 1)
    vault.put(alice, new)
    new_paths = shard_paths(vault, alice, 2)
    assert [p.parent.parent.parent.parent for p in old_paths] == [
        p.parent.parent.parent.parent for p in new_paths
    ]  # same nodes: placement depends on the key only
    for index in (0, 2):
        new_paths[index].write_bytes(old_paths[index].read_bytes())
    got, damage = read(vault, alice)
    assert got == new
    assert damage == [(0, 0, "bad header"), (0, 2, "bad header")]


def test_a_version_row_holding_another_versions_manifest_is_refused(
    vault: Vault, alice: ObjectRef
) -> None:
    """A manifest is self-consistent (its own version and id bind its data key), so one
    misfiled under the next version's row (a catalog restored or edited by hand) read
    back as that version: the old bytes, silently, and stat named the old version."""
    vault.put(alice, b"old secret")
    vault.put(alice, b"new data")
    catalog = vault.cells["US"].catalog
    old = catalog.get_version(alice, 1)
    assert old is not None
    catalog._db.execute(  # type: ignore[attr-defined]
        "UPDATE versions SET manifest = ? WHERE key = ? AND version = 2",
        (old.manifest, alice.key),
    )
    for call in (vault.get, vault.stat, vault.where):
        with pytest.raises(IntegrityError, match="v2 holds a manifest written for another version"):
            call(alice)
    assert vault.get(alice, 1) == b"old secret"


def test_a_version_row_whose_manifest_is_json_but_not_a_manifests_is_refused(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    """Valid JSON lacking a field raised KeyError out of the parse: a traceback from get,
    stat, where, repair and `nodes` alike, not an integrity error naming the manifest."""
    vault.put(alice, b"data")
    vault.cells["US"].catalog._db.execute(  # type: ignore[attr-defined]
        "UPDATE versions SET manifest = ? WHERE key = ?",
        (b"SVMF\x02\x00\x00\x00\x02{}", alice.key),
    )
    for call in (vault.get, vault.stat, vault.where):
        with pytest.raises(IntegrityError, match="manifest body lacks 'tenant'"):
            call(alice)
    assert vault.crowding()[0].unreadable_first == f"{alice} v1: manifest body lacks 'tenant'"
    command = [sys.executable, "-m", "shardvault", "--config", str(config_path)]
    for args in (["get", "intl", "alice", alice.key], ["nodes"], ["repair", "--scrub"]):
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "manifest body lacks 'tenant'" in done.stderr, args
        assert "Traceback" not in done.stderr, args


def test_more_than_m_lost_is_an_integrity_error_naming_object_and_segment(
    vault: Vault, alice: ObjectRef
) -> None:
    vault.put(alice, os.urandom(SEGMENT + 1))
    for path in shard_paths(vault, alice)[: M + 1]:
        path.unlink()
    with pytest.raises(IntegrityError) as caught:
        vault.get(alice)
    message = str(caught.value)
    assert f"{alice} v1 segment 0" in message
    assert "only 3 of the 4 shards needed are intact" in message
    assert "(3 missing)" in message and "restore it from a backup" in message  # what to do


def test_damage_beyond_repair_in_a_later_segment_never_yields_wrong_bytes(
    vault: Vault, alice: ObjectRef
) -> None:
    data = os.urandom(4 * SEGMENT)
    vault.put(alice, data)
    block = manifest_of(vault, alice).block_size
    for path in shard_paths(vault, alice)[1 : 2 + M]:
        flip_bit(path, HEADER + 2 * block + 17)  # segment 2 of three shards
    received = []
    with (
        pytest.raises(IntegrityError, match=f"{alice} v1 segment 2"),
        vault.open_read(alice) as reader,
    ):
        for chunk in reader:
            received.append(chunk)
    assert b"".join(received) == data[: 2 * SEGMENT]


def test_every_shard_of_a_segment_corrupted(vault: Vault, alice: ObjectRef) -> None:
    vault.put(alice, os.urandom(100))
    for path in shard_paths(vault, alice):
        flip_bit(path, HEADER + 1)
    with pytest.raises(IntegrityError, match="segment 0: only 0 of the 4"):
        vault.get(alice)


class FailingReader:
    """A shard on a disk that answers EIO for every read at or past `from_offset`."""

    def __init__(self, inner: ShardReader, from_offset: int) -> None:
        self._inner = inner
        self._from = from_offset

    def read_at(self, offset: int, length: int) -> bytes:
        if offset >= self._from:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return self._inner.read_at(offset, length)

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize(
    ("size", "from_offset", "segments"),
    [(100, 0, [0]), (2 * SEGMENT + 1, 0, [0, 1, 2]), (2 * SEGMENT + 1, 1, [1, 2])],
    ids=["small-object", "first-read", "later-segments"],
)
def test_a_shard_read_that_fails_is_read_around_and_reported(
    vault: Vault,
    alice: ObjectRef,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    from_offset: int,
    segments: list[int],
) -> None:
    data = os.urandom(size)
    vault.put(alice, data)
    store = vault.cells["US"].store(manifest_of(vault, alice).nodes[1])
    open_reader = store.open_reader
    monkeypatch.setattr(
        store,
        "open_reader",
        lambda name, location=None: FailingReader(open_reader(name, location), from_offset),
    )
    got, damage = read(vault, alice)
    assert got == data
    reason = f"read failed: {os.strerror(errno.EIO)}"
    assert damage == [(segment, 1, reason) for segment in segments]
