"""Key ids found not destroyed, remembered while the tombstone database is unchanged.

Every object read asks whether its subject key was destroyed. Asked of SQLite,
that is a read transaction (file locks, a hot-journal check, seven releases of
the GIL) that every thread of every serving process contends on. SQLite tells
whether its own page cache still holds from the file change counter in the
database header (bytes 24-27), which every commit in rollback-journal mode
raises; this does the same for answers, with one `stat` of the path and one
`pread` of the header.

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
- Counters rise within one file only: a copy put in its place (a restore)
  can show a label's value with other contents. So a label names its file too
  (device and inode), and every lookup, hit or miss, first compares the inode
  at the path with the one held (`follow`): a file replaced or removed is seen
  at once, its answers are dropped, and the caller reopens each connection on
  another file. An answer is remembered only if its connection was on the file
  followed, and is read through the descriptor that check was made on.
- A descriptor of the file is closed only when no LiveAnswers of the process
  holds it (`_descriptor`), and never at exit (daemon threads may still read):
  closing any descriptor of a database file drops the POSIX locks this
  process's SQLite connections hold on it, which would let another process
  commit, or roll a journal back, under a read transaction here. A connection
  is used only on the file its LiveAnswers followed, so it always holds a share.

A header not in rollback-journal mode (bytes 18-19 not 1, 1), or too short,
vouches for nothing: every lookup is then asked of SQLite.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import weakref
from pathlib import Path

_HEADER_AT = 18
_HEADER = struct.Struct(">BB4xI")  # write and read versions (1: rollback journal), counter
_ROLLBACK_JOURNAL = (1, 1)
_LIMIT = 1 << 16  # answers remembered per counter value

Key = tuple[str, str]
Identity = tuple[int, int]  # (st_dev, st_ino)


class LiveAnswers:
    """Thread-safe without a lock of its own: the held file and the labelled answers are
    replaced whole (a label's set only grows), and the shares change under the lock of
    the descriptor table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: tuple[int, Identity] | None = None  # a descriptor, and of which file
        # answers, the file they were found in, and its counter then: replaced whole
        self._answers: tuple[Identity | None, int, set[Key]] = (None, -1, set())
        self._shares: set[Identity] = set()  # of `_descriptors`, given up when this goes
        weakref.finalize(self, _release, self._shares).atexit = False  # exit closes all

    def remembers(self, key: Key) -> bool:
        """Whether `key` was found not destroyed in the state the file at the path shows now."""
        found_in, label, answers = self._answers
        if key not in answers:
            return False
        identity = self.follow()
        held = self._file
        if held is None or held[1] != identity or identity != found_in:
            return False
        return self._counter(held) == label

    def remember(self, key: Key, identity: Identity) -> None:
        """Record `key` as not destroyed, found by a connection to the file `identity`
        names, inside the read transaction that found it."""
        held = self._file
        if held is None or held[1] != identity:
            return  # the connection is on a file that went, or one not followed yet
        counter = self._counter(held)  # through the descriptor just checked
        if counter is None:
            return
        found_in, label, answers = self._answers
        if found_in != identity or label != counter or len(answers) >= _LIMIT:
            answers = set()
            self._answers = (identity, counter, answers)
        answers.add(key)

    def follow(self) -> Identity | None:
        """The file at the path now (None if there is none), held from now on: answers
        found in another are dropped."""
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
            fd, opened = _descriptor(self.path, self._shares)
        except OSError:
            self._drop(held)
            return None
        self._drop(held)
        self._file = (fd, opened)
        return opened

    def forget(self) -> None:
        """Drop every answer (after a failed query)."""
        self._answers = (None, -1, set())

    def close(self) -> None:
        """Give up the shares now, as garbage collection would (a vault held in a reference
        cycle is collected late, or never, by a process that opens many): the caller has
        closed every connection it made on the files followed."""
        self._drop(self._file)
        with _descriptors_lock:
            for identity in self._shares:
                # (kept, unshared, if a connection not this one's is on the file)
                _give_up(identity, look_elsewhere=True)
            self._shares.clear()  # the finalizer has none left to give up
            _drain()

    def _drop(self, held: tuple[int, Identity] | None) -> None:
        if held is not None and self._file is held:
            self._file = None
        self.forget()

    def _counter(self, held: tuple[int, Identity]) -> int | None:
        try:
            header = os.pread(held[0], _HEADER.size, _HEADER_AT)
        except OSError:
            return None
        if len(header) < _HEADER.size:
            return None
        write_version, read_version, counter = _HEADER.unpack(header)
        return counter if (write_version, read_version) == _ROLLBACK_JOURNAL else None


# One read-only descriptor per file (inode) for the process, shared by every LiveAnswers
# that followed it and closed only when the last of them is gone: closing a descriptor
# of a database file drops every POSIX lock the process's SQLite connections hold on it,
# and a Tombstones follows its file before it connects to it, so its LiveAnswers holds a
# share for as long as any of its connections can. A descriptor held also keeps its
# inode's number from being given to another file.
_descriptors: dict[Identity, tuple[list[int], list[int]]] = {}  # descriptors, [holders]
_descriptors_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A fork in the middle of `_descriptor` in another thread leaves its lock held."""
    global _descriptors_lock
    _descriptors_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _descriptor(path: Path, held: set[Identity]) -> tuple[int, Identity]:
    """The process's descriptor of the file at `path`, with a share of it kept in `held`."""
    info = os.stat(path)
    identity = (info.st_dev, info.st_ino)
    with _descriptors_lock:
        kept = _descriptors.get(identity)
        if kept is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                os.close(fd)  # (not a database file: no SQLite lock on it)
                raise OSError(f"{path} is not a file")
            identity = (opened.st_dev, opened.st_ino)
            # (replaced since the stat by a file already kept: this one is kept with it)
            kept = _descriptors.setdefault(identity, ([], [0]))
            kept[0].append(fd)
        if identity not in held:
            held.add(identity)
            kept[1][0] += 1
        fd = kept[0][0]
        _drain()  # releases a collection made while this thread held the lock
        return fd, identity


_pending: list[set[Identity]] = []  # shares given up, not yet counted down


def _release(held: set[Identity]) -> None:
    """Give up the shares of a LiveAnswers that is gone; close what no one holds.
    Runs inside garbage collection, possibly in a thread holding the lock: never waits."""
    _pending.append(held)
    while _pending and _descriptors_lock.acquire(blocking=False):
        try:
            _drain()
        finally:
            _descriptors_lock.release()


def _drain() -> None:
    """Holding the lock: count down every share given up; close what no one holds."""
    while _pending:
        held = _pending.pop()
        for identity in held:
            _give_up(identity)


def _give_up(identity: Identity, *, look_elsewhere: bool = False) -> None:
    """Holding the lock: one share of the file's descriptor fewer; it is closed once no
    one holds a share (and, with `look_elsewhere`, no other descriptor of the file is
    open in the process: `_opened_elsewhere`)."""
    fds, holders = _descriptors[identity]
    holders[0] -= 1
    if holders[0] == 0 and not (look_elsewhere and _opened_elsewhere(identity, fds)):
        del _descriptors[identity]
        for fd in fds:
            os.close(fd)


_FD_LINKS = "/proc/self/fd"


def _opened_elsewhere(identity: Identity, ours: list[int]) -> bool:
    """Whether a descriptor of the file other than `ours` is open in the process (a
    connection not made for a LiveAnswers, whose locks a close of ours would drop); True
    if the process's descriptors cannot be listed. (Not asked in garbage collection: a
    collected Tombstones' connections, outside any transaction, may be collected after
    its LiveAnswers.)"""
    try:
        names = os.listdir(_FD_LINKS)
    except OSError:
        return True
    for name in names:
        if not name.isdigit() or int(name) in ours:
            continue
        try:
            info = os.stat(f"{_FD_LINKS}/{name}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor among them)
        if (info.st_dev, info.st_ino) == identity:
            return True
    return False
