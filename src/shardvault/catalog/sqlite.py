"""SQLite catalog: the embedded default, one database file per cell.

WAL mode so readers never block the writer, with synchronous=NORMAL. A
transaction that must be durable (a manifest commit, a forget) then waits for
a group commit of the WAL file (shardvault.durability): one fdatasync of the
WAL covers every transaction committed before it began, so concurrent puts
share it instead of queueing behind one fsync each under the catalog lock.
Reserving a pending version does not wait, because losing a reservation to a
power cut only leaves orphan shards, which gc finds by listing the nodes.
Writers of several processes take turns on a flock of ``<catalog>.lock``
before SQLite's write lock. SQLite's own busy handler sleeps 1, 2, 5, 10 ms...
between retries: two worker processes putting 3,000 small objects made it
sleep about 650 times, each a stall of a millisecond or more; a flock waiter
wakes as soon as the lock is free (6 sleeps in the same run).
The schema is versioned with ``PRAGMA user_version`` and migrated forward on
open; a database from a newer shardvault is refused rather than guessed at.
"""

from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from shardvault import sqlite_connections
from shardvault.catalog.port import (
    DamageRecord,
    ForgetProgress,
    Leftover,
    SubjectRecord,
    VersionRecord,
    VersionState,
)
from shardvault.durability import store_failure
from shardvault.errors import (
    Conflict,
    IntegrityError,
    NewerFormat,
    NotFound,
    ShardvaultError,
    SubjectForgotten,
    WriteRaced,
)
from shardvault.group_commit import GroupSync, filesystem_sync
from shardvault.model import ObjectRef

# Append only: a catalog stamped N was made by the first N scripts as they were then;
# one changed afterwards never reaches it (migration 7 repairs two that were).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE subjects (
        tenant TEXT NOT NULL, subject TEXT NOT NULL, jurisdiction TEXT NOT NULL,
        key_id TEXT NOT NULL, wrapped_key BLOB, created_at REAL NOT NULL, forgotten_at REAL,
        PRIMARY KEY (tenant, subject)
    );
    CREATE TABLE versions (
        tenant TEXT NOT NULL, subject TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'committed', 'deleted')),
        object_id BLOB NOT NULL, size INTEGER NOT NULL, created_at REAL NOT NULL, manifest BLOB,
        PRIMARY KEY (tenant, subject, key, version)
    );
    CREATE INDEX versions_state ON versions (state, created_at);
    CREATE TABLE damage (
        tenant TEXT NOT NULL, subject TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,
        segment INTEGER NOT NULL, shard INTEGER NOT NULL, node TEXT NOT NULL,
        reason TEXT NOT NULL, seen_at REAL NOT NULL
    );
    """,
    """
    CREATE TABLE sweeps (minted_until REAL NOT NULL);
    INSERT INTO sweeps VALUES (0);
    """,
    """
    CREATE TABLE retired (
        tenant TEXT NOT NULL, subject TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,
        PRIMARY KEY (tenant, subject, key)
    );
    """,
    """
    CREATE INDEX versions_object ON versions (object_id);
    CREATE INDEX damage_version ON damage (tenant, subject, key, version);
    """,
    """
    CREATE TABLE leftovers (
        object_id BLOB NOT NULL, version INTEGER NOT NULL, shard INTEGER NOT NULL,
        node TEXT NOT NULL, location TEXT, PRIMARY KEY (object_id, version, shard, node)
    );
    """,
    """
    ALTER TABLE subjects ADD COLUMN forget_decided_at INTEGER;
    ALTER TABLE subjects ADD COLUMN forget_versions INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE subjects ADD COLUMN forget_shards INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE subjects ADD COLUMN forget_outcome INTEGER;
    """,
    # Migrations 4 and 5 were edited after catalogs of their first forms were written:
    # version 4 without damage_version, version 5 with stale_nodes instead of leftovers.
    # Each catalog gets what the later forms made (stale_nodes stays: no reader left).
    """
    CREATE INDEX IF NOT EXISTS damage_version ON damage (tenant, subject, key, version);
    CREATE TABLE IF NOT EXISTS leftovers (
        object_id BLOB NOT NULL, version INTEGER NOT NULL, shard INTEGER NOT NULL,
        node TEXT NOT NULL, location TEXT, PRIMARY KEY (object_id, version, shard, node)
    );
    """,
    # A shard rebuilt on the node its bad copy is on has a new generation in its name:
    # both copies are noted at once, so the generation is part of a note's key.
    """
    CREATE TABLE leftovers_by_generation (
        object_id BLOB NOT NULL, version INTEGER NOT NULL, shard INTEGER NOT NULL,
        node TEXT NOT NULL, location TEXT, generation INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (object_id, version, shard, node, generation)
    );
    INSERT INTO leftovers_by_generation (object_id, version, shard, node, location)
        SELECT object_id, version, shard, node, location FROM leftovers;
    DROP TABLE leftovers;
    ALTER TABLE leftovers_by_generation RENAME TO leftovers;
    """,
    # A copy a swap replaced is kept for gc's grace period, for the gets still reading it.
    """
    ALTER TABLE leftovers ADD COLUMN replaced_at REAL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_IDS_PER_QUERY = 500  # well under SQLite's limit on parameters
