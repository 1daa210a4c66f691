"""Which cell holds a subject, without copying subject ids out of their cell.

The directory is global, so it stores only a keyed HMAC of (tenant, subject)
and the home jurisdiction: enough to route a request, useless for listing who
the users are. The subject id itself lives only in its home cell's catalog.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
from pathlib import Path

from shardvault.errors import Conflict, StorageError

KEY_BYTES = 32


def _load_or_create_key(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


class SubjectDirectory:
    def __init__(self, db_path: Path | str, key: bytes) -> None:
        self._key = key
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(db_path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS homes (token TEXT PRIMARY KEY, jurisdiction TEXT NOT NULL)"
        )

    @classmethod
    def open(cls, state_dir: Path) -> SubjectDirectory:
        state_dir.mkdir(parents=True, exist_ok=True)
        key = _load_or_create_key(state_dir / "directory.key")
        return cls(state_dir / "directory.sqlite", key)

    def _token(self, tenant: str, subject: str) -> str:
        message = f"{tenant}\x00{subject}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def home(self, tenant: str, subject: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT jurisdiction FROM homes WHERE token = ?", (self._token(tenant, subject),)
            ).fetchone()
        return row[0] if row else None

    def add(self, tenant: str, subject: str, jurisdiction: str) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO homes VALUES (?, ?)", (self._token(tenant, subject), jurisdiction)
                )
        except sqlite3.IntegrityError:
            raise Conflict(f"subject {subject} of tenant {tenant} is already registered") from None
        except sqlite3.Error as exc:
            raise StorageError(f"subject directory: {exc}") from exc

    def remove(self, tenant: str, subject: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM homes WHERE token = ?", (self._token(tenant, subject),))

    def close(self) -> None:
        self._db.close()
