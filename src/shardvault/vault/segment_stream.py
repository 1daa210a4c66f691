"""A binary file object over plaintext that comes a segment at a time.

`Vault.open_read`'s reader is one, so what takes a file takes it: read(n) across
segment boundaries, read(), readinto, readline, `shutil.copyfileobj`,
`hashlib.file_digest`, `io.TextIOWrapper`, tarfile's streaming modes. It is an
`io.BufferedIOBase`, not a raw stream: it holds a decoded segment anyway, so
read(n) returns n bytes unless the object ends first, as a file's does (a raw
stream may return fewer, which naive callers take for the end), and wrapping it
in an `io.BufferedReader` is never needed. One segment is held at a time; the
stream cannot seek.

Iterating it yields segments (its first API, and the one with no copy), not
lines as a file's iteration does: `readline`, `readlines` and `io.TextIOWrapper`
give lines. `next(stream)` is that same iteration, as a file's is its lines.

Two threads may read one stream, as they may an `io.BufferedReader`: each read,
line or segment is taken whole under a lock, so the pieces are runs of the
plaintext and together all of it once. The lock costs a read call an uncontended
acquire, nothing beside a segment's fetch; `Vault.get` never takes it.
"""

from __future__ import annotations

import abc
import io
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_NOTHING = memoryview(b"")


class SegmentStream(io.BufferedIOBase):
    """Reads, as a file does, the segments `_segments` yields, one held at a time."""

    def __init__(self) -> None:
        super().__init__()
        self._source: Iterator[bytes] | None = None
        self._held = _NOTHING
        self._at = 0  # in the segment held
        self._failed: BaseException | None = None
        self._iteration: Iterator[bytes] | None = None
        # reentrant: io's readline, taken whole under it, calls peek and read
        self._lock = threading.RLock()

    @abc.abstractmethod
    def _segments(self) -> Iterator[bytes]:
        """The plaintext, a segment at a time: asked for by the first read, and by the
        first `next`; a source that can be read once refuses the second asking."""

    def __iter__(self) -> SegmentStream:
        """The stream itself, as a file's iter() is: so `next(stream)` and a loop over
        it take from one iteration, and the loop holds the stream open."""
        return self

    def __next__(self) -> bytes:
        """The next segment, not the next line (`readline` gives lines)."""
        with self._lock:
            if self._iteration is None:
                self._iteration = self._segments()
            return next(self._iteration)

    def _take(self, limit: int) -> memoryview:
        """Up to `limit` bytes of the segment held (all it has left if `limit` is
        negative), the next one fetched first if it is used up; empty at the end.

        A fetch that failed fails every read after it the same way: a source that
        raised is exhausted, and the b"" it would give next passes for the end.
        """
        if limit == 0:
            return _NOTHING
        while self._at == len(self._held):
            if self._failed is not None:
                raise self._failed
            if self._source is None:
                self._source = self._segments()
            try:
                segment = next(self._source, None)
            except BaseException as exc:
                self._failed = exc
                raise
            if segment is None:
                self._held, self._at = _NOTHING, 0
                return _NOTHING
            self._held, self._at = memoryview(segment), 0
        end = len(self._held) if limit < 0 else self._at + limit
        part = self._held[self._at : end]
        self._at += len(part)
        return part

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """`size` bytes, fewer only at the end; the rest of the object if `size` is
        None or negative (all of it in memory, as a file's read() holds a file)."""
        parts = []
        with self._lock:
            if size is None or size < 0:
                while part := self._take(-1):
                    parts.append(part)
                return b"".join(parts)
            while size > 0 and (part := self._take(size)):
                parts.append(part)
                size -= len(part)
        return b"".join(parts)

    def read1(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes, with at most one segment fetched: the rest of the segment
        held, or the next one's, if `size` is negative."""
        with self._lock:
            return bytes(self._take(size))

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        return self._fill(buffer, whole=True)

    def readinto1(self, buffer: WriteableBuffer, /) -> int:
        return self._fill(buffer, whole=False)

    def _fill(self, buffer: WriteableBuffer, *, whole: bool) -> int:
        """Bytes copied into buffer: until it is full or the object ends if `whole`,
        else from one segment."""
        with self._lock, memoryview(buffer) as view, view.cast("B") as target:
            filled = 0
            while filled < len(target) and (part := self._take(len(target) - filled)):
                target[filled : filled + len(part)] = part
                filled += len(part)
                if not whole:
                    break
            return filled

    def peek(self, size: int = 0, /) -> bytes:
        """Bytes the next read returns, not taken: of the segment held, or of the next
        one if it is used up; at most what a buffered reader holds (io's readline peeks
        once a line, and a whole segment's copy each time would cost the line's)."""
        with self._lock:
            part = self._take(max(size, io.DEFAULT_BUFFER_SIZE))
            self._at -= len(part)
            return bytes(part)

    def readline(self, size: int | None = -1, /) -> bytes:
        """A line, taken whole: io's readline peeks and reads in turn, and another
        thread's read between them would tear it."""
        with self._lock:
            return super().readline(size)

    def readlines(self, hint: int = -1, /) -> list[bytes]:
        """Lines, as a file's readlines gives (io's iterates, which gives segments here),
        until their length reaches `hint` if it is positive."""
        lines: list[bytes] = []
        length = 0
        with self._lock:
            while line := self.readline():
                lines.append(line)
                length += len(line)
                if 0 < hint <= length:
                    break
        return lines