_FLOCK_TURNS = 8  # consecutive writes of one process before the others get a turn
_NEXT_VERSION = (  # of key ?3: above every row's, and every collected row's (never reused)
    "(SELECT MAX(COALESCE((SELECT MAX(version) FROM versions"
    " WHERE tenant = ?1 AND subject = ?2 AND key = ?3), 0), COALESCE((SELECT version"
    " FROM retired WHERE tenant = ?1 AND subject = ?2 AND key = ?3), 0)) + 1)"
)
_INSERT_COMMITTED = (
    "INSERT INTO versions SELECT ?1, ?2, ?3, ?4, 'committed', ?5, ?6, ?7, ?8"
    f" WHERE ?7 > (SELECT minted_until FROM sweeps) AND ?4 >= {_NEXT_VERSION} AND EXISTS"
    " (SELECT 1 FROM subjects WHERE tenant = ?1 AND subject = ?2 AND forgotten_at IS NULL)"
)
_FORGET_BATCH = 1000  # versions a forget marks per statement: its journal is held in memory
_MARK_FORGOTTEN = (
    "UPDATE versions SET state = 'deleted' WHERE rowid IN (SELECT rowid FROM versions"
    " WHERE tenant = ? AND subject = ? AND state != 'deleted' LIMIT ?)"
)
_RETIRE = (  # unless the subject is forgotten: then nothing may name its keys
    "INSERT INTO retired SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM subjects"
    " WHERE tenant = ?1 AND subject = ?2 AND forgotten_at IS NULL)"
    " ON CONFLICT (tenant, subject, key) DO UPDATE SET version = MAX(version, excluded.version)"
)
_SUBJECT_COLUMNS = "tenant, subject, jurisdiction, key_id, wrapped_key, created_at, forgotten_at"
_VERSION_COLUMNS = "tenant, subject, key, version, state, object_id, size, created_at, manifest"
_LEFTOVER_COLUMNS = "object_id, version, shard, node, location, generation, replaced_at"


def _failed(path: object, exc: sqlite3.Error | OSError) -> ShardvaultError:
    """A catalog error as the vault reports it: the file damaged (restore a backup, exit
    1), or the store failing (its disk full, say: retry)."""
    damaged = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)
    if getattr(exc, "sqlite_errorcode", None) in damaged:
        return IntegrityError(
            f"catalog {path} is damaged ({exc}): restore it from a backup, then forget "
            "again every subject forgotten since that backup"
        )
    where = path if isinstance(path, Path) else Path(".")
    return store_failure(f"catalog {path}", exc, where)


