"""The put pipeline's cleanup: no shard is aborted while its block is still being written."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import Flushes
from shardvault.codec.erasure import ErasureCode
from shardvault.codec.segment import SegmentBinding, SegmentCipher
from shardvault.errors import StorageError
from shardvault.group_commit import GroupSync
from shardvault.model import ObjectRef
from shardvault.nodes.localdir import LocalDirShardStore, LocalShardWriter
from shardvault.nodes.port import shard_name
from shardvault.vault.writer import ShardSetWriter, _segments


def shard_set_writer(stores: list[object], pool: ThreadPoolExecutor) -> ShardSetWriter:
    """A 4+2 writer of version 1 of intl/alice/k over STORES, segments of 4 KiB."""
    return ShardSetWriter(
        stores=stores,  # type: ignore[arg-type]
        object_id=bytes(16),
        version=1,
        code=ErasureCode(4, 2),
        cipher=SegmentCipher(
            bytes(32), SegmentBinding(ObjectRef("intl", "alice", "k"), 1, bytes(16))
        ),
        segment_size=4096,
        pool=pool,
        on_step=lambda step: None,
    )


class SlowWriter:
    """A shard writer whose block writes take a while, recording misuse."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.busy = 0
        self.aborted = False
        self.lock = threading.Lock()

    def write(self, data: bytes | memoryview) -> None:
        with self.lock:
            if self.aborted:
                self.problems.append("write after abort")
            self.busy += 1
        time.sleep(0.05 if len(data) > 100 else 0)  # headers are quick, blocks are not
        with self.lock:
            self.busy -= 1

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        with self.lock:
            if self.busy:
                self.problems.append("abort during write")
            self.aborted = True


class SlowStore:
    def __init__(self, problems: list[str]) -> None:
        self.node_id = "slow"
        self.problems = problems

    def open_writer(self, name: str) -> SlowWriter:
        return SlowWriter(self.problems)

    def delete(self, name: str) -> bool:
        return False


class BreaksAfterOneSegment(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise ConnectionResetError("client went away")
        n = min(len(buffer), self.left)
        buffer[:n] = b"x" * n
        self.left -= n
        return n


def test_a_failing_source_waits_for_in_flight_writes_before_discarding() -> None:
    problems: list[str] = []
    with ThreadPoolExecutor(12) as pool:
        writer = shard_set_writer([SlowStore(problems) for _ in range(6)], pool)
        with pytest.raises(ConnectionResetError):
            writer.write(BreaksAfterOneSegment(4096))  # type: ignore[arg-type]
        time.sleep(0.1)
    assert problems == []


def test_bytes_in_memory_are_segmented_without_a_copy() -> None:
    """A put of bytes slices them: a BytesIO would copy the whole object first."""
    data = bytes(range(256)) * 40
    segments = list(_segments(memoryview(data), 4096))
    assert [len(s) for s in segments] == [4096, 4096, 2048]
    assert all(s.obj is data for s in segments)
    assert b"".join(segments) == data
    assert [len(s) for s in _segments(memoryview(b""), 4096)] == [0]
    wide = memoryview(bytearray(8192)).cast("I")  # any buffer format is cut by bytes
    assert [len(s) for s in _segments(wide, 4096)] == [4096, 4096]


class NonBlockingPipe(io.RawIOBase):
    """The read end of a pipe in non-blocking mode (as a producer such as node leaves its
    consumer's stdin): `readinto` says "nothing yet" with None; the rest of the data
    is written only once the put has been told so."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        self._told = threading.Event()
        os.write(write, first)

        def produce() -> None:
            self._told.wait(10)
            with contextlib.suppress(BrokenPipeError), os.fdopen(write, "wb") as out:
                out.write(rest)

        self.producer = threading.Thread(target=produce)
        self.producer.start()

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._read

    def readinto(self, buffer: memoryview) -> int | None:  # type: ignore[override]
        try:
            return os.readv(self._read, [buffer])
        except BlockingIOError:
            self._told.set()
            return None

    def close(self) -> None:
        if not self.closed:
            os.close(self._read)
        super().close()


def test_a_non_blocking_source_with_nothing_ready_is_waited_for_not_taken_as_ended() -> None:
    first, rest = b"a" * 100, b"b" * 10_000
    source = NonBlockingPipe(first, rest)
    try:
        stored = b"".join(bytes(s) for s in _segments(source, 4096))  # type: ignore[arg-type]
    finally:
        source.producer.join()
        source.close()
    assert stored == first + rest


def test_a_bytesio_is_stored_from_where_it_stands_as_a_file_would_be() -> None:
    """The caller read its first bytes (a header, say): those are not the object's."""
    data = b"header:" + bytes(range(256)) * 40
    source = io.BytesIO(data)
    source.read(7)
    stored = b"".join(bytes(s) for s in _segments(source, 4096))
    assert stored == data[7:]
    assert source.tell() == len(data)  # consumed, as a file read to its end


def test_a_put_whose_append_a_flush_failed_for_fails_though_a_later_flush_succeeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store's latest write was all its sync waited for: another put's good flush
    hid the failed one that covered this put's append, and the put was acknowledged."""
    flush = Flushes()
    group = GroupSync(flush, "test")
    stores = [LocalDirShardStore(f"n{i}", tmp_path / f"n{i}") for i in range(6)]
    for store in stores:
        store.packs.group = group  # one disk: one group commit for all six
    real_commit = LocalShardWriter.commit
    interleaved: list[str] = []

    def commit(writer: LocalShardWriter, durable: bool = True) -> None:
        real_commit(writer, durable)
        if not interleaved:  # after this put's first append: a flush fails, another succeeds
            interleaved.append("done")
            flush.fail_next = True
            with pytest.raises(StorageError):
                group.sync()  # led by another caller on the disk, which is told
            other = stores[0].open_writer(shard_name(b"\x09" * 16, 1, 0))
            other.write(b"another put")
            real_commit(other, durable=False)
            stores[0].sync()

    monkeypatch.setattr(LocalShardWriter, "commit", commit)
    with ThreadPoolExecutor(2) as pool:
        writer = shard_set_writer(list(stores), pool)
        with pytest.raises(StorageError, match="Input/output error"):
            writer.write(memoryview(b"small object"))
    for store in stores:
        store.close()


class EndsAsItsWaitTimesOut(Future[bytes]):
    """A task that succeeds just as the wait for it times out: the race, made certain."""

    def result(self, timeout: float | None = None) -> bytes:
        if not self.done():
            self.set_result(b"written")
            raise TimeoutError
        return super().result(timeout)


def test_a_write_that_ends_as_its_wait_times_out_is_no_failure() -> None:
    # the wait timed out, the task then succeeded before `done()` was asked: the wait's
    # own TimeoutError was kept as the write's failure, and a put that wrote every
    # shard failed with a bare TimeoutError
    problems: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        writer = shard_set_writer([SlowStore(problems) for _ in range(6)], pool)
        done: Future[bytes] = Future()
        done.set_result(b"written")
        writer._wait_each([done, EndsAsItsWaitTimesOut(), done])
    assert problems == []


def test_a_finishing_task_that_ends_as_its_wait_times_out_is_no_failure() -> None:
    # as above, for the task that commits and syncs a put's shards: the wait's own
    # TimeoutError was raised, failing a put whose shards were all written and synced
    problems: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        writer = shard_set_writer([SlowStore(problems) for _ in range(6)], pool)
        writer._wait_finishing(EndsAsItsWaitTimesOut())
    assert problems == []
