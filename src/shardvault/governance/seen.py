"""The partner's record of the audit positions its custodian was shown, and the witness's
check of a head against it.

The vault asks the custodian for a key only once the decision's audit entry is
durable, and shows it where that entry is (`model.AuditPosition`: cell, index,
leaf hash). The custodian keeps every position it is shown (`SeenRecorder`), and
the partner's witness cosigns a head of a cell's log only if the log holds each
one the head covers (`check_head`). So an entry a key use followed can no longer
be cut or rewritten unnoticed once its position is written out, whether or not a
cosigned head covered it yet (docs/trust-model.md).

A key use pays a lock and a list append: no syscall, no fsync, no query. The
positions wait in memory, and a thread of the recorder's own writes them out
(one append and one fdatasync per cell) when ``batch`` of them wait, else within
``interval`` seconds; so do `close` and the witness before it takes a head
(`write_out`). A process killed (kill -9, a power loss) loses what it had not
written out: the entries of its last ``interval`` seconds of key uses are then
covered, as before, only by the first cosigned head over them.

File format version 1 (docs/formats.md, "Seen audit positions"), one file per
cell, ``<partner dir>/seen/<J>.seen`` (0600), appended to under a flock of
``<J>.lock`` beside it::

    b"SVSEEN" u16 1, then per position: u64 index, its 32-byte leaf hash,
    u32 CRC-32 of those 40 bytes (all big-endian)

A record cut short (a writer killed mid-append) is ignored and cut by the next
append; a whole record whose CRC fails refuses every head of the cell
(`IntegrityError`): the partner's record is damaged, restore it from its backups.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path

from shardvault.audit import AuditLog, Checkpoint
from shardvault.audit.merkle import verify_inclusion
from shardvault.durability import fsync_directory, replace_whole
from shardvault.errors import IntegrityError, KeyUnavailable, NewerFormat, ShardvaultError
from shardvault.file_locks import flocked
from shardvault.model import AuditPosition

SEEN_VERSION = 1
BATCH = 1024
"""Positions that make a write-out at once."""
INTERVAL = 2.0
"""Seconds a position waits at most to be written out: what a kill -9 can lose."""

_MAGIC = b"SVSEEN"
_HEADER = struct.pack(">6sH", _MAGIC, SEEN_VERSION)
_BODY = struct.Struct(">Q32s")
_RECORD = struct.Struct(">Q32sI")
_LEAVES_READ = 1 << 16  # leaf hashes the witness reads from the log at a time


def pack_position(index: int, leaf: bytes) -> bytes:
    """One record of the file."""
    body = _BODY.pack(index, leaf)
    return body + zlib.crc32(body).to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class SeenBefore:
    """The positions of a cell the partner held when a head was asked for: each entry
    was durable before, so the head must hold it. ``end`` is where they end in the file."""

    cell: str
    positions: dict[int, bytes]
    end: int


def _parse(data: bytes, path: Path) -> tuple[dict[int, bytes], int]:
    """(index -> leaf, end of the last whole record) of a file's bytes."""
    if data[: len(_MAGIC)] != _MAGIC or len(data) < len(_HEADER):
        raise IntegrityError(
            f"the partner's record of seen audit positions {path} is damaged (no header): "
            "restore it from the partner's backups"
        )
    (version,) = struct.unpack_from(">H", data, len(_MAGIC))
    if version != SEEN_VERSION:
        known = f"{path} is seen-positions format version {version}; this reader knows 1"
        raise NewerFormat(f"{known}: upgrade shardvault") if version > 1 else IntegrityError(known)
    whole = len(_HEADER) + (len(data) - len(_HEADER)) // _RECORD.size * _RECORD.size
    positions: dict[int, bytes] = {}
    for number, (index, leaf, crc) in enumerate(_RECORD.iter_unpack(data[len(_HEADER) : whole])):
        if zlib.crc32(_BODY.pack(index, leaf)) != crc:
            raise IntegrityError(
                f"the partner's record of seen audit positions {path} is damaged at record "
                f"{number}: restore it from the partner's backups"
            )
        if positions.setdefault(index, leaf) != leaf:
            raise IntegrityError(
                f"the partner's custodian was shown two leaf hashes for entry {index} "
                f"({path}): one of them was not the log's"
            )
    return positions, whole


