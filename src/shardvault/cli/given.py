"""Paths named on the command line, checked as given: a mistake in the command, exit 2.

Click's own readability check printed a five-line usage box, so the commands
check here instead, in one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from shardvault.durability import open_given, read_bounded
from shardvault.errors import InvalidInput
from shardvault.model import named
from shardvault.path_limits import os_reason


def path_named(name: str) -> Callable[[str], Path]:
    """The parser of a path argument or option NAME: an empty one is refused. The path
    type read it as `Path("")`, which is ".": `scan ""` (a script's unset variable)
    scanned the current directory and passed the gate."""

    def path(given: str) -> Path:
        if not given:
            raise InvalidInput(f"{name} is empty; give a path")
        return Path(given)

    return path


def read_given(path: Path) -> bytes:
    """The bytes of a file named on the command line (missing, a directory, not
    permitted: `InvalidInput`)."""
    try:
        return read_bounded(path)
    except OSError as exc:
        raise InvalidInput(f"cannot read {named(str(path))}: {os_reason(exc)}") from None


def check_readable(path: Path) -> None:
    """That a file or directory named on the command line can be read (listed). Skipping
    it instead, as a walk skips what it cannot read deep in a tree, would answer as if
    it were empty."""
    try:
        if path.is_dir():
            os.scandir(path).close()
        else:
            open_given(path).close()  # not a FIFO's open, which waits for a writer
    except OSError as exc:
        raise InvalidInput(f"cannot read {named(str(path))}: {os_reason(exc)}") from None