def _above_prefix(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` (None if none is), so
    a listing by prefix reads a range of the key index instead of the rest of it."""
    chars = list(prefix)
    while chars:
        following = ord(chars.pop()) + 1
        if 0xD800 <= following <= 0xDFFF:  # surrogates are not characters UTF-8 can hold
            following = 0xE000
        if following <= 0x10FFFF:
            return "".join(chars) + chr(following)
    return None


def _prefixed(table: str, columns: str) -> str:
    return ", ".join(f"{table}.{column}" for column in columns.split(", "))


# What a lookup cannot know from its own parameters: not the names it matched on, nor
# the state it asked for. Each column fetched costs a GIL release in the sqlite3
# module, and under load each release is a hand-off between threads.
_LOOKUP_SUBJECT = "jurisdiction, key_id, wrapped_key, created_at, forgotten_at"
_LOOKUP_VERSION_COLUMNS = "version, object_id, size, created_at, manifest"


def _lookup_sql(version_given: bool) -> str:
    """A subject's row, left-joined with the newest committed version of one key."""
    join = "v.tenant = s.tenant AND v.subject = s.subject AND v.key = ?3 AND v.state = 'committed'"
    return (
        f"SELECT {_prefixed('s', _LOOKUP_SUBJECT)}, {_prefixed('v', _LOOKUP_VERSION_COLUMNS)}"
        f" FROM subjects s LEFT JOIN versions v ON {join}"
        + (" AND v.version = ?4" if version_given else "")
        + " WHERE s.tenant = ?1 AND s.subject = ?2"
        + ("" if version_given else " ORDER BY v.version DESC LIMIT 1")
    )


_LOOKUP_LATEST, _LOOKUP_VERSION = _lookup_sql(False), _lookup_sql(True)
_LOOKUP_FOR_WRITE = (  # the subject, and the version an unreserved write of key ?3 tries
    f"SELECT {_SUBJECT_COLUMNS}, {_NEXT_VERSION} FROM subjects WHERE tenant = ?1 AND subject = ?2"
)


def _version(row: tuple, ref: ObjectRef | None = None) -> VersionRecord:  # type: ignore[type-arg]
    """A row as a record; ``ref`` (already checked) spares re-validating the names."""
    tenant, subject, key, version, state, object_id, size, created_at, manifest = row
    return VersionRecord(
        ref or ObjectRef(tenant, subject, key),
        version,
        VersionState(state),
        object_id,
        size,
        created_at,
        manifest,
    )


def _forgotten_during(ref: ObjectRef) -> SubjectForgotten:
    return SubjectForgotten(f"{ref}: subject {ref.subject} was forgotten during the write")


def _refusal(subject: SubjectRecord | None, record: VersionRecord) -> ShardvaultError:
    """Why an unreserved write added nothing: its subject is gone, or it lost a race.

    Asked after the failed insert. A forget is final: a subject forgotten by now
    was forgotten before the insert, or the put lost a race and a retry would be
    refused anyway.
    """
    if subject is None or subject.forgotten_at is not None:
        return _forgotten_during(record.ref)
    return WriteRaced(
        f"{record.ref} v{record.version}: the version was taken or a gc sweep began meanwhile"
    )


class _WriteTurn:
    """A catalog's write turn: this process's writers take turns on a thread lock,
    processes on the flock. A context manager object each catalog holds one of: as
    a @contextmanager generator it cost every put about 10 k instructions more.

    Only then the connection's lock: a writer waiting for another process
    does not hold up this process's readers. No timeout: a dead process's
    flock is released by the kernel; a stopped one stalls writers until it
    runs again. While more of this process's writers queue, the flock passes
    from one to the next, up to `_FLOCK_TURNS` writes: each flock call
    releases the GIL inside this critical section, and under load the
    holder then waits for the GIL while every writer waits for it.
    """

    __slots__ = ("_catalog",)

    def __init__(self, catalog: SqliteCatalog) -> None:
        self._catalog = catalog

    def __enter__(self) -> None:
        catalog = self._catalog
        catalog._queued.append(None)  # list operations are atomic: no lock to count
        try:
            catalog._write_lock.acquire()
        finally:  # also when interrupted: a stale count would keep the flock forever
            catalog._queued.pop()
        try:
            if catalog._writer_fd is not None and not catalog._flock_turns:
                fcntl.flock(catalog._writer_fd, fcntl.LOCK_EX)
            catalog._flock_turns += 1
            try:
                catalog._lock.acquire()
            except BaseException:
                self._pass_flock()
                raise
        except BaseException:
            catalog._write_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        catalog = self._catalog
        try:
            catalog._lock.release()
        finally:
            try:
                self._pass_flock()
            finally:
                catalog._write_lock.release()

    def _pass_flock(self) -> None:
        """Unlock the flock unless another of this process's writers queues for it."""
        catalog = self._catalog
        if not catalog._queued or catalog._flock_turns >= _FLOCK_TURNS:
            catalog._flock_turns = 0
            if catalog._writer_fd is not None:
                fcntl.flock(catalog._writer_fd, fcntl.LOCK_UN)


class SqliteCatalog:
    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._lock = threading.RLock()  # the connection: readers and writers
        self._write_lock = threading.Lock()  # this process's writers, before the flock
        self._wal_sync: GroupSync | None = None
        self._writer_fd: int | None = None  # flock'ed around every write (not in memory)
        self._queued: list[None] = []  # one item per writer of this process waiting
        self._flock_turns = 0  # writes since this process took the flock (0: not held)
        self._writing = _WriteTurn(self)  # `with self._writing:` around every write
        try:
            if isinstance(path, Path):
                path.parent.mkdir(parents=True, exist_ok=True)
                self._wal_sync = filesystem_sync(path.parent)
                self._writer_fd = os.open(
                    path.with_name(path.name + ".lock"),
                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                    0o600,
                )
            self._db = sqlite_connections.connect(str(path), f"catalog {path}", timeout=30.0)
            try:
                sqlite_connections.use_wal(self._db, timeout=30.0)
                self._db.execute("PRAGMA synchronous=NORMAL")
                # a deleted row's bytes are zeroed, and so are pages it frees: a purged
                # (forgotten) object's name does not linger in the file (FAST left it
                # in freed pages). Rows are deleted by gc and forget, not by gets or puts
                self._db.execute("PRAGMA secure_delete=ON")
                with self._writing:
                    self._migrate()
            except BaseException:
                self._db.close()
                raise
        except BaseException as exc:
            if self._writer_fd is not None:
                os.close(self._writer_fd)
            if isinstance(exc, sqlite3.DatabaseError | OSError):
                raise _failed(path, exc) from exc
            raise

    def _migrate(self) -> None:
        (current,) = self._db.execute("PRAGMA user_version").fetchone()
        if current > SCHEMA_VERSION:
            raise NewerFormat(
                f"catalog {self.path} has schema version {current}; this shardvault knows "
                f"up to {SCHEMA_VERSION}: upgrade shardvault"
            )
        for number in range(current, SCHEMA_VERSION):
            self._db.executescript(
                f"BEGIN IMMEDIATE;{MIGRATIONS[number]};PRAGMA user_version={number + 1};COMMIT;"
            )

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        with self._writing:
            failures = self._wal_sync.failures() if self._wal_sync else 0
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _failed(self.path, exc) from exc
            ticket = self._wal_sync.note_write(failures) if durable and self._wal_sync else 0
        if ticket and self._wal_sync is not None:
            self._wal_sync.sync(ticket)

    def _statement(
        self,
        sql: str,
        params: tuple,  # type: ignore[type-arg]
        durable: bool,
    ) -> tuple[list[tuple], int]:  # type: ignore[type-arg]
        """One writing statement as its own transaction: rows and row count.

        SQLite runs a single statement atomically and takes the write lock when
        it starts, so this is BEGIN IMMEDIATE ... COMMIT in one call instead of
        four (a put has two of them).
        """
        with self._writing:
            # read before the write: a flush failing while it is made may drop its pages
            failures = self._wal_sync.failures() if self._wal_sync else 0
            try:
                cursor = self._db.execute(sql, params)
                rows = cursor.fetchall()  # a RETURNING statement ends only when read out
            except sqlite3.Error as exc:
                raise _failed(self.path, exc) from exc
            ticket = self._wal_sync.note_write(failures) if durable and self._wal_sync else 0
        if ticket and self._wal_sync is not None:
            self._wal_sync.sync(ticket)
        return rows, cursor.rowcount

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:  # type: ignore[type-arg]
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _failed(self.path, exc) from exc

    def add_subject(self, record: SubjectRecord) -> None:
        with self._transaction() as db:
            try:
                db.execute(
                    f"INSERT INTO subjects ({_SUBJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.tenant,
                        record.subject,
                        record.jurisdiction,
                        record.key_id,
                        record.wrapped_key,
                        record.created_at,
                        record.forgotten_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"subject {record.subject} of tenant {record.tenant} already exists"
                ) from None

    def get_subject(self, tenant: str, subject: str) -> SubjectRecord | None:
        rows = self._query(
            f"SELECT {_SUBJECT_COLUMNS} FROM subjects WHERE tenant = ? AND subject = ?",
            (tenant, subject),
        )
        return SubjectRecord(*rows[0]) if rows else None

    def holds_subjects(self) -> bool:
        return bool(self._query("SELECT 1 FROM subjects LIMIT 1"))

    def subjects_with_keys(self, after: tuple[str, str] | None, limit: int) -> list[SubjectRecord]:
        rows = self._query(
            f"SELECT {_SUBJECT_COLUMNS} FROM subjects WHERE wrapped_key IS NOT NULL"
            " AND (tenant, subject) > (?, ?) ORDER BY tenant, subject LIMIT ?",
            (*(after or ("", "")), limit),
        )
        return [SubjectRecord(*row) for row in rows]

    def forget_subject(
        self, tenant: str, subject: str, when: float, decided_at: int | None = None
    ) -> int:
        with self._transaction() as db:
            found = db.execute(
                "SELECT forgotten_at FROM subjects WHERE tenant = ? AND subject = ?",
                (tenant, subject),
            ).fetchone()
            if found is None:
                raise NotFound(f"no subject {subject} in tenant {tenant}")
            for table in ("damage", "retired"):  # they name the subject's keys
                db.execute(
                    f"DELETE FROM {table} WHERE tenant = ? AND subject = ?", (tenant, subject)
                )
            marked = 0
            while batch := db.execute(_MARK_FORGOTTEN, (tenant, subject, _FORGET_BATCH)).rowcount:
                marked += batch
            if found[0] is None:
                db.execute(
                    "UPDATE subjects SET wrapped_key = NULL, forgotten_at = ?,"
                    " forget_decided_at = ?, forget_versions = ? WHERE tenant = ? AND subject = ?",
                    (when, decided_at, marked, tenant, subject),
                )
            return int(marked)

    def forget_progress(self, tenant: str, subject: str) -> ForgetProgress | None:
        rows = self._query(
            "SELECT forget_decided_at, forget_versions, forget_shards, forget_outcome"
            " FROM subjects WHERE tenant = ? AND subject = ? AND forgotten_at IS NOT NULL",
            (tenant, subject),
        )
        return ForgetProgress(*rows[0]) if rows else None

    def note_forget_progress(
        self, tenant: str, subject: str, *, shards_removed: int = 0, outcome: int | None = None
    ) -> None:
        self._statement(
            "UPDATE subjects SET forget_shards = forget_shards + ?,"
            " forget_outcome = COALESCE(?, forget_outcome)"
            " WHERE tenant = ? AND subject = ? AND forgotten_at IS NOT NULL",
            (shards_removed, outcome, tenant, subject),
            durable=False,
        )

    def reserve(self, ref: ObjectRef, object_id: bytes, when: float) -> int:
        rows, _ = self._statement(
            f"INSERT INTO versions SELECT ?1, ?2, ?3, {_NEXT_VERSION}, 'pending', ?4, 0, ?5, NULL"
            " WHERE NOT EXISTS (SELECT 1 FROM subjects WHERE tenant = ?1 AND subject = ?2"
            " AND forgotten_at IS NOT NULL) RETURNING version",
            (ref.tenant, ref.subject, ref.key, object_id, when),
            durable=False,
        )
        if not rows:
            raise _forgotten_during(ref)
        return int(rows[0][0])

    def lookup_for_write(self, ref: ObjectRef) -> tuple[SubjectRecord | None, int]:
        rows = self._query(_LOOKUP_FOR_WRITE, (ref.tenant, ref.subject, ref.key))
        if not rows:
            return None, 0
        return SubjectRecord(*rows[0][:7]), int(rows[0][7])

    def insert_committed(self, record: VersionRecord, if_match: int | None) -> None:
        """One statement, so one write transaction per put: the row goes in only if
        its version is still above every other, no sweep began since its mint and
        its subject is not forgotten."""
        assert record.state is VersionState.COMMITTED and record.manifest is not None
        ref = record.ref
        params = (
            ref.tenant,
            ref.subject,
            ref.key,
            record.version,
            record.object_id,
            record.size,
            record.created_at,
            record.manifest,
        )
        if not self._write_if_current(_INSERT_COMMITTED, params, ref, if_match):
            raise _refusal(self.get_subject(ref.tenant, ref.subject), record)

    def note_sweep(self, minted_until: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE sweeps SET minted_until = MAX(minted_until, ?)", (minted_until,))

    def _write_if_current(
        self,
        sql: str,
        params: tuple,  # type: ignore[type-arg]
        ref: ObjectRef,
        if_match: int | None,
    ) -> int:
        """A durable write's row count, once ref's current version is `if_match` (if given)."""
        if if_match is None:
            return self._statement(sql, params, durable=True)[1]
        with self._transaction() as db:
            (current,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM versions"
                " WHERE tenant = ? AND subject = ? AND key = ? AND state = 'committed'",
                (ref.tenant, ref.subject, ref.key),
            ).fetchone()
            if current != if_match:
                raise Conflict(f"{ref}: expected version {if_match}, current is {current}")
            return int(db.execute(sql, params).rowcount)

    def commit(
        self, ref: ObjectRef, version: int, manifest: bytes, size: int, if_match: int | None
    ) -> None:
        sql = (
            "UPDATE versions SET state = 'committed', manifest = ?, size = ?"
            " WHERE tenant = ? AND subject = ? AND key = ? AND version = ? AND state = 'pending'"
        )
        params = (manifest, size, ref.tenant, ref.subject, ref.key, version)
        if not self._write_if_current(sql, params, ref, if_match):
            raise Conflict(f"{ref} v{version} is not pending (was it collected?)")

    def abandon(self, ref: ObjectRef, version: int) -> None:
        with self._transaction(durable=False) as db:
            db.execute(
                "DELETE FROM versions WHERE tenant = ? AND subject = ? AND key = ?"
                " AND version = ? AND state = 'pending'",
                (ref.tenant, ref.subject, ref.key, version),
            )

    def get_version(self, ref: ObjectRef, version: int | None = None) -> VersionRecord | None:
        where = "tenant = ? AND subject = ? AND key = ? AND state = 'committed'"
        params: tuple = (ref.tenant, ref.subject, ref.key)  # type: ignore[type-arg]
        if version is not None:
            where += " AND version = ?"
            params += (version,)
        rows = self._query(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE {where} ORDER BY version DESC LIMIT 1",
            params,
        )
        return _version(rows[0], ref) if rows else None

    def lookup(
        self, ref: ObjectRef, version: int | None = None
    ) -> tuple[SubjectRecord | None, VersionRecord | None]:
        if version is None:
            rows = self._query(_LOOKUP_LATEST, (ref.tenant, ref.subject, ref.key))
        else:
            rows = self._query(_LOOKUP_VERSION, (ref.tenant, ref.subject, ref.key, version))
        if not rows:
            return None, None
        row = rows[0]
        subject = SubjectRecord(ref.tenant, ref.subject, *row[:5])
        if row[5] is None:
            return subject, None
        return subject, VersionRecord(ref, row[5], VersionState.COMMITTED, *row[6:])

    def list_latest(
        self, tenant: str, subject: str, prefix: str, start_after: str, limit: int
    ) -> list[VersionRecord]:
        above = _above_prefix(prefix)  # keys are compared as UTF-8 bytes: code point order
        below = "" if above is None else " AND key < ?"
        rows = self._query(
            f"SELECT {_VERSION_COLUMNS} FROM versions v WHERE tenant = ? AND subject = ?"
            f" AND state = 'committed' AND key > ? AND key >= ?{below}"
            " AND substr(key, 1, ?) = ?"
            " AND version = (SELECT MAX(version) FROM versions w WHERE w.tenant = v.tenant"
            " AND w.subject = v.subject AND w.key = v.key AND w.state = 'committed')"
            " ORDER BY key LIMIT ?",
            (
                tenant,
                subject,
                start_after,
                prefix,
                *([above] if above else []),
                len(prefix),
                prefix,
                limit,
            ),
        )
        return [_version(row) for row in rows]

    def list_versions(self, ref: ObjectRef) -> list[VersionRecord]:
        rows = self._query(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE tenant = ? AND subject = ?"
            " AND key = ? AND state = 'committed' ORDER BY version DESC",
            (ref.tenant, ref.subject, ref.key),
        )
        return [_version(row) for row in rows]

    def mark_deleted(
        self, ref: ObjectRef, version: int | None = None, if_match: int | None = None
    ) -> int:
        sql = (
            "UPDATE versions SET state = 'deleted' WHERE tenant = ? AND subject = ?"
            " AND key = ? AND state = 'committed'"
        )
        params: tuple = (ref.tenant, ref.subject, ref.key)  # type: ignore[type-arg]
        if version is not None:
            sql += " AND version = ?"
            params += (version,)
        return self._write_if_current(sql, params, ref, if_match)

    def claim_collectable(
        self,
        pending_before: float,
        *,
        created_until: float = math.inf,
        subject: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[VersionRecord]:
        whose = "" if subject is None else " AND tenant = ? AND subject = ?"
        params = () if subject is None else subject
        with self._transaction() as db:
            db.execute(
                "UPDATE versions SET state = 'deleted' WHERE state = 'pending' AND created_at < ?"
                + whose,
                (pending_before, *params),
            )
            rows = db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE state = 'deleted'"
                f" AND created_at <= ?{whose} ORDER BY created_at LIMIT ?",
                (created_until, *params, -1 if limit is None else limit),
            ).fetchall()
        return [_version(row) for row in rows]

    def purge(self, versions: Iterable[tuple[ObjectRef, int]]) -> None:
        rows = [(ref.tenant, ref.subject, ref.key, version) for ref, version in versions]
        if not rows:
            return
        with self._transaction() as db:
            for params in rows:
                gone = db.execute(
                    "DELETE FROM versions WHERE tenant = ? AND subject = ? AND key = ?"
                    " AND version = ? AND state = 'deleted'",
                    params,
                ).rowcount
                if gone:  # its number is never given again
                    db.execute(_RETIRE, params)
                db.execute(
                    "DELETE FROM damage WHERE tenant = ? AND subject = ? AND key = ?"
                    " AND version = ?",
                    params,
                )

    def known_object_ids(self) -> set[bytes]:
        return {row[0] for row in self._query("SELECT object_id FROM versions")}

    def known_among(self, object_ids: Collection[bytes]) -> set[bytes]:
        return {row[0] for row in self._rows_with("object_id", object_ids)}

    def versions_with(self, object_ids: Collection[bytes]) -> list[VersionRecord]:
        return [_version(row) for row in self._rows_with(_VERSION_COLUMNS, object_ids)]

    def _rows_with(self, columns: str, object_ids: Collection[bytes]) -> list[tuple]:  # type: ignore[type-arg]
        """`columns` of the rows of these object ids, a bounded number of ids per query."""
        wanted, found = list(object_ids), []
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            chunk = wanted[start : start + _IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            found += self._query(
                f"SELECT {columns} FROM versions WHERE object_id IN ({marks})", tuple(chunk)
            )
        return found

    def replace_manifests(
        self, changes: Sequence[tuple[VersionRecord, bytes]], durable: bool = False
    ) -> int:
        if not changes:
            return 0
        changed = 0
        with self._transaction(durable=durable) as db:
            for record, manifest in changes:
                ref = record.ref
                changed += db.execute(
                    "UPDATE versions SET manifest = ? WHERE tenant = ? AND subject = ?"
                    " AND key = ? AND version = ? AND manifest = ? AND state = ?",
                    (
                        manifest, ref.tenant, ref.subject, ref.key, record.version,
                        record.manifest, record.state.value,
                    ),
                ).rowcount  # fmt: skip
        return changed

    def erase_freed(self) -> None:
        """Copy the WAL into the database and truncate it: the frames holding purged rows
        go. Best effort: a reader of an older snapshot keeps them until the next one."""
        with self._writing:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise _failed(self.path, exc) from exc

    def record_damage(self, damage: DamageRecord) -> None:
        with self._transaction(durable=False) as db:
            ref = damage.ref
            db.execute(
                "INSERT INTO damage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ref.tenant,
                    ref.subject,
                    ref.key,
                    damage.version,
                    damage.segment,
                    damage.index,
                    damage.node,
                    damage.reason,
                    damage.seen_at,
                ),
            )

    def committed_after(self, object_id: bytes, limit: int) -> list[VersionRecord]:
        rows = self._query(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE object_id > ?"
            " AND state = 'committed' ORDER BY object_id LIMIT ?",
            (object_id, limit),
        )
        return [_version(row) for row in rows]

    def clear_damage(self, ref: ObjectRef, version: int) -> int:
        with self._transaction(durable=False) as db:
            return db.execute(
                "DELETE FROM damage WHERE tenant = ? AND subject = ? AND key = ? AND version = ?",
                (ref.tenant, ref.subject, ref.key, version),
            ).rowcount

    def note_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        with self._transaction() as db:  # durable: a lost note is a copy leaked for good
            db.executemany(
                f"INSERT OR REPLACE INTO leftovers ({_LEFTOVER_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        x.object_id,
                        x.version,
                        x.shard,
                        x.node,
                        x.location,
                        x.generation,
                        x.replaced_at,
                    )
                    for x in leftovers
                ],
            )

    def leftovers(self) -> list[Leftover]:
        rows = self._query(f"SELECT {_LEFTOVER_COLUMNS} FROM leftovers")
        return [Leftover(*row) for row in rows]

    def drop_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        with self._transaction(durable=False) as db:
            db.executemany(
                "DELETE FROM leftovers WHERE object_id = ? AND version = ? AND shard = ?"
                " AND node = ? AND generation = ?",
                [(x.object_id, x.version, x.shard, x.node, x.generation) for x in leftovers],
            )

    def damage(self) -> list[DamageRecord]:
        rows = self._query(
            "SELECT tenant, subject, key, version, segment, shard, node, reason, seen_at"
            " FROM damage ORDER BY seen_at"
        )
        return [DamageRecord(ObjectRef(t, s, k), *rest) for t, s, k, *rest in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None
