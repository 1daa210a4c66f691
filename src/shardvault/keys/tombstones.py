"""The keyring's tombstones: every destroyed subject key id, in a SQLite file.

A forget must not cost more, and a process must not start slower, the more
users were ever forgotten, so the tombstones are rows looked up by key, not a
set every process reads and every forget rewrites (docs/formats.md, "Keyring").

Schema 2 (``PRAGMA user_version``)::

    destroyed(scope TEXT, key_id TEXT, PRIMARY KEY (scope, key_id)) WITHOUT ROWID

Version 2 has the table of version 1 and says the keyring keeps its keys'
subjects in a file beside it (`key_subjects`): one missing then was lost. A
version-1 file is stamped 2 by the keyring once it has made that file.

Fail closed: a missing or unreadable database refuses every lookup
(`KeyUnavailable`; one of a newer schema, `NewerFormat`) rather than answering
"not destroyed"; so does one that others may read (mode 0600, as the keyring).

A key id found not destroyed is remembered until the file's change counter
moves (`live_answers`), so the hot path (one lookup per object read) is a
`stat` and a `pread`; a miss asks in a read transaction that also reads the
counter.
Connections, one per thread and process: each thread asks through its own, so
a lookup waits on no other thread's query; one on a file replaced or removed
since is reopened on the file there now.
A connection carried across a fork is never used, nor closed, in the child (it
opens its own, `os.getpid` is checked), and a fork waits until no query is
running, so the child inherits no SQLite lock state it does not hold. (Not
`sqlite_connections.connect`: a child forked while one of those is open may
open none, and a custodian outlives the vault that used it, open connections
and all: workers forked after a vault was closed must still work.)
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path

from shardvault.errors import ConfigError, KeyUnavailable
from shardvault.journaled_sqlite import make_private_file, open_journaled
from shardvault.keys.live_answers import Identity, LiveAnswers
from shardvault.sqlite_schema import refuse_newer

SCHEMA_VERSION = 2
SUFFIX = ".destroyed.sqlite"
_SCHEMA = """CREATE TABLE IF NOT EXISTS destroyed (
    scope TEXT NOT NULL,
    key_id TEXT NOT NULL,
    PRIMARY KEY (scope, key_id)
) WITHOUT ROWID"""
_HOLDS = "SELECT 1 FROM destroyed WHERE scope = ? AND key_id = ?"
_INSERT = "INSERT OR IGNORE INTO destroyed (scope, key_id) VALUES (?, ?)"
_BUSY_SECONDS = 10.0
_CLOSED: Identity = (-1, -1)  # a closed connection's: on no file there is


def tombstones_path(keyring: Path) -> Path:
    """``keys/keyring.json`` keeps its tombstones in ``keys/keyring.destroyed.sqlite``."""
    return keyring.with_suffix(SUFFIX)


def require_private(info: os.stat_result, path: Path, what: str) -> None:
    """A key file must be a regular file only its owner can read: refuse it otherwise."""
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what} {path} is not a file: check custodian.path")
    if mode & 0o077:
        raise KeyUnavailable(
            f"{what} {path} is readable by others (mode {mode:o}); run chmod 600 on it"
        )


class TombstonesMissing(KeyUnavailable):
    """The database does not exist: nothing can be said about any key id."""


class _Handle:
    """One thread's connection, the process that opened it, and the lock a fork waits on."""

    __slots__ = ("__weakref__", "db", "identity", "lock", "pid")

    def __init__(self, db: sqlite3.Connection, identity: Identity) -> None:
        self.db = db
        self.identity = identity  # the file it was opened on
        self.pid = os.getpid()
        self.lock = threading.Lock()


