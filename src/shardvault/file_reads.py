"""Reading a file without being stalled or flooded by what is there.

A file a user names may be a FIFO (whose open waits for ever for a writer), a
device (a terminal waits for typing, /dev/zero never ends) or a disk image named
by mistake; a file of the deployment's own (a key, a marker, a stored head) may
have been replaced by one. Each is checked before it is opened, opened without
blocking, checked again, and read up to a bound: refused in one line rather than
hung on or read whole.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from shardvault.errors import IntegrityError, InvalidInput
from shardvault.model import named

MAX_GIVEN_BYTES = 64 << 20  # a policy, decision table, baseline, receipt or head: KiB, not GiB


def read_bounded(path: str | os.PathLike[str], limit: int = MAX_GIVEN_BYTES) -> bytes:
    """The bytes of a file a user named, refused past LIMIT (`InvalidInput`) rather than
    read whole: /dev/zero, or a disk image named by mistake, grew the process until it
    died. A pipe (`<(...)`) is read as a file is; see `open_given`. Raises OSError."""
    with open_given(path) as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput(
            f"{named(os.fsdecode(path))} is larger than {limit >> 20} MiB: is it the right file?"
        )
    return data


def open_given(path: str | os.PathLike[str]) -> BinaryIO:
    """Open, to read, a file a user named: a regular file, or a pipe a shell opened for
    this command (`<(cmd)`, `/dev/stdin` of a pipe), which ends when its writer does.

    A named FIFO is refused (`InvalidInput`) without being opened: opening one blocked,
    silently and for ever if nothing wrote to it. So is a device (a terminal waits for
    typing, /dev/zero never ends) or a socket. A directory is `IsADirectoryError`, as
    opening it would say. The open does not block should the path become a FIFO after
    the check. Raises OSError."""
    opened = _open_checked(path, lambda info: _not_a_file(info, path))
    if isinstance(opened, str):
        raise InvalidInput(f"cannot read {named(os.fsdecode(path))}: {opened}")
    return opened


MAX_OWN_BYTES = 1 << 20  # a key, a node marker, a journal, a signed head: bytes, not MiB


def read_own(path: Path, what: str, limit: int = MAX_OWN_BYTES) -> bytes:
    """The bytes of a small file of the deployment's own (a key, a marker, a stored head),
    WHAT it is naming it in an error.

    A regular file only: anything else there (a FIFO, whose open waited for ever for a
    writer; a device; a directory) is damage to the deployment, `IntegrityError`, and
    is never opened blocking; so is a file past LIMIT. Raises OSError as reading would
    (FileNotFoundError when there is none)."""
    opened = open_regular(path)
    if isinstance(opened, str):
        raise IntegrityError(
            f"{what} {named(os.fsdecode(path))} is {opened}, not a regular file: "
            "the deployment is damaged; put the file back (from a backup)"
        )
    with opened:
        data = opened.read(limit + 1)
    if len(data) > limit:
        raise IntegrityError(
            f"{what} {named(os.fsdecode(path))} is damaged (larger than {limit} bytes): "
            "restore it from a backup"
        )
    return data


def open_regular(path: str | os.PathLike[str]) -> BinaryIO | str:
    """PATH opened to read if it is a regular file, else what it is ("a named FIFO"),
    never opened blocking. Raises OSError."""
    return _open_checked(path, _not_regular)


def _open_checked(
    path: str | os.PathLike[str], refusal_of: Callable[[os.stat_result], str | None]
) -> BinaryIO | str:
    """PATH opened to read, or why not (REFUSAL_OF what is there, asked before the open
    and again of what was opened). The open does not block, should the path become a
    FIFO after the check. Raises OSError."""
    refusal = refusal_of(os.stat(path))
    if refusal is None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            refusal = refusal_of(os.fstat(fd))
            if refusal is None:
                os.set_blocking(fd, True)
                return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    return refusal


def _not_regular(info: os.stat_result) -> str | None:
    """What INFO is, unless a regular file (None)."""
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "of another kind"


def _not_a_file(info: os.stat_result, path: str | os.PathLike[str]) -> str | None:
    """Why INFO is not to be read as a file given (None: it may be)."""
    if stat.S_ISREG(info.st_mode) or _anonymous_pipe(info):
        return None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    if stat.S_ISFIFO(info.st_mode):
        shown = named(os.fsdecode(path))
        return f"a named FIFO, which waits for a writer: give a file, or a pipe (<(cat {shown}))"
    return "not a regular file"


def _anonymous_pipe(info: os.stat_result) -> bool:
    """Whether INFO is a pipe with no name (`<(cmd)`), not a FIFO on a file system:
    a pipe never blocks its open, and its reads end when its writer does."""
    return stat.S_ISFIFO(info.st_mode) and info.st_dev == _pipe_device()


@functools.cache
def _pipe_device() -> int:
    """The device number every anonymous pipe has (pipefs, on Linux)."""
    read_end, write_end = os.pipe()
    try:
        return os.fstat(read_end).st_dev
    finally:
        os.close(read_end)
        os.close(write_end)


__all__ = [
    "MAX_GIVEN_BYTES",
    "MAX_OWN_BYTES",
    "open_given",
    "open_regular",
    "read_bounded",
    "read_own",
]
