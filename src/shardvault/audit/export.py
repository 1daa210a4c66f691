"""Export a cell's audit log so that an outsider can verify it with nothing else.

An export is a directory, or the same names in one uncompressed tar file::

    FORMAT          "shardvault-audit-export\\nversion 1\\n"
    entries.jsonl   every entry's canonical bytes, one per line, oldest first
    heads/<size, 20 digits>.note   the signed, cosigned checkpoints

Entries are exported up to the newest stored head exactly: an entry no signed
head covers cannot be verified, so it is not exported until the next head.
The export is written under a temporary name and renamed into place; a failed
one leaves nothing behind. A missing directory is not made (a mistyped path
would be): the destination's directory must exist.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shardvault.audit.checkpoint import Checkpoint
from shardvault.audit.log import AuditLog
from shardvault.durability import write_failure, write_refused
from shardvault.errors import InvalidInput, NotFound

EXPORT_VERSION = 1
FORMAT_TEXT = f"shardvault-audit-export\nversion {EXPORT_VERSION}\n"
ENTRIES_NAME = "entries.jsonl"
HEADS_DIR = "heads"


@dataclass(frozen=True, slots=True)
class ExportSummary:
    path: Path
    entries: int
    heads: int


def _members(log: AuditLog) -> tuple[list[tuple[str, bytes]], int]:
    """The heads to export, named, and how many entries they cover.

    Another process may have stored a head of entries this handle has not read
    yet (a forget's receipt); its entries were written before it, so catching
    up after listing the heads covers every one listed."""
    heads = log.heads()
    if not heads:
        raise NotFound(f"audit log {log.directory} has no signed head yet: sign one first")
    log.refresh()
    named = [
        (f"{HEADS_DIR}/{Checkpoint.parse(h.text).size:020d}.note", h.to_bytes()) for h in heads
    ]
    return named, Checkpoint.parse(heads[-1].text).size


def _write_entries(log: AuditLog, out: IO[bytes], count: int) -> None:
    for payload in log.iter_entry_bytes(0, count):
        out.write(payload + b"\n")


def check_destination(destination: str | os.PathLike[str]) -> Path:
    """DESTINATION, once it is known that an export could be made there: it does not
    exist, and its directory exists and may be written. Checked before any head is
    signed for it, so a mistyped path costs nothing."""
    final = Path(destination)
    if os.path.lexists(final):
        raise InvalidInput(f"export destination {final} already exists")
    parent = final.parent
    if not parent.is_dir():
        raise write_refused(str(final), errno.ENOTDIR if os.path.lexists(parent) else errno.ENOENT)
    if not os.access(parent, os.W_OK | os.X_OK):
        read_only = os.statvfs(parent).f_flag & os.ST_RDONLY
        raise write_refused(str(final), errno.EROFS if read_only else errno.EACCES)
    return final


def _temporary_prefix(final: Path) -> str:
    """The start of the temporary's name: FINAL's first 200 bytes, leaving room for the
    random part and the suffix within any name the file system takes (255 bytes)."""
    return f".{os.fsdecode(os.fsencode(final.name)[:200])}."


def export_to_directory(log: AuditLog, destination: str | os.PathLike[str]) -> ExportSummary:
    """Write an export directory at ``destination`` (which must not exist)."""
    final = check_destination(destination)
    heads, count = _members(log)
    # made here, exclusively, under a name of its own: never a user's file or folder
    # that happens to be called like it, nor another export's
    try:
        temp = Path(
            tempfile.mkdtemp(prefix=_temporary_prefix(final), suffix=".partial", dir=final.parent)
        )
    except OSError as exc:
        raise write_failure(str(final), exc) from None
    try:
        (temp / HEADS_DIR).mkdir()
        (temp / "FORMAT").write_text(FORMAT_TEXT, encoding="utf-8")
        with open(temp / ENTRIES_NAME, "wb") as out:
            _write_entries(log, out, count)
        for name, data in heads:
            (temp / name).write_bytes(data)
        os.replace(temp, final)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, OSError):  # named by the path given, not the temporary's
            raise write_failure(str(final), exc) from None
        raise
    return ExportSummary(final, count, len(heads))


def export_to_file(log: AuditLog, destination: str | os.PathLike[str]) -> ExportSummary:
    """Write the same export as one uncompressed tar file at ``destination``.

    The entries are spooled (a tar member's size comes before its data) to an
    unnamed file beside it, which nothing has to remove."""
    final = check_destination(destination)
    heads, count = _members(log)
    try:  # made exclusively (see export_to_directory)
        fd, temp_name = tempfile.mkstemp(
            prefix=_temporary_prefix(final), suffix=".partial", dir=final.parent
        )
    except OSError as exc:
        raise write_failure(str(final), exc) from None
    temp = Path(temp_name)
    try:
        with (
            os.fdopen(fd, "wb") as file,
            tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add(tar, "FORMAT", FORMAT_TEXT.encode("utf-8"))
            with tempfile.TemporaryFile(dir=final.parent) as out:
                _write_entries(log, out, count)
                info = tarfile.TarInfo(ENTRIES_NAME)
                info.size = out.tell()
                out.seek(0)
                tar.addfile(info, out)
            for name, data in heads:
                _add(tar, name, data)
        os.replace(temp, final)
    except BaseException as exc:
        with suppress(OSError):  # the original error is the one to report
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_failure(str(final), exc) from None
        raise
    return ExportSummary(final, count, len(heads))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


__all__ = [
    "ENTRIES_NAME",
    "EXPORT_VERSION",
    "FORMAT_TEXT",
    "ExportSummary",
    "check_destination",
    "export_to_directory",
    "export_to_file",
]