class Tombstones:
    """The destroyed key ids of one keyring; thread-safe, shared by processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._live = LiveAnswers(path)
        self._opened: weakref.WeakSet[_Handle] = weakref.WeakSet()  # every thread's

    def close(self) -> None:
        """Close every thread's connection, then give up the share of the file's descriptor
        (`live_answers`), now rather than when garbage collection finds this: a process
        that opens and closes many vaults holds no file of one it closed. A query running
        ends first; a later call opens the file anew."""
        with _registry_lock:
            opened = list(self._opened)
            self._opened.clear()
        for handle in opened:
            if handle.pid == os.getpid():  # a parent's is never closed in a child
                with handle.lock:
                    handle.db.close()
                    handle.identity = _CLOSED  # its thread's next call opens another
        self._live.close()

    def holds(self, scope: str, key_id: str) -> bool:
        """Whether the key id was destroyed, as committed by any process up to now.

        A key id found not destroyed is remembered until the database changes
        (`live_answers`): the hot path, one lookup per object read, is then a
        `stat` of the path and a `pread` of the header, not a read transaction.
        """
        key = (scope, key_id)
        if self._live.remembers(key):
            return False
        handle = self._handle()
        with handle.lock:
            try:
                handle.db.execute("BEGIN")  # the counter is read under the same shared lock
                try:
                    row = handle.db.execute(_HOLDS, key).fetchone()
                    if row is None:
                        self._live.remember(key, handle.identity)
                finally:
                    handle.db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._failed(handle, "read", exc) from exc
        return row is not None

    def add(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record (scope, key id) pairs in one transaction, durable when this returns."""
        handle = self._handle()
        with handle.lock:
            try:
                with handle.db:  # commits, or rolls back on any error
                    handle.db.execute("BEGIN IMMEDIATE")
                    handle.db.executemany(_INSERT, pairs)
            except sqlite3.Error as exc:
                raise self._failed(handle, "write", exc) from exc

    def version(self) -> int:
        """The schema version: 2 once the keyring keeps its keys' subjects beside it."""
        handle = self._handle()
        with handle.lock:
            try:
                (found,) = handle.db.execute("PRAGMA user_version").fetchone()
            except sqlite3.Error as exc:
                raise self._failed(handle, "read", exc) from exc
        return int(found)

    def mark_subjects_kept(self) -> None:
        """Version 2: the keyring's key-subjects file is beside it (`key_subjects`), so one
        found missing later was lost, and is never made anew as if for earlier keys."""
        handle = self._handle()
        with handle.lock:
            try:
                with handle.db:
                    handle.db.execute("BEGIN IMMEDIATE")
                    handle.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except sqlite3.Error as exc:
                raise self._failed(handle, "stamp", exc) from exc

    def create(self) -> None:
        """Make the database, mode 0600, if it is missing or was left half-made.

        Only for a keyring that has none yet (or a version-1 one being moved to
        it): the caller holds the keyring's flock. Making a new, empty one for a
        keyring that lost its own would bring every destroyed key back.
        """
        if not self.path.exists():
            make_private_file(self.path)
        self._handle(create=True)

    def _handle(self, create: bool = False) -> _Handle:
        """This thread's connection, opened on first use in this process."""
        handle: _Handle | None = getattr(self._local, "handle", None)
        there = self._live.follow()
        if handle is not None and handle.pid == os.getpid():
            if handle.identity == there:
                return handle
            with handle.lock:  # on a file replaced or removed since: open the one there now
                handle.db.close()
            self._local.handle = None
        elif handle is not None:
            _inherited.append(handle)  # the parent's: closing it here could drop its locks
        handle = _Handle(*self._connect(create, there))
        with _registry_lock:
            _handles.add(handle)
            self._opened.add(handle)
        self._local.handle = handle
        return handle

    def _connect(self, create: bool, there: Identity | None) -> tuple[sqlite3.Connection, Identity]:
        """A connection to the existing file, checked private and of a known schema,
        and which file that is."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise TombstonesMissing(
                f"keyring tombstones {self.path} do not exist: a keyring with keys has them "
                "beside it (restore them with it, or check custodian.path)"
            ) from None
        require_private(info, self.path, "keyring tombstones")
        try:  # not checked for its thread: a fork's wait and garbage collection touch it too
            db = open_journaled(self.path, _BUSY_SECONDS, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._failed(None, "open", exc) from exc
        try:
            self._prepare(db, create)
        except BaseException:
            db.close()
            raise
        try:
            after = os.stat(self.path)
        except OSError:
            after = None
        identity = (info.st_dev, info.st_ino)
        if after is None or (after.st_dev, after.st_ino) != identity or identity != there:
            # replaced while opening, or since it was followed: no share of its descriptor
            db.close()  # replaced while opening: which file the connection is on is unknown
            raise KeyUnavailable(
                f"keyring tombstones {self.path} were replaced while being opened; retry"
            )
        return db, (info.st_dev, info.st_ino)

    def _prepare(self, db: sqlite3.Connection, create: bool) -> None:
        """The schema: made if `create`, else checked. (A rollback journal, not WAL, and
        ``synchronous=EXTRA``, a destroy durable before it returns: `journaled_sqlite`.)"""
        what = f"keyring tombstones {self.path}"
        try:
            if create:
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute(_SCHEMA)
                    if refuse_newer(db, SCHEMA_VERSION, what) == 0:
                        db.execute("PRAGMA user_version=1")  # 2 once key subjects are kept
                return
            found = refuse_newer(db, SCHEMA_VERSION, what)
        except sqlite3.Error as exc:
            raise self._failed(None, "open", exc) from exc
        if found == 0:
            raise KeyUnavailable(f"{what} holds no tombstone table: restore it from a backup")

    def _failed(self, handle: _Handle | None, doing: str, exc: sqlite3.Error) -> KeyUnavailable:
        """The refusal; a connection that failed is closed, so the next use opens the file
        anew (one restored from a backup, say) rather than trusting what it had read."""
        self._live.forget()
        if handle is not None:
            self._local.handle = None
            handle.db.close()
        then = {
            "write": "the key was not destroyed",
            "stamp": "nothing was changed; retry",
        }.get(doing, "no key is unwrapped until then")
        return KeyUnavailable(f"cannot {doing} keyring tombstones {self.path}: {exc} ({then})")


# Fork: a query running in another thread at the fork would leave the child a
# record of a lock it does not hold, so the fork waits for every query to end
# (a destroy queued behind another process's write: up to the busy timeout).
_registry_lock = threading.Lock()
_handles: weakref.WeakSet[_Handle] = weakref.WeakSet()
_held: list[_Handle] = []  # what the fork is waiting on, between its hooks
_inherited: list[_Handle] = []  # a child's copies of its parent's: never used, never closed


def _before_fork() -> None:
    """Wait until no query runs; hold every connection's lock across the fork."""
    _registry_lock.acquire()
    _held[:] = list(_handles)
    for handle in _held:
        handle.lock.acquire()


def _after_fork_in_parent() -> None:
    for handle in _held:
        handle.lock.release()
    _held.clear()
    _registry_lock.release()


def _after_fork_in_child() -> None:
    """Every connection is the parent's now: kept alive, unused (its pid differs)."""
    _inherited.extend(_held)
    _handles.clear()
    _after_fork_in_parent()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
