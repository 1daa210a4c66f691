"""A cell's lock files: processes of one deployment taking turns at a cell's upkeep.

An exclusive ``flock`` on an empty file in the cell's state directory: the kernel
lets it go when its holder dies, so a killed run never leaves a cell locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from shardvault.durability import release_flock
from shardvault.errors import StorageError


@contextlib.contextmanager
def flocked(path: Path, *, wait: bool, what: str) -> Iterator[bool]:
    """Hold PATH's exclusive flock for the block; yields whether it is held (always, if
    ``wait``). WHAT names the lock in a failure's message ("cell US: maintenance lock")."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"{what}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError as exc:
            raise StorageError(f"{what}: {exc}") from exc
        yield True
    finally:
        release_flock(fd)
