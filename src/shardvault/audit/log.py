"""The append-only, file-backed audit log of one cell, with group commit.

Layout of a log directory (all integers big-endian)::

    entries.log   b"SVAUDE" u16 version=1, then records: u32 length, u32 CRC-32, entry bytes
    index.log     b"SVAUDI" u16 version=1, then per entry: u64 end offset in entries.log,
                  32-byte leaf hash, u32 CRC-32 of those 40 bytes
    heads/        <tree size, 20 digits>.note: signed (and cosigned) checkpoints
    frontier      b"SVAUDF" u16 version=1, u64 size, u64 end offset of entry size-1,
                  its 32-byte leaf hash, u8 count, count 32-byte subtree roots, u32 CRC-32
    tree-<L>.log  stored tree nodes, a cache of the index (`audit/tree.py`)
    LOCK          flock'ed by whoever is appending or recovering

Why this shape: the index holds every leaf hash, so heads and proofs never
rehash entries, the in-memory `Frontier` makes each append O(log n), and the
stored tree nodes let a root or proof read O(log n) hashes, not every leaf's.
`append` returns only once its entry is on disk (fdatasync of the entries file).
`submit` queues the entry and returns a ticket; the caller waits on it before
anything becomes visible. The first waiter finding no write in flight writes
every queued entry with one fsync, in its own thread, and entries queued
meanwhile share the next one (leader-based group commit). There is no flusher
thread: handing each entry to one cost a thread switch each way per request,
measured at about a sixth of a small get's CPU (docs/performance.md).

Several processes may append to one log (a cell served by several workers, or
the CLI beside a server). A batch is written under an exclusive flock of
``LOCK``: the writer first catches up with what other processes appended (their
index records, or their whole entries if one died before indexing them), then
appends at the end, fsyncs, writes the index records and unlocks. So an entry's
index is known only once it is written (`AuditTicket.wait` returns it). The
index is a cache of durable entries, written after them and never synced on the
append path, so each fsync flushes only entry bytes.

Opening starts from ``frontier``, the Merkle state a process left at open or
close, when it still agrees with the index (the leaf hash and end offset of
its last entry), so an open reads only what was appended since, not the whole
log: at a million entries a full rebuild took 1.5 s of every command. It is a
cache, written without a sync; a missing, torn or disagreeing one costs the
full rebuild, which checks every index record and every stored head.

Fail closed: if a batch cannot be made durable, the files are truncated back to
their previous length and every caller in the batch gets `AuditUnavailable`, so
the access it was about to allow is refused. After a failed fsync the page cache
cannot be trusted, so the process refuses further appends until it reopens the
log (so it does if its index cannot be written). Opening, and catching up,
recover from a crash: the index's longest valid prefix is kept, whole entries
after it are re-indexed, and a torn entry tail (never acknowledged) is cut. A
damaged acknowledged entry, or fewer entries than a stored signed head covers,
is an `IntegrityError` and nothing is cut.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from shardvault.audit import merkle
from shardvault.audit.checkpoint import Checkpoint
from shardvault.audit.entry import MAX_ENTRY_BYTES, AuditEntry
from shardvault.audit.note import SignedNote
from shardvault.audit.tree import TreeNodes
from shardvault.durability import failure_reason, fsync_directory, read_own, replace_whole
from shardvault.errors import AuditUnavailable, IntegrityError, InvalidInput, NewerFormat
from shardvault.group_commit import WaitRoom, reacquire

LOG_VERSION = 1
_ENTRIES_MAGIC = b"SVAUDE"
_INDEX_MAGIC = b"SVAUDI"
_HEADER = 8
_REC = struct.Struct(">II")
_IDX_BODY = struct.Struct(">Q32s")
_IDX = struct.Struct(">Q32sI")
_FRONTIER_MAGIC = b"SVAUDF"
_FRONTIER_HEAD = struct.Struct(">6sHQQ32sB")
_CRC = struct.Struct(">I")
_READ_AHEAD = 1 << 20


def _index_pack(end: int, leaf: bytes) -> bytes:
    body = _IDX_BODY.pack(end, leaf)
    return body + struct.pack(">I", zlib.crc32(body))


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _open_file(path: Path, magic: bytes) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    header = os.pread(fd, _HEADER, 0)
    if not os.pread(fd, 1, _HEADER) and (len(header) < _HEADER or not any(header)):
        if any(header):  # new, or its creation cut short by a power loss: zeros
            raise IntegrityError(f"{path} has a truncated header")
        os.ftruncate(fd, 0)
        _pwrite_all(fd, magic + struct.pack(">H", LOG_VERSION), 0)
        os.fsync(fd)
        fsync_directory(path.parent)
        return fd
    if header[:6] != magic:
        os.close(fd)
        raise IntegrityError(f"{path} is not a shardvault audit log file")
    version = struct.unpack(">H", header[6:])[0]
    if version != LOG_VERSION:
        os.close(fd)
        known = f"{path} is audit log format version {version}; this reader knows {LOG_VERSION}"
        if version > LOG_VERSION:
            raise NewerFormat(f"{known}: upgrade shardvault")
        raise IntegrityError(known)
    return fd


def _state_lock() -> tuple[threading.Lock, WaitRoom]:
    """The log's state lock, and the room where group commit's waiters sleep under it."""
    lock = threading.Lock()
    return lock, WaitRoom(lock)


class _Batch:
    __slots__ = ("done", "durable", "error", "first", "leaves", "payloads")

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.leaves = [merkle.leaf_hash(p) for p in payloads]
        self.first = -1  # set when written: other processes may append first
        self.durable = False  # fsynced: written, whatever happens to its writer after
        self.done = False
        self.error: BaseException | None = None


class _Exclusive:
    """Exclusive use of a log's files, against this process's threads (its append lock)
    and other processes (the flock). A context manager object each log holds one of:
    as a @contextmanager generator it cost every audit write about 10 k instructions
    more. Never taken under the log's ``_state``."""

    __slots__ = ("_log",)

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    def __enter__(self) -> None:
        log = self._log
        log._append_lock.acquire()
        try:
            log._check_open()
            fcntl.flock(log._lock_fd, fcntl.LOCK_EX)
        except BaseException:
            log._append_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        log = self._log
        try:
            fcntl.flock(log._lock_fd, fcntl.LOCK_UN)
        finally:
            log._append_lock.release()


