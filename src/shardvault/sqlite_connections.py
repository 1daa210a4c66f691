"""SQLite connections and fork(): a child may not open what its parent holds open.

SQLite keeps a process's POSIX locks on a database file in memory that all its
connections to the file share. A child forked while the parent held a
connection inherits that memory, so the child's own new connections take no
real locks: the parent's last close then believes nobody else reads the
database, checkpoints it and deletes the WAL under the child, whose later
commits go to an unlinked file (a stress run lost acknowledged puts that way).
So a process forked while any of these connections was open refuses to open
one (fail closed, saying what to do instead). The connections it inherited are
the parent's: using one in the child is refused the same way (a vault carried
across the fork would otherwise write through them, and lose those writes the
same way), closing one does nothing, and they are kept alive so that garbage
collection never closes them either.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
import weakref
from contextlib import suppress
from pathlib import Path
from typing import Any

from shardvault.errors import StorageError


class Connection(sqlite3.Connection):
    """A connection this process opened (no override on the query path: it is hot)."""

    closed: bool

    def close(self) -> None:
        self.closed = True
        super().close()


class InheritedConnection(Connection):
    """What a connection becomes in a child forked while it was open: the parent's."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        raise StorageError(_INHERITED)

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        raise StorageError(_INHERITED)

    def close(self) -> None:
        """Left to the parent: closing it here could checkpoint and delete its WAL."""


_INHERITED = (
    "this connection belongs to the process this one was forked from, and SQLite's "
    "locks do not survive fork(): open the vault in the worker (forked before any was "
    "open), or start workers with multiprocessing 'spawn' or 'forkserver'"
)
_open: weakref.WeakSet[Connection] = weakref.WeakSet()
_kept: list[Connection] = []  # a forked child's inherited connections, never collected


def connect(path: str | Path, what: str, timeout: float = 5.0) -> Connection:
    """`sqlite3.connect` in autocommit mode, shareable by threads (each user holds its own
    lock around it); refused in a process forked while connections were open.

    Its temporary files (a statement's journal past 64 KiB, a sort, a temporary index)
    are kept in memory: SQLite writes them to the system's (/var/tmp), outside the
    deployment, and a forget's spilled there the pages of every version it marked,
    the subject's id and object keys with them. Writers keep each statement small."""
    if _kept:
        raise StorageError(
            f"{what}: this process was forked while its parent had the deployment's "
            "databases open, and SQLite's locks do not survive fork(): fork workers before "
            "opening a vault (or close it first), or start them with multiprocessing "
            "'spawn' or 'forkserver'"
        )
    _make_private(Path(path))
    connection = sqlite3.connect(
        path, timeout, isolation_level=None, check_same_thread=False, factory=Connection
    )
    connection.execute("PRAGMA temp_store=MEMORY")  # see above: never in /var/tmp
    connection.closed = False
    _open.add(connection)
    return connection


def use_wal(connection: sqlite3.Connection, timeout: float = 5.0) -> None:
    """Put the database in WAL mode (kept in the file: a no-op after its first open).

    SQLite does not wait (its busy timeout) for the lock this change takes while
    another connection holds a write lock on a file not yet in WAL mode: it fails at
    once, "database is locked". Two processes opening a new deployment at once did so
    in about one open in five, and one of them refused to start. So the change is
    tried again, for up to TIMEOUT seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.001)


def _make_private(path: Path) -> None:
    """Create the database 0600 (SQLite would make it, and its WAL, 0644 under the usual
    umask: subject ids and object names readable by every local user), and take group
    and other permissions off one, or its WAL and shared memory, made before."""
    if str(path) in ("", ":memory:"):
        return
    with suppress(OSError):  # it exists, or cannot be made: SQLite says why
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with suppress(FileNotFoundError, PermissionError):
            mode = file.stat().st_mode
            if mode & 0o077:
                file.chmod(stat.S_IMODE(mode) & 0o700)


def _keep_inherited() -> None:
    for connection in _open:
        if not connection.closed:
            connection.__class__ = InheritedConnection
            _kept.append(connection)


os.register_at_fork(after_in_child=_keep_inherited)
