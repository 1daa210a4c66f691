"""The file-backed log: durability, group commit, crash recovery, fail-closed behaviour."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pytest
from tests.audit.conftest import make_entry, naive_root, publish_head
from tests.interrupts import (
    Interrupted,
    interrupted_when_relocking,
    interrupts_on_sigusr1,
    main_thread_leaves_when_woken,
    queue_behind_main,
    returns_within,
    wait_for,
)

from conftest import tmpfs_mounted
from shardvault.audit import log as audit_log
from shardvault.audit import merkle
from shardvault.audit.log import AuditLog
from shardvault.errors import AuditUnavailable, IntegrityError, InvalidInput, NewerFormat

REC = 44  # index record: u64 end offset, 32-byte leaf hash, u32 CRC-32


def filled(path: Path, n: int) -> AuditLog:
    log = AuditLog.open(path)
    for i in range(n):
        assert log.append(make_entry(i)) == i
    return log


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_append_read_back_and_reopen(tmp_path: Path) -> None:
    log = filled(tmp_path / "log", 25)
    assert log.size == 25
    assert log.entry(7) == make_entry(7)
    assert log.root() == naive_root(log)
    root = log.root()
    log.close()
    with AuditLog.open(tmp_path / "log") as again:
        assert again.size == 25 and again.root() == root
        assert again.append(make_entry(25)) == 25
        assert [e for e in again.iter_entry_bytes(24, 26)] == [
            make_entry(24).to_bytes(),
            make_entry(25).to_bytes(),
        ]


def test_proofs_from_the_log_verify(tmp_path: Path) -> None:
    with filled(tmp_path / "log", 13) as log:
        root = log.root()
        for i in range(13):
            leaf = merkle.leaf_hash(make_entry(i).to_bytes())
            merkle.verify_inclusion(leaf, i, 13, log.inclusion_proof(i), root)
        for m in range(14):
            merkle.verify_consistency(m, 13, log.consistency_proof(m), log.root_at(m), root)


def test_a_compact_range_extended_by_the_later_leaves_gives_each_later_root(
    tmp_path: Path,
) -> None:
    # what the partner's witness does from its last cosigned head (governance/seen.py)
    count = 600  # past a stored level-1 node of 256 leaves
    with filled(tmp_path / "log", count) as log:
        leaves = log.leaf_hashes(0, count)
        for size in (0, 1, 2, 3, 255, 256, 257, 300, 511, 512, 513, count):
            frontier = log.frontier_at(size)
            assert frontier.size == size and frontier.root() == log.root_at(size)
            for leaf in leaves[size:]:
                frontier.append(leaf)
            assert frontier.root() == log.root()
        with pytest.raises(InvalidInput):
            log.frontier_at(count + 1)


def test_a_tickets_leaf_is_its_entrys_leaf_hash(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "log") as log:
        ticket = log.submit([make_entry(0), make_entry(1)])
        assert ticket.leaf == merkle.leaf_hash(make_entry(0).to_bytes())  # before it is written
        assert ticket.wait() == 0 and log.leaf_hashes(0, 1) == [ticket.leaf]


def test_concurrent_appends_share_fsyncs_and_lose_nothing(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "log")
    results: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for j in range(50):
            index = log.append(make_entry(t * 1000 + j))
            with lock:
                results.append(index)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == list(range(400))
    assert log.commit_count < 400, "group commit should batch concurrent appends"
    assert log.root() == naive_root(log)
    log.close()
    assert AuditLog.open(tmp_path / "log").size == 400


def test_append_many_is_one_batch(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "log") as log:
        assert log.append_many([make_entry(i) for i in range(5)]) == [0, 1, 2, 3, 4]
        assert log.commit_count == 1
        assert log.append_many([]) == []


def test_submitted_entries_keep_their_order_and_wait_makes_them_durable(tmp_path: Path) -> None:
    log = filled(tmp_path / "log", 2)
    tickets = [log.submit([make_entry(i)]) for i in range(2, 5)]
    assert [t.wait() for t in tickets] == [2, 3, 4]
    assert [log.entry(i) for i in range(2, 5)] == [make_entry(i) for i in range(2, 5)]
    assert log.size == 5 and log.root() == naive_root(log)
    log.close()
    assert AuditLog.open(tmp_path / "log").size == 5


def test_close_writes_entries_nobody_waited_for(tmp_path: Path) -> None:
    log = filled(tmp_path / "log", 2)
    log.submit([make_entry(2)])  # queued: the first waiter, or close, writes it
    log.close()
    reopened = AuditLog.open(tmp_path / "log")
    assert reopened.size == 3 and reopened.entry(2) == make_entry(2)
    reopened.close()


def test_a_failed_write_fails_its_batch_and_the_next_takes_its_place(tmp_path: Path) -> None:
    """Indexes are given when a batch is written, so a failure leaves no gap."""
    log = filled(tmp_path / "log", 2)
    real_write = log._write
    entered, release = threading.Event(), threading.Event()

    def failing_write(records: bytes, entries_end: int) -> OSError:
        entered.set()
        release.wait(10)
        return OSError(errno.EIO, "injected write failure")

    log._write = failing_write  # type: ignore[method-assign]
    failed = log.submit([make_entry(2)])
    outcome: list[BaseException] = []

    def wait_failed() -> None:  # its waiter writes it
        try:
            failed.wait()
        except AuditUnavailable as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_failed)
    waiter.start()
    assert entered.wait(10)
    behind = log.submit([make_entry(3), make_entry(4)])  # queued while the write is failing
    log._write = real_write  # type: ignore[method-assign]
    release.set()
    waiter.join(10)
    assert len(outcome) == 1 and "injected write failure" in str(outcome[0])
    with pytest.raises(AuditUnavailable, match="injected write failure"):
        failed.wait()
    assert behind.wait() == 2
    assert log.size == 4 and log.entry(2) == make_entry(3)
    assert log.root() == naive_root(log)
    log.close()
    assert AuditLog.open(tmp_path / "log").size == 4


def test_close_writes_what_was_submitted(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "log")
    ticket = log.submit([make_entry(0), make_entry(1)])
    log.close()
    assert ticket.wait() == 0
    assert AuditLog.open(tmp_path / "log").size == 2


def test_torn_tail_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "log"
    filled(path, 10).close()
    good = snapshot(path)
    for garbage in (b"\x00" * 300, b"\x00\x00\x01\x00partial", b"\xff" * 3):
        with open(path / "entries.log", "ab") as f:
            f.write(garbage)
        with open(path / "index.log", "ab") as f:
            f.write(b"\x00" * 57)  # one whole zero record and a partial one
        with AuditLog.open(path) as log:
            assert log.size == 10
        assert snapshot(path) == good


def test_entry_durable_but_not_indexed_is_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "log"
    filled(path, 6).close()
    index = (path / "index.log").read_bytes()
    filled(path, 0).close()
    with AuditLog.open(path) as log:
        log.append(make_entry(6))
        root = log.root()
    (path / "index.log").write_bytes(index)  # crash between the two fsyncs
    with AuditLog.open(path) as log:
        assert log.size == 7 and log.root() == root


def test_damaged_acknowledged_entry_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = filled(path, 10)
    publish_head(log, None)
    log.close()
    data = bytearray((path / "entries.log").read_bytes())
    data[-5] ^= 0x01  # inside the last acknowledged entry
    (path / "entries.log").write_bytes(bytes(data))
    damaged = snapshot(path)
    with pytest.raises(IntegrityError, match="acknowledged entry 9 is damaged"):
        AuditLog.open(path)
    assert snapshot(path) == damaged, "recovery must not cut acknowledged (damaged) entries"


def test_reading_entries_ahead_in_chunks_gives_each_entry_and_finds_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "_READ_AHEAD", 1000)  # entries straddle every chunk
    path = tmp_path / "log"
    log = AuditLog.open(path)
    entries = [make_entry(i) for i in range(40)]
    log.append_many(entries)
    assert list(log.iter_entry_bytes()) == [e.to_bytes() for e in entries]
    assert list(log.iter_entry_bytes(17, 19)) == [e.to_bytes() for e in entries[17:19]]
    data = bytearray((path / "entries.log").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "entries.log").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="is damaged"):
        list(log.iter_entry_bytes())
    os.truncate(path / "entries.log", len(data) - 100)
    with pytest.raises(IntegrityError):
        list(log.iter_entry_bytes(39, 40))
    log.close()


def test_damage_under_a_lost_index_is_refused_before_anything_is_cut(tmp_path: Path) -> None:
    """Without the index, a damaged middle entry looks like a torn tail: the stored head
    says entries after it were acknowledged, so open refuses and cuts nothing."""
    path = tmp_path / "log"
    log = filled(path, 5)
    publish_head(log, None)
    log.close()
    os.truncate(path / "index.log", 8)  # the index is a cache: a crash may lose it
    data = bytearray((path / "entries.log").read_bytes())
    data[8 + 8 + 20] ^= 0x01  # inside entry 0
    (path / "entries.log").write_bytes(bytes(data))
    damaged = snapshot(path)
    with pytest.raises(IntegrityError, match="signed head for 5"):
        AuditLog.open(path)
    assert snapshot(path) == damaged


def test_missing_acknowledged_entries_refuse_to_open(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = filled(path, 10)
    publish_head(log, None)
    log.close()
    index = (path / "index.log").read_bytes()
    (path / "index.log").write_bytes(index[: 8 + 9 * REC])
    data = (path / "entries.log").read_bytes()
    (path / "entries.log").write_bytes(data[:-30])
    with pytest.raises(IntegrityError, match="acknowledged entries are missing"):
        AuditLog.open(path)


def test_index_that_does_not_match_its_head_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = filled(path, 4)
    publish_head(log, None)
    log.close()
    (path / "frontier").unlink()  # else open starts there: test_log_open.py
    data = bytearray((path / "index.log").read_bytes())
    # a well-formed index record (valid CRC) with the wrong leaf hash: a buggy or forged cache
    body = bytes(data[8 + REC : 8 + REC + 8]) + b"\x07" * 32
    data[8 + REC : 8 + 2 * REC] = body + zlib.crc32(body).to_bytes(4, "big")
    (path / "index.log").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its signed head for size 4"):
        AuditLog.open(path)


def test_index_torn_in_the_middle_of_its_tail_is_rebuilt(tmp_path: Path) -> None:
    """Pages of the last index write can reach the disk out of order: zeros, then records."""
    path = tmp_path / "log"
    log = filled(path, 12)
    root = log.root()
    log.close()
    (path / "frontier").unlink()  # the writer died before close, which would have saved it
    intact = (path / "index.log").read_bytes()
    data = bytearray(intact)
    data[8 + 8 * REC : 8 + 10 * REC] = bytes(2 * REC)  # records 8 and 9 lost, 10 and 11 kept
    (path / "index.log").write_bytes(bytes(data))
    with AuditLog.open(path) as again:
        assert again.size == 12 and again.root() == root
    assert (path / "index.log").read_bytes() == intact


def test_unindexed_entry_of_unknown_version_is_refused_not_cut(tmp_path: Path) -> None:
    path = tmp_path / "log"
    filled(path, 3).close()
    future = make_entry(3).to_bytes().replace(b'"v":1', b'"v":2')
    with open(path / "entries.log", "ab") as f:
        f.write(len(future).to_bytes(4, "big") + zlib.crc32(future).to_bytes(4, "big") + future)
    before = snapshot(path)
    with pytest.raises(IntegrityError, match=r"entry 3 cannot be read: .*version 2 is not known"):
        AuditLog.open(path)
    assert snapshot(path) == before


def test_damaged_stored_head_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = filled(path, 2)
    publish_head(log, None)
    log.close()
    (path / "heads" / f"{2:020d}.note").write_bytes(b"garbage")
    with pytest.raises(IntegrityError, match=r"stored head .* is damaged"):
        AuditLog.open(path)


def test_unknown_file_version_or_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log"
    filled(path, 2).close()
    data = (path / "entries.log").read_bytes()
    (path / "entries.log").write_bytes(data[:6] + b"\x00\x02" + data[8:])
    with pytest.raises(NewerFormat, match="version 2; this reader knows 1: upgrade shardvault"):
        AuditLog.open(path)
    (path / "entries.log").write_bytes(data[:6] + b"\x00\x00" + data[8:])
    with pytest.raises(IntegrityError, match=r"version 0; this reader knows 1$"):
        AuditLog.open(path)
    (path / "entries.log").write_bytes(b"NOTALOG!" + data[8:])
    with pytest.raises(IntegrityError, match="not a shardvault audit log"):
        AuditLog.open(path)


def test_a_log_whose_creation_a_power_loss_cut_short_is_made_again(tmp_path: Path) -> None:
    """Its files' size reached the disk, their header did not: zeros, and no entry."""
    path = tmp_path / "log"
    AuditLog.open(path).close()
    for name in ("entries.log", "index.log"):
        (path / name).write_bytes(bytes(8))
    with AuditLog.open(path) as log:
        assert log.size == 0 and log.append(make_entry(0)) == 0
    (path / "entries.log").write_bytes(b"SVAU")
    with pytest.raises(IntegrityError, match="truncated header"):
        AuditLog.open(path)


