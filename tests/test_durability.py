"""Group commit: one flush covers every write noted before it began, and none is lost."""

from __future__ import annotations

import threading
import time

import pytest

from shardvault.durability import GroupSync
from shardvault.errors import StorageError


class Flushes:
    """A flush that counts itself and can be told to fail."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.count = 0
        self.fail_next = False
        self.seconds = seconds

    def __call__(self) -> None:
        self.count += 1
        time.sleep(self.seconds)
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")


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
