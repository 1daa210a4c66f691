"""The put pipeline: segment → encrypt → erasure-code → hash → write, streaming.

The calling thread reads, encrypts, encodes and hashes segment i while the
I/O pool writes segment i-1 (file writes release the GIL, so this uses the
second core; hashing stays here because BLAKE3 convoys behind the GIL when
handed to threads). At most two segments are in flight, so memory stays
bounded whatever the object's size. A small object is written in the calling
thread, but its shards are committed and made durable on one I/O thread, which
the caller waits for no longer than the nodes' deadline (vault/deadline.py): a
node whose disk hangs fails the put, named, and is marked unavailable. Nothing
becomes visible until every shard is committed; on any failure all shards
written so far are removed (those of a put that gave up on a hung node once the
node's call returns, since its thread may still be using them).
"""

from __future__ import annotations

import io
import select
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

from shardvault.codec.erasure import ErasureCode
from shardvault.codec.hashing import block_hash
from shardvault.codec.segment import TAG_BYTES, SegmentCipher
from shardvault.codec.shardfile import ShardHeader
from shardvault.errors import InvalidInput, StorageError, VaultClosed
from shardvault.nodes.port import ShardStore, ShardWriter, said_together, shard_name
from shardvault.slot_init import slot_init
from shardvault.vault.deadline import NodeDeadline

INLINE_BLOCK = 64 << 10
StepHook = Callable[[str], None]
Progress = Callable[[int], None]


def no_step(step: str) -> None:
    """The `StepHook` of a run no test watches: the steps pass untold."""
    return None


@slot_init
@dataclass(frozen=True, slots=True)
class WrittenShards:
    size: int
    segments: int
    block_size: int
    last_block_size: int
    block_hashes: bytes
    locations: tuple[str | None, ...]  # per shard, where its store put it (manifest v2)


def _write_block(writer: ShardWriter, block: bytes) -> bytes:
    writer.write(block)
    return b""


def _segments(source: BinaryIO | memoryview, segment_size: int) -> Iterator[memoryview]:
    """The source's segments, at least one (empty) even for an empty source.

    Bytes in memory are sliced without copying (never through a BytesIO built on
    them: its buffer is a private copy, 0.25 s for 256 MiB here); a stream is
    read into one reused buffer, so any size needs one segment of memory.
    """
    if isinstance(source, memoryview | io.BytesIO):
        whole = source.cast("B") if isinstance(source, memoryview) else _unread(source)
        if not whole:
            yield whole
        for start in range(0, len(whole), segment_size):
            yield whole[start : start + segment_size]
        return
    buffer = bytearray(segment_size)
    first = True
    while True:
        filled = _read_full(source, buffer)
        if filled or first:
            yield memoryview(buffer)[:filled]
        if filled < segment_size:
            return
        first = False


def _unread(source: io.BytesIO) -> memoryview:
    """What reading the BytesIO would return, without a copy, and it read to its end.

    From where it stands, as a file is read: a caller that had read a header
    from it stored those bytes too, ahead of the object's.
    """
    start = source.tell()
    source.seek(0, io.SEEK_END)
    return source.getbuffer()[start:]


def _read_full(source: BinaryIO, buffer: bytearray) -> int:
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        got = source.readinto(view[filled:])  # type: ignore[attr-defined]
        if got is None:  # a non-blocking source with nothing ready: not its end
            _wait_readable(source)
            continue
        if not got:
            break
        if not isinstance(got, int) or not 0 < got <= len(buffer) - filled:
            # as io.BufferedReader refuses it: trusted, an unfilled buffer was stored
            raise InvalidInput(
                f"the source's readinto returned {got!r} for a buffer of "
                f"{len(buffer) - filled} bytes: it must return how many bytes it wrote there"
            )
        filled += got
    return filled


def _wait_readable(source: BinaryIO) -> None:
    """Wait until a non-blocking source has data (or its end) to read.

    Its `readinto` answers None for "nothing yet"; taken for the end, a put from
    a pipe whose producer left it non-blocking stored what had arrived so far
    as the whole object, and acknowledged it.
    """
    try:
        descriptor = source.fileno()
    except (AttributeError, OSError, ValueError):
        raise InvalidInput(
            "the source is non-blocking and has no descriptor to wait on: read it in blocking mode"
        ) from None
    poller = select.poll()
    poller.register(descriptor, select.POLLIN)
    poller.poll()


def _when_all_done(futures: list[Future[bytes]], then: Callable[[], None]) -> None:
    """Call ``then`` once every future is done, in the thread that finishes the last."""
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[bytes]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then()

    for future in futures:
        future.add_done_callback(one_done)


