"""Export a cell's audit log so that an outsider can verify it with nothing else.

An export is a directory, or the same names in one uncompressed tar file::

    FORMAT          "shardvault-audit-export\\nversion 1\\n"
    entries.jsonl   every entry's canonical bytes, one per line, oldest first
    heads/<size, 20 digits>.note   the signed, cosigned checkpoints

Entries are exported up to the newest stored head exactly: an entry no signed
head covers cannot be verified, so it is not exported until the next head.
The export is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from shardvault.audit.checkpoint import Checkpoint
from shardvault.audit.log import AuditLog
from shardvault.errors import InvalidInput, NotFound, StorageError

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
    heads = log.heads()
    if not heads:
        raise NotFound(f"audit log {log.directory} has no signed head yet: sign one first")
    named = [
        (f"{HEADS_DIR}/{Checkpoint.parse(h.text).size:020d}.note", h.to_bytes()) for h in heads
    ]
    return named, Checkpoint.parse(heads[-1].text).size


def _write_entries(log: AuditLog, out: io.BufferedIOBase, count: int) -> None:
    for payload in log.iter_entry_bytes(0, count):
        out.write(payload + b"\n")


def export_to_directory(log: AuditLog, destination: str | os.PathLike[str]) -> ExportSummary:
    """Write an export directory at ``destination`` (which must not exist)."""
    final = Path(destination)
    if final.exists():
        raise InvalidInput(f"export destination {final} already exists")
    temp = final.with_name(f".{final.name}.partial")
    heads, count = _members(log)
    try:
        shutil.rmtree(temp, ignore_errors=True)
        (temp / HEADS_DIR).mkdir(parents=True)
        (temp / "FORMAT").write_text(FORMAT_TEXT, encoding="utf-8")
        with open(temp / ENTRIES_NAME, "wb") as out:
            _write_entries(log, out, count)
        for name, data in heads:
            (temp / name).write_bytes(data)
        os.replace(temp, final)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise StorageError(f"audit export to {final} failed: {exc}") from exc
    return ExportSummary(final, count, len(heads))


def export_to_file(log: AuditLog, destination: str | os.PathLike[str]) -> ExportSummary:
    """Write the same export as one uncompressed tar file at ``destination``."""
    final = Path(destination)
    if final.exists():
        raise InvalidInput(f"export destination {final} already exists")
    temp = final.with_name(f".{final.name}.partial")
    heads, count = _members(log)
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "FORMAT", FORMAT_TEXT.encode("utf-8"))
            spool = temp.with_name(temp.name + ".entries")
            with open(spool, "w+b") as out:
                _write_entries(log, out, count)
                info = tarfile.TarInfo(ENTRIES_NAME)
                info.size = out.tell()
                out.seek(0)
                tar.addfile(info, out)
            spool.unlink()
            for name, data in heads:
                _add(tar, name, data)
        os.replace(temp, final)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise StorageError(f"audit export to {final} failed: {exc}") from exc
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
    "export_to_directory",
    "export_to_file",
]
