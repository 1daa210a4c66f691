"""Group commit covers every write noted before it began; background flushes lose no error."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.interrupts import (
    Interrupted,
    interrupted_when_relocking,
    interrupts_on_sigusr1,
    main_thread_leaves_when_woken,
    queue_behind_main,
    returns_within,
    wait_for,
)

from conftest import Flushes
from shardvault import background_flush, durability, group_commit
from shardvault.background_flush import BackgroundFlush
from shardvault.durability import failure_reason
from shardvault.errors import StorageError
from shardvault.group_commit import GroupSync, WaitRoom, filesystem_sync
from shardvault.nodes import localdir
from shardvault.nodes.localdir import WRITEBACK_CHUNK, LocalDirShardStore
from shardvault.nodes.port import shard_name


def test_noting_writes_does_not_flush_and_one_sync_covers_them_all() -> None:
    flushes = Flushes()
    group = GroupSync(flushes, "test")
    tickets = [group.note_write() for _ in range(6)]
    assert tickets == [1, 2, 3, 4, 5, 6] and flushes.count == 0
    group.sync(tickets[0])
    assert flushes.count == 1
    for ticket in tickets:
        group.sync(ticket)
    assert flushes.count == 1, "one flush began after all six were noted"
    group.close()


def test_a_failed_flush_fails_exactly_the_writes_it_covered() -> None:
    flushes = Flushes()
    group = GroupSync(flushes, "test")
    lost = group.note_write()
    flushes.fail_next = True
    with pytest.raises(StorageError, match="Input/output error"):
        group.sync(lost)
    with pytest.raises(StorageError):
        group.sync(lost)  # never called durable later either
    later = group.note_write()
    group.sync(later)
    assert flushes.count == 2
    group.close()


def test_concurrent_syncs_share_flushes_and_all_return() -> None:
    flushes = Flushes(seconds=0.002)  # about a disk flush
    group = GroupSync(flushes, "test")

    def worker() -> None:
        for _ in range(50):
            group.sync(group.note_write())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert flushes.count < 200, "eight writers waiting together should share flushes"
    group.close()


def test_close_flushes_what_was_noted_and_refuses_new_writes() -> None:
    flushes = Flushes()
    group = GroupSync(flushes, "test")
    ticket = group.note_write()
    group.sync(ticket)  # starts the flusher
    group.note_write()
    group.close()
    assert flushes.count == 2
    with pytest.raises(StorageError, match="closed"):
        group.note_write()


def test_a_ticket_beyond_the_last_write_waits_for_every_write_and_never_hangs() -> None:
    flushes = Flushes()
    group = GroupSync(flushes, "test")
    group.note_write()
    group.sync(5)  # no such ticket: everything written is made durable
    assert flushes.count == 1
    group.sync(group.note_write())  # the group still works
    assert flushes.count == 2
    group.close()


def test_close_flushes_writes_nobody_waited_for() -> None:
    flushes = Flushes()
    group = GroupSync(flushes, "test")
    group.note_write()
    group.close()  # no flusher was running: close starts one to flush
    assert flushes.count == 1


class SlowFlushes:
    """Stands in for os.fdatasync: records the descriptors, can hold or fail the flush."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.error: OSError | None = None

    def __call__(self, fd: int) -> None:
        self.fds.append(fd)
        self.release.wait(10)
        if self.error is not None:
            raise self.error
        os.fstat(fd)  # the descriptor must still be open


def test_background_flush_starts_every_chunk_and_skips_while_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes = SlowFlushes()
    monkeypatch.setattr(os, "fdatasync", flushes)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    flush = BackgroundFlush(fd, every=100)
    flush.wrote(99)
    flush.finish()
    assert flushes.fds == [], "below the chunk nothing is flushed"
    flushes.release.clear()
    flush.wrote(1)  # reaches the chunk: a flush starts and is held
    flush.wrote(100)  # another chunk while it runs: no second flush
    flushes.release.set()
    flush.finish()
    assert flushes.fds == [fd]
    flush.wrote(100)  # the last one is done: the pending bytes start a new flush
    flush.finish()
    assert flushes.fds == [fd, fd]
    os.close(fd)


def test_a_background_flush_error_is_raised_by_finish_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes = SlowFlushes()
    flushes.error = OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fdatasync", flushes)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    flush = BackgroundFlush(fd, every=10)
    flush.wrote(10)
    assert isinstance(flush.wait(), OSError)
    with pytest.raises(OSError, match="Input/output error"):
        flush.finish()
    os.close(fd)