class AuditTicket:
    """Entries on their way to disk: indexes fixed at submit, durability awaited."""

    __slots__ = ("_batch", "_log")

    def __init__(self, log: AuditLog, batch: _Batch) -> None:
        self._log = log
        self._batch = batch

    def wait(self) -> int:
        """Block until durable; the first index, or `AuditUnavailable` (fail closed)."""
        return self._log._wait(self._batch)

    @property
    def leaf(self) -> bytes:
        """The RFC 9162 leaf hash of the first entry (known at submit)."""
        return self._batch.leaves[0]


def _frontier_temporary(directory: Path) -> Path:
    """Where this thread writes the frontier before renaming it into place."""
    return directory / f"frontier.{os.getpid()}.{threading.get_ident()}.tmp"


def _remove_frontier_temporaries_of_the_dead(directory: Path) -> None:
    """Remove the frontier temporaries of processes no longer running: one killed between
    writing its temporary and renaming it left the file, and nothing else looks for it.
    A live process's is left alone: it may be saving its frontier as this one opens (a
    close saves outside the flock)."""
    for temporary in directory.glob("frontier.*.*.tmp"):
        pid = temporary.name.split(".")[1]
        if not pid.isdecimal():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            temporary.unlink(missing_ok=True)
        except (PermissionError, OverflowError):  # another user's process: running
            continue