def _raise_all(failures: list[StorageError]) -> NoReturn:
    """Raise one error saying each node's, once: nodes on one disk share a failed flush's,
    and nodes that failed alike (their packs gone, their directories made again) share
    what to do about it, said once (`said_together`)."""
    if len(set(map(str, failures))) == 1:
        raise failures[0]
    raise StorageError(said_together(failures)) from failures[0]


class ShardSetWriter:
    """Writes one object version's n shards across n stores."""

    def __init__(
        self,
        *,
        stores: list[ShardStore],
        object_id: bytes,
        version: int,
        code: ErasureCode,
        cipher: SegmentCipher,
        segment_size: int,
        pool: Executor,
        on_step: StepHook,
        deadline: NodeDeadline | None = None,
    ) -> None:
        self._stores = stores
        self._names = [shard_name(object_id, version, index) for index in range(len(stores))]
        self._code = code
        self._cipher = cipher
        self._segment_size = segment_size
        self._pool = pool
        self._on_step = on_step
        self._header = ShardHeader(
            index=0,
            k=code.k,
            m=code.m,
            object_id=object_id,
            version=version,
            segment_size=segment_size,
            block_size=code.block_size(segment_size + TAG_BYTES),
        )
        self._writers: list[ShardWriter] = []
        self._committed: list[int] = []
        self._in_flight: list[Future[bytes]] = []  # one per shard, in shard order
        self._finishing: list[Future[bytes]] = []  # the task that commits or syncs them all
        self._deadline = deadline
        self._at = 0  # the shard the finishing task is at: the node named if it hangs
        self._abandoned = False  # the put gave up: the finishing task stops
        self._timed_out = False  # it gave up on a node: discard does not wait again
        self._failed_syncs: list[StorageError] = []  # so far: named too if a later node hangs

    def write(
        self, source: BinaryIO | memoryview, progress: Progress | None = None
    ) -> WrittenShards:
        try:
            return self._write(source, progress)
        except BaseException as exc:
            self.discard()
            self._refuse_if_closed(exc)
            raise

    def _refuse_if_closed(self, failure: BaseException) -> None:
        """A node failed the put once the vault closed: its store may have been closed
        under it (the close does not wait for the I/O threads while a node is hung), so
        the failure is the close's, as a read's is (`ObjectReader._refuse_if_closed`)."""
        closed = self._deadline is not None and self._deadline.closed
        if closed and isinstance(failure, StorageError):
            raise VaultClosed(
                "the vault was closed while the put was under way: open it again "
                "and put the object again"
            ) from failure

    def _write(self, source: BinaryIO | memoryview, progress: Progress | None) -> WrittenShards:
        for index, store in enumerate(self._stores):
            self._writers.append(store.open_writer(self._names[index]))
        for index, writer in enumerate(self._writers):
            writer.write(self._header.to_bytes(index))
        hashes: list[bytes] = []
        in_flight: list[Future[bytes]] = []
        size = segments = last_block = 0
        for segment in _segments(source, self._segment_size):
            filled = len(segment)
            sealed = self._cipher.seal(segments, segment)
            blocks = self._code.encode(sealed)
            hashes.extend(block_hash(block) for block in blocks)
            self._wait_each(in_flight)
            if segments == 0 and filled < self._segment_size and len(blocks[0]) <= INLINE_BLOCK:
                # A small object: n tiny writes cost less here than handed to threads.
                for writer, block in zip(self._writers, blocks, strict=True):
                    writer.write(block)
            else:
                in_flight = self._in_flight = [
                    self._pool.submit(_write_block, writer, block)
                    for writer, block in zip(self._writers, blocks, strict=True)
                ]
            last_block = len(blocks[0])
            size += filled
            segments += 1
            self._on_step("segment-written")
            if progress is not None:
                progress(filled)
            if filled < self._segment_size:
                break
        self._wait_each(in_flight)
        self._on_step("shards-written")
        self._commit_all(inline=segments == 1 and last_block <= INLINE_BLOCK)
        self._on_step("shards-committed")
        return WrittenShards(
            size=size,
            segments=segments,
            block_size=self._header.block_size,
            last_block_size=last_block,
            block_hashes=b"".join(hashes),
            locations=tuple(writer.location for writer in self._writers),
        )

    def _commit_all(self, inline: bool) -> None:
        """Commit every shard, then make them durable together.

        A large shard's commit fsyncs its own file (in the pool, so the n run in
        parallel). A packed shard's commit only appends; the writers' ``sync``
        then waits for one filesystem flush that covers all n appends, and
        concurrent puts' appends too (shardvault.durability). Each writer waits
        for its own shard, not the store for its latest: a flush that failed for
        this put's append is seen even if another put's later flush succeeded.
        The syncs (and a small object's commits) run as one task on an I/O
        thread: one hand-off per put, not per shard, and the caller's wait for a
        node is bounded (`_wait_finishing`).
        """
        if inline:
            self._wait_finishing(self._pool.submit(self._finish, True))
            return
        self._in_flight = [
            self._pool.submit(self._commit, index) for index in range(len(self._writers))
        ]
        self._wait_each(self._in_flight)
        self._wait_finishing(self._pool.submit(self._finish, False))

    def _commit(self, index: int) -> bytes:
        self._writers[index].commit(durable=False)
        self._committed.append(index)
        return b""

    def _finish(self, commit: bool) -> bytes:
        """Commit each shard if asked (a small object: n appends cost less than n
        hand-offs), then sync each; stops if the put gave up meanwhile.

        A node whose sync fails does not stop the others': a sync is where a node
        finds its pack removed under the process (and lets it go), so one incident
        on several nodes (a cleanup over their directories) fails this put once,
        naming each, not a put per node; a put given up on a node that hangs after
        them names them with it (`_wait_finishing`)."""
        if commit:
            failed: list[StorageError] = []
            for index in range(len(self._writers)):
                self._at = index
                if self._abandoned:
                    return b""
                try:
                    self._commit(index)
                except StorageError as exc:  # the others still tried: each node named
                    failed.append(exc)
            if failed:
                _raise_all(failed)
        for index, writer in enumerate(self._writers):  # the first flush covers the rest
            self._at = index
            if self._abandoned:
                return b""
            try:
                writer.sync()
            except StorageError as exc:
                self._failed_syncs.append(exc)
        if self._failed_syncs:
            _raise_all(self._failed_syncs)
        return b""

    def _seconds(self) -> float | None:
        return None if self._deadline is None else self._deadline.seconds

    def _expired(self, index: int) -> StorageError:
        assert self._deadline is not None
        self._timed_out = True
        return self._deadline.expired(self._stores[index].node_id)

    def _wait_finishing(self, task: Future[bytes]) -> None:
        self._finishing = [task]
        try:
            task.result(timeout=self._seconds())
        except TimeoutError:
            if task.done():  # it ended as the wait gave up: its own outcome, not the wait's
                task.result()
                return
            expired = self._expired(self._at)
            if self._failed_syncs:  # the nodes whose syncs failed before it: said once
                _raise_all([*self._failed_syncs, expired])
            raise expired from None

    def _wait_each(self, futures: list[Future[bytes]]) -> None:
        """Wait for one task per shard, in shard order, until the nodes' deadline at most;
        once all have finished, the nodes' failures are raised as one if all are storage
        errors (`_raise_all`), else the first."""
        seconds = self._seconds()
        end = None if seconds is None else time.monotonic() + seconds
        errors: list[BaseException] = []
        for index, future in enumerate(futures):
            try:
                future.result(timeout=None if end is None else max(0.0, end - time.monotonic()))
            except TimeoutError:
                if not future.done():
                    raise self._expired(index) from None
                # its own error, or none: it may have ended well after the wait gave up
                if (error := future.exception()) is not None:
                    errors.append(error)
            except BaseException as exc:
                errors.append(exc)
        failed = [error for error in errors if isinstance(error, StorageError)]
        if failed and len(failed) == len(errors):
            _raise_all(failed)
        if errors:
            raise errors[0]

    def discard(self) -> None:
        """Remove every shard of this version, committed or not (best effort).

        A block still being written (the source failed meanwhile) must finish
        before its file is aborted, or the write lands on a closed descriptor.
        One a hung disk holds past the deadline keeps its shards: they are removed
        when it returns (or, if the process ends first, by gc as orphans).
        """
        self._abandoned = True
        running = [task for task in (*self._in_flight, *self._finishing) if not task.done()]
        if running:
            _, stuck = wait(running, timeout=0.0 if self._timed_out else self._seconds())
            if stuck:
                _when_all_done(running, self._discard_now)
                return
        self._discard_now()

    def _discard_now(self) -> None:
        if self._deadline is not None and self._deadline.closed:
            return  # the vault closed its stores meanwhile: gc takes the shards as orphans
        for index, writer in enumerate(self._writers):
            try:
                writer.abort()
                if index in self._committed:
                    self._stores[index].delete(self._names[index], writer.location)
            except Exception:
                continue
