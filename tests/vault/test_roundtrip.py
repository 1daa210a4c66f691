"""Put and get through the embedded vault: sizes, streams, versions, deletes."""

from __future__ import annotations

import gc
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import SEGMENT, files_under, manifest_of, shard_paths
from shardvault.config import Config, load
from shardvault.errors import Conflict, InvalidInput, NotFound
from shardvault.model import ObjectRef
from shardvault.vault import Vault
from shardvault.vault.reader import ObjectReader

SIZES = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 17]


def payload(size: int, salt: int = 0) -> bytes:
    return os.urandom(size) if salt == 0 else bytes((i * 7 + salt) % 256 for i in range(size))


@pytest.mark.parametrize("size", SIZES)
def test_round_trip(vault: Vault, alice: ObjectRef, size: int) -> None:
    data = payload(size)
    info = vault.put(alice, data)
    assert (info.size, info.version, info.k, info.m) == (size, 1, 4, 2)
    assert info.segments == max(1, -(-size // SEGMENT))
    assert vault.get(alice) == data
    assert vault.stat(alice) == info
    assert len(set(info.nodes)) == 6


def test_segment_size_comes_from_the_config(deployment: tuple[Config, Vault]) -> None:
    cfg, _ = deployment
    assert cfg.segment_size == SEGMENT


def test_no_shard_holds_readable_plaintext(vault: Vault, alice: ObjectRef) -> None:
    data = b"the quick brown fox jumps over the lazy dog " * 200
    vault.put(alice, data)
    for path in shard_paths(vault, alice):
        raw = path.read_bytes()
        assert b"quick brown fox" not in raw
        assert b"alice" not in raw and alice.key.encode() not in raw


def test_streaming_put_from_a_file_and_streaming_get(
    vault: Vault, alice: ObjectRef, tmp_path: Path
) -> None:
    data = payload(5 * SEGMENT + 123)
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    seen: list[int] = []
    with source.open("rb") as handle:
        info = vault.put(alice, handle, progress=seen.append)
    assert sum(seen) == len(data) and len(seen) == 6
    with vault.open_read(alice) as reader:
        assert reader.info == info
        chunks = list(reader)
        assert reader.damage == []
    assert [len(chunk) for chunk in chunks] == [SEGMENT] * 5 + [123]
    assert b"".join(chunks) == data


def test_put_from_a_reader_that_returns_short_reads(vault: Vault, alice: ObjectRef) -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            chunk = self._data.read(min(len(buffer), 1000))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    data = payload(2 * SEGMENT + 5)
    info = vault.put(alice, Trickle(data))  # type: ignore[arg-type]
    assert info.segments == 3
    assert vault.get(alice) == data


def test_put_reports_each_step_in_order(config_path: Path) -> None:
    steps: list[str] = []
    with Vault.open(load(config_path), on_step=steps.append) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ObjectRef("intl", "alice", "k"), payload(2 * SEGMENT + 1))
    assert steps == [
        "reserved",
        "segment-written",
        "segment-written",
        "segment-written",
        "shards-written",
        "shards-committed",
        "committed",
    ]


def test_reopened_vault_reads_what_was_written(config_path: Path) -> None:
    ref = ObjectRef("intl", "alice", "k")
    data = payload(SEGMENT + 9)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ref, data)
    with Vault.open(load(config_path)) as vault:
        assert vault.get(ref) == data


def test_versions_latest_wins_and_old_versions_stay_readable(
    vault: Vault, alice: ObjectRef
) -> None:
    first, second, third = payload(10, 1), payload(SEGMENT * 2, 2), payload(0)
    assert vault.put(alice, first).version == 1
    assert vault.put(alice, second).version == 2
    assert vault.put(alice, third).version == 3
    assert vault.get(alice) == third
    assert vault.get(alice, 1) == first
    assert vault.get(alice, 2) == second
    assert [info.version for info in vault.versions(alice)] == [3, 2, 1]
    with pytest.raises(NotFound, match="v9"):
        vault.get(alice, 9)


def test_bytes_like_data_of_any_layout(vault: Vault, alice: ObjectRef, config_path: Path) -> None:
    data = payload(SEGMENT + 5)
    vault.put(alice, bytearray(data))
    assert vault.get(alice) == data
    vault.put(alice, memoryview(data).cast("B", (len(data),)))
    assert vault.get(alice) == data
    before = files_under(config_path.parent / "nodes")
    with pytest.raises(InvalidInput, match="contiguous"):
        vault.put(alice, memoryview(data)[::2])
    assert files_under(config_path.parent / "nodes") == before
    assert vault.cells["US"].catalog.claim_collectable(float("inf")) == []