def test_a_shard_whose_background_flush_failed_is_not_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalDirShardStore("n1", tmp_path, pack_limit=16)
    flushes = SlowFlushes()
    flushes.error = OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fdatasync", flushes)
    name = shard_name(b"\x01" * 16, 1, 0)
    writer = store.open_writer(name)
    writer.write(b"x" * (WRITEBACK_CHUNK + 1))
    with pytest.raises(StorageError, match="Input/output error"):
        writer.commit()
    assert flushes.fds, "the shard outgrew a chunk, so a background flush ran"
    assert not store.shard_path(name).exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_abort_waits_for_the_running_flush_before_closing_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalDirShardStore("n1", tmp_path, pack_limit=16)
    flushes = SlowFlushes()
    flushes.release.clear()
    monkeypatch.setattr(os, "fdatasync", flushes)
    writer = store.open_writer(shard_name(b"\x02" * 16, 1, 0))
    writer.write(b"x" * WRITEBACK_CHUNK)
    threading.Timer(0.2, flushes.release.set).start()
    writer.abort()  # raises nothing; a flush on a closed descriptor would fail its fstat
    assert flushes.release.is_set() and len(flushes.fds) == 1
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_hung_disk_never_holds_up_a_large_put_to_a_healthy_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Background flushes share one pool: a node whose disk hung filled it, and a large
    shard on a healthy node queued its flush behind theirs and waited at its commit,
    for ever. The hung disk is a stand-in: fdatasync patched to block on that node's
    files only (a real one would block every file of its filesystem)."""
    hung_root = tmp_path / "hung"
    release = threading.Event()
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(f"{hung_root}/"):
            release.wait()  # the disk never answers, until the test ends
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    hung = LocalDirShardStore("hung", hung_root, pack_limit=16)
    healthy = LocalDirShardStore("ok", tmp_path / "ok", pack_limit=16)
    stuck = [
        hung.open_writer(shard_name(bytes([i + 1]) * 16, 1, 0))
        for i in range(background_flush._FLUSH_THREADS)
    ]
    name = shard_name(b"\x0f" * 16, 1, 0)
    try:
        for writer in stuck:  # as many large puts to the hung node as the pool has threads
            writer.write(b"x" * WRITEBACK_CHUNK)
        writer = healthy.open_writer(name)

        def put() -> None:
            writer.write(b"y" * (WRITEBACK_CHUNK + 1))
            writer.commit()

        assert returns_within(put, 10), "a put to a healthy node waited on a hung disk"
        assert healthy.shard_path(name).stat().st_size == WRITEBACK_CHUNK + 1
    finally:
        release.set()
        for writer in stuck:
            writer.abort()
        hung.close()
        healthy.close()


def test_a_leader_interrupted_while_taking_its_lock_back_leaves_nobody_hanging() -> None:
    group = GroupSync(lambda: None, "test")
    group._flush = interrupted_when_relocking(group._lock, lambda: None)  # type: ignore[method-assign]
    group.note_write()
    with interrupts_on_sigusr1(), pytest.raises(Interrupted):
        group.sync()
    group._flush = lambda: None  # type: ignore[method-assign]
    group.note_write()
    assert returns_within(group.sync), "a later sync hung behind the interrupted leader"
    group.close()


def test_the_end_of_a_write_wakes_its_waiters_and_one_leader_only() -> None:
    lock = threading.Lock()
    room = WaitRoom(lock)
    woke: list[str] = []
    waiting = threading.Semaphore(0)

    def waiter(name: str, covered: bool) -> None:
        with lock:
            waiting.release()
            room.wait(covered)
            woke.append(name)

    threads = [
        threading.Thread(target=waiter, args=(name, covered))
        for name, covered in (("covered", True), ("later-1", False), ("later-2", False))
    ]
    for thread in threads:
        thread.start()
        assert waiting.acquire(timeout=5)
    with lock:  # every waiter is asleep once it has released the lock in wait()
        room.write_ended()
    wait_for(lambda: len(woke) >= 2)
    time.sleep(0.2)  # room for a wrongly woken third waiter to show up
    assert sorted(woke)[0] == "covered" and len(woke) == 2, woke  # one later waiter leads
    with lock:  # that leader's write ends: it covered the other later waiter
        room.write_ended()
    for thread in threads:
        thread.join(5)
    assert sorted(woke) == ["covered", "later-1", "later-2"]


def test_a_write_nobody_waits_for_notifies_nobody_and_later_sleepers_still_wake() -> None:
    """With nobody asleep the end of a write skips the conditions' notify (Python code,
    paid by every small request); a caller that sleeps after it is woken by the next."""
    lock = threading.Lock()
    room = WaitRoom(lock)
    notified: list[str] = []
    for name in ("_covered", "_later"):
        condition = getattr(room, name)
        for method in ("notify", "notify_all"):
            real = getattr(condition, method)

            def counted(*args: object, _real=real, _name=f"{name}.{method}") -> None:  # type: ignore[no-untyped-def]
                notified.append(_name)
                _real(*args)

            setattr(condition, method, counted)
    with lock:
        room.write_ended()
        room.write_ended(took_later=True)
    assert notified == []
    woke = threading.Event()
    asleep = threading.Semaphore(0)

    def waiter() -> None:
        with lock:
            asleep.release()
            room.wait(covered=False)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert asleep.acquire(timeout=5)
    with lock:  # the waiter has released the lock inside wait(): it sleeps
        room.write_ended()
    assert woke.wait(5) and notified
    thread.join(5)
    assert room._sleeping == 0


def test_a_caller_woken_to_lead_that_leaves_hands_the_lead_on() -> None:
    """Woken to lead the next flush, the main thread is interrupted before it starts
    it: the other caller waiting for that flush must be woken to run it."""
    release, flushes = threading.Event(), []

    def flush() -> None:
        flushes.append(threading.current_thread().name)
        if len(flushes) == 1:
            release.wait(5)

    group = GroupSync(flush, "test")
    waiting = main_thread_leaves_when_woken(
        group._room, lambda: len(flushes) == 1 and not group._flushing
    )
    group.note_write()
    threading.Thread(target=group.sync, name="first").start()
    wait_for(lambda: group._flushing)
    group.note_write()  # the main thread's write needs the next flush, and so will later's

    def later() -> None:
        group.note_write()
        group.sync()

    queue_behind_main(waiting, threading.Thread(target=later, name="later", daemon=True), release)
    with pytest.raises(Interrupted):
        group.sync()
    wait_for(lambda: flushes == ["first", "later"])


def test_a_filesystem_sync_outlives_the_directory_it_was_first_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that closed one deployment and removed it (a library user's temporary
    deployment, a node directory taken away) must still sync the next one on that disk."""
    monkeypatch.setattr(group_commit, "_devices", {})  # as in a new process
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    shared = filesystem_sync(first)
    assert filesystem_sync(second) is shared  # one group commit per filesystem
    first.rmdir()
    shared.sync(shared.note_write())  # before: StorageError naming the removed directory
    second.rmdir()
    shared.sync(shared.note_write())  # the disk is still there to flush


