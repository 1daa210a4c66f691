"""How long a path a file system opens, and what to say of one too long.

Linux's limits: a name (one component) of NAME_MAX bytes, a whole path of PATH_MAX
less its NUL. "File name too long" alone names neither which part was too long nor
what to do; every message about such a path adds both, from here.
"""

from __future__ import annotations

import errno
import os

from shardvault.shown_text import shown

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095


def too_long(path: str | os.PathLike[str]) -> str | None:
    """What makes PATH too long to open, said so a user can shorten it; None if nothing."""
    text = os.fspath(path)
    longest = max(text.split("/"), key=lambda name: len(name.encode(errors="surrogateescape")))
    size = len(longest.encode(errors="surrogateescape"))
    if size > MAX_NAME_BYTES:
        return (
            f"a name in it is {size} bytes ({shown(longest, 40)}), more than the "
            f"{MAX_NAME_BYTES} a file system allows: give a shorter path"
        )
    size = len(text.encode(errors="surrogateescape"))
    if size > MAX_PATH_BYTES:
        return (
            f"it is {size} bytes, more than the {MAX_PATH_BYTES} a path may be: give a shorter path"
        )
    return None


def why_too_long(exc: OSError) -> str | None:
    """For an `OSError` of a path too long to open, what in it was and what to do (None
    for any other error)."""
    if exc.errno != errno.ENAMETOOLONG:
        return None
    name = exc.filename
    reason = too_long(name) if isinstance(name, str) else None
    return reason or "give a shorter path"


def os_reason(exc: OSError) -> str:
    """Why a path could not be used, for a one-line error: the system's words, or for a
    path too long what in it to shorten."""
    said = exc.strerror or str(exc)
    if exc.errno != errno.ENAMETOOLONG:
        return said
    reason = too_long(exc.filename) if isinstance(exc.filename, str) else None
    return reason or f"{said}: give a shorter path"


__all__ = ["MAX_NAME_BYTES", "MAX_PATH_BYTES", "os_reason", "too_long", "why_too_long"]
