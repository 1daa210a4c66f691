"""The file of the partner's record of signed verdicts: its schema, made once, opened private.

``<partner_dir>/verdicts.sqlite`` (mode 0600, rollback journal,
``synchronous=EXTRA``, ``PRAGMA user_version`` = 3)::

    verdicts(approval TEXT, approver TEXT, verdict TEXT ('approve' or 'deny'),
             signature BLOB, PRIMARY KEY (approval, approver, verdict)) WITHOUT ROWID
    vetoes(request BLOB, object_key BLOB, approval TEXT, approver TEXT,
           denied_at REAL, expires_at REAL,
           PRIMARY KEY (request, approval, approver)) WITHOUT ROWID
    veto_key(id INTEGER PRIMARY KEY CHECK (id = 1), key BLOB)
    withdrawals(approval TEXT, approver TEXT, withdrawn_at REAL, signature BLOB,
                PRIMARY KEY (approval, approver)) WITHOUT ROWID

It is made by the first signed verdict of the deployment, and never made anew
once an approval book holds a signed verdict: then a missing file was lost, with
the denials in it (`VerdictsFile.lost`, fail closed). An empty file (0 bytes,
mode 0600) is taken as a record with nothing in it: the partner's way to start
again after losing it for good, and what a process killed while making it left.
A file of schema 1 (from before vetoes) is read as it is, holding no veto, and
given the veto tables by the next verdict delivered; one of schema 2 (from before
withdrawals) is read as holding none, and given the table by the next write.
What the record means is `partner_verdicts`'.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from shardvault.errors import IntegrityError, Unavailable
from shardvault.journaled_sqlite import make_private_file, open_journaled
from shardvault.partner_files import VERDICTS
from shardvault.sqlite_schema import refuse_newer, stamp_schema

FILE = VERDICTS
SCHEMA_VERSION = 3
_VERDICTS = """CREATE TABLE IF NOT EXISTS verdicts (
    approval TEXT NOT NULL,
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')),
    signature BLOB NOT NULL,
    PRIMARY KEY (approval, approver, verdict)
) WITHOUT ROWID"""
_VETOES = """CREATE TABLE IF NOT EXISTS vetoes (
    request BLOB NOT NULL,
    object_key BLOB,
    approval TEXT NOT NULL,
    approver TEXT NOT NULL,
    denied_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (request, approval, approver)
) WITHOUT ROWID"""
_VETO_KEY = """CREATE TABLE IF NOT EXISTS veto_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    key BLOB NOT NULL CHECK (length(key) = 32)
)"""
_WITHDRAWALS = """CREATE TABLE IF NOT EXISTS withdrawals (
    approval TEXT NOT NULL,
    approver TEXT NOT NULL,
    withdrawn_at REAL NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (approval, approver)
) WITHOUT ROWID"""
_BUSY_SECONDS = 10.0


class VerdictsFile:
    """The record's SQLite file at ``path``: made empty once, set up and stamped by its
    first write, and opened only while it is a regular file its owner alone reads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set_up(self, db: sqlite3.Connection) -> None:
        """The tables and the veto key of a file left empty, or of schema 1 or 2; stamped 3.
        In the caller's write transaction: two processes set it up once."""
        self.version(db)  # a newer one: NewerFormat, before anything is written
        for table in (_VERDICTS, _VETOES, _VETO_KEY, _WITHDRAWALS):
            db.execute(table)
        db.execute("INSERT OR IGNORE INTO veto_key (id, key) VALUES (1, ?)", (os.urandom(32),))
        stamp_schema(db, SCHEMA_VERSION, self.what)

    def version(self, db: sqlite3.Connection) -> int:
        """The file's schema (0: left empty); `NewerFormat` if a newer shardvault wrote it."""
        return refuse_newer(db, SCHEMA_VERSION, self.what)

    def veto_key(self, db: sqlite3.Connection) -> bytes:
        row = db.execute("SELECT key FROM veto_key WHERE id = 1").fetchone()
        if row is None:  # set up with the tables, in one transaction: damage
            raise IntegrityError(f"{self.what} has lost its veto key: restore it from a backup")
        return bytes(row[0])

    @property
    def what(self) -> str:
        return f"the partner's record of signed verdicts {self.path}"

    def lost(self) -> IntegrityError:
        return IntegrityError(
            f"{self.what} is missing, while approvals have signed verdicts: restore it "
            "from the partner's backup (docs/trust-model.md, signed approvals)"
        )

    def make(self) -> None:
        """The empty file, mode 0600, made once whoever else makes it at the same time."""
        try:
            make_private_file(self.path, directory_mode=0o700)
        except OSError as exc:
            raise Unavailable(f"cannot make {self.what}: {exc.strerror or exc}") from None

    @contextmanager
    def connected(self) -> Iterator[sqlite3.Connection]:
        """A connection to the existing file, checked to be a private regular file. A
        rollback journal and ``synchronous=EXTRA``: a verdict is durable once delivered."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise Unavailable(f"cannot use {self.what}: {exc.strerror or exc}") from None
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode) or mode & 0o077:
            raise Unavailable(
                f"{self.what} is not a regular file only its owner can read (mode {mode:o}): "
                "run chmod 600 on it"
            )
        try:
            db = open_journaled(self.path, _BUSY_SECONDS)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot use {self.what}: {exc}") from exc
        with closing(db):
            try:
                yield db
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot use {self.what}: {exc}") from exc


__all__ = ["FILE", "SCHEMA_VERSION", "VerdictsFile"]