def test_a_filesystem_sync_flushes_through_one_descriptor_held_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncfs reports a write-back error once to each descriptor open when it happened:
    one opened for each flush would miss an error another process's sync saw first,
    and call lost writes durable. Held open, it also stays on its own filesystem
    whatever is later mounted over the directory it was opened from."""
    monkeypatch.setattr(group_commit, "_devices", {})
    flushed: list[int] = []
    monkeypatch.setattr(group_commit, "sync_filesystem", flushed.append)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    group = filesystem_sync(here)
    assert filesystem_sync(there) is group
    group.sync(group.note_write())
    group.sync(group.note_write())
    assert len(flushed) == 2 and flushed[0] == flushed[1]
    assert os.fstat(flushed[0]).st_dev == os.stat(tmp_path).st_dev  # open, on this disk


def test_a_filesystem_sync_is_never_shared_by_a_filesystem_mounted_after_its_own_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unmount a tmpfs and mount another: once the first is gone the kernel gives the
    second its device number, and one group commit for both would flush the wrong one
    and call the new one's writes durable. The group's held descriptor keeps the first
    alive, and its number taken. (The suite runs as root, locally and in CI.)"""
    monkeypatch.setattr(group_commit, "_devices", {})
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    groups, devices = [], []
    for _ in range(2):
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True
        )
        try:
            devices.append(os.stat(mount_point).st_dev)
            groups.append(filesystem_sync(mount_point))
        finally:  # lazily: the group's descriptor holds the filesystem
            subprocess.run(["umount", "-l", str(mount_point)], check=True)
    assert devices[0] != devices[1]
    assert groups[0] is not groups[1]


