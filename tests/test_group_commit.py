"""Group commit covers every write noted before it began, one filesystem sync each."""

from __future__ import annotations

import os
import subprocess
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
from shardvault import group_commit
from shardvault.errors import StorageError
from shardvault.group_commit import GroupSync, WaitRoom, filesystem_sync


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
