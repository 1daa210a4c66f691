"""Whose key is whose, as the custodian recorded it: a tag of the subject per key it wrapped.

A forget's approval names a subject; the custodian is told a key id. To destroy
exactly that subject's key and no other (and to unwrap, on an approval, only the
key of the subject it names), it checks the approval's subject
against what it recorded when it wrapped the key (`rootkey.subject_tag`), never
against the vault's catalog, which the operator writes (docs/trust-model.md).

A SQLite file beside the keyring (``keyring.json`` → ``keyring.subjects.sqlite``),
mode 0600, schema 2 (``PRAGMA user_version``)::

    key_subjects(scope TEXT, key_id TEXT, tag BLOB, PRIMARY KEY (scope, key_id)) WITHOUT ROWID
    earlier_keys(recorded INTEGER)   -- one row
    destroy_attestations(scope TEXT, key_id TEXT, attestation BLOB,
                         PRIMARY KEY (scope, key_id)) WITHOUT ROWID   -- since schema 2

A key id keeps the first tag recorded for it, and the first destroy attestation
the custodian signed for it (`keys.attestation`), which a forget run again is
given. Schema 1 lacks that table; it is added, and the file stamped 2, on the
first use by a shardvault that knows it. ``earlier_keys.recorded`` is 0 in
a file made for a keyring that already held keys (from before the custodian
recorded subjects) until the vault has named their subjects once
(`record_earlier`), then 1; it is 1 from the start in a new keyring's file.

Not in the tombstones' file: every commit there drops the answers each process
remembers for the read path (`live_answers`), and a wrap is a commit. Wraps,
destroys and unwraps that name an approval are rare, so each opens a connection
of its own and closes it; an unwrap that names none never opens the file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from shardvault.errors import KeyUnavailable
from shardvault.journaled_sqlite import make_private_file, open_journaled
from shardvault.keys.tombstones import require_private
from shardvault.sqlite_schema import refuse_newer, stamp_schema

SCHEMA_VERSION = 2
SUFFIX = ".subjects.sqlite"
_ATTESTATIONS = """CREATE TABLE IF NOT EXISTS destroy_attestations (
    scope TEXT NOT NULL,
    key_id TEXT NOT NULL,
    attestation BLOB NOT NULL,
    PRIMARY KEY (scope, key_id)
) WITHOUT ROWID"""
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS key_subjects (
    scope TEXT NOT NULL,
    key_id TEXT NOT NULL,
    tag BLOB NOT NULL,
    PRIMARY KEY (scope, key_id)
) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS earlier_keys (recorded INTEGER NOT NULL)",
    _ATTESTATIONS,
)
_INSERT = "INSERT OR IGNORE INTO key_subjects (scope, key_id, tag) VALUES (?, ?, ?)"
_TAG = "SELECT tag FROM key_subjects WHERE scope = ? AND key_id = ?"
_KEEP = "INSERT OR IGNORE INTO destroy_attestations (scope, key_id, attestation) VALUES (?, ?, ?)"
_ATTESTATION = "SELECT attestation FROM destroy_attestations WHERE scope = ? AND key_id = ?"
_BUSY_SECONDS = 10.0


def key_subjects_path(keyring: Path) -> Path:
    """``keys/keyring.json`` keeps its key subjects in ``keys/keyring.subjects.sqlite``."""
    return keyring.with_suffix(SUFFIX)


class KeySubjects:
    """The subject tag of each key a keyring wrapped; shared by processes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, earlier_recorded: bool) -> None:
        """Make the file, mode 0600, if it is missing or was left half-made; one that
        exists keeps what it says. The caller holds the keyring's flock."""
        if not self.path.exists():
            make_private_file(self.path)
        with self._connected(create=True) as db, db:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            if db.execute("SELECT 1 FROM earlier_keys").fetchone() is None:
                db.execute("INSERT INTO earlier_keys VALUES (?)", (int(earlier_recorded),))
            stamp_schema(db, SCHEMA_VERSION, self._what)

    def bind(self, scope: str, key_id: str, tag: bytes) -> bytes:
        """Record ``tag`` for the key unless it has one; the tag it has now, durable."""
        return self._keep_first(_INSERT, _TAG, scope, key_id, tag)

    def tag(self, scope: str, key_id: str) -> bytes | None:
        """The tag recorded for the key; None if none was."""
        return self._recorded(_TAG, scope, key_id)

    def keep_attestation(self, scope: str, key_id: str, attestation: bytes) -> bytes:
        """Record the destroy attestation of the key unless it has one; the one it has
        now, durable: the first signed is the one every run of its forget is given."""
        return self._keep_first(_KEEP, _ATTESTATION, scope, key_id, attestation)

    def attestation(self, scope: str, key_id: str) -> bytes | None:
        """The destroy attestation recorded for the key; None if none was."""
        return self._recorded(_ATTESTATION, scope, key_id)

    def earlier_recorded(self) -> bool:
        """Whether the keys wrapped before this file existed have had their subjects named."""
        with self._connected() as db:
            row = db.execute("SELECT recorded FROM earlier_keys").fetchone()
        return row is not None and row[0] == 1

    def record_earlier(self, rows: Iterable[tuple[str, str, bytes]]) -> None:
        """Tags of keys wrapped before the file existed, in one transaction; a key that has
        one keeps it. Ignored once `finish_earlier` ran: a key without a tag then was
        not held for a live subject by any catalog, and is never given one."""
        with self._connected() as db, db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT recorded FROM earlier_keys").fetchone() != (0,):
                return
            db.executemany(_INSERT, rows)

    def finish_earlier(self) -> None:
        """Every earlier key's subject is recorded: from now on only a wrap records one."""
        with self._connected() as db, db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE earlier_keys SET recorded = 1")

    def _keep_first(self, insert: str, held: str, scope: str, key_id: str, value: bytes) -> bytes:
        """``insert`` the key's value unless it has one, and read back the one it holds
        with ``held``, in one write transaction: the first recorded is the one kept."""
        with self._connected() as db, db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(insert, (scope, key_id, value))
            (found,) = db.execute(held, (scope, key_id)).fetchone()
        return bytes(found)

    def _recorded(self, held: str, scope: str, key_id: str) -> bytes | None:
        """The key's value as ``held`` reads it; None if it has none."""
        with self._connected() as db:
            row = db.execute(held, (scope, key_id)).fetchone()
        return None if row is None else bytes(row[0])

    @property
    def _what(self) -> str:
        return f"keyring key subjects {self.path}"

    @contextmanager
    def _connected(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection to the existing file, checked private and of a known schema.

        A rollback journal and ``synchronous=EXTRA``, as the tombstones: a wrap's
        record is durable before the catalog commits the subject it is for.
        """
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise KeyUnavailable(
                f"{self._what} do not exist: a keyring with keys has them beside it "
                "(restore them with it, or check custodian.path)"
            ) from None
        require_private(info, self.path, "keyring key subjects")
        try:
            db = open_journaled(self.path, _BUSY_SECONDS)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        with closing(db):
            try:
                if not create:
                    self._check_schema(db)
                yield db
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc

    def _check_schema(self, db: sqlite3.Connection) -> None:
        """Refuse a file with no table or of a newer schema; give one of schema 1 the
        table of destroy attestations (empty) and stamp it 2, in one transaction."""
        found = refuse_newer(db, SCHEMA_VERSION, self._what)
        if found == 0:
            raise KeyUnavailable(f"{self._what} hold no table: restore them from a backup")
        if found == SCHEMA_VERSION:
            return
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(_ATTESTATIONS)
            stamp_schema(db, SCHEMA_VERSION, self._what)

    def _failed(self, exc: sqlite3.Error) -> KeyUnavailable:
        return KeyUnavailable(f"cannot use {self._what}: {exc} (no key was wrapped or destroyed)")