class AuditLog:
    """One cell's audit log. Thread-safe, and processes may share it (flock per batch)."""

    def __init__(self, directory: Path, efd: int, ifd: int, lock_fd: int) -> None:
        """Takes over the three descriptors; the caller holds the flock (see `open`)."""
        self.directory = directory
        self._efd, self._ifd, self._lock_fd = efd, ifd, lock_fd
        # Thread lock, then flock, then _state. The flock belongs to the open file,
        # not to a thread, so threads of this process take turns on _append_lock.
        self._append_lock = threading.Lock()
        self._locked = _Exclusive(self)  # `with self._locked:`, never under _state
        self._state, self._room = _state_lock()
        self._files_closed = False
        self._queue: list[_Batch] = []
        self._writing = False  # a waiter is writing the batches it took from the queue
        self._took_later = False  # ... and also those queued while it waited for the flock
        self._broken: BaseException | None = None
        self._closed = False
        self._commits = 0
        self._frontier = merkle.Frontier()
        self._entries_end = _HEADER  # end of the last entry in the frontier
        self._tree = TreeNodes(directory, self.leaf_hashes)
        _remove_frontier_temporaries_of_the_dead(directory)
        self._saved_size = self._restore_frontier()
        if not self._saved_size:
            self._tree.drop()  # rebuilt from the whole index: what it summarised may differ
        self._unchecked_below = self._saved_size  # index records taken on trust, unread
        roots = self._stored_roots(self._saved_size)
        self._catch_up(roots)
        if roots and max(roots) > self._frontier.size:  # also when nothing was appended since
            raise IntegrityError(
                f"audit log {self.directory} has {self._frontier.size} entries but a signed "
                f"head for {max(roots)}: acknowledged entries are missing"
            )
        os.fsync(self._efd)
        os.fsync(self._ifd)
        self._save_frontier()

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> AuditLog:
        """Open (creating if needed) the log in ``directory``; recovers from a crash.

        Raises `AuditUnavailable` if the files cannot be opened or written,
        `IntegrityError` if they are damaged or of an unknown version.
        """
        path = Path(directory)
        fds: list[int] = []
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / "heads").mkdir(exist_ok=True)
            lock_fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fds.append(lock_fd)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                fds.append(_open_file(path / "entries.log", _ENTRIES_MAGIC))
                fds.append(_open_file(path / "index.log", _INDEX_MAGIC))
                return cls(path, fds[1], fds[2], lock_fd)
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise AuditUnavailable(f"audit log {path} cannot be opened: {exc}") from exc
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    # -- recovery and catching up ----------------------------------------------

    def _index_end(self, i: int) -> int:
        """Where entry ``i`` ends in entries.log (-1: before the first entry)."""
        if i < 0:
            return _HEADER
        end, _, _ = _IDX.unpack(os.pread(self._ifd, _IDX.size, _HEADER + i * _IDX.size))
        return int(end)

    def _read_record(self, start: int, limit: int) -> bytes | None:
        """The entry record at ``start`` if it is whole and its CRC matches, else None."""
        if limit - start < _REC.size:
            return None
        length, crc = _REC.unpack(os.pread(self._efd, _REC.size, start))
        if not 0 < length <= MAX_ENTRY_BYTES or start + _REC.size + length > limit:
            return None
        payload = os.pread(self._efd, length, start + _REC.size)
        return payload if zlib.crc32(payload) == crc else None

    def _file_sizes(self) -> tuple[int, int]:
        """Where entries.log and index.log end. By lseek rather than fstat: one syscall
        each too, without a stat result built (about 5 k instructions each, and every
        audit write asks). Nothing uses the descriptors' offsets: reads and writes here
        are positional."""
        return os.lseek(self._efd, 0, os.SEEK_END), os.lseek(self._ifd, 0, os.SEEK_END)

    def _view_is_current(self) -> bool:
        """Whether the files end where this process's view does; holding the flock."""
        expected = (self._entries_end, _HEADER + self._frontier.size * _IDX.size)
        return self._file_sizes() == expected

    def _catch_up(self, heads: dict[int, bytes] | None = None) -> None:
        """Take in what is on disk past this process's view; holding the flock and ``_state``.

        On open the view is empty and ``heads`` are the stored signed heads, so
        this is crash recovery; later it picks up other processes' appends.
        Index records after the view are kept while valid (CRCs, increasing
        offsets), whole entries after them are indexed, and the first torn
        record (never acknowledged) ends the log and is cut, but only once the
        stored heads are known to be covered. The view changes only if all of
        that succeeds; otherwise nothing was cut and the exception says why.
        """
        entries_size, index_size = self._file_sizes()
        start = self._frontier.size
        if (entries_size, index_size) == (self._entries_end, _HEADER + start * _IDX.size):
            return  # nobody else appended: the common case
        if entries_size < self._entries_end:
            raise IntegrityError(
                f"audit log {self.directory}: entries.log is shorter than the entries this "
                "process has read: acknowledged entries are missing"
            )
        heads = heads or {}
        frontier = self._frontier.copy()
        count, pos = start, self._entries_end
        total = (index_size - _HEADER) // _IDX.size
        while count < total:
            chunk = os.pread(
                self._ifd, min(total - count, 65536) * _IDX.size, _HEADER + count * _IDX.size
            )
            stop = False
            for end, leaf, crc in _IDX.iter_unpack(chunk[: len(chunk) - len(chunk) % _IDX.size]):
                if zlib.crc32(_IDX_BODY.pack(end, leaf)) != crc or not pos < end <= entries_size:
                    stop = True
                    break
                pos = end
                count += 1
                self._append_leaf(frontier, leaf, heads)
            if stop or not chunk:
                break
        if count > start:
            first = self._index_end(count - 2)
            payload = self._read_record(first, entries_size)
            if payload is None or first + _REC.size + len(payload) != pos:
                raise IntegrityError(
                    f"audit log {self.directory}: acknowledged entry {count - 1} is damaged"
                )
        salvaged = []
        while (payload := self._read_record(pos, entries_size)) is not None:
            try:
                AuditEntry.from_bytes(payload)
            except IntegrityError as exc:
                # a whole record with a valid CRC is no torn write: never cut it
                raise IntegrityError(
                    f"audit log {self.directory}: entry {frontier.size} cannot be read: {exc}"
                ) from None
            pos += _REC.size + len(payload)
            leaf = merkle.leaf_hash(payload)
            salvaged.append(_index_pack(pos, leaf))
            self._append_leaf(frontier, leaf, heads)
        if heads and max(heads) > frontier.size:
            raise IntegrityError(
                f"audit log {self.directory} has {frontier.size} entries but a signed "
                f"head for {max(heads)}: acknowledged entries are missing"
            )
        index_end = _HEADER + count * _IDX.size
        if entries_size != pos:
            os.ftruncate(self._efd, pos)
        if salvaged:
            # a dead writer's entries may not be synced: they are this log's from now
            # on, and stored tree nodes (`TreeNodes`) may come to summarise them
            os.fsync(self._efd)
            _pwrite_all(self._ifd, b"".join(salvaged), index_end)
        if index_size != index_end + len(salvaged) * _IDX.size:
            os.ftruncate(self._ifd, index_end + len(salvaged) * _IDX.size)
        self._frontier, self._entries_end = frontier, pos

    def _append_leaf(self, frontier: merkle.Frontier, leaf: bytes, heads: dict[int, bytes]) -> None:
        frontier.append(leaf)
        expected = heads.get(frontier.size)
        if expected is not None and frontier.root() != expected:
            raise IntegrityError(
                f"audit log {self.directory} does not match its signed head "
                f"for size {frontier.size}"
            )

    def _stored_roots(self, smallest: int = 0) -> dict[int, bytes]:
        """The roots of the stored heads of `smallest` entries or more (all by default)."""
        roots = {}
        for head in self.heads(smallest):
            checkpoint = Checkpoint.parse(head.text)
            roots[checkpoint.size] = checkpoint.root_hash
        if roots.get(0, merkle.EMPTY_ROOT) != merkle.EMPTY_ROOT:
            raise IntegrityError("stored head for size 0 has the wrong root")
        return roots

    def _restore_frontier(self) -> int:
        """Start from the saved frontier if it agrees with the index; its size (0 if not).

        Holding the flock. The heads it covers were checked when it was made; the
        one at its own size, if any, is checked again here, cheaply.
        """
        try:
            data = read_own(self.directory / "frontier", "audit frontier")
        except (OSError, IntegrityError):  # a cache: rebuilt, and replaced when saved
            return 0
        try:
            magic, version, size, end, last, count = _FRONTIER_HEAD.unpack_from(data)
            body = _FRONTIER_HEAD.size + 32 * count
            (crc,) = _CRC.unpack_from(data, body)
            frontier = merkle.Frontier.restore(
                size, [data[i : i + 32] for i in range(_FRONTIER_HEAD.size, body, 32)]
            )
        except (struct.error, ValueError):
            return 0
        if (magic, version, crc) != (_FRONTIER_MAGIC, 1, zlib.crc32(data[:body])) or size < 1:
            return 0
        if _HEADER + size * _IDX.size > os.fstat(self._ifd).st_size:
            return 0  # the index lost entries since (a crash), or was replaced
        record = os.pread(self._ifd, _IDX.size, _HEADER + (size - 1) * _IDX.size)
        if _IDX.unpack(record) != (end, last, zlib.crc32(_IDX_BODY.pack(end, last))):
            return 0  # the index was rebuilt otherwise
        if self._stored_roots(size).get(size, frontier.root()) != frontier.root():
            return 0
        first = self._index_end(size - 2)
        payload = self._read_record(first, os.fstat(self._efd).st_size)
        if payload is None or first + _REC.size + len(payload) != end:
            raise IntegrityError(
                f"audit log {self.directory}: acknowledged entry {size - 1} is damaged"
            )
        self._frontier, self._entries_end = frontier, int(end)
        return int(size)

    def _save_frontier(self) -> None:
        """Leave this process's frontier for the next open (best effort: a cache)."""
        size = self._frontier.size
        if size <= self._saved_size:
            return
        record = os.pread(self._ifd, _IDX.size, _HEADER + (size - 1) * _IDX.size)
        end, last, _ = _IDX.unpack(record)
        stack = self._frontier.stack
        data = _FRONTIER_HEAD.pack(_FRONTIER_MAGIC, 1, size, end, last, len(stack))
        data += b"".join(stack)
        data += _CRC.pack(zlib.crc32(data))
        temporary = _frontier_temporary(self.directory)
        try:
            temporary.write_bytes(data)
            os.replace(temporary, self.directory / "frontier")
            self._saved_size = size
        except OSError:
            temporary.unlink(missing_ok=True)

    def refresh(self) -> None:
        """Take in entries other processes appended (a broken log keeps its view).

        Raises `AuditUnavailable` if the files cannot be read or repaired, and
        `IntegrityError` if they are damaged; either way the log is then broken.
        """
        with self._locked, self._state:
            if self._broken is not None:
                return
            try:
                self._catch_up()
            except IntegrityError as exc:
                self._broken = exc
                raise
            except OSError as exc:
                self._broken = exc
                raise AuditUnavailable(f"audit log {self.directory}: {exc}") from exc

    # -- appending --------------------------------------------------------------

    def append(self, entry: AuditEntry) -> int:
        """Write ``entry`` durably; return its index. Raises `AuditUnavailable` on failure."""
        return self.submit([entry]).wait()

    def append_many(self, entries: list[AuditEntry]) -> list[int]:
        """Write several entries in one batch (all or none); return their indexes."""
        if not entries:
            return []
        first = self.submit(entries).wait()
        return list(range(first, first + len(entries)))

    def submit(self, entries: list[AuditEntry]) -> AuditTicket:
        """Queue entries (all or none); `wait` on the ticket to write them and get their index.

        Raises `AuditUnavailable` at once if the log is closed or broken.
        """
        batch = _Batch([e.to_bytes() for e in entries])
        with self._state:
            self._check_usable()
            self._queue.append(batch)
        return AuditTicket(self, batch)

    def _wait(self, batch: _Batch) -> int:
        with self._state:
            try:
                while not batch.done and batch.error is None:
                    if self._writing:  # woken when the write covering this batch ends
                        self._room.wait(covered=batch not in self._queue)
                    elif batch in self._queue:
                        self._write_queue()
                    else:  # taken by a writer interrupted before it could say how it went
                        batch.error = AuditUnavailable("the write of this entry was interrupted")
            except BaseException:
                if not self._writing:
                    self._room.hand_on()
                raise
        if isinstance(batch.error, OSError):  # its disk's: name it, and say to make room
            reason = failure_reason(batch.error, self.directory)
            raise AuditUnavailable(
                f"audit entry not written to {self.directory}: {reason}"
            ) from batch.error
        if batch.error is not None:
            raise AuditUnavailable(f"audit entry not written: {batch.error}") from batch.error
        return batch.first

    def _write_queue(self) -> None:
        """Write every queued batch with one fsync; called holding ``_state``, nobody writing."""
        batches, self._queue = self._queue, []
        error: BaseException | None = None
        interrupted: BaseException | None = None
        self._writing = True
        self._state.release()
        try:
            error = self._write_batches(batches)
        except BaseException as exc:  # Ctrl-C in this caller: its batches fail closed
            error = interrupted = exc
        pending = reacquire(self._state)
        self._writing = False
        for b in batches:  # an entry on disk is written, even if its writer was then stopped
            b.done = error is None or b.durable
            b.error = None if b.done else error
        self._room.write_ended(self._took_later or interrupted is not None)
        self._took_later = False
        raise_now = interrupted or pending
        if raise_now is not None:
            raise raise_now

    def _check_open(self) -> None:
        if self._files_closed:
            raise AuditUnavailable(f"audit log {self.directory} is closed")

    def _check_usable(self) -> None:
        if self._closed or self._broken is not None:
            reason = "closed" if self._closed else f"broken ({self._broken}); reopen it"
            raise AuditUnavailable(f"audit log {self.directory} is {reason}")

    def _write_batches(self, batches: list[_Batch]) -> BaseException | None:
        """Under the flock: catch up, append, fsync, index. None, or why it failed.

        Once the flock is had, `batches` (the caller's list) also takes what was
        queued while waiting for it: with two processes appending, a writer
        waits about as long for the other's fsync as for its own, and what
        queued meanwhile would otherwise wait for both again: at two worker
        processes of 16 threads, a fifth fewer fsyncs per get.
        """
        with self._locked:
            with self._state:
                if self._queue:  # taken before it is listed: an interrupt leaves it failed
                    later, self._queue = self._queue, []
                    self._took_later = True
                    batches.extend(later)
            # Only holders of _append_lock change the view, so it is read here without
            # _state, and the common path runs no syscall under _state: each releases
            # the GIL, and threads queueing behind it on _state would each cost a
            # context switch. Catching up with other processes still does (rare).
            with self._state:
                if self._broken is not None:
                    return AuditUnavailable(f"audit log {self.directory} is broken")
            try:
                if not self._view_is_current():
                    with self._state:
                        self._catch_up()
            except (OSError, IntegrityError) as exc:
                with self._state:
                    self._broken = exc
                return exc
            first, entries_end = self._frontier.size, self._entries_end
            records, index, pos = [], [], entries_end
            for b in batches:
                b.first = first
                first += len(b.payloads)
                for payload, leaf in zip(b.payloads, b.leaves, strict=True):
                    records.append(_REC.pack(len(payload), zlib.crc32(payload)) + payload)
                    pos += _REC.size + len(payload)
                    index.append(_index_pack(pos, leaf))
            error = self._write(b"".join(records), entries_end)
            if error is not None:
                return error
            for b in batches:  # if the index is lost now, catching up rebuilds it
                b.durable = True
            try:
                _pwrite_all(self._ifd, b"".join(index), _HEADER + self._frontier.size * _IDX.size)
            except OSError as exc:
                # durable but unindexed: whoever catches up next indexes them
                with self._state:
                    self._broken = exc
                return exc
            with self._state:
                for b in batches:
                    for leaf in b.leaves:
                        self._frontier.append(leaf)
                self._entries_end = pos
                self._commits += 1
        return None

    def _write(self, records: bytes, entries_end: int) -> OSError | None:
        """Make the records durable at the end of entries.log; undo them on failure."""
        stage = "write"
        try:
            _pwrite_all(self._efd, records, entries_end)
            stage = "fsync"
            os.fdatasync(self._efd)
            return None
        except OSError as exc:
            broken: OSError | None = exc if stage == "fsync" else None
            try:
                os.ftruncate(self._efd, entries_end)
                os.fsync(self._efd)
            except OSError as undo:
                broken = undo
            if broken is not None:
                with self._state:
                    self._broken = broken
            return exc

    # -- reading ----------------------------------------------------------------

    @property
    def size(self) -> int:
        with self._state:
            return self._frontier.size

    @property
    def commit_count(self) -> int:
        """Durable batches written since open: fewer than appends when group commit works."""
        with self._state:
            return self._commits

    def root(self) -> bytes:
        with self._state:
            return self._frontier.root()

    def checkpoint(self, origin: str) -> Checkpoint:
        """The current head, other processes' entries included, unsigned: sign it with
        `sign_checkpoint` and `store_head` it."""
        self.refresh()
        with self._state:
            return Checkpoint(origin, self._frontier.size, self._frontier.root())

    def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """Leaf hashes of entries ``start..end``, from the index (no entry is rehashed).

        The records an open took on trust from the frontier were not read then: until
        a read has covered them all, their CRCs are checked here. A damaged one is
        written again from its entry (`_rebuilt_record`); if the entry cannot be
        found or read either, `IntegrityError`."""
        with self._state:
            self._check_open()
            if not 0 <= start <= end <= self._frontier.size:
                raise InvalidInput(f"leaf range {start}..{end} is outside 0..{self._frontier.size}")
        size = (end - start) * _IDX.size
        data = os.pread(self._ifd, size, _HEADER + start * _IDX.size)
        if len(data) != size:
            raise IntegrityError(f"audit log {self.directory}: index.log is shorter than expected")
        unchecked = self._unchecked_below
        if start >= unchecked:
            return [leaf for _, leaf, _ in _IDX.iter_unpack(data)]
        leaves: list[bytes] = []
        previous_end = self._checked_end(start - 1)
        for number, (offset, leaf, crc) in enumerate(_IDX.iter_unpack(data), start):
            if number < unchecked and zlib.crc32(_IDX_BODY.pack(offset, leaf)) != crc:
                offset, leaf = self._rebuilt_record(number, previous_end)
            leaves.append(leaf)
            previous_end = offset
        if start == 0 and end >= unchecked:
            self._unchecked_below = 0  # all read once, as an open without a frontier does
        return leaves

    def _checked_end(self, number: int) -> int:
        """Where entry ``number`` ends, from its index record, whose CRC must hold."""
        if number < 0:
            return _HEADER
        offset, leaf, crc = _IDX.unpack(
            os.pread(self._ifd, _IDX.size, _HEADER + number * _IDX.size)
        )
        if zlib.crc32(_IDX_BODY.pack(offset, leaf)) != crc:
            raise IntegrityError(f"audit log {self.directory}: index record {number} is damaged")
        return int(offset)

    def _rebuilt_record(self, number: int, start: int) -> tuple[int, bytes]:
        """Rehash entry ``number`` (at byte ``start`` of entries.log) and write its damaged
        index record again, under the flock: (end offset, leaf hash)."""
        with self._locked:
            payload = self._read_record(start, os.fstat(self._efd).st_size)
            if payload is None:
                raise IntegrityError(
                    f"audit log {self.directory}: index record {number} is damaged, and its "
                    "entry cannot be read to rebuild it"
                )
            end, leaf = start + _REC.size + len(payload), merkle.leaf_hash(payload)
            _pwrite_all(self._ifd, _index_pack(end, leaf), _HEADER + number * _IDX.size)
        return end, leaf

    def iter_entry_bytes(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The canonical bytes of entries ``start..end`` (default: all committed)."""
        end = self.size if end is None else end
        if not 0 <= start <= end <= self.size:
            raise InvalidInput(f"entry range {start}..{end} is outside 0..{self.size}")
        with self._state:
            self._check_open()
            pos = self._index_end(start - 1)
        buffer, at = b"", 0  # read ahead a chunk at a time: two preads per entry cost 3.6 µs
        for _ in range(start, end):
            if len(buffer) - at < _REC.size:
                buffer, at = os.pread(self._efd, _READ_AHEAD, pos), 0
            if len(buffer) < _REC.size:
                raise IntegrityError(f"audit log {self.directory}: entries.log ends at byte {pos}")
            length, crc = _REC.unpack_from(buffer, at)
            if length > MAX_ENTRY_BYTES:
                raise IntegrityError(f"audit log {self.directory}: entry at byte {pos} is damaged")
            if len(buffer) - at < _REC.size + length:
                buffer, at = os.pread(self._efd, max(_READ_AHEAD, _REC.size + length), pos), 0
            payload = buffer[at + _REC.size : at + _REC.size + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                raise IntegrityError(f"audit log {self.directory}: entry at byte {pos} is damaged")
            yield payload
            pos += _REC.size + length
            at += _REC.size + length

    def entry(self, index: int) -> AuditEntry:
        return AuditEntry.from_bytes(next(self.iter_entry_bytes(index, index + 1)))

    def _tree_size(self, size: int | None) -> int:
        """``size`` (default: every entry), checked to be a tree this log holds."""
        with self._state:
            self._check_open()
            if size is None:
                return self._frontier.size
            if not 0 <= size <= self._frontier.size:
                raise InvalidInput(f"tree size {size} is outside 0..{self._frontier.size}")
            return size

    def root_at(self, size: int) -> bytes:
        """MTH of the first ``size`` entries, from stored nodes (`TreeNodes`)."""
        size = self._tree_size(size)
        return self._tree.subtree(0, size) if size else merkle.EMPTY_ROOT

    def trusted_root(self, size: int) -> bytes:
        """The root of the first ``size`` entries from what stored tree nodes cannot
        sway, to check proofs against: the frontier at the log's size, else the
        stored signed head of that size, else every leaf hash (O(n))."""
        size = self._tree_size(size)
        with self._state:
            if size == self._frontier.size:
                return self._frontier.root()
        try:
            path = self.directory / "heads" / f"{size:020d}.note"
            note = SignedNote.parse(read_own(path, "stored head"))
            return Checkpoint.parse(note.text).root_hash
        except FileNotFoundError:
            return merkle.root_of(self.leaf_hashes(0, size))
        except InvalidInput as exc:
            raise IntegrityError(f"stored head for size {size} is damaged: {exc}") from None

    def frontier_at(self, size: int) -> merkle.Frontier:
        """The compact range of the first ``size`` entries (one root per perfect subtree,
        from stored nodes): what a witness extends leaf by leaf from a head it trusts,
        once it has checked that the range's root is that head's."""
        size = self._tree_size(size)
        stack, start = [], 0
        for bit in reversed(range(size.bit_length())):
            if size >> bit & 1:
                stack.append(self._tree.subtree(start, start + (1 << bit)))
                start += 1 << bit
        return merkle.Frontier.restore(size, stack)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return merkle.inclusion_path(self._tree_size(size), index, self._tree.subtree)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return merkle.consistency_path(self._tree_size(new_size), old_size, self._tree.subtree)

    # -- heads ------------------------------------------------------------------

    def store_head(self, note: SignedNote) -> None:
        """Keep a signed head with the log (replacing one of the same size, e.g. once cosigned).

        Refuses (`IntegrityError`) a head whose root is not this log's root at its size.
        """
        checkpoint = Checkpoint.parse(note.text)
        if checkpoint.size > self.size or self.root_at(checkpoint.size) != checkpoint.root_hash:
            raise IntegrityError("refusing to store a head that does not match this log")
        final = self.directory / "heads" / f"{checkpoint.size:020d}.note"
        try:
            replace_whole(final, note.to_bytes(), 0o644)  # a temporary of its own per writer
        except OSError as exc:
            raise AuditUnavailable(f"signed head not stored: {exc}") from exc

    def heads(self, smallest: int = 0) -> list[SignedNote]:
        """Stored signed heads of trees of `smallest` entries or more, smallest first."""
        heads = []
        for path in sorted((self.directory / "heads").glob("[0-9]*.note")):
            if path.stem.isascii() and path.stem.isdigit() and int(path.stem) < smallest:
                continue
            try:
                heads.append(SignedNote.parse(read_own(path, "stored head")))
            except InvalidInput as exc:
                raise IntegrityError(f"stored head {path} is damaged: {exc}") from None
        return heads

    def close(self) -> None:
        """Write what is queued (entries nobody waited for), then close the files."""
        with self._state:
            if self._closed:
                return
            self._closed = True  # submit refuses from now on
            while self._writing:
                self._room.wait(covered=True)
            if self._queue:
                with contextlib.suppress(Exception):  # their waiters get the error
                    self._write_queue()
        with self._append_lock, self._state:
            try:
                os.fsync(self._ifd)
            except OSError:
                pass  # a cache: open rebuilds it, and no frontier may vouch for it
            else:
                if self._broken is None:
                    with contextlib.suppress(OSError, struct.error):
                        self._save_frontier()
            for fd in (self._efd, self._ifd, self._lock_fd):
                os.close(fd)
            self._tree.close()
            self._files_closed = True

    def abandon_after_fork(self) -> None:
        """In a forked child: let go of the parent's log without touching its state.

        Its locks may be held by parent threads that are not in the child. The
        child's copies of the descriptors are closed (so a dead parent's flock
        dies with it, and no later file can reuse the numbers under this object)
        and every later use raises `AuditUnavailable`. Only for an at-fork hook: the child has one
        thread then.
        """
        self._append_lock = threading.Lock()
        self._locked = _Exclusive(self)  # `with self._locked:`, never under _state
        self._state, self._room = _state_lock()
        self._closed = self._files_closed = True
        self._queue, self._writing = [], False  # a ticket carried over fails, never hangs
        for fd in (self._efd, self._ifd, self._lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._tree.abandon_after_fork()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["LOG_VERSION", "AuditLog", "AuditTicket"]
