"""Background flushes lose no error, and one stuck on a hung disk holds up nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tests.interrupts import returns_within

from shardvault import background_flush
from shardvault.background_flush import BackgroundFlush
from shardvault.errors import StorageError
from shardvault.nodes.localdir import WRITEBACK_CHUNK, LocalDirShardStore
from shardvault.nodes.port import shard_name


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
