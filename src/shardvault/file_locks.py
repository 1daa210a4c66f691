"""Lock files: processes of one deployment taking turns, at a cell's upkeep, a
keyring's change, the partner's heads and seen positions, the node hints.

An exclusive ``flock`` on an empty file: the kernel lets it go when its holder
dies, so a killed run never leaves it locked; `release_flock` unlocks it before
closing it, so a child forked under it does not keep it held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from shardvault.errors import StorageError


@contextlib.contextmanager
def flocked(
    path: Path, *, wait: bool = True, what: str | None = None, make_parent: bool = False
) -> Iterator[bool]:
    """Hold PATH's exclusive flock for the block; yields whether it is held (always, if
    ``wait``). WHAT names the lock in a `StorageError` should opening or taking it fail
    ("cell US: maintenance lock"); without it the `OSError` goes as it is."""
    with _named(what):
        if make_parent:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        with _named(what):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                held = False
        yield held
    finally:
        release_flock(fd)


@contextlib.contextmanager
def _named(what: str | None) -> Iterator[None]:
    """An `OSError` in the block as a `StorageError` naming WHAT, if given."""
    try:
        yield
    except OSError as exc:
        if what is None:
            raise
        raise StorageError(f"{what}: {exc}") from exc


def release_flock(fd: int) -> None:
    """Unlock FD's flock, then close it. Closing alone is not enough: a child forked
    while the lock was held keeps a copy of FD, and the flock, which belongs to the
    open file, would stay held until that child exits."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
