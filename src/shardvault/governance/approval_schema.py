"""A cell's approvals file: its schema, the migration a writer makes, and how a reader
finds a book from before laid out (docs/formats.md, "Approvals").

A command that only reads the book leaves a book of an older schema as it is, so
that the shardvault that wrote it can still open it: a missing column reads NULL,
the value the migration gives it. The first write migrates it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from shardvault.sqlite_connections import use_wal
from shardvault.sqlite_schema import stamp_schema

SCHEMA_VERSION = 3  # PRAGMA user_version of approvals.sqlite (docs/formats.md)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, requester TEXT NOT NULL, action TEXT NOT NULL, tenant TEXT NOT NULL,
    subject TEXT, key TEXT, purpose TEXT NOT NULL, request_id TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, quorum INTEGER NOT NULL,
    approvers TEXT NOT NULL, homed_elsewhere_at REAL
);
CREATE TABLE IF NOT EXISTS signatures (
    approval TEXT NOT NULL REFERENCES approvals(id), approver TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')), at REAL NOT NULL,
    signature BLOB, PRIMARY KEY (approval, approver)
);
CREATE INDEX IF NOT EXISTS approvals_expiry ON approvals (expires_at);
CREATE INDEX IF NOT EXISTS approvals_subject ON approvals (tenant, subject);
"""


@dataclass(frozen=True, slots=True)
class Layout:
    """What a book holds, read as it is by a command that only reads it: a column a
    book from before lacks reads NULL (the value a migration would give it), and a
    book made by a process killed before its tables holds no approval."""

    tables: bool
    homed: str  # "homed_elsewhere_at", or "NULL" in a book of schema 1 or 2
    signature: str  # "signature", or "NULL" in a book of schema 1


CURRENT_LAYOUT = Layout(tables=True, homed="homed_elsewhere_at", signature="signature")


def layout_of(db: sqlite3.Connection) -> Layout:
    def columns(table: str) -> set[str]:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    approvals, signatures = columns("approvals"), columns("signatures")
    return Layout(
        tables=bool(approvals and signatures),
        homed="homed_elsewhere_at" if "homed_elsewhere_at" in approvals else "NULL",
        signature="signature" if "signature" in signatures else "NULL",
    )


def migrate_book(db: sqlite3.Connection, what: str) -> None:
    """The book at this schema, for a command that writes it: WAL, the stamp, the
    tables, then each column a book from before lacks (every step a no-op on a
    book already migrated)."""
    use_wal(db)
    stamp_schema(db, SCHEMA_VERSION, what)
    db.executescript(_SCHEMA)
    _add_column(db, "signatures", "signature BLOB")
    _add_column(db, "approvals", "homed_elsewhere_at REAL")


def _add_column(db: sqlite3.Connection, table: str, column: str) -> None:
    """A column a book from before lacks, added NULL in every row: schema 1 → 2, verdicts
    gain their ``signature BLOB``; 2 → 3, approvals their ``homed_elsewhere_at REAL``.
    Checked by the column itself, under the write lock, so that a process killed
    after the stamp, or two processes opening the book at once, migrate it once."""
    name = column.split()[0]

    def missing() -> bool:
        return name not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    if not missing():  # every open but the first of a book from before: no write
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if missing():
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


__all__ = ["CURRENT_LAYOUT", "SCHEMA_VERSION", "Layout", "layout_of", "migrate_book"]
