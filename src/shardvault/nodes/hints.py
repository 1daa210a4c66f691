"""The deployment's note of nodes found hung, so one process's finding spares the others.

A node whose disk hangs is found by a process once it waits `storage.node_timeout`
for it (vault/deadline.py). Every CLI command is a process of its own, so each
paid that wait again: a script of 100 commands against a cell with one hung disk
waited 100 deadlines. The process that finds a node hung notes it here, on the
state disk beside the nodes' marker records (``<state_dir>/hung-nodes.json``); a
later process that finds a fresh note treats the node as hung from the start
(not opened, not waited for) and tests it in the background; a test or probe
that gets an answer drops the note (vault/deadline.py, node_opening.open_stores).

A note is a hint, never the truth: it can only make a node unavailable, which
every command already handles (reads go around it, placement counts it as
down). So a note that cannot be read (damaged, of a newer version) is ignored,
saying why (`notices`): the cost is a deadline, as before; and one that cannot
be written is not, for the same cost. Format (docs/formats.md):

    {"format":"shardvault-hung-nodes","nodes":{"us-n1":{"found":1796594986.4,
     "pid":4242,"tested":1796594986.4}},"version":1}

Writers read, change and replace the file (a temporary renamed over it, not
synced: a note lost costs a deadline) under an exclusive flock of
``hung-nodes.lock`` beside it; readers take no lock (the rename is atomic).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from shardvault.durability import leftover_temporaries, read_own
from shardvault.errors import ShardvaultError
from shardvault.file_locks import flocked

FILE = "hung-nodes.json"
LOCK = "hung-nodes.lock"
FORMAT = "shardvault-hung-nodes"
VERSION = 1
_MAX_BYTES = 64 << 10  # a few nodes' notes: bytes, not MiB


@dataclass(frozen=True)
class Hint:
    """A node found hung: when (epoch seconds), by which process, and when a process
    last began to test it (its finding, or a test since)."""

    found: float
    pid: int
    tested: float

    def trusted_for(self, now: float, window: float) -> float:
        """Seconds the note is still trusted (0: test the node now). A note is trusted for
        WINDOW after its last test began; one dated in the future (a clock set back) is
        not trusted at all."""
        age = now - self.tested
        return window - age if 0 <= age < window else 0.0

    def when(self) -> str:
        """When it was found hung, in UTC."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.found))


class _Unusable(Exception):
    """The file cannot be taken as notes; ``newer``: it is a later version's (kept)."""

    def __init__(self, why: str, newer: bool = False) -> None:
        super().__init__(why)
        self.newer = newer


