"""Verify an audit export with nothing but the export, a signed head and public keys.

What is checked, and why it catches every change:

1. every head in the export carries a valid signature by the cell's key (and
   the partner's cosignature when its key is given), all for one origin: the
   key's name (C2SP's key name is the origin), unless another is asked for;
2. every entry is a canonical v1 entry (so no byte can change unnoticed);
3. the Merkle root over the first ``size`` entries equals the root of every
   head of that size. An edited, deleted, inserted or reordered entry changes
   the root of every head at or after it;
4. the export ends exactly at its newest head, and the trusted head (from the
   partner) is covered by the export and matches it: cutting entries off the
   end is caught;
5. no two heads have the same size and different roots (a fork). Successive
   heads are consistent because each root is recomputed from a prefix of the
   same entry sequence, which is what a consistency proof establishes.

Any failure raises `IntegrityError` naming the first problem found.
"""

from __future__ import annotations

import itertools
import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shardvault.audit import merkle
from shardvault.audit.checkpoint import VerifiedHead, check_key_kinds, open_checkpoint
from shardvault.audit.entry import MAX_ENTRY_BYTES, AuditEntry
from shardvault.audit.export import ENTRIES_NAME, EXPORT_VERSION, FORMAT_TEXT, HEADS_DIR
from shardvault.audit.note import NoteVerifier
from shardvault.durability import open_regular
from shardvault.errors import IntegrityError, InvalidInput
from shardvault.model import named, shown

_HEAD_NAME = re.compile(rf"{HEADS_DIR}/([0-9]{{20}})\.note")  # \d takes any script's digits
_KNOWN = {"FORMAT", ENTRIES_NAME}
MAX_HEAD_BYTES = 1 << 20
"""A signed head is an origin, a size, a root and a few signature lines: well under a
KiB. Nothing larger is read whole, so a hostile export (a sparse member of gigabytes
of zeros, in a tar of kilobytes) costs the verifier no memory."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What was proven: this many entries match these heads of this log."""

    origin: str
    entries: int
    root_hash: bytes
    heads: tuple[VerifiedHead, ...]


def _key(value: str | NoteVerifier) -> NoteVerifier:
    return value if isinstance(value, NoteVerifier) else NoteVerifier.from_vkey(value)


class _Source:
    """Reads the named members of an export directory or tar file, nothing else."""

    def __init__(self, path: Path, stack: ExitStack) -> None:
        self._dir: Path | None = None
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        folders: set[str] = set()
        if path.is_dir():
            self._dir = path
            names, folders = _listed(path)
        else:
            self._tar, every = _open_tar(path, stack)
            members = [m for m in every if m.isfile()]
            # accept "./FORMAT" as written by `tar -C export .`
            self._members = {m.name.removeprefix("./"): m for m in members}
            names = set(self._members)
            if len(names) != len(members):
                raise IntegrityError("export contains the same file twice")
        unknown = {n for n in names - _KNOWN if not _HEAD_NAME.fullmatch(n)} | folders
        if unknown:
            listed = shown(sorted(unknown)[:5], 2000)  # a name's byte not UTF-8 as \xNN
            raise IntegrityError(f"export contains unexpected files: {listed}")
        self.names = names
        self._stack = stack

    def read(self, name: str, limit: int, what: str) -> bytes:
        """The member NAME whole, refused (`IntegrityError`) past LIMIT bytes."""
        data = self.open(name).read(limit + 1)
        if len(data) > limit:
            raise IntegrityError(f"{name} is larger than {what} may be ({limit} bytes)")
        return data

    def open(self, name: str) -> IO[bytes]:
        if name not in self.names:
            raise IntegrityError(f"export has no {name}")
        if self._dir is not None:
            # never a blocking open: a FIFO swapped in since the listing would wait
            opened = open_regular(self._dir / name)
            if isinstance(opened, str):
                raise IntegrityError(f"export member {name} is {opened}, not a regular file")
            return self._stack.enter_context(opened)
        assert self._tar is not None
        member = self._tar.extractfile(self._members[name])
        if member is None:
            raise IntegrityError(f"export member {name} is not a file")
        return member


