"""The scrubs a forget or a registration still owes a cell's approvals, worked off there.

A forget (or a registration) takes the subject's id out of the approvals other cells
hold for it (asked while it had no home). A cell whose approvals or pseudonym key
cannot be reached then (its files fail, its disk hangs) must not stop the forget:
the key is destroyed at home, and what that cell still owes is a name in an
approval. So the subject directory records, before any cell is tried, the token it
files the subject under (its keyed HMAC, never the id: the directory is no cell)
and each cell to scrub (`SubjectDirectory.owe_scrubs`); a cell reached drops its
row. The next process that opens a cell's approvals works its rows off before any
approval there is used, listed or signed (`work_off`), comparing the token of each
approval's subject with them; if the rows cannot be read, the approvals are not
opened (fail closed). `shardvault gc` works off every cell's.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from shardvault.directory import SubjectDirectory
from shardvault.errors import VaultClosed

Pseudonym = Callable[[str, str], str]


def pseudonymize(
    db: sqlite3.Connection,
    ident: str,
    subject: str,
    key: str | None,
    pseudonym: Pseudonym,
    homed_at: float | None,
) -> None:
    """Approval IDENT keeps only the cell's audit pseudonyms of its subject and key, as
    its audit entries carry them; ``homed_at`` marks it homed elsewhere (once)."""
    db.execute(
        "UPDATE approvals SET subject = ?, key = ?,"
        " homed_elsewhere_at = coalesce(homed_elsewhere_at, ?) WHERE id = ?",
        (
            pseudonym("subject", subject),
            pseudonym("key", key) if key is not None else None,
            homed_at,
            ident,
        ),
    )


class OwedLedger:
    """The directory's record of owed scrubs, opened on first use: a process with
    governance alone (`approval ls`) opens it too. No directory yet: nothing owed."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._lock = threading.Lock()
        self._directory: SubjectDirectory | None = None
        self._closed = False

    def directory(self) -> SubjectDirectory | None:
        """The directory; `VaultClosed` once closed: a scrub thread given up on, whose
        hung disk answers after the close, must not open it again for nobody to close
        (and nothing may read approvals then without their owed rows)."""
        with self._lock:
            if self._closed:
                raise VaultClosed("the subject directory is closed: the vault was closed")
            if self._directory is None:
                if not (self._state_dir / "directory.sqlite").exists():
                    return None
                # read as it is: a schema 1 file owes nothing, and `approval ls` writes
                # nothing (`owe_scrubs` migrates it)
                self._directory = SubjectDirectory.open(self._state_dir, migrate=False)
            return self._directory

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._directory is not None:
                self._directory.close()
                self._directory = None


def work_off(
    db: sqlite3.Connection,
    cell: str,
    directory: SubjectDirectory,
    pseudonym: Callable[[], Pseudonym],
    now: float,
) -> int:
    """Scrub CELL's approvals (open on DB) of every subject the directory says they
    still owe, marked homed elsewhere, then drop those rows. A row whose subject has
    no home now (its registration undone) or whose home is CELL scrubs nothing: that
    approval covers its own cell's requests again (or, a forget's at home, was
    scrubbed then but not truncated). Returns the approvals changed. Every
    approval's subject is hashed, but only when the cell owes something."""
    owed = directory.owed_in(cell)
    if not owed:
        return 0
    due = {token for token, home in owed.items() if home is not None and home != cell}
    changed, erased = _scrub(db, due, directory, pseudonym(), now) if due else (0, truncate_wal(db))
    # a reader's snapshot can hold the old pages (the id) out of the WAL's truncation:
    # then the rows stay, for the next opener to truncate again
    directory.scrubbed(cell, owed if erased else [t for t, home in owed.items() if home is None])
    return changed


def truncate_wal(db: sqlite3.Connection) -> bool:
    """Checkpoint and truncate the WAL: whether it completed (a reader's snapshot can
    keep old pages, a scrubbed id's among them, in the file until a later one)."""
    busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    return not busy


def _scrub(
    db: sqlite3.Connection,
    due: set[str],
    directory: SubjectDirectory,
    pseudonym: Pseudonym,
    now: float,
) -> tuple[int, bool]:
    db.execute("BEGIN IMMEDIATE")
    try:
        rows = db.execute(
            "SELECT id, tenant, subject, key FROM approvals WHERE subject IS NOT NULL"
        ).fetchall()
        hits = [row for row in rows if directory.token(row[1], row[2]) in due]
        for ident, _, subject, key in hits:
            pseudonymize(db, ident, subject, key, pseudonym, now)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    # always, not only if some changed: a run killed before its truncation left frames
    return len(hits), truncate_wal(db)


__all__ = ["OwedLedger", "Pseudonym", "pseudonymize", "truncate_wal", "work_off"]
