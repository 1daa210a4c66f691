"""The custodian's and the partner's own SQLite files: private, made once, opened only.

The keyring's tombstones and key subjects (keys/) and the partner's record of
signed verdicts (governance/verdicts_file.py) are each a file its owner alone
reads (mode 0600), made empty by shardvault, never by SQLite: a connection opens
the file there read-write only, so one lost is refused rather than made anew
empty. Each caller checks the file private before it opens it, and says in its
own words what failed.

A rollback journal, not WAL (nor `sqlite_connections.connect`): a WAL connection
holds a lock on the shared memory file for as long as it is open, and a forked
child's connections would share its parent's record of that lock
(sqlite_connections.py says what that cost the catalog); a journal connection
holds no lock between queries. The journal and any other file SQLite makes
beside the database take the database's mode, 0600. These files are written
rarely, so each commit is made with ``synchronous=EXTRA``: the journal's
deletion, which is the commit, is durable with its directory before it returns.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from shardvault import durability


def make_private_file(path: Path, directory_mode: int = 0o777) -> None:
    """The empty file, mode 0600, made (with its directory) durable; one already there is
    left as it is, whoever else makes it at the same time. `OSError` if it cannot be."""
    path.parent.mkdir(mode=directory_mode, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    durability.fsync_directory(path.parent)


def open_journaled(
    path: Path, busy_seconds: float, *, check_same_thread: bool = True
) -> sqlite3.Connection:
    """An autocommit connection to the existing file at ``path`` (never made by it), with a
    rollback journal and ``synchronous=EXTRA``, that waits up to ``busy_seconds`` for
    another's lock; `sqlite3.Error` if it cannot be opened so."""
    db = sqlite3.connect(
        f"file:{quote(str(path))}?mode=rw",
        busy_seconds,
        isolation_level=None,
        check_same_thread=check_same_thread,
        uri=True,
    )
    try:
        db.execute("PRAGMA journal_mode=DELETE").fetchall()
        db.execute("PRAGMA synchronous=EXTRA")
    except BaseException:
        db.close()
        raise
    return db
