"""One contract for every shard store: memory and local directory run the same tests."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardvault.errors import InvalidInput, NotFound, StorageError
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.memory import MemoryShardStore
from shardvault.nodes.port import (
    ShardStore,
    check_shard_name,
    object_id_of,
    parse_shard_name,
    shard_name,
)

OID = bytes.fromhex("0123456789abcdef0123456789abcdef")
NAME = shard_name(OID, 1, 0)
OTHER = shard_name(OID, 2, 0)


@pytest.fixture(params=["memory", "localdir-files", "localdir-packs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ShardStore]:
    """Every adapter, and the local directory both with small shards packed and without."""
    if request.param == "memory":
        yield MemoryShardStore("node-a")
        return
    pack_limit = 0 if request.param == "localdir-files" else 64 << 10
    local = LocalDirShardStore("node-a", tmp_path / "node-a", pack_limit)
    yield local
    local.close()


def put(store: ShardStore, name: str, *parts: bytes) -> None:
    writer = store.open_writer(name)
    for part in parts:
        writer.write(part)
    writer.commit()


def read(store: ShardStore, name: str, offset: int = 0, length: int = 1 << 20) -> bytes:
    reader = store.open_reader(name)
    try:
        return reader.read_at(offset, length)
    finally:
        reader.close()


def test_written_and_committed_shard_is_visible(store: ShardStore) -> None:
    put(store, NAME, b"header", b"", memoryview(b"-block-"), bytearray(b"tail"))
    assert read(store, NAME) == b"header-block-tail"
    assert list(store.names()) == [NAME]


def test_uncommitted_shard_is_invisible(store: ShardStore) -> None:
    writer = store.open_writer(NAME)
    writer.write(b"half a shard")
    assert list(store.names()) == []
    with pytest.raises(NotFound):
        store.open_reader(NAME)
    writer.commit()
    assert list(store.names()) == [NAME]


def test_abort_leaves_nothing(store: ShardStore) -> None:
    writer = store.open_writer(NAME)
    writer.write(b"doomed")
    writer.abort()
    writer.abort()  # safe twice
    assert list(store.names()) == []
    with pytest.raises(NotFound):
        store.open_reader(NAME)
    if isinstance(store, LocalDirShardStore):
        assert list(store.tmp_dir.iterdir()) == []
        assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_commit_replaces_an_existing_shard_whole(store: ShardStore) -> None:
    put(store, NAME, b"old contents, longer")
    put(store, NAME, b"new")
    assert read(store, NAME) == b"new"


def test_read_at_offsets_and_short_reads(store: ShardStore) -> None:
    put(store, NAME, bytes(range(100)))
    assert read(store, NAME, 10, 5) == bytes(range(10, 15))
    assert read(store, NAME, 95, 10) == bytes(range(95, 100))
    assert read(store, NAME, 100, 10) == b""
    assert read(store, NAME, 200, 10) == b""


def test_a_read_that_cannot_wait_gives_what_a_read_does_or_nothing(store: ShardStore) -> None:
    writer = store.open_writer(NAME)
    writer.write(bytes(range(100)))
    writer.commit()
    for length in (0, 10, 100, 200):  # fewer bytes only if the shard is shorter
        found = store.read_cached(NAME, writer.location, length)
        assert found is None or found == read(store, NAME, 0, length)
    missing = shard_name(OID, 2, 0)  # not there: open_reader says so, not this
    assert store.read_cached(missing, None, 10) is None
    with pytest.raises(NotFound):
        store.open_reader(missing)


def test_missing_shard_is_not_found(store: ShardStore) -> None:
    with pytest.raises(NotFound, match="not on node node-a"):
        store.open_reader(NAME)


def test_delete(store: ShardStore) -> None:
    put(store, NAME, b"x")
    assert store.delete(NAME) is True
    assert store.delete(NAME) is False
    assert list(store.names()) == []
    with pytest.raises(NotFound):
        store.open_reader(NAME)


def test_a_name_leaves_a_trace_where_writing_it_again_would_be_unsafe(
    store: ShardStore,
) -> None:
    # repair puts a rebuilt shard only where its name has no trace: a pack holding a
    # tombstone and then a new record of one name would lose the record to a rescan
    name = shard_name(b"\x07" * 16, 1, 3)
    assert not store.has_trace(name)
    put(store, name, b"first")
    assert store.has_trace(name)
    assert store.delete(name)
    store.sync()
    packed = isinstance(store, LocalDirShardStore) and store.pack_limit > 0
    assert store.has_trace(name) is packed  # a tombstone; a file or memory leaves nothing
    if not packed:
        put(store, name, b"second")
        assert read(store, name) == b"second"


def test_names_lists_every_committed_shard_sorted(store: ShardStore) -> None:
    other = bytes.fromhex("ff" * 16)
    names = [shard_name(OID, 1, i) for i in range(3)] + [shard_name(other, 12, 5)]
    for name in reversed(names):
        put(store, name, name.encode())
    assert list(store.names()) == sorted(names)
    for name in names:
        assert read(store, name) == name.encode()


def test_collect_temporaries_removes_only_old_uncommitted_files(store: ShardStore) -> None:
    put(store, NAME, b"committed")
    stale = store.open_writer(shard_name(OID, 2, 0))
    stale.write(b"stale")
    assert store.collect_temporaries(older_than=time.time() - 3600) == 0
    removed = store.collect_temporaries(older_than=time.time() + 1)
    assert list(store.names()) == [NAME]
    assert read(store, NAME) == b"committed"
    if isinstance(store, LocalDirShardStore):
        # a small shard waits in memory until commit when packs are on: no temp file
        assert removed == (1 if store.pack_limit == 0 else 0)
        assert list(store.tmp_dir.iterdir()) == []
    stale.abort()


def test_compact_keeps_every_shard_and_says_where_it_moved_them(store: ShardStore) -> None:
    names = [shard_name(OID, version, 0) for version in range(1, 9)]
    for name in names:
        put(store, name, name.encode() * 10)
    for name in names[:6]:
        assert store.delete(name)
    compacted = store.compact()
    moved = compacted.moved
    assert set(moved) <= set(names[6:]) and compacted.damaged == ()
    assert list(store.names()) == names[6:]
    for name in names[6:]:
        assert read(store, name) == name.encode() * 10
        reader = store.open_reader(name, location=moved.get(name))
        assert reader.read_at(0, 1 << 20) == name.encode() * 10
        reader.close()


def test_intact_says_whether_the_stores_own_check_of_a_shard_passes(store: ShardStore) -> None:
    writer = store.open_writer(NAME)
    writer.write(b"stored bytes")
    writer.commit()
    assert store.intact(NAME, writer.location)
    assert store.intact(NAME)
    with pytest.raises(NotFound):
        store.intact(shard_name(OID, 2, 0))
    with pytest.raises(InvalidInput):
        store.intact("../escape")
    if isinstance(store, LocalDirShardStore) and writer.location is not None:
        located = store.packs.locate(NAME)
        assert located is not None
        crc = store.packs.directory / located.pack
        raw = bytearray(crc.read_bytes())
        raw[located.offset + located.length] ^= 1  # a bit of the record's CRC
        crc.write_bytes(bytes(raw))
        assert not store.intact(NAME, writer.location)
        fresh = LocalDirShardStore("node-a", store.root, store.pack_limit)
        assert not fresh.intact(NAME, writer.location)  # found by location, as scrub asks
        reader = fresh.open_reader(NAME, writer.location)  # reads still serve its bytes
        assert reader.read_at(0, 100) == b"stored bytes"
        fresh.close()


def test_delete_takes_the_writers_location_and_survives_a_wrong_one(store: ShardStore) -> None:
    names = [shard_name(OID, version, 0) for version in (1, 2, 3)]
    locations = []
    for name in names:
        writer = store.open_writer(name)
        writer.write(name.encode())
        writer.commit()
        locations.append(writer.location)
    assert store.delete(names[0], locations[0])
    assert store.delete(names[1], locations[2])  # another shard's: looked up instead
    assert store.delete(names[2], "0123456789abcdef.pack:999")  # stale or bad
    assert not store.delete(names[0], locations[0])  # already gone
    assert list(store.names()) == []
    with pytest.raises(InvalidInput):
        store.delete("../" + NAME, locations[0])


def test_a_probe_answers_on_a_healthy_store(store: ShardStore) -> None:
    store.probe()  # vault/deadline.py brings a node back once this returns


def test_dropping_caches_loses_no_shard(store: ShardStore) -> None:
    names = [shard_name(OID, version, 0) for version in (1, 2, 3)]
    for name in names:
        put(store, name, name.encode())
    assert store.delete(names[1])
    store.drop_caches()
    assert list(store.names()) == [names[0], names[2]]
    assert [read(store, name) for name in (names[0], names[2])] == [n.encode() for n in names[::2]]


def test_parse_shard_name_inverts_shard_name() -> None:
    assert parse_shard_name(shard_name(OID, 12, 5)) == (OID, 12, 5, 0)
    assert parse_shard_name(shard_name(OID, 12, 5, 3)) == (OID, 12, 5, 3)
    with pytest.raises(InvalidInput):
        parse_shard_name("../" + NAME)


def test_a_generation_above_0_is_a_name_of_its_own_and_0_is_the_name_before_generations(
    store: ShardStore,
) -> None:
    # repair rebuilds a shard on the node its bad copy is on under a new generation:
    # both are on the node at once until the swap, and each is found by its own name
    assert shard_name(OID, 1, 2, 0) == shard_name(OID, 1, 2) == f"{OID.hex()}.v1.s2"
    assert shard_name(OID, 1, 2, 7) == f"{OID.hex()}.v1.s2.g7"
    names = [shard_name(OID, 1, 2, generation) for generation in (0, 1, 7)]
    for name in names:
        put(store, name, name.encode())
    assert sorted(store.names()) == sorted(names)
    assert store.delete(names[0])
    store.sync()
    assert [read(store, name) for name in names[1:]] == [n.encode() for n in names[1:]]
    assert not store.has_trace(shard_name(OID, 1, 2, 2))


INVALID_NAMES = [
    "",
    "../../etc/passwd",
    "..",
    "/etc/passwd",
    f"../{NAME}",
    f"{NAME}/../x",
    f"sub/{NAME}",
    f"{NAME}\x00",
    f"{NAME}\n",
    f"..\\{NAME}",
    NAME.upper(),
    "0123456789abcdef0123456789abcde.v1.s0",  # 31 hex digits
    "0123456789abcdef0123456789abcdef.v1.s100",
    "0123456789abcdef0123456789abcdef.v.s0",
    "0123456789abcdef0123456789abcdef.v1",
    "0123456789abcdef0123456789abcdef.v1.s0.g0",  # generation 0 has no suffix: one name
    "0123456789abcdef0123456789abcdef.v1.s0.g01",
    "0123456789abcdef0123456789abcdef.v1.s0.g",
    "0123456789abcdef0123456789abcdef.v1.s0.g1.g2",
    "0123456789abcdef0123456789abcdef.v1.s0.g12345678901",  # 11 digits
    "\uff10123456789abcdef0123456789abcdef.v1.s0",  # fullwidth digit zero
]


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_refused_everywhere(store: ShardStore, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid shard name"):
        store.open_writer(name)
    with pytest.raises(InvalidInput):
        store.open_reader(name)
    with pytest.raises(InvalidInput):
        store.delete(name)


def test_refused_names_write_nothing_anywhere(tmp_path: Path) -> None:
    root = tmp_path / "node"
    store = LocalDirShardStore("node", root)
    for name in INVALID_NAMES:
        with pytest.raises(InvalidInput):
            store.open_writer(name)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_shard_names() -> None:
    assert NAME == "0123456789abcdef0123456789abcdef.v1.s0"
    assert check_shard_name(NAME) == NAME
    assert object_id_of(shard_name(OID, 42, 17)) == OID.hex()


def reopened_with_a_shard(root: Path, pack_limit: int) -> tuple[LocalDirShardStore, str | None]:
    """A store on `root` holding NAME, opened after the one that wrote it was closed (so
    it holds no pack open, as another process's), and NAME's location."""
    writing = LocalDirShardStore("node", root, pack_limit)
    writer = writing.open_writer(NAME)
    writer.write(b"a shard")
    writer.commit()
    writing.close()
    return LocalDirShardStore("node", root, pack_limit), writer.location


@pytest.mark.parametrize("pack_limit", [0, 64 << 10])
def test_a_localdir_store_whose_directory_went_says_so_not_that_a_shard_is_gone(
    tmp_path: Path, pack_limit: int
) -> None:
    # a disk unmounted under an open store hides its shards: "no such shard" let repair
    # drop its notes of copies still there, and after a remount they stayed for good
    root = tmp_path / "node"
    store, location = reopened_with_a_shard(root, pack_limit)
    root.rename(tmp_path / "aside")
    with pytest.raises(StorageError, match=r"node node: finding .* failed"):
        store.delete(NAME, location)
    with pytest.raises(StorageError):
        store.open_reader(NAME, location)
    with pytest.raises(StorageError):
        store.has_trace(NAME)
    with pytest.raises(StorageError):  # nor is a node brought back while it is gone
        store.probe()
    (tmp_path / "aside").rename(root)  # mounted again
    assert store.has_trace(NAME)
    assert read(store, NAME) == b"a shard"
    assert store.delete(NAME, location)
    store.close()


@pytest.mark.parametrize("pack_limit", [0, 64 << 10])
def test_a_localdir_store_tells_its_directory_from_one_made_again_in_its_place(
    tmp_path: Path, pack_limit: int
) -> None:
    # another process opening the node while its disk was unmounted makes a new,
    # empty shards/ on the mount point: that one must not answer "no such shard"
    root = tmp_path / "node"
    store, location = reopened_with_a_shard(root, pack_limit)
    root.rename(tmp_path / "aside")
    LocalDirShardStore("node", root, pack_limit).close()  # the other process's open
    for call in (
        lambda: store.delete(NAME, location),
        lambda: store.has_trace(NAME),
        lambda: list(store.names()),
    ):
        with pytest.raises(StorageError, match="not the directory this process opened"):
            call()
    shutil.rmtree(root)
    (tmp_path / "aside").rename(root)  # its own disk back
    assert store.has_trace(NAME)
    assert store.delete(NAME, location)
    store.close()


def test_a_file_shard_is_not_committed_into_a_directory_made_again(tmp_path: Path) -> None:
    # a shard too large for a pack, written while the node's disk was unmounted and its
    # shards/ made again on the mount point, was renamed in there and acknowledged: the
    # real disk, mounted back, hid it from every read
    root = tmp_path / "node"
    store, _ = reopened_with_a_shard(root, pack_limit=0)
    store.shard_dir.rename(tmp_path / "aside")
    store.shard_dir.mkdir()  # made again
    writer = store.open_writer(OTHER)
    writer.write(b"a large shard")
    with pytest.raises(StorageError) as refused:
        writer.commit()
    assert str(refused.value) == (
        f"node node: {store.shard_dir} is not the directory this process opened (a disk "
        "unmounted, or the directory made again): reopen the vault once the node's own "
        "directory is back"
    )
    assert [p for p in root.rglob("*") if p.is_file()] == []  # nothing left, tmp/ included
    store.shard_dir.rmdir()
    (tmp_path / "aside").rename(store.shard_dir)  # its own disk back
    put(store, OTHER, b"a large shard")
    assert read(store, OTHER) == b"a large shard"
    store.close()


def test_localdir_layout_and_atomic_rename(tmp_path: Path) -> None:
    store = LocalDirShardStore("node", tmp_path / "node", pack_limit=0)
    writer = store.open_writer(NAME)
    writer.write(b"abc")
    (temp,) = list(store.tmp_dir.iterdir())
    assert temp.name.startswith(NAME + ".")
    assert not store.shard_path(NAME).exists()
    writer.commit()
    assert store.shard_path(NAME) == store.shard_dir / "01" / "23" / NAME
    assert store.shard_path(NAME).read_bytes() == b"abc"
    assert list(store.tmp_dir.iterdir()) == []
    assert os.stat(store.shard_path(NAME)).st_mode & 0o077 == 0


def test_localdir_collect_temporaries_leaves_a_directory_in_tmp_alone(tmp_path: Path) -> None:
    """A directory in tmp/ (a person's, a copy tool's) failed the unlink with EISDIR:
    every gc skipped the node, calling it unavailable while `nodes` found it well."""
    store = LocalDirShardStore("node", tmp_path / "node", pack_limit=0)
    (store.tmp_dir / "someones-dir").mkdir()
    stale = store.open_writer(NAME)
    stale.write(b"stale")
    assert store.collect_temporaries(older_than=time.time() + 1) == 1
    assert [p.name for p in store.tmp_dir.iterdir()] == ["someones-dir"]
    stale.abort()
    store.close()


def test_a_store_names_no_stray_until_it_finds_one(store: ShardStore) -> None:
    put(store, NAME, b"shard")
    assert list(store.names()) == [NAME]
    store.collect_temporaries(older_than=time.time() + 1)
    assert store.strays() == []


@pytest.mark.parametrize("kind", ["directory", "symlink to a directory"])
def test_localdir_leaves_a_directory_named_like_a_shard_alone_and_names_it(
    tmp_path: Path, kind: str
) -> None:
    """A directory `shards/ab/cd/<a shard's name>` (a person's mkdir, a restore tool's)
    was listed as a shard: gc took it for an orphan, its delete failed with EISDIR, and
    gc skipped the whole node on every run (exit 1). It is not a shard: never listed,
    a delete of its name deletes nothing, and `strays` names it (and one in tmp/)."""
    store = LocalDirShardStore("node", tmp_path / "node", pack_limit=0)
    kept, stray_name = shard_name(OID, 1, 0), shard_name(bytes.fromhex("ab" * 16), 1, 0)
    put(store, kept, b"kept")
    stray = store.shard_path(stray_name)
    stray.parent.mkdir(parents=True)
    if kind == "directory":
        stray.mkdir()
    else:
        (tmp_path / "elsewhere").mkdir()
        stray.symlink_to(tmp_path / "elsewhere")
    (store.tmp_dir / "someones-dir").mkdir()
    assert list(store.names()) == [kept]
    assert store.collect_temporaries(older_than=time.time() + 1) == 0
    assert store.strays() == sorted([str(stray), str(store.tmp_dir / "someones-dir")])
    if kind == "directory":  # a link's unlink would take the link only, not what it names
        assert store.delete(stray_name) is False
    assert stray.is_dir() and read(store, kept) == b"kept"
    store.close()


def test_localdir_names_a_directory_named_like_a_pack_as_a_stray(tmp_path: Path) -> None:
    store = LocalDirShardStore("node", tmp_path / "node")
    put(store, NAME, b"packed")
    stray = store.packs.directory / "0123456789abcdef.pack"
    stray.mkdir()
    assert list(store.names()) == [NAME]
    assert store.strays() == [str(stray)]
    stray.rmdir()
    assert list(store.names()) == [NAME]
    assert store.strays() == []
    store.close()


def test_a_shard_committed_without_waiting_is_made_durable_by_its_writer(
    store: ShardStore,
) -> None:
    writer = store.open_writer(NAME)
    writer.write(b"shard")
    writer.commit(durable=False)
    writer.sync()
    assert read(store, NAME) == b"shard"


def test_no_pack_is_made_in_a_directory_put_where_the_node_was(tmp_path: Path) -> None:
    """A disk unmounted under the process leaves its empty mount point: the first small
    put made packs/ there (on the disk beneath, synced as the node's own file system
    by its group commit), was acknowledged, and was hidden once the disk was back."""
    root = tmp_path / "node-a"
    store = LocalDirShardStore("node-a", root)
    root.rename(tmp_path / "elsewhere")  # as a lazy unmount: the open directory goes on
    root.mkdir()  # the empty mount point
    writer = store.open_writer(NAME)
    writer.write(b"small shard")
    with pytest.raises(StorageError, match="node-a"):
        writer.commit()
    assert list(root.iterdir()) == []
    store.close()


def nowait_reads(path: Path) -> bool:
    """Whether the file system can say that a read would wait (RWF_NOWAIT; tmpfs cannot)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_packed_shard_is_read_from_the_page_cache_once_its_pack_is_open(
    tmp_path: Path,
) -> None:
    # the get path reads a small object's shards in its caller only this way (vault/reader.py)
    writer = LocalDirShardStore("node-a", tmp_path / "node-a").open_writer(NAME)
    writer.write(b"small shard")
    writer.commit()
    (pack,) = (tmp_path / "node-a" / "packs").glob("*.pack")
    if not nowait_reads(pack):
        pytest.skip("the file system cannot tell a read that would wait")
    store = LocalDirShardStore("node-a", tmp_path / "node-a")  # as another process
    assert store.read_cached(NAME, writer.location, 5) is None  # its pack is not open here
    reader = store.open_reader(NAME, writer.location)  # opens it, without indexing
    assert reader.read_at(0, 100) == b"small shard"
    assert store.read_cached(NAME, writer.location, 5) == b"small"
    assert store.read_cached(NAME, writer.location, 100) == b"small shard"
    assert store.read_cached(NAME, None, 5) is None  # not indexed: a lookup would scan
    assert read(store, NAME) == b"small shard"  # indexes it
    assert store.read_cached(NAME, None, 5) == b"small"


def test_reading_a_pack_leaves_its_access_time_alone(tmp_path: Path) -> None:
    """Updating it is a journal write, which a hung disk holds even when the page cache
    answers the read itself (relatime updates it on the first read after a write)."""
    store = LocalDirShardStore("node-a", tmp_path / "node-a")
    writer = store.open_writer(NAME)
    writer.write(b"small shard")
    writer.commit()
    (pack,) = (tmp_path / "node-a" / "packs").glob("*.pack")
    before = pack.stat()
    os.utime(pack, ns=(before.st_mtime_ns - 10**12, before.st_mtime_ns))  # older than mtime
    fresh = LocalDirShardStore("node-a", tmp_path / "node-a")
    assert read(fresh, NAME) == b"small shard"
    assert fresh.read_cached(NAME, writer.location, 5) in (b"small", None)
    assert pack.stat().st_atime_ns == before.st_mtime_ns - 10**12
