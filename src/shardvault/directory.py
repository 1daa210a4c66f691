"""Which cell holds a subject, without copying subject ids out of their cell.

The directory is global, so it stores only a keyed HMAC of (tenant, subject)
and the home jurisdiction: enough to route a request, useless for listing who
the users are. The subject id itself lives only in its home cell's catalog
(and, for the homes a process settled, in that process's memory).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shardvault import sqlite_connections
from shardvault.durability import create_whole, failure_reason, read_own, release_flock
from shardvault.errors import Conflict, IntegrityError, StorageError
from shardvault.sqlite_schema import stamp_schema

KEY_BYTES = 32
SETTLED_LIMIT = 1 << 14  # homes remembered per process (about 4 MiB at most)
SCHEMA_VERSION = 1  # PRAGMA user_version of directory.sqlite (docs/formats.md)
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
        raise StorageError(f"subject directory {db_path}: {failure_reason(exc, db_path)}") from exc


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

    def __init__(self, db_path: Path | str, key: bytes) -> None:
        self._key = key
        self._path = db_path
        self._lock = threading.Lock()
        self._settled: dict[tuple[str, str], str] = {}
        try:
            self._db = sqlite_connections.connect(
                str(db_path), f"subject directory {db_path}", timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            stamp_schema(self._db, SCHEMA_VERSION, f"subject directory {db_path}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS homes "
                "(token TEXT PRIMARY KEY, jurisdiction TEXT NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    @classmethod
    def open(cls, state_dir: Path) -> SubjectDirectory:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"state directory {state_dir}: {exc.strerror}") from exc
        db_path = state_dir / "directory.sqlite"
        key = _load_or_create_key(state_dir / "directory.key", lambda: _holds_homes(db_path))
        return cls(db_path, key)

    @property
    def location(self) -> Path:
        """The directory database's file."""
        return Path(self._path)

    def _failure(self, exc: sqlite3.Error) -> StorageError:
        """A database the directory cannot use is a storage failure naming it, not a crash."""
        return StorageError(
            f"subject directory {self._path}: {failure_reason(exc, Path(self._path))}"
        )

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
        self._settled.pop((tenant, subject), None)
        try:
            with self._lock:
                self._db.execute(
                    "DELETE FROM homes WHERE token = ?", (self._token(tenant, subject),)
                )
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

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