class SeenFile:
    """The partner's files of seen positions, one per cell; shared by processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, cell: str) -> Path:
        return self.directory / f"{cell}.seen"

    def _flocked(self, cell: str) -> contextlib.AbstractContextManager[bool]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return flocked(self.directory / f"{cell}.lock")

    def append(self, cell: str, records: bytes) -> None:
        """Append whole records durably; a record a killed writer left cut short goes first."""
        path = self.path(cell)
        with self._flocked(cell):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size == 0:
                    records = _HEADER + records
                else:
                    _parse(os.pread(fd, len(_HEADER), 0), path)  # another format: not ours
                    torn = (size - len(_HEADER)) % _RECORD.size
                    if torn:
                        os.ftruncate(fd, size - torn)
                view = memoryview(records)
                while view:
                    view = view[os.write(fd, view) :]
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if size == 0:
                fsync_directory(self.directory)  # the new file's name survives a crash too

    def read(self, cell: str) -> SeenBefore:
        path = self.path(cell)
        with self._flocked(cell):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return SeenBefore(cell, {}, 0)
        positions, end = _parse(data, path)
        return SeenBefore(cell, positions, end)

    def drop_checked(self, seen: SeenBefore) -> None:
        """Keep only the positions written after ``seen`` was read: a cosigned head holds
        the others. Only the witness, in its turn, rewrites the file; others append."""
        path = self.path(seen.cell)
        with self._flocked(seen.cell):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return
            later = data[max(seen.end, len(_HEADER)) :]
            later = later[: len(later) // _RECORD.size * _RECORD.size]
            replace_whole(path, _HEADER + later, 0o600)


def _positions_by_cell(taken: list[AuditPosition]) -> dict[str, bytes]:
    """Each cell's records, packed as `pack_position` does (inline: a call per record
    cost more than the packing)."""
    return {
        cell: b"".join(
            [
                _RECORD.pack(i, leaf, zlib.crc32(_BODY.pack(i, leaf)))
                for c, i, leaf in taken
                if c == cell
            ]
        )
        for cell in {position.cell for position in taken}
    }


_recorders: weakref.WeakSet[SeenRecorder] = weakref.WeakSet()


class SeenRecorder:
    """The custodian's memory of the positions it was shown, written out in batches."""

    def __init__(self, directory: Path, *, batch: int = BATCH, interval: float = INTERVAL) -> None:
        self.file = SeenFile(directory)
        self.batch = batch
        self.interval = interval
        self._start_fresh()
        _recorders.add(self)

    def _start_fresh(self) -> None:
        self._lock = threading.Lock()  # taken as such on the hot path: no Python frame
        self._cond = threading.Condition(self._lock)  # the thread waits on it for a batch
        self._written = threading.Condition(self._lock)
        self._writing = threading.Lock()  # one write-out at a time: the thread's or a caller's
        self._pending: list[AuditPosition] = []
        self._thread: threading.Thread | None = None
        self._stop = False
        self._failure: str | None = None
        self.written_out = 0  # write-outs that wrote something, for `wait_written`

    def record(self, position: AuditPosition) -> None:
        """Keep ``position`` for the witness: on the hot path, so a lock and an append.
        Refused (`KeyUnavailable`) while positions cannot be written out: a key use whose
        entry the witness could not hold the log to is not granted (fail closed)."""
        with self._lock:
            if self._failure is not None:
                raise KeyUnavailable(self._failure)
            self._pending.append(position)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="shardvault-seen", daemon=True
                )
                self._thread.start()
            elif len(self._pending) == self.batch:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                # after a failure, the interval: a batch put back to wait is no new one
                due = len(self._pending) >= self.batch and self._failure is None
                if not due and not self._stop:
                    self._cond.wait(self.interval)
                if self._stop:
                    return
            with contextlib.suppress(KeyUnavailable):  # kept: key uses are refused meanwhile
                self.write_out()

    def write_out(self) -> None:
        """Write every waiting position; `KeyUnavailable` if they cannot be (they stay
        waiting, and key uses are refused until a write-out succeeds)."""
        with self._writing:
            with self._cond:
                taken, self._pending = self._pending, []
            if not taken:
                return
            try:
                for cell, records in _positions_by_cell(taken).items():
                    self.file.append(cell, records)
            except (OSError, ShardvaultError) as exc:
                failure = (
                    f"the partner's custodian cannot keep the audit positions it was shown "
                    f"in {self.file.directory} ({exc}): it grants no key use until it can"
                )
                with self._cond:
                    self._pending[:0] = taken  # again whole: a cell written twice is harmless
                    self._failure = failure
                raise KeyUnavailable(failure) from exc
            with self._cond:
                self._failure = None
                self.written_out += 1
                self._written.notify_all()

    def wait_written(self, count: int, timeout: float) -> bool:
        """Whether ``count`` write-outs have written something within ``timeout`` seconds."""
        with self._written:
            return self._written.wait_for(lambda: self.written_out >= count, timeout)

    def close(self) -> None:
        """Stop the thread and write out what waits (`KeyUnavailable` if that fails)."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stop = True
            self._cond.notify()
        if thread is not None:
            thread.join()
        with self._cond:
            self._stop = False
        self.write_out()

    def _after_fork(self) -> None:
        """A forked child starts empty: what waits is the parent's to write."""
        self._start_fresh()


