"""Durable files: a file written whole or not at all, and what a failed write says.

A file is written to a temporary of its own beside it, fsynced, then linked or
renamed into place and its directory fsynced (`create_whole`, `replace_whole`):
a crash leaves the old content or the new, never a short file. Many small
writes made durable by one flush are `group_commit`'s; a large file flushed as
it grows is `background_flush`'s; a lock file is `file_locks`'.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import sqlite3
from pathlib import Path

from shardvault.errors import DISK_FULL, InvalidInput, ShardvaultError, StorageError, VaultClosed

# the guarded reads stay importable from here, where callers found them
from shardvault.file_reads import MAX_GIVEN_BYTES as MAX_GIVEN_BYTES
from shardvault.file_reads import MAX_OWN_BYTES as MAX_OWN_BYTES
from shardvault.file_reads import open_given as open_given
from shardvault.file_reads import open_regular as open_regular
from shardvault.file_reads import read_bounded as read_bounded
from shardvault.file_reads import read_own as read_own
from shardvault.model import named
from shardvault.path_limits import os_reason

LOW_DISK_BYTES = 1 << 20
_NO_ROOM = DISK_FULL | {errno.EIO}


def write_failure(what: str, exc: OSError) -> ShardvaultError:
    """``cannot write <what>: <reason>``. A full disk or an I/O error is a failure
    (`StorageError`, exit 1: make room and retry, which a full disk's message says);
    anything else (no such directory, permission, a read-only file system) is the
    path given (`InvalidInput`, exit 2)."""
    if exc.filename is None and exc.errno == errno.ENAMETOOLONG:  # refused before a call
        exc = OSError(exc.errno, exc.strerror, what)
    message = f"cannot write {named(what)}: {os_reason(exc)}"
    if exc.errno in DISK_FULL:
        message += "; make room and retry"
    return StorageError(message) if exc.errno in _NO_ROOM else InvalidInput(message)


def write_refused(what: str, code: int | None) -> ShardvaultError:
    """`write_failure` for what writing WHAT would meet (errno CODE, else EIO), said
    before anything is written."""
    code = code or errno.EIO
    return write_failure(what, OSError(code, os.strerror(code)))


_SQLITE_READONLY = 8  # sqlite3.SQLITE_READONLY; its extended codes share the low byte


def store_failure(what: str, exc: BaseException, path: Path) -> StorageError | VaultClosed:
    """``<what>: <why>`` of a database at ``path`` that failed: a `StorageError` (its
    disk, retry), or `VaultClosed` for one its vault closed, where a retry never helps."""
    error = VaultClosed if closed_database(exc) else StorageError
    return error(f"{what}: {failure_reason(exc, path)}")


def closed_database(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's refusal of a connection its vault has closed."""
    return isinstance(exc, sqlite3.ProgrammingError) and "closed database" in str(exc)


def failure_reason(exc: BaseException, path: Path) -> str:
    """Why a store at ``path`` failed, in words, noting when its disk is (nearly) full:
    SQLite reports a full disk under WAL as a mere "disk I/O error"; a database used
    after its vault was closed said only "Cannot operate on a closed database"."""
    if closed_database(exc):
        return "the vault that opened it was closed: open the vault again"
    reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == _SQLITE_READONLY:
        return f"{reason}: make the file and its directory writable by this user"
    for folder in (path, *path.parents):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < LOW_DISK_BYTES:
            reason += f" (its disk has {free // 1024} KiB free: make room)"
        break
    return reason


def create_whole(path: Path, content: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``content`` durably, whole or not at all; False if it existed.

    Written to a temporary file, fsynced, then linked into place: a crash never
    leaves a short file, and a file another process created meanwhile is kept
    (the caller then reads that one). Raises OSError.
    """
    temp = _synced_temporary(path, content, mode)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    except FileNotFoundError:
        if path.exists():  # another process made it, and took our temporary for a leftover
            return False
        raise
    finally:
        temp.unlink(missing_ok=True)  # that process may have removed it after our link too
    fsync_directory(path.parent)
    return True


def replace_whole(path: Path, content: bytes, mode: int = 0o600) -> None:
    """Put ``content`` at ``path`` durably, replacing what was there, whole or not at all.

    Written to a temporary file of its own, fsynced, renamed over ``path``, and
    the directory fsynced: until the rename a crash leaves the old content, and
    once this returns the new one survives a crash too (without the directory's
    fsync the rename itself could be lost). Raises OSError, leaving no temporary.
    """
    temp = _synced_temporary(path, content, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _synced_temporary(path: Path, content: bytes, mode: int) -> Path:
    """``content`` in a new temporary file of its own beside ``path``, fsynced; none is
    left behind if that fails (but a kill -9 leaves it: `leftover_temporaries`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_beside(path, secrets.token_hex(_TEMPORARY_TAG_BYTES))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


_TEMPORARY_TAG_BYTES = 6
WIDEST_TEMPORARY_TAG = "f" * (2 * _TEMPORARY_TAG_BYTES)
"""A temporary's tag at its full width: for a check that every name beside a file fits."""


def temporary_beside(path: Path, tag: str) -> Path:
    """The temporary `create_whole` and `replace_whole` write ``path``'s content to first."""
    return path.with_name(f".{path.name}.{tag}.tmp")


def leftover_temporaries(path: Path) -> list[Path]:
    """Temporaries that `create_whole` or `replace_whole` made for ``path`` and a process
    killed between making and linking (or renaming) one left behind. Only the caller
    knows when none can be in use: `create_whole` tolerates losing its temporary once
    ``path`` exists."""
    tag = f"[0-9a-f]{{{2 * _TEMPORARY_TAG_BYTES}}}"
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{tag}\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return [path.parent / name for name in names if pattern.fullmatch(name)]


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (a new or renamed file's name) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