def test_a_log_shorter_than_what_this_process_read_is_refused_not_extended(
    tmp_path: Path,
) -> None:
    """A catch-up once made the entries file as long as the view again, with zeros."""
    path = tmp_path / "log"
    log = filled(path, 3)
    size = (path / "entries.log").stat().st_size
    os.truncate(path / "entries.log", size - 10)  # acknowledged entries lost under it
    with pytest.raises(IntegrityError, match="shorter than the entries this process has read"):
        log.refresh()
    assert (path / "entries.log").stat().st_size == size - 10
    with pytest.raises(AuditUnavailable, match="broken"):
        log.append(make_entry(3))
    log.close()


def test_unwritable_location_is_audit_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(AuditUnavailable, match="cannot be opened"):
        AuditLog.open(tmp_path / "file" / "log")


def test_processes_append_to_one_log_and_lose_nothing(tmp_path: Path) -> None:
    """Two other processes and this one append at once; every entry lands exactly once."""
    path = tmp_path / "log"
    log = filled(path, 1)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from shardvault.audit.log import AuditLog
        from tests.audit.conftest import make_entry
        base = int(sys.argv[1])
        with AuditLog.open({str(path)!r}) as log:
            for i in range(100):
                print(log.append(make_entry(base + i)))
        """
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(base)], stdout=subprocess.PIPE, text=True
        )
        for base in (1000, 2000)
    ]
    mine: list[int] = []
    while len(mine) < 100 or any(w.poll() is None for w in workers):  # overlap them all
        mine.append(log.append(make_entry(3000 + len(mine))))
    theirs = [int(line) for w in workers for line in w.communicate()[0].split()]
    assert all(w.returncode == 0 for w in workers) and len(theirs) == 200
    total = 1 + len(mine) + 200
    assert sorted(mine + theirs) == list(range(1, total)), "indexes are unique and gap-free"
    log.refresh()
    assert log.size == total and log.root() == naive_root(log)
    requests = [log.entry(i).request_id for i in range(total)]
    assert len(set(requests)) == total
    publish_head(log, None)  # a head over every process's entries
    log.close()
    with AuditLog.open(path) as reopened:
        assert reopened.size == total and reopened.root() == naive_root(reopened)


def test_refresh_while_this_process_appends_loses_and_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flock belongs to the open file, not the thread: refresh (as a head being
    published) must still wait for this process's own batch in flight."""
    real_write = AuditLog._write

    def slow_write(self: AuditLog, records: bytes, entries_end: int) -> OSError | None:
        error = real_write(self, records, entries_end)
        time.sleep(0.003)  # a slow disk: the window between fsync and index write
        return error

    monkeypatch.setattr(AuditLog, "_write", slow_write)
    path = tmp_path / "log"
    log = AuditLog.open(path)
    stop = threading.Event()

    def publisher() -> None:
        while not stop.is_set():
            log.refresh()

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        indexes = [log.append(make_entry(i)) for i in range(40)]
    finally:
        stop.set()
        thread.join()
    assert indexes == list(range(40))
    assert log.size == 40 and log.root() == naive_root(log)
    log.close()
    with AuditLog.open(path) as reopened:
        assert reopened.size == 40 and reopened.root() == naive_root(reopened)