def _forget_after_fork() -> None:
    for recorder in list(_recorders):
        recorder._after_fork()


os.register_at_fork(after_in_child=_forget_after_fork)


def _changed(origin: str, index: int) -> IntegrityError:
    return IntegrityError(
        f"cannot cosign: entry {index} of {origin} is not the one the partner's custodian "
        "was shown when it was asked for a key (its leaf hash differs): the log was "
        "rewritten"
    )


def check_head(
    log: AuditLog, previous: Checkpoint | None, head: Checkpoint, seen: SeenBefore
) -> None:
    """Refuse (`IntegrityError`, naming the first entry) a head that does not hold every
    position in ``seen``: each below its size must be the leaf there, and one at or above
    it means entries were cut (it was durable before the head was asked for).

    Positions past ``previous`` are compared while its compact range, checked against
    its root, is extended with the log's leaf hashes up to the head's root (one pass);
    older ones (written out after a head covered them) by inclusion proofs."""
    start = previous.size if previous is not None else 0
    for index in sorted(i for i in seen.positions if i < start):
        try:
            proof = log.inclusion_proof(index, head.size)
            verify_inclusion(seen.positions[index], index, head.size, proof, head.root_hash)
        except IntegrityError:
            raise _changed(head.origin, index) from None
    if any(start <= i < head.size for i in seen.positions):
        frontier = log.frontier_at(start)
        if previous is not None and frontier.root() != previous.root_hash:
            raise IntegrityError(
                f"cannot cosign: {head.origin}'s log no longer holds the partner's last "
                f"cosigned head of {start} entries"
            )
        for lo in range(start, head.size, _LEAVES_READ):
            leaves = log.leaf_hashes(lo, min(lo + _LEAVES_READ, head.size))
            for index, leaf in enumerate(leaves, lo):
                frontier.append(leaf)
                if seen.positions.get(index, leaf) != leaf:
                    raise _changed(head.origin, index)
        if frontier.root() != head.root_hash:
            raise IntegrityError(
                f"cannot cosign: the head of {head.size} entries of {head.origin} is not the "
                "root of its log's entries"
            )
    missing = [i for i in seen.positions if i >= head.size]
    if missing:
        raise IntegrityError(
            f"cannot cosign: entry {min(missing)} of {head.origin} is missing: the partner's "
            f"custodian was shown it durable before this head of {head.size} entries was "
            "asked for (the log was cut or rolled back)"
        )


__all__ = [
    "BATCH",
    "INTERVAL",
    "SEEN_VERSION",
    "SeenBefore",
    "SeenFile",
    "SeenRecorder",
    "check_head",
    "pack_position",
]