def test_if_match_conflict_leaves_nothing_behind(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    vault.put(alice, b"one", if_match=0)
    vault.put(alice, b"two", if_match=1)
    before = files_under(config_path.parent / "nodes")
    with pytest.raises(Conflict, match="expected version 1, current is 2"):
        vault.put(alice, payload(3 * SEGMENT), if_match=1)
    with pytest.raises(Conflict, match="expected version 0, current is 2"):
        vault.put(alice, b"new?", if_match=0)
    assert files_under(config_path.parent / "nodes") == before
    assert vault.cells["US"].catalog.claim_collectable(float("inf")) == []
    assert vault.get(alice) == b"two"
    assert vault.put(alice, b"three", if_match=2).version > 2
    assert vault.get(alice) == b"three"


def test_list_pages_and_prefixes(vault: Vault, alice: ObjectRef) -> None:
    keys = ["b/2", "a/1", "a/2", "c", "a/10"]
    for key in keys:
        vault.put(ObjectRef("intl", "alice", key), key.encode())
    page = vault.list("intl", "alice", limit=2)
    assert [i.ref.key for i in page.items] == ["a/1", "a/10"]
    assert page.next_after == "a/10"
    page = vault.list("intl", "alice", start_after="a/10", limit=2)
    assert [i.ref.key for i in page.items] == ["a/2", "b/2"]
    page = vault.list("intl", "alice", start_after="b/2", limit=2)
    assert ([i.ref.key for i in page.items], page.next_after) == (["c"], None)
    assert [i.ref.key for i in vault.iter_objects("intl", "alice", "a/")] == ["a/1", "a/10", "a/2"]
    for bad in (0, 10_001):
        with pytest.raises(InvalidInput, match="limit"):
            vault.list("intl", "alice", limit=bad)


def test_delete_then_gc_removes_the_shards(vault: Vault, alice: ObjectRef) -> None:
    vault.put(alice, payload(SEGMENT + 1))
    paths = shard_paths(vault, alice)
    other = ObjectRef("intl", "alice", "keep")
    vault.put(other, b"keep me")
    kept = shard_paths(vault, other)
    assert vault.delete(alice) == 1
    with pytest.raises(NotFound):
        vault.get(alice)
    with pytest.raises(NotFound):
        vault.delete(alice)
    assert all(path.exists() for path in paths)  # gc, not delete, removes shards
    report = vault.gc(grace_seconds=3600)
    assert (report.versions, report.shards) == (1, 6)
    assert not any(path.exists() for path in paths)
    assert all(path.exists() for path in kept)
    assert vault.get(other) == b"keep me"


def test_delete_one_version(vault: Vault, alice: ObjectRef) -> None:
    vault.put(alice, b"v1")
    vault.put(alice, b"v2")
    v2_paths = shard_paths(vault, alice, 2)
    assert vault.delete(alice, 2) == 1
    assert vault.get(alice) == b"v1"
    vault.gc()
    assert not any(path.exists() for path in v2_paths)
    assert vault.get(alice) == b"v1"
    with pytest.raises(NotFound, match="v2"):
        vault.delete(alice, 2)


def test_unknown_subject_is_not_found(vault: Vault) -> None:
    with pytest.raises(NotFound, match="no subject bob in tenant intl"):
        vault.put(ObjectRef("intl", "bob", "k"), b"x")
    with pytest.raises(NotFound):
        vault.get(ObjectRef("intl", "bob", "k"))


def test_register_twice_is_a_conflict(vault: Vault, alice: ObjectRef) -> None:
    with pytest.raises(Conflict):
        vault.register_subject("intl", "alice", "SG")
    assert vault.subject("intl", "alice").jurisdiction == "US"


def _open_files_under(root: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)) and ".v" in os.path.basename(target):
            found.append(target)
    return found


def test_puts_and_reads_close_every_shard_file(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    """A leaked descriptor per shard per read exhausts the process's files, and pins disks."""
    nodes = config_path.parent / "nodes"
    vault.put(alice, payload(2 * SEGMENT + 3))
    assert _open_files_under(nodes) == []
    vault.get(alice)
    assert _open_files_under(nodes) == []
    with vault.open_read(alice) as reader:
        next(iter(reader))  # a reader abandoned half way is closed too
    shard_paths(vault, alice)[0].unlink()
    vault.get(alice)
    assert _open_files_under(nodes) == []


def test_a_reader_dropped_unclosed_closes_its_shard_files_as_a_file_does(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    """A reader left half read without close (no `with`) held its shards open until the
    process ended; as an io object it is closed when collected, as a file is."""
    nodes = config_path.parent / "nodes"
    vault.put(alice, payload(2 * SEGMENT + 3))
    segments = iter(vault.open_read(alice))
    next(segments)
    assert _open_files_under(nodes) != []
    del segments
    gc.collect()
    assert _open_files_under(nodes) == []


def test_a_reader_is_read_once(vault: Vault, alice: ObjectRef) -> None:
    """A second pass raises: an empty answer would pass for an empty object."""
    vault.put(alice, b"some bytes")
    with vault.open_read(alice) as reader:
        assert reader.read_all() == b"some bytes"
        with pytest.raises(RuntimeError):
            reader.read_all()


def test_a_reader_yields_nothing_before_its_key_is_released(vault: Vault, alice: ObjectRef) -> None:
    vault.put(alice, b"secret bytes")
    manifest = manifest_of(vault, alice)
    stores = [vault.cells["US"].store(node) for node in manifest.nodes]
    with (
        ThreadPoolExecutor(2) as pool,
        ObjectReader(manifest=manifest, stores=stores, code=vault.code, pool=pool) as reader,
        pytest.raises(RuntimeError),
    ):
        reader.read_all()


def test_a_put_of_many_segments_leaves_every_shard_whole(vault: Vault, alice: ObjectRef) -> None:
    """Each shard's blocks land in segment order: a put that let one shard's writes
    overtake each other would still read back (up to m bad shards a segment are read
    around), so the scrub, which checks every block of every shard, is what tells."""
    data = payload(256 * SEGMENT + 5)
    vault.put(alice, data)
    assert vault.get(alice) == data
    report = vault.repair(scrub=True, dry_run=True)
    assert (report.versions, report.rebuilt, report.problems) == (1, 0, ())
