"""Which cell holds a subject, without copying subject ids out of their cell.

The directory is global, so it stores only a keyed HMAC of (tenant, subject)
and the home jurisdiction: enough to route a request, useless for listing who
the users are. The subject id itself lives only in its home cell's catalog
(and, for the homes a process settled, in that process's memory).

It also keeps, under the same HMAC, the cells whose approvals a forget or a
registration has still to scrub of a subject's id (`owe_scrubs`): one that could
not reach a cell's approvals completes at home, and that cell's next opener
compares the HMAC of each approval's id with these rows (docs/architecture.md,
"Cells").
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shardvault import sqlite_connections
from shardvault.durability import create_whole, read_own, store_failure
from shardvault.errors import Conflict, IntegrityError, StorageError, VaultClosed
from shardvault.file_locks import release_flock
from shardvault.sqlite_schema import refuse_newer, stamp_schema

KEY_BYTES = 32
SETTLED_LIMIT = 1 << 14  # homes remembered per process (about 4 MiB at most)
SCHEMA_VERSION = 2  # PRAGMA user_version of directory.sqlite (docs/formats.md)
_OWED = (  # schema 2: the cells still to scrub of a subject's id, by the homes' token
    "CREATE TABLE IF NOT EXISTS owed_scrubs "
    "(token TEXT NOT NULL, cell TEXT NOT NULL, PRIMARY KEY (token, cell)) WITHOUT ROWID"
)
_WHAT = "subject directory key"


def _load_or_create_key(path: Path, holds_homes: Callable[[], bool]) -> bytes:
    """The directory's HMAC key, made (whole) on first use.

    A key of another length is damage, refused: with a wrong key no subject is
    found, and each could be registered again elsewhere. So is a missing key
    beside a database that ``holds_homes``: a new key would do the same.
    """
    try:
        key = read_own(path, _WHAT)
    except FileNotFoundError:
        key = _recovered_key(path) if holds_homes() else _create_key(path)
    except OSError as exc:
        raise StorageError(f"subject directory key {path}: {exc.strerror}") from exc
    if len(key) != KEY_BYTES:
        raise IntegrityError(
            f"subject directory key {path} is damaged ({len(key)} bytes, not {KEY_BYTES}): "
            "restore it from a backup; without it no subject can be found"
        )
    return key


def _recovered_key(path: Path) -> bytes:
    """The key of a directory that holds homes: one another process made since this one
    looked (its first registration may already be in), else lost, refused."""
    try:
        return read_own(path, _WHAT)
    except FileNotFoundError:
        raise IntegrityError(
            f"subject directory key {path} is missing, though the directory holds homes: "
            "restore it from a backup; a new key would find no subject, and each could be "
            "registered again in another jurisdiction"
        ) from None
    except OSError as exc:
        raise StorageError(f"subject directory key {path}: {exc.strerror}") from exc


def _holds_homes(db_path: Path) -> bool:
    """Whether the directory database at ``db_path`` has any home (a failure to read
    it is a `StorageError`, as opening it would be)."""
    if not db_path.exists():
        return False
    try:
        db = sqlite_connections.connect(str(db_path), f"subject directory {db_path}")
        try:
            return db.execute("SELECT 1 FROM homes LIMIT 1").fetchone() is not None
        finally:
            db.close()
    except sqlite3.Error as exc:
        if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
            return False  # made, but killed before its table was
        raise store_failure(f"subject directory {db_path}", exc, db_path) from exc


def _create_key(path: Path) -> bytes:
    try:
        create_whole(path, os.urandom(KEY_BYTES))
        return read_own(path, _WHAT)  # ours, or one another process made meanwhile
    except OSError as exc:
        raise StorageError(
            f"subject directory key {path} cannot be written: {exc.strerror}"
        ) from exc


class SubjectDirectory:
    """Homes by HMAC token in SQLite, and the settled ones remembered in this process.

    A home is settled once its cell's catalog was seen holding the subject (the
    vault calls `settle`). Such a row is never removed: only a registration that
    left nothing in its cell is undone (`Vault.register_subject`), so a settled
    home is answered without a query, which every read otherwise makes.
    """

    def __init__(self, db_path: Path | str, key: bytes, *, migrate: bool = True) -> None:
        """``migrate`` False: a reader of owed scrubs (`approval ls`), which leaves a file
        of schema 1 as it is (it owes nothing) until the first `owe_scrubs`."""
        self._key = key
        self._path = db_path
        self._lock = threading.Lock()
        self._settled: dict[tuple[str, str], str] = {}
        self._owed_table = False
        try:
            self._db = sqlite_connections.connect(
                str(db_path), f"subject directory {db_path}", timeout=30.0
            )
            sqlite_connections.use_wal(self._db, timeout=30.0)
            if migrate:
                self._migrate()
            else:
                refuse_newer(self._db, SCHEMA_VERSION, f"subject directory {db_path}")
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def _migrate(self) -> None:
        stamp_schema(self._db, SCHEMA_VERSION, f"subject directory {self._path}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS homes (token TEXT PRIMARY KEY, jurisdiction TEXT NOT NULL)"
        )
        self._db.execute(_OWED)  # 1 -> 2: the table, empty (a schema 1 owed nothing)
        self._owed_table = True

    def _owes_nothing(self) -> bool:
        """Whether the file has no table of owed scrubs (schema 1, left so by a reader):
        then nothing is owed. Looked for until found, then never again."""
        if self._owed_table:
            return False
        found = self._one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                          ("owed_scrubs",))  # fmt: skip
        self._owed_table = found is not None
        return not self._owed_table

    @classmethod
    def open(cls, state_dir: Path, *, migrate: bool = True) -> SubjectDirectory:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"state directory {state_dir}: {exc.strerror}") from exc
        db_path = state_dir / "directory.sqlite"
        key = _load_or_create_key(state_dir / "directory.key", lambda: _holds_homes(db_path))
        return cls(db_path, key, migrate=migrate)

    @property
    def location(self) -> Path:
        """The directory database's file."""
        return Path(self._path)

    def _failure(self, exc: sqlite3.Error) -> StorageError | VaultClosed:
        """A database the directory cannot use is a storage failure naming it, not a crash
        (or, closed with its vault, says so)."""
        return store_failure(f"subject directory {self._path}", exc, Path(self._path))

    def token(self, tenant: str, subject: str) -> str:
        """The keyed pseudonym of (tenant, subject) the directory files it under."""
        return self._token(tenant, subject)

    def _token(self, tenant: str, subject: str) -> str:
        message = f"{tenant}\x00{subject}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _one(self, sql: str, params: tuple[str, ...] = ()) -> tuple[str] | None:
        """The first row of a query, a failure of the database as `StorageError`."""
        try:
            with self._lock:
                row: tuple[str] | None = self._db.execute(sql, params).fetchone()
                return row
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def home(self, tenant: str, subject: str) -> str | None:
        settled = self._settled.get((tenant, subject))
        if settled is not None:
            return settled
        token = self._token(tenant, subject)
        row = self._one("SELECT jurisdiction FROM homes WHERE token = ?", (token,))
        return row[0] if row else None

    def settle(self, tenant: str, subject: str, jurisdiction: str) -> None:
        """Remember the home of a subject its cell's catalog holds (see the class)."""
        if len(self._settled) >= SETTLED_LIMIT:
            self._settled = {}
        self._settled[(tenant, subject)] = jurisdiction

    def add(self, tenant: str, subject: str, jurisdiction: str) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO homes VALUES (?, ?)", (self._token(tenant, subject), jurisdiction)
                )
        except sqlite3.IntegrityError:
            raise Conflict(f"subject {subject} of tenant {tenant} is already registered") from None
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def remove(self, tenant: str, subject: str) -> None:
        """Undo a registration that left nothing in its cell, with the scrubs it owed:
        the id has no home again, so its approvals elsewhere cover their own cells."""
        self._settled.pop((tenant, subject), None)
        token = self._token(tenant, subject)
        self._write(
            [("DELETE FROM homes WHERE token = ?", (token,)),
             ("DELETE FROM owed_scrubs WHERE token = ?", (token,))]
        )  # fmt: skip

    def _write(self, statements: list[tuple[str, tuple[str, ...]]]) -> None:
        """The statements in one transaction, a failure as `StorageError`."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, params in statements:
                        self._db.execute(sql, params)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def owe_scrubs(self, tenant: str, subject: str, cells: Iterable[str]) -> None:
        """Record, before trying them, that the approvals of CELLS may still name the
        subject: whatever stops the try (a failure, a hang, kill -9), the record stays
        until those approvals are scrubbed. Only the token: no id leaves its home."""
        if self._owes_nothing():  # a file of schema 1 a reader left as it was
            try:
                with self._lock:
                    self._migrate()
            except sqlite3.Error as exc:
                raise self._failure(exc) from exc
        token = self._token(tenant, subject)
        insert = "INSERT OR IGNORE INTO owed_scrubs VALUES (?, ?)"
        self._write([(insert, (token, cell)) for cell in cells])

    def scrubbed(self, cell: str, tokens: Iterable[str]) -> None:
        """CELL's approvals no longer name the subjects of TOKENS."""
        if self._owes_nothing():
            return
        delete = "DELETE FROM owed_scrubs WHERE token = ? AND cell = ?"
        self._write([(delete, (token, cell)) for token in tokens])

    def owed_in(self, cell: str) -> dict[str, str | None]:
        """The tokens CELL's approvals still owe a scrub, each with its subject's home
        now (none if the registration that owed it was undone)."""
        if self._owes_nothing():
            return {}
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT o.token, h.jurisdiction FROM owed_scrubs o"
                    " LEFT JOIN homes h ON h.token = o.token WHERE o.cell = ?",
                    (cell,),
                ).fetchall()
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        return {str(token): home for token, home in rows}

    def still_owed(self, tenant: str, subject: str) -> list[str]:
        """The cells whose approvals may still name the subject, sorted."""
        if self._owes_nothing():
            return []
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT cell FROM owed_scrubs WHERE token = ? ORDER BY cell",
                    (self._token(tenant, subject),),
                ).fetchall()
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        return [str(cell) for (cell,) in rows]

    def owing_cells(self) -> list[str]:
        """Every cell some scrub is owed to (gc works them off), sorted."""
        if self._owes_nothing():
            return []
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT DISTINCT cell FROM owed_scrubs ORDER BY cell"
                ).fetchall()
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        return [str(cell) for (cell,) in rows]

    @contextmanager
    def registration(self) -> Iterator[None]:
        """Registrations take turns, across processes (a flock beside the database).

        So one that finds a home with no subject behind it knows it is not looking
        at another registration between its two writes (directory, then cell), but
        at one killed there, which stored nothing under it (`Vault.register_subject`).
        """
        path = f"{self._path}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"subject directory lock {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            release_flock(fd)

    def homes_in(self, jurisdiction: str) -> bool:
        """Whether any subject's home is in this jurisdiction."""
        return (
            self._one("SELECT 1 FROM homes WHERE jurisdiction = ? LIMIT 1", (jurisdiction,))
            is not None
        )

    def empty(self) -> bool:
        """Whether no subject was ever registered (or every registration was undone)."""
        return self._one("SELECT 1 FROM homes LIMIT 1") is None

    def close(self) -> None:
        self._db.close()