def _listed(path: Path) -> tuple[set[str], set[str]]:
    """The files of an export directory and of its ``heads/``, and the folders there
    (each one unexpected). Nothing deeper is walked: folders nested thousands deep
    made a recursive walk fail."""
    files: set[str] = set()
    folders: set[str] = set()
    _list_into(path, "", files, folders)
    if HEADS_DIR in folders:
        folders.remove(HEADS_DIR)
        _list_into(path / HEADS_DIR, f"{HEADS_DIR}/", files, folders)
    return files, folders


def _list_into(folder: Path, prefix: str, files: set[str], folders: set[str]) -> None:
    """Add FOLDER's files and folders, named PREFIX + their names (nothing else: a pipe
    is never opened, where reading it would wait for a writer)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file():
                files.add(prefix + entry.name)
            elif entry.is_dir():
                folders.add(prefix + entry.name)


def _open_tar(path: Path, stack: ExitStack) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    """The tar file at PATH and its members, read up to its end-of-archive block:
    `tarfile` takes a file that ends, or a header that is damaged, after a member
    for the end of the archive, so a cut export would be read as a shorter one."""
    try:
        opened = open_regular(path)  # never blocking: a FIFO would wait for a writer
        if isinstance(opened, str):
            raise InvalidInput(
                f"{named(str(path))} is {opened}, neither an export directory nor a tar file"
            )
        file = stack.enter_context(opened)
        tar = stack.enter_context(tarfile.open(fileobj=file, mode="r:"))  # noqa: SIM115
    except (OSError, tarfile.TarError) as exc:
        raise IntegrityError(f"{path} is not an audit export: {exc}") from None
    try:
        members = tar.getmembers()
        assert tar.fileobj is not None
        tar.fileobj.seek(tar.offset)  # where the member headers stopped
        if tar.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            raise tarfile.ReadError("no end-of-archive block after its last member")
    except (OSError, tarfile.TarError) as exc:
        raise IntegrityError(
            f"{path} is not a whole audit export (truncated or damaged tar): {exc}"
        ) from None
    return tar, members


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The lines of ``entries.jsonl``, each read no further than an entry can run."""
    for number in itertools.count(1):
        line = stream.readline(MAX_ENTRY_BYTES + 1)  # the longest entry and its newline
        if not line:
            return
        if not line.endswith(b"\n"):
            if len(line) > MAX_ENTRY_BYTES:
                raise IntegrityError(
                    f"{ENTRIES_NAME} line {number} is longer than an audit entry may be "
                    f"({MAX_ENTRY_BYTES} bytes)"
                )
            raise IntegrityError(f"{ENTRIES_NAME} does not end with a newline")
        yield line[:-1]