def test_a_catch_up_that_fails_changes_nothing_and_breaks_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log"
    mine = filled(path, 1)
    other = AuditLog.open(path)
    other.append_many([make_entry(i) for i in (1, 2, 3)])
    other.close()
    os.truncate(path / "index.log", 8 + 1 * REC)  # the other writer died before indexing
    real_pwrite = audit_log._pwrite_all

    def full_index(fd: int, data: bytes, offset: int) -> None:
        if fd == mine._ifd:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_pwrite(fd, data, offset)

    monkeypatch.setattr(audit_log, "_pwrite_all", full_index)
    with pytest.raises(AuditUnavailable, match="No space left"):
        mine.refresh()
    assert mine.size == 1, "the view did not move"
    with pytest.raises(AuditUnavailable, match="broken"):
        mine.append(make_entry(4))  # fail closed until reopened
    monkeypatch.setattr(audit_log, "_pwrite_all", real_pwrite)
    mine.close()
    with AuditLog.open(path) as reopened:
        assert reopened.size == 4 and reopened.root() == naive_root(reopened)


def test_a_closed_log_refuses_reads_and_refresh(tmp_path: Path) -> None:
    log = filled(tmp_path / "log", 2)
    log.close()
    for call in (log.refresh, lambda: log.leaf_hashes(0, 1), lambda: list(log.iter_entry_bytes())):
        with pytest.raises(AuditUnavailable, match="closed"):
            call()