class HungHints:
    """The notes of one deployment (``<state_dir>/hung-nodes.json``). Thread-safe."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = state_dir / FILE
        self._lock_path = state_dir / LOCK
        self._clock = clock
        self._noted: list[str] = []
        self._noted_lock = threading.Lock()

    def now(self) -> float:
        """The time notes are dated by (epoch seconds)."""
        return self._clock()

    def read(self) -> dict[str, Hint]:
        """Every node's note; none if the file cannot be used (said in `notices`)."""
        try:
            return _parse(self._raw())
        except _Unusable as exc:
            self._notice(f"{self.path}: {exc}: ignored")
            return {}

    def mark(self, node: str) -> None:
        """Note the node found hung now, by this process."""
        now = self._clock()
        self._update(lambda notes: {**notes, node: Hint(now, os.getpid(), now)})

    def claim_test(self, node: str, window: float) -> Hint | None:
        """None if this process is to test the node now (its note, if it has one, then says
        it is being tested, so others trust it for another WINDOW); else the note another
        process found or tested it by within the window, to trust."""
        now = self._clock()
        trusted: list[Hint] = []

        def claim(notes: dict[str, Hint]) -> dict[str, Hint]:
            note = notes.get(node)
            if note is None:
                return notes
            if note.trusted_for(now, window):
                trusted.append(note)
                return notes
            return {**notes, node: replace(note, tested=now)}

        self._update(claim)
        return trusted[0] if trusted else None

    def clear(self, node: str, answered: float) -> None:
        """The node answered at ANSWERED: drop its note, unless it was found hung after."""

        def drop(notes: dict[str, Hint]) -> dict[str, Hint]:
            note = notes.get(node)
            if note is None or note.found > answered:
                return notes
            return {other: kept for other, kept in notes.items() if other != node}

        self._update(drop)

    def notices(self) -> list[str]:
        """What went wrong with the file so far (each once), for the user."""
        with self._noted_lock:
            return list(self._noted)

    def _notice(self, message: str) -> None:
        with self._noted_lock:
            if message not in self._noted:
                self._noted.append(message)

    def _raw(self) -> bytes | None:
        try:
            return read_own(self.path, "hung-node notes", _MAX_BYTES)
        except FileNotFoundError:
            return None
        except ShardvaultError as exc:  # not a regular file, or too large
            raise _Unusable(str(exc).removeprefix(f"hung-node notes {self.path} ")) from exc
        except OSError as exc:
            raise _Unusable(f"cannot be read: {exc.strerror or exc}") from exc

    def _update(self, change: Callable[[dict[str, Hint]], dict[str, Hint]]) -> None:
        """Read, change and write the notes, under the writers' lock. Best effort: a file
        of a newer version is left alone, a damaged one replaced, and a state disk that
        cannot take the write costs later processes a deadline, no more (`notices`)."""
        try:
            with flocked(self._lock_path):
                try:
                    notes = _parse(self._raw())
                except _Unusable as exc:
                    if exc.newer:
                        self._notice(f"{self.path}: {exc}: not written")
                        return
                    notes = {}
                changed = change(notes)
                if changed != notes or not notes:
                    self._write(changed)
        except OSError as exc:
            self._notice(f"{self.path}: cannot be written: {exc.strerror or exc}")

    def _write(self, notes: dict[str, Hint]) -> None:
        """The notes, whole (a temporary renamed over the file); no file at all once none is
        left (a damaged one goes too). Not synced: the caller has just waited a deadline,
        and should not wait for a flush too; a note a crash loses, or cuts short (damaged,
        so ignored), costs the next process a deadline, no more."""
        for leftover in leftover_temporaries(self.path):  # a killed writer's: none in use
            leftover.unlink(missing_ok=True)
        if not notes:
            self.path.unlink(missing_ok=True)
            return
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(temp, "xb") as out:
                out.write(_encode(notes))
            os.chmod(temp, 0o644)
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise


def _encode(notes: dict[str, Hint]) -> bytes:
    document = {
        "format": FORMAT,
        "nodes": {
            node: {"found": note.found, "pid": note.pid, "tested": note.tested}
            for node, note in sorted(notes.items())
        },
        "version": VERSION,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _parse(raw: bytes | None) -> dict[str, Hint]:
    """The notes RAW holds (None: no file, no notes). Raises `_Unusable`."""
    if raw is None:
        return {}
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _Unusable("is damaged (not a hung-node notes file)")
    version = document.get("version")
    if type(version) is int and version > VERSION:
        raise _Unusable(
            f"is of version {version}; this shardvault reads version {VERSION}", newer=True
        )
    if type(version) is not int or version != VERSION:
        raise _Unusable(f"is damaged (version {version!r})")
    nodes = document.get("nodes")
    if not isinstance(nodes, dict):
        raise _Unusable("is damaged (no nodes)")
    return {str(node): _hint(note) for node, note in nodes.items()}


def _hint(note: object) -> Hint:
    if not isinstance(note, dict):
        raise _Unusable("is damaged (a note is not an object)")
    found, pid, tested = note.get("found"), note.get("pid"), note.get("tested")
    if not (_number(found) and _number(tested) and type(pid) is int):
        raise _Unusable("is damaged (a note lacks its times or process)")
    assert isinstance(found, (int, float)) and isinstance(tested, (int, float))
    return Hint(float(found), pid, float(tested))


def _number(value: object) -> bool:
    """A finite int or float, not a bool."""
    return type(value) in (int, float) and abs(float(value)) < float("inf")  # type: ignore[arg-type]