def verify_export(
    path: str | os.PathLike[str],
    log_key: str | NoteVerifier,
    *,
    trusted_head: bytes | None = None,
    cosigner_key: str | NoteVerifier | None = None,
    origin: str | None = None,
) -> VerifyReport:
    """Check an export (directory or tar file) end to end; see the module docstring.

    ``log_key`` and ``cosigner_key`` are vkey strings (``name+keyid+base64``).
    ``trusted_head`` is a signed head obtained independently (from the partner).
    Raises `IntegrityError` if anything does not verify, `InvalidInput` for a
    malformed key argument or one of the wrong kind (a cosigner's as the log's).
    """
    log_verifier = _key(log_key)
    cosigner = _key(cosigner_key) if cosigner_key is not None else None
    check_key_kinds(log_verifier, cosigner)  # before `_open` reads its InvalidInput as a bad head
    with ExitStack() as stack:
        source = _Source(Path(path), stack)
        expected = FORMAT_TEXT.encode("utf-8")
        found = source.open("FORMAT").read(len(expected) + 9)  # room for a later version
        if found != expected:
            raise _format_refused(found)
        # the key vouches for its own log only: a log of another origin signed with a
        # copy of it (and cosigned) is another history, not this log's
        log_origin = log_verifier.name if origin is None else origin
        heads = _open_heads(source, log_verifier, cosigner, log_origin)
        trusted = None
        if trusted_head is not None:
            if len(trusted_head) > MAX_HEAD_BYTES:
                raise IntegrityError(
                    f"trusted head is larger than a signed head may be ({MAX_HEAD_BYTES} bytes)"
                )
            trusted = _open(trusted_head, "trusted head", log_verifier, cosigner)
            if trusted.checkpoint.origin != log_origin:
                raise IntegrityError("trusted head is for another log than the export")
        by_size: dict[int, bytes] = {}
        for head in [*heads, *([trusted] if trusted else [])]:
            cp = head.checkpoint
            if by_size.setdefault(cp.size, cp.root_hash) != cp.root_hash:
                raise IntegrityError(f"forked log: two different roots for size {cp.size}")
        if not heads:
            raise IntegrityError("export has no signed head")
        last = heads[-1].checkpoint.size
        frontier = merkle.Frontier()
        _check_root(frontier, by_size)
        for line in _lines(source.open(ENTRIES_NAME)):
            if frontier.size == last:
                raise IntegrityError(f"export has entries after its newest head (size {last})")
            AuditEntry.from_bytes(line)
            frontier.append(merkle.leaf_hash(line))
            _check_root(frontier, by_size)
        if frontier.size != last:
            raise IntegrityError(
                f"export has {frontier.size} entries but its newest head covers {last}"
            )
        if trusted is not None and trusted.checkpoint.size > last:
            raise IntegrityError(
                f"export stops at {last} entries; the trusted head covers "
                f"{trusted.checkpoint.size}: entries are missing"
            )
        return VerifyReport(heads[0].checkpoint.origin, last, frontier.root(), tuple(heads))


_FORMAT_VERSION = re.compile(rb"shardvault-audit-export\nversion ([1-9][0-9]{0,8})\n")


def _format_refused(found: bytes) -> IntegrityError:
    """Why an export whose FORMAT is FOUND is not read, saying to upgrade if it is of a
    later version. Still `IntegrityError`, as every failure to verify is: the export is
    not verified, whoever wrote it."""
    match = _FORMAT_VERSION.fullmatch(found)
    if match is not None and int(match[1]) > EXPORT_VERSION:
        return IntegrityError(
            f"export FORMAT is version {int(match[1])}; this shardvault reads version "
            f"{EXPORT_VERSION}: upgrade shardvault to verify it"
        )
    return IntegrityError("export FORMAT is missing or of a version this reader does not know")


def _check_root(frontier: merkle.Frontier, by_size: dict[int, bytes]) -> None:
    expected = by_size.get(frontier.size)
    if expected is not None and frontier.root() != expected:
        raise IntegrityError(f"entries do not match the signed head for size {frontier.size}")


def _open(data: bytes, what: str, key: NoteVerifier, cosigner: NoteVerifier | None) -> VerifiedHead:
    try:
        return open_checkpoint(data, key, cosigner_key=cosigner)
    except InvalidInput as exc:
        raise IntegrityError(f"{what} is malformed: {exc}") from None
    except IntegrityError as exc:
        raise IntegrityError(f"{what}: {exc}") from None


def _open_heads(
    source: _Source, key: NoteVerifier, cosigner: NoteVerifier | None, origin: str
) -> list[VerifiedHead]:
    heads = []
    for name in sorted(n for n in source.names if _HEAD_NAME.fullmatch(n)):
        data = source.read(name, MAX_HEAD_BYTES, "a signed head")
        head = _open(data, name, key, cosigner)
        match = _HEAD_NAME.fullmatch(name)
        assert match is not None
        if int(match.group(1)) != head.checkpoint.size:
            raise IntegrityError(f"{name} holds a head of size {head.checkpoint.size}")
        if head.checkpoint.origin != origin:
            raise IntegrityError(f"{name} is for log {head.checkpoint.origin!r}, not {origin!r}")
        heads.append(head)
    return sorted(heads, key=lambda head: head.checkpoint.size)  # the newest is the largest


__all__ = ["VerifyReport", "verify_export"]
