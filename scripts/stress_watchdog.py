"""The stress harness's watchdog: a process whose journal stops growing is hung, and where.

A worker journals every request and a maintenance process every pass, so a
journal that has not grown for `hang_seconds` (20 by default, far beyond any one
request or pass here, counted from the process's start at the earliest) means a
process waiting on something that will not come: a deadlock, a lock never
released, a read that never returns. Without the watchdog such a run only showed
fewer requests. The harness asks the process for a stack dump of every thread
(each child registers `faulthandler` on SIGUSR1, into `logs/<name>.stacks`),
reports it as a problem with the journal's last record, and kills and restarts
it. A process silent for half that time is no longer chosen for random kills, so
a kill cannot hide a hang by restarting the process before the watchdog sees it.
"""

from __future__ import annotations

import faulthandler
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

STACKS_WAIT = 5.0  # seconds a hung process has to write its stacks before the kill


@dataclass
class Watched:
    journal: Path
    size: int
    since: float  # monotonic: when the journal last grew, or the process started


class Watchdog:
    """Tracks each child's journal size, and says which ones stopped growing."""

    def __init__(self, root: Path, hang_seconds: float) -> None:
        self.root = root
        self.hang_seconds = hang_seconds
        self.watched: dict[str, Watched] = {}
        self.dumps: list[str] = []  # each hung process's stacks, printed with the summary

    def started(self, name: str) -> None:
        journal = self._journal(name)
        self.watched[name] = Watched(journal, _size(journal), time.monotonic())

    def silent_for(self, name: str) -> float:
        watched = self.watched[name]
        size = _size(watched.journal)
        if size != watched.size:
            watched.size, watched.since = size, time.monotonic()
        return time.monotonic() - watched.since

    def quiet(self, name: str) -> bool:
        """Silent long enough that a random kill could hide a hang."""
        return self.silent_for(name) > self.hang_seconds / 2

    def hung(self) -> list[str]:
        return [name for name in self.watched if self.silent_for(name) > self.hang_seconds]

    def report(self, name: str, child: subprocess.Popen[bytes]) -> str:
        """The problem a hung child is: its silence, last record and stacks (asked for
        here, before the harness kills it)."""
        silent = self.silent_for(name)
        stacks = self.root / "logs" / f"{name}.stacks"
        before = _size(stacks)
        if child.poll() is None:
            child.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + STACKS_WAIT
            while time.monotonic() < deadline and _size(stacks) == before:
                time.sleep(0.1)
            time.sleep(0.2)  # the other threads' stacks follow the first one's
        dump = stacks.read_bytes()[before:].decode(errors="replace") if stacks.exists() else ""
        self.dumps.append(f"{name}'s threads when found hung:\n{dump or '(no dump written)'}")
        return (
            f"{name} made no progress for {silent:.0f} s (hung); its last record: "
            f"{_last_record(self.watched[name].journal)}; its stacks: {stacks}"
        )

    def _journal(self, name: str) -> Path:
        return self.root / "journals" / f"{name}.jsonl"


def dump_stacks_on_signal(path: Path) -> TextIO:
    """In a child: write every thread's stack to PATH on SIGUSR1. The file is returned to
    be kept open for the process's life: faulthandler writes to its descriptor."""
    stacks = open(path, "a")  # noqa: SIM115 - open until the process ends
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    return stacks


def _last_record(journal: Path) -> str:
    lines = journal.read_bytes().splitlines() if journal.exists() else []
    return lines[-1].decode(errors="replace") if lines else "(none)"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