def test_catching_up_indexes_entries_another_writer_left_unindexed(tmp_path: Path) -> None:
    """A writer that died after its fsync but before its index write loses nothing."""
    path = tmp_path / "log"
    mine = filled(path, 2)
    other = AuditLog.open(path)
    assert other.append_many([make_entry(i) for i in range(2, 6)]) == [2, 3, 4, 5]
    other.close()
    os.truncate(path / "index.log", 8 + 3 * REC)  # as if it died before indexing 3..5
    assert mine.append(make_entry(6)) == 6
    assert mine.root() == naive_root(mine)
    assert (path / "index.log").stat().st_size == 8 + 7 * REC
    mine.close()


def test_entries_taken_over_from_a_dead_writer_are_synced_before_they_are_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its entries may never have been synced, and stored tree nodes may come to
    # summarise them: a crash must not replace them with others under those nodes
    path = tmp_path / "log"
    mine = filled(path, 2)
    other = AuditLog.open(path)
    other.append_many([make_entry(i) for i in range(2, 6)])
    other.close()
    os.truncate(path / "index.log", 8 + 3 * REC)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(audit_log.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    mine.refresh()
    assert mine.size == 6
    entries = os.stat(path / "entries.log")
    assert [fd for fd in synced if os.fstat(fd)[:2] == entries[:2]]
    mine.close()


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "log")
    log.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        log.append(make_entry(0))