def test_create_whole_whose_temporary_another_process_took_for_a_leftover_keeps_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a file is there, a reader removes the temporaries beside it (nodes/marker.py):
    a process about to link its own then found it gone, and failed."""
    path = tmp_path / "NODE"
    real_link = os.link

    def link(source: str, target: str) -> None:
        path.write_bytes(b"theirs")  # another process made it, then dropped the leftovers
        for temp in durability.leftover_temporaries(path):
            temp.unlink()
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    assert durability.create_whole(path, b"ours") is False
    assert path.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["NODE"]


def test_a_read_only_database_says_what_to_do(tmp_path: Path) -> None:
    """SQLite says only "attempt to write a readonly database" (found in review)."""
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    readonly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as caught:
        readonly.execute("INSERT INTO t VALUES (1)")
    readonly.close()
    reason = failure_reason(caught.value, path)
    assert reason.startswith("attempt to write a readonly database")
    assert reason.endswith("make the file and its directory writable by this user")


def test_a_shard_in_new_fan_out_folders_makes_their_names_durable_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the shard's own folder was fsynced: the new folders' entries in shards/ and
    in the first fan-out level could be lost by a power cut, and the shard with them."""
    store = LocalDirShardStore("n1", tmp_path, pack_limit=0)
    synced: list[Path] = []
    real = localdir.fsync_directory
    monkeypatch.setattr(localdir, "fsync_directory", lambda p: (synced.append(p), real(p)))
    name = shard_name(bytes.fromhex("ab" * 16), 1, 0)
    writer = store.open_writer(name)
    writer.write(b"x" * 100)
    writer.commit()
    final = store.shard_path(name)
    assert {final.parent, final.parent.parent, store.shard_dir} <= set(synced)
    synced.clear()
    writer = store.open_writer(shard_name(bytes.fromhex("ab" * 16), 2, 0))
    writer.write(b"x" * 100)
    writer.commit()
    assert synced == [final.parent], "folders already there cost nothing more"
    store.close()


def test_a_failed_flush_fails_the_writes_made_while_it_ran_too() -> None:
    """A write-back error is reported once, to the flush running when it is seen: a
    write made meanwhile (its pages may be the ones that failed) was called durable
    by the next flush, which succeeded."""
    during: list[int] = []

    def flush() -> None:
        if not during:
            during.append(group.note_write())  # another put appends while it runs
            raise OSError(5, "Input/output error")

    group = GroupSync(flush, "test")
    with pytest.raises(StorageError):
        group.sync(group.note_write())
    with pytest.raises(StorageError, match="Input/output error"):
        group.sync(during[0])
    group.sync(group.note_write())  # a write noted after the failure is durable as before
    group.close()


def test_a_run_of_writes_fails_if_any_of_them_had_a_failed_flush() -> None:
    flushes = Flushes()
    group = GroupSync(flushes, "test")
    first = group.note_write()
    flushes.fail_next = True
    with pytest.raises(StorageError):
        group.sync(first)  # another caller's flush, failing for the run's first write
    last = group.note_write()
    group.sync(last)  # a later flush succeeded for the last one
    with pytest.raises(StorageError, match="Input/output error"):
        group.sync(last, since=first)
    group.sync(group.note_write(), since=last + 1)  # a run after the failure is durable
    group.close()


def test_a_write_begun_before_a_flush_failed_and_noted_after_fails_with_it() -> None:
    flushes = Flushes()
    group = GroupSync(flushes, "test")
    begun = group.failures()  # a write begins
    flushes.fail_next = True
    with pytest.raises(StorageError):
        group.sync(group.note_write())  # another caller's flush fails meanwhile
    written = group.note_write(begun)
    with pytest.raises(StorageError, match="Input/output error"):
        group.sync(written)
    group.sync(group.note_write(group.failures()))  # one begun after the failure is not
    group.close()


def test_failures_in_a_row_are_kept_as_one_range() -> None:
    flushes = Flushes()
    group = GroupSync(flushes, "test")
    tickets = []
    for _ in range(100):
        tickets.append(group.note_write())
        flushes.fail_next = True
        with pytest.raises(StorageError):
            group.sync(tickets[-1])
    assert len(group._failed) == 1
    for ticket in tickets:
        with pytest.raises(StorageError):
            group.sync(ticket)
    group.sync(group.note_write())
    group.close()


def test_a_background_flush_stuck_on_a_hung_disk_does_not_hold_up_exit(tmp_path: Path) -> None:
    """The flush pool's threads were joined at exit, so a process whose background
    fdatasync never returned (a hung disk: stood in for by a patched fdatasync that
    waits for ever) could not exit after its put had given up on the node."""
    child = f"""
import os, threading
from shardvault import background_flush
stuck = threading.Event()
os.fdatasync = lambda fd: stuck.wait()  # a hung disk, for this child process only
fd = os.open({str(tmp_path / "shard")!r}, os.O_CREAT | os.O_WRONLY, 0o600)
assert background_flush._start_flush(fd) is not None
print("flushing", flush=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout) == (0, "flushing\n"), done.stderr
