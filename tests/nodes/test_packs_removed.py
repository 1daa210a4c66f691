"""A pack file removed, moved or replaced under the process appending to it.

The process kept appending to the file it held open: every later small shard was
acknowledged on that node and seen by no other process, nor by this one after a
restart. The write that finds it gone now fails, naming the node; the next goes to a
new pack.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from test_packs import name, put, read

from shardvault.errors import NotFound, StorageError
from shardvault.nodes import held_file, packs
from shardvault.nodes.held_file import HeldFile
from shardvault.nodes.localdir import LocalDirShardStore, LocalShardWriter

GONE = "node n: pack [0-9a-f]{16}.pack was removed or replaced under this process"


def removed(pack: Path) -> None:
    pack.unlink()  # an operator's mistaken rm, a disk cleanup


def restored(pack: Path) -> None:
    content = pack.read_bytes()  # a restore tool: the same name, another file
    pack.unlink()
    pack.write_bytes(content)


def moved_away(pack: Path) -> None:
    pack.rename(pack.parent.parent / pack.name)  # still linked, no longer in packs/


DAMAGE = {"removed": removed, "restored": restored, "moved away": moved_away}


@pytest.fixture(params=["proc", "no proc"])
def proc(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the store's looks at its pack are made: by /proc's link to the descriptor, or,
    with no /proc (unmounted, hidden), by a stat of the pack's name (nodes/held_file.py)."""
    if request.param == "no proc":
        monkeypatch.setattr(held_file, "FD_LINKS", "/nonexistent")
    return str(request.param)


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_write_into_a_pack_gone_from_its_name_fails_and_the_next_makes_a_new_one(
    tmp_path: Path, damage: Callable[[Path], None], proc: str
) -> None:
    root = tmp_path / "node"
    store = LocalDirShardStore("n", root)
    put(store, name(1), b"before")
    (pack,) = (root / "packs").glob("*.pack")
    damage(pack)
    with pytest.raises(StorageError, match=GONE):
        put(store, name(2), b"not acknowledged")
    put(store, name(3), b"after")
    assert read(store, name(3)) == b"after"
    fresh = LocalDirShardStore("n", root)  # another process, or this one restarted
    assert read(fresh, name(3)) == b"after"
    with pytest.raises(NotFound):
        read(fresh, name(2))
    fresh.close()
    store.close()


def test_writes_into_a_pack_left_alone_succeed_with_or_without_proc(
    tmp_path: Path, proc: str
) -> None:
    """A look that took a pack left alone for one gone failed every put of the node."""
    root = tmp_path / "node"
    store = LocalDirShardStore("n", root)
    for version in range(1, 6):
        put(store, name(version), b"kept %d" % version)
    pending = store.open_writer(name(6))  # synced later, as the vault's puts are
    pending.write(b"kept 6")
    pending.commit(durable=False)
    pending.sync()
    fresh = LocalDirShardStore("n", root)
    assert [read(fresh, name(v)) for v in range(1, 7)] == [b"kept %d" % v for v in range(1, 7)]
    assert len(list((root / "packs").glob("*.pack"))) == 1  # no pack given up on
    fresh.close()
    store.close()