def test_disk_full_fails_closed_and_leaves_the_log_as_before(tmp_path: Path) -> None:
    """A real write failure: the file size limit (EFBIG) stands in for a full disk."""
    path = tmp_path / "log"
    filled(path, 3).close()
    before = snapshot(path)
    script = textwrap.dedent(
        f"""
        import os, resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from shardvault.audit.log import AuditLog
        from shardvault.errors import AuditUnavailable
        from tests.audit.conftest import make_entry
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        log = AuditLog.open({str(path)!r})
        limit = os.path.getsize({str(path / "entries.log")!r}) + 100
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            log.append(make_entry(3))
        except AuditUnavailable as exc:
            print("refused:", exc)
        else:
            print("written")
        try:
            log.append_many([make_entry(4), make_entry(5)])
        except AuditUnavailable:
            print("refused again")
        print("size", log.size)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "refused: audit entry not written" in out.stdout, out.stdout + out.stderr
    assert "refused again" in out.stdout and "size 3" in out.stdout
    assert snapshot(path) == before
    with AuditLog.open(path) as log:
        assert log.size == 3
        assert log.append(make_entry(3)) == 3


def test_store_head_refuses_a_head_for_another_tree(tmp_path: Path) -> None:
    with filled(tmp_path / "a", 3) as a, filled(tmp_path / "b", 4) as b:
        publish_head(b, None)
        with pytest.raises(IntegrityError, match="does not match"):
            a.store_head(b.heads()[0])
        publish_head(a, None)
        assert len(a.heads()) == 1


def test_bad_ranges_are_invalid_input(tmp_path: Path) -> None:
    with filled(tmp_path / "log", 3) as log:
        with pytest.raises(InvalidInput):
            list(log.iter_entry_bytes(2, 5))
        with pytest.raises(InvalidInput):
            log.leaf_hashes(0, 9)


def test_entry_file_damage_is_found_when_reading(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = filled(path, 5)
    with open(path / "entries.log", "r+b") as f:
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(IntegrityError, match="damaged"):
        list(log.iter_entry_bytes())
    log.close()
    assert os.path.exists(path / "LOCK")


def test_index_is_a_cache_a_crash_can_lose(tmp_path: Path) -> None:
    """Index records are written after their entries and never synced: losing them is harmless."""
    entries = [make_entry(i) for i in range(700)]
    leaves = [merkle.leaf_hash(e.to_bytes()) for e in entries]
    log = AuditLog.open(tmp_path / "log")
    for first in range(0, 700, 100):
        log.append_many(entries[first : first + 100])
    assert log.leaf_hashes(600, 700) == leaves[600:700]
    assert log.root() == merkle.root_of(leaves)
    shutil.copytree(tmp_path / "log", tmp_path / "crashed")  # as if the page cache were lost
    os.truncate(tmp_path / "crashed" / "index.log", 8 + 450 * REC + 7)  # and a torn record
    with AuditLog.open(tmp_path / "crashed") as crashed:
        assert crashed.size == 700 and crashed.root() == log.root()
        assert crashed.entry(500) == entries[500]
    assert (tmp_path / "crashed" / "index.log").stat().st_size == 8 + 700 * REC
    log.close()


def test_a_writer_interrupted_while_taking_its_lock_back_leaves_nobody_hanging(
    tmp_path: Path,
) -> None:
    log = filled(tmp_path / "log", 2)
    real = log._write_batches
    log._write_batches = interrupted_when_relocking(log._state, real)  # type: ignore[method-assign]
    with interrupts_on_sigusr1(), pytest.raises(Interrupted):
        log.append(make_entry(2))
    log._write_batches = real  # type: ignore[method-assign]
    assert returns_within(lambda: log.append(make_entry(3))), "a later append hung"
    assert log.size == 4 and log.root() == naive_root(log)
    log.close()


def test_an_entry_taken_by_a_writer_that_never_reported_fails_closed(tmp_path: Path) -> None:
    log = filled(tmp_path / "log", 2)
    ticket = log.submit([make_entry(2)])
    log._queue.clear()  # as if a writer took it and was interrupted before marking it
    with pytest.raises(AuditUnavailable, match="interrupted"):
        ticket.wait()
    log.close()


def test_what_queues_while_a_writer_waits_for_the_flock_goes_in_its_write(
    tmp_path: Path,
) -> None:
    """Another process holds the log's flock: the entries queued meanwhile go in the
    waiting writer's own write (one fsync), not in a second one after it."""
    log = filled(tmp_path / "log", 2)
    writes = log._commits
    other = os.open(tmp_path / "log" / "LOCK", os.O_RDWR)  # its own open file: conflicts
    fcntl.flock(other, fcntl.LOCK_EX)
    first = threading.Thread(target=log.append, args=(make_entry(2),), daemon=True)
    first.start()
    wait_for(lambda: log._writing)  # its writer now waits for the flock
    indexes: list[int] = []
    waiting = [
        threading.Thread(target=lambda i=i: indexes.append(log.append(make_entry(i))), daemon=True)
        for i in (3, 4)
    ]
    for queued, thread in enumerate(waiting, start=1):  # each queues, then sleeps
        thread.start()
        wait_for(lambda n=queued: len(log._queue) == n)
    fcntl.flock(other, fcntl.LOCK_UN)
    os.close(other)
    for thread in [first, *waiting]:
        thread.join(5)
        assert not thread.is_alive(), "an append answered by the write was never woken"
    assert sorted(indexes) == [3, 4]
    assert log._commits == writes + 1 and log.size == 5
    assert log.root() == naive_root(log)
    log.close()


def test_a_writer_interrupted_as_it_takes_the_late_queue_fails_those_entries_cleanly(
    tmp_path: Path,
) -> None:
    """Interrupted after detaching what queued while it waited for the flock, before
    listing it: those callers are told their entries failed, promptly, and the
    entries are not written later behind their backs."""
    log = filled(tmp_path / "log", 2)
    other = os.open(tmp_path / "log" / "LOCK", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    real = log._write_batches

    class InterruptedWhileListing(list):  # type: ignore[type-arg]
        def extend(self, items: object) -> None:
            raise Interrupted

    log._write_batches = lambda batches: real(InterruptedWhileListing(batches))  # type: ignore[method-assign]
    outcomes: dict[int, str] = {}

    def append(i: int) -> None:
        try:
            log.append(make_entry(i))
            outcomes[i] = "written"
        except (Interrupted, AuditUnavailable) as exc:
            outcomes[i] = type(exc).__name__

    threads = [threading.Thread(target=append, args=(2,), daemon=True)]
    threads[0].start()
    wait_for(lambda: log._writing)  # the writer of entry 2 waits for the flock
    for i in (3, 4):
        threads.append(threading.Thread(target=append, args=(i,), daemon=True))
        threads[-1].start()
        wait_for(lambda n=i - 2: len(log._queue) == n)
    fcntl.flock(other, fcntl.LOCK_UN)
    os.close(other)
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive(), "a caller was never told how its entry went"
    assert outcomes == {2: "Interrupted", 3: "AuditUnavailable", 4: "AuditUnavailable"}
    log._write_batches = real  # type: ignore[method-assign]
    assert log.append(make_entry(5)) == 2  # nothing of 2-4 was written meanwhile
    assert log.size == 3 and log.root() == naive_root(log)
    log.close()


@pytest.mark.parametrize("failure", [Interrupted(), OSError(errno.EIO, "I/O error")])
def test_entries_on_disk_when_their_writer_then_fails_are_reported_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """Ctrl-C in a writer after its fsync, or its index records failing to write:
    the entries are on disk, so their callers are told their index, not that the
    write failed (the writer itself, interrupted, raises)."""
    log = filled(tmp_path / "log", 2)
    other = os.open(tmp_path / "log" / "LOCK", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    real = audit_log._pwrite_all

    def interrupted_at_the_index(fd: int, data: bytes, offset: int) -> None:
        if fd == log._ifd:  # the entries are written and fsynced by now
            raise failure
        real(fd, data, offset)

    monkeypatch.setattr(audit_log, "_pwrite_all", interrupted_at_the_index)
    outcomes: dict[int, object] = {}

    def append(i: int) -> None:
        try:
            outcomes[i] = log.append(make_entry(i))
        except (Interrupted, AuditUnavailable) as exc:
            outcomes[i] = type(exc).__name__

    writer = threading.Thread(target=append, args=(2,), daemon=True)
    writer.start()
    wait_for(lambda: log._writing)  # it waits for the flock; entry 3 joins its write
    carried = threading.Thread(target=append, args=(3,), daemon=True)
    carried.start()
    wait_for(lambda: len(log._queue) == 1)
    fcntl.flock(other, fcntl.LOCK_UN)
    os.close(other)
    for thread in (writer, carried):
        thread.join(5)
        assert not thread.is_alive()
    monkeypatch.setattr(audit_log, "_pwrite_all", real)
    if isinstance(failure, OSError):
        assert outcomes == {2: 2, 3: 3}
        with pytest.raises(AuditUnavailable, match="broken"):  # until reopened
            log.append(make_entry(4))
        log.close()
        log = AuditLog.open(tmp_path / "log")  # recovery indexes 2 and 3
    else:
        assert outcomes == {2: "Interrupted", 3: 3}
    assert log.append(make_entry(4)) == 4  # the next write catches up with 2 and 3
    assert log.size == 5 and log.root() == naive_root(log)
    log.close()


def test_a_caller_woken_to_write_that_leaves_hands_the_write_on(tmp_path: Path) -> None:
    """Woken to write the next batch, the main thread is interrupted before it takes
    the queue: the other caller whose entry is queued must be woken to write it."""
    log = AuditLog.open(tmp_path / "log")
    written, release, writers = threading.Event(), threading.Event(), []
    real = log._write_batches

    def write_batches(batches: list[audit_log._Batch]) -> BaseException | None:
        writers.append(threading.current_thread().name)
        result = real(batches)
        if len(writers) == 1:  # the first write took only its own entry: hold its end
            written.set()
            release.wait(5)
        return result

    log._write_batches = write_batches  # type: ignore[method-assign]
    waiting = main_thread_leaves_when_woken(
        log._room, lambda: len(writers) == 1 and not log._writing
    )
    threading.Thread(target=log.append, args=(make_entry(0),), name="first").start()
    assert written.wait(5)
    mine = log.submit([make_entry(1)])
    later = threading.Thread(target=log.append, args=(make_entry(2),), name="later", daemon=True)
    queue_behind_main(waiting, later, release)
    with pytest.raises(Interrupted):
        mine.wait()
    later.join(5)
    assert not later.is_alive(), "the other caller's append hung"
    assert writers == ["first", "later"] and log.size == 3
    log.close()


def test_an_entry_a_full_disk_refuses_names_the_log_and_says_make_room(tmp_path: Path) -> None:
    """A full disk under the log is the operator's to fix: the refusal names the log and
    says to make room, as the catalog's and the registries' do, not a bare errno."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with tmpfs_mounted(disk):
        log = AuditLog.open(disk / "log")
        try:
            filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            with contextlib.suppress(OSError):
                while True:
                    os.write(filler, bytes(4096))
            os.close(filler)
            with pytest.raises(AuditUnavailable) as refused:  # once past the last page
                for i in range(4096):
                    log.append(make_entry(i))
            assert str(refused.value) == (
                f"audit entry not written to {disk / 'log'}: No space left on device "
                "(its disk has 0 KiB free: make room)"
            )
        finally:
            log.close()
