"""Key ids found not destroyed, remembered while the tombstone database is unchanged.

Every object read asks whether its subject key was destroyed. Asked of SQLite,
that is a read transaction (file locks, a hot-journal check, seven releases of
the GIL) that every thread of every serving process contends on. SQLite tells
whether its own page cache still holds from the file change counter in the
database header (bytes 24-27), which every commit in rollback-journal mode
raises; this does the same for answers, reading the counter with one `pread`.

Why a remembered answer holds while the file shows the counter it was found at:

- The counter is read *inside* the read transaction that found the answer,
  while SQLite holds its shared lock: no commit and no rollback of a hot
  journal can run then, so the label names one committed state.
- Committed states' counters only rise. A commit killed before its journal was
  deleted leaves the file showing the next value until a reader rolls it back:
  a value above every label given so far, so it matches none, and the commit
  that takes that value later is the one a label of it names. (Reading the
  counter before the query instead, as a reverted first version did, labelled
  the rolled-back state with the killed commit's value.)
- A file replaced or removed under the process (a restore) is noticed by
  comparing the path's inode with the descriptor's (`follow`) at every miss and
  at least every half second: then every answer is dropped, and the caller
  reopens each connection of another file on the one now there. An answer is
  remembered only if its connection was on the file followed.

A header not in rollback-journal mode (bytes 18-19 not 1, 1), or too short,
vouches for nothing: every lookup is then asked of SQLite.
"""

from __future__ import annotations

import os
import struct
import time
import weakref
from pathlib import Path

_HEADER_AT = 18
_HEADER = struct.Struct(">BB4xI")  # write and read versions (1: rollback journal), counter
_ROLLBACK_JOURNAL = (1, 1)
IDENTITY_SECONDS = 0.5  # how long a replaced file can go unnoticed by hits
_LIMIT = 1 << 16  # answers remembered per counter value

Key = tuple[str, str]


Identity = tuple[int, int]  # (st_dev, st_ino)


class LiveAnswers:
    """Thread-safe without a lock: every shared field is replaced whole, never changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: tuple[int, Identity] | None = None  # a descriptor, and of which file
        self._answers: tuple[int, set[Key]] = (-1, set())
        self._checked = 0.0
        # every descriptor opened, closed only with this object: one closed while
        # another thread reads it could be reused for another file by then
        self._opened: set[int] = set()
        weakref.finalize(self, _close_all, self._opened)

    def remembers(self, key: Key) -> bool:
        """Whether `key` was found not destroyed in the state the file shows now."""
        if time.monotonic() - self._checked >= IDENTITY_SECONDS:
            self.follow()
        label, answers = self._answers
        return key in answers and self._counter() == label

    def remember(self, key: Key, identity: Identity) -> None:
        """Record `key` as not destroyed, found by a connection to the file `identity`
        names, inside the read transaction that found it."""
        held = self._file
        if held is None or held[1] != identity:
            return  # the connection is on a file that went, or one not followed yet
        counter = self._counter()
        if counter is None:
            return
        label, answers = self._answers
        if label != counter or len(answers) >= _LIMIT:
            answers = set()
            self._answers = (counter, answers)
        answers.add(key)

    def follow(self) -> Identity | None:
        """The file at the path now (None if there is none), held from now on: answers
        found in another are dropped."""
        self._checked = time.monotonic()
        held = self._file
        try:
            info = os.stat(self.path)
        except OSError:
            self._drop(held)
            return None
        identity = (info.st_dev, info.st_ino)
        if held is not None and held[1] == identity:
            return identity
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._drop(held)
            return None
        self._opened.add(fd)
        opened = os.fstat(fd)
        self._drop(held)
        self._file = (fd, (opened.st_dev, opened.st_ino))
        return self._file[1]

    def forget(self) -> None:
        """Drop every answer, and look at the file anew (after a failed query)."""
        self._drop(self._file)

    def _drop(self, held: tuple[int, Identity] | None) -> None:
        if held is not None and self._file is held:
            self._file = None
        self._answers = (-1, set())
        self._checked = 0.0

    def _counter(self) -> int | None:
        held = self._file
        if held is None:
            return None
        try:
            header = os.pread(held[0], _HEADER.size, _HEADER_AT)
        except OSError:
            return None
        if len(header) < _HEADER.size:
            return None
        write_version, read_version, counter = _HEADER.unpack(header)
        return counter if (write_version, read_version) == _ROLLBACK_JOURNAL else None


def _close_all(fds: set[int]) -> None:
    for fd in fds:
        os.close(fd)