def test_appends_made_before_a_full_pack_was_found_gone_are_not_called_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation lets the full pack go: it is looked at first, or its last appends,
    synced after, would never be looked at again."""
    monkeypatch.setattr(packs, "ROTATE_AT", 200)
    root = tmp_path / "node"
    store = LocalDirShardStore("n", root)
    pending = store.open_writer(name(1))
    pending.write(b"a" * 300)
    pending.commit(durable=False)
    (pack,) = (root / "packs").glob("*.pack")
    pack.unlink()
    put(store, name(2), b"b" * 100)  # past ROTATE_AT: a new pack
    with pytest.raises(StorageError, match=GONE):
        pending.sync()
    fresh = LocalDirShardStore("n", root)
    assert read(fresh, name(2)) == b"b" * 100
    fresh.close()
    store.close()


def test_a_compaction_whose_own_pack_went_keeps_the_packs_it_copied(tmp_path: Path) -> None:
    """Its copies went into the removed pack: removing the old packs then lost them."""
    root = tmp_path / "node"
    writer = LocalDirShardStore("n", root)
    put(writer, name(1), b"kept" * 50)
    put(writer, name(2), b"dead" * 200)
    assert writer.delete(name(2))  # the pack is mostly dead: worth compacting
    writer.close()
    collector = LocalDirShardStore("n", root)
    old = {p.name for p in (root / "packs").glob("*.pack")}
    put(collector, name(3), b"the collector's own")
    (own,) = {p for p in (root / "packs").glob("*.pack") if p.name not in old}
    os.unlink(own)
    with pytest.raises(StorageError, match=GONE):
        collector.compact()
    assert old <= {p.name for p in (root / "packs").glob("*.pack")}
    fresh = LocalDirShardStore("n", root)
    assert read(fresh, name(1)) == b"kept" * 50
    fresh.close()
    collector.close()


def test_the_look_for_a_put_s_pack_does_not_wait_for_a_scan_or_a_compaction(
    tmp_path: Path,
) -> None:
    """Both hold the pack set's lock for as long as they take: the look, once a put's
    append is synced, needs it only when the pack turns out gone."""
    store = LocalDirShardStore("n", tmp_path / "node")
    put(store, name(1), b"opens the pack")
    pending = store.open_writer(name(2))
    pending.write(b"appended")
    pending.commit(durable=False)
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with store.packs._lock:  # as `compact` and `refresh` do, for long
            holding.set()
            release.wait()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    holding.wait()
    synced = threading.Event()
    syncer = threading.Thread(target=lambda: (pending.sync(), synced.set()), daemon=True)
    syncer.start()
    try:
        assert synced.wait(timeout=30), "the put's sync waited for the pack set's lock"
    finally:
        release.set()
        holder.join()
        syncer.join()
    assert read(store, name(2)) == b"appended"
    store.close()


def test_a_delete_whose_tombstone_went_into_a_removed_pack_is_not_called_durable(
    tmp_path: Path,
) -> None:
    """The shard's record, zeroed in its own pack, stays zeroed; the tombstone is what
    a compaction copying the record meanwhile, or settling a dead one, looks for to
    zero its copy too. Lost with the pack, the delete fails its sync (gc then counts
    the node failed, and its next orphan sweep takes any copy), and the next delete
    goes to a new pack."""
    root = tmp_path / "node"
    writer = LocalDirShardStore("n", root)
    put(writer, name(1), b"doomed")
    put(writer, name(3), b"deleted later")
    writer.close()
    deleter = LocalDirShardStore("n", root)
    old = set((root / "packs").glob("*.pack"))
    put(deleter, name(2), b"the deleter's own")
    (own,) = set((root / "packs").glob("*.pack")) - old
    own.unlink()
    assert deleter.delete(name(1))
    with pytest.raises(StorageError, match=GONE):
        deleter.sync()
    assert deleter.delete(name(3))
    deleter.sync()
    fresh = LocalDirShardStore("n", root)
    assert not fresh.has_trace(name(1))  # its record zeroed, its tombstone lost
    assert fresh.has_trace(name(3))  # its tombstone, in the new pack
    with pytest.raises(NotFound):
        read(fresh, name(3))
    fresh.close()
    deleter.close()


def test_a_pack_whose_holding_failed_is_not_left_active_without_its_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made active before its held file was built, a pack whose fstat failed there was
    appended to by the next put, whose look then hit an assertion instead of an answer."""
    failed: list[bool] = []

    def held_once_failing(fd: int, path: str) -> HeldFile:
        if not failed:
            failed.append(True)
            raise OSError(errno.EIO, "Input/output error")  # as its fstat would
        return HeldFile(fd, path)

    monkeypatch.setattr(packs, "HeldFile", held_once_failing)
    root = tmp_path / "node"
    store = LocalDirShardStore("n", root)
    with pytest.raises(StorageError, match="node n: appending to a pack failed: Input/output"):
        put(store, name(1), b"not written")
    assert list((root / "packs").glob("*.pack")) == []  # nothing left half made
    put(store, name(2), b"written")
    (pack,) = (root / "packs").glob("*.pack")
    pack.unlink()
    with pytest.raises(StorageError, match=GONE):
        put(store, name(3), b"into the removed pack")
    fresh = LocalDirShardStore("n", root)
    with pytest.raises(NotFound):
        read(fresh, name(1))
    fresh.close()
    store.close()


def _failing_once(monkeypatch: pytest.MonkeyPatch, call: str, errno_: int) -> None:
    """Make the next `os.<call>` fail, as a full or failing disk would; later ones run."""
    real = getattr(os, call)
    failed: list[bool] = []

    def once(*args: object) -> object:
        if not failed:
            failed.append(True)
            raise OSError(errno_, os.strerror(errno_))
        return real(*args)

    monkeypatch.setattr(os, call, once)


def _appended_unsynced(store: LocalDirShardStore) -> LocalShardWriter:
    """A put appended to the node's pack, its sync (and the look after it) still to come."""
    pending = store.open_writer(name(1))
    pending.write(b"appended before")
    pending.commit(durable=False)
    return pending


def test_appends_made_before_a_pack_was_given_up_on_are_not_called_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append that fails, and whose cutting off fails too, lets the pack go: it is
    looked at first, or the appends before it, synced after, were never looked at."""
    root = tmp_path / "node"
    store = LocalDirShardStore("n", root)
    pending = _appended_unsynced(store)
    (pack,) = (root / "packs").glob("*.pack")
    pack.unlink()
    _failing_once(monkeypatch, "pwrite", errno.ENOSPC)
    _failing_once(monkeypatch, "ftruncate", errno.EIO)
    with pytest.raises(StorageError, match="node n: appending to a pack failed: disk full"):
        put(store, name(2), b"not written")
    with pytest.raises(StorageError, match=GONE):
        pending.sync()
    put(store, name(3), b"after")
    fresh = LocalDirShardStore("n", root)
    assert read(fresh, name(3)) == b"after"
    fresh.close()
    store.close()


def test_appends_made_before_the_store_closed_are_not_called_durable(tmp_path: Path) -> None:
    """Closing lets the pack go: a put whose append came before, synced after, was
    never looked at."""
    root = tmp_path / "node"
    store = LocalDirShardStore("n", root)
    pending = _appended_unsynced(store)
    (pack,) = (root / "packs").glob("*.pack")
    pack.unlink()
    store.close()
    with pytest.raises(StorageError, match=GONE):
        pending.sync()


def test_appends_made_before_the_store_closed_without_proc_are_not_called_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without /proc the look as the store closes would be a stat of the pack's name,
    made on the closing thread, which a hung disk holds for as long as it hangs: none
    is made, and what only it could have said durable is not (fail closed)."""
    monkeypatch.setattr(held_file, "FD_LINKS", "/nonexistent")
    root = tmp_path / "node"
    store = LocalDirShardStore("n", root)
    put(store, name(2), b"looked at")  # its put's look covers it: durable
    pending = _appended_unsynced(store)
    store.close()
    with pytest.raises(
        StorageError,
        match=r"node n: pack [0-9a-f]{16}\.pack was let go as its store closed, unlooked at "
        r"\(without /proc the look is a stat of its name, which a hung disk would hold\), so "
        r"this write is not known durable: retry",
    ):
        pending.sync()
    fresh = LocalDirShardStore("n", root)
    assert read(fresh, name(2)) == b"looked at"
    fresh.close()


def test_appends_before_a_pack_let_go_whose_look_failed_are_not_called_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look made as a pack is given up on may fail itself: the appends it was to
    cover are then not known durable, and fail (fail closed)."""
    root = tmp_path / "node"
    store = LocalDirShardStore("n", root)
    pending = _appended_unsynced(store)
    look = HeldFile.at_its_name
    looks: list[bool] = []

    def failing_once(held: HeldFile) -> bool:
        if not looks:
            looks.append(True)
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # /proc and the stat alike
        return look(held)

    monkeypatch.setattr(HeldFile, "at_its_name", failing_once)
    _failing_once(monkeypatch, "pwrite", errno.ENOSPC)
    _failing_once(monkeypatch, "ftruncate", errno.EIO)
    with pytest.raises(StorageError, match="node n: appending to a pack failed: disk full"):
        put(store, name(2), b"not written")
    with pytest.raises(
        StorageError,
        match=r"node n: pack [0-9a-f]{16}\.pack could not be looked for at its name "
        r"\(Input/output error\) before it was let go, so this write is not known durable",
    ):
        pending.sync()
    put(store, name(3), b"after")
    store.close()
