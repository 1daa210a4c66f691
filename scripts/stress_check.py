"""The kill -9 stress harness's checker: which states of each key are acceptable.

Each worker of `scripts/stress.py` owns its keys and works on them one request at
a time, journalling (fsynced) what it intends before it asks and what was
acknowledged after. Read in order, a worker's journal therefore says, at every
point, which states a key may be in: the last acknowledged one, plus whatever an
intent not yet acknowledged (in flight, killed, or failed) may have left. A kill
leaves an intent open for good, so its state stays acceptable until a later
acknowledged request of the key settles it. An observation (a get's bytes, or
their absence) outside that set is a problem: wrong bytes, or a lost
acknowledged put.

A peek is a get by another worker than the key's owner, made while the owner may
be writing it: it names the owner's journal's size before and after the read,
and may see any state acceptable at some point between the two (the checker
keeps the last states of each key, with the journal offset where each began).

No shardvault import here: the checker is pure, so it is tested on fabricated
journals (tests/test_stress_harness.py).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

ABSENT = None
"""A key not there (never put, removed, or its subject forgotten)."""

UNCHECKED_OLD = "older than the key's kept states"
UNCHECKED_TORN = "record torn by a kill"
UNCHECKED_UNREAD = "owner's journal not read that far"

State = str | None  # the SHA-256 (hex) of an object's bytes, or ABSENT
HISTORY = 64
"""States kept per key, for peeks: older ones are dropped (memory stays bounded), and a
peek from before the oldest kept is counted as unchecked rather than guessed."""


@dataclass
class SubjectTrack:
    """A subject's keys, each with the set of states it may be in now."""

    keys: dict[str, set[State]] = field(default_factory=dict)
    history: dict[str, deque[tuple[int, frozenset[State]]]] = field(default_factory=dict)
    status: str = "registering"  # then live, forgetting, forgotten
    owner: str = ""


@dataclass
class Checker:
    """Reads journals record by record; collects problems and counts acknowledgements."""

    subjects: dict[str, SubjectTrack] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    check_peeks: bool = True  # a worker rebuilding its own state reads no other journal
    checked_peeks: int = 0
    unchecked_peeks: dict[str, int] = field(default_factory=dict)  # by why
    torn_records: int = 0
    _open: dict[tuple[str, int], dict[str, object]] = field(default_factory=dict)
    _consumed: dict[str, int] = field(default_factory=dict)
    _peeks: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    _offset: int = 0  # where the record being fed ends in its journal
    _deleted_packs: set[tuple[str, str]] = field(default_factory=set)  # (node, pack) by chaos
    _lost_pack_skips: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)

    def subject(self, name: str, status: str = "live", owner: str = "") -> SubjectTrack:
        """The track of subject NAME, begun with STATUS if new (a setup's subject is live)."""
        if name not in self.subjects:
            self.subjects[name] = SubjectTrack(status=status, owner=owner)
        return self.subjects[name]

    def feed_bytes(self, journal: str, data: bytes, offset: int = 0) -> None:
        """The whole records of JOURNAL in DATA, which begins at OFFSET of its file."""
        for line in data.splitlines(keepends=True):
            offset += len(line)
            self._offset = offset
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # cut short by a kill, and ended by the next start
                self.torn_records += 1
                if b'"owner": ' in line or line.startswith(b'{"from": '):  # a peek's, keys sorted
                    self._unchecked(UNCHECKED_TORN)
                continue
            self.feed(journal, record)
        self._consumed[journal] = offset
        self._check_peeks()

    def feed(self, journal: str, record: dict[str, object]) -> None:
        """One record of JOURNAL (a worker's name), in the order it was written."""
        kind = str(record["t"])
        if kind == "start":  # a new incarnation: what the killed one had open stays open
            for opened in [key for key in self._open if key[0] == journal]:
                del self._open[opened]
        elif kind in ("put", "rm", "forget", "register"):
            self._intend(journal, kind, record)
        elif kind == "ack":
            self._acknowledge(journal, int(str(record["id"])))
        elif kind == "fail":
            intent = self._open.pop((journal, int(str(record["id"]))), None)
            op = str(intent["t"]) if intent else "?"
            self.failed[op] = self.failed.get(op, 0) + 1
        elif kind == "get":
            self.acked["get"] = self.acked.get("get", 0) + 1
            where = f"{journal}: get {record['subject']}/{record['key']}"
            if "error" in record:
                self.problems.append(f"{where} failed: {record['error']}")
            else:
                self.observe(str(record["subject"]), str(record["key"]), _state(record), where)
        elif kind == "peek":
            self.acked["peek"] = self.acked.get("peek", 0) + 1
            if self.check_peeks:
                self._peeks.append((journal, record))
        elif kind in ("gc", "repair"):  # a maintenance run that ended
            self.acked[kind] = self.acked.get(kind, 0) + 1
            problems = record.get("problems", [])
            assert isinstance(problems, list)
            self.notes += [f"{journal}: repair: {problem}" for problem in problems]
        elif kind == "problem":
            lost = record.get("lost_packs")
            if lost:  # a gc that wrote into a pack removed under it: the damage's, or not
                assert isinstance(lost, list)
                packs = [(str(node), str(pack)) for node, pack in lost]
                self._lost_pack_skips.append((journal, str(record["what"]), packs))
            else:
                self.problems.append(f"{journal}: {record['what']}")
        elif kind == "damage":  # the chaos process's (stress_chaos.py)
            self.acked["damage"] = self.acked.get("damage", 0) + 1
            if record["how"] == "delete" and str(record["file"]).startswith("packs/"):
                self._deleted_packs.add((str(record["node"]), str(record["file"])[6:]))
        elif kind in ("wait", "repaired"):
            pass
        else:
            raise ValueError(f"unknown journal record {record!r}")

    def settle(self) -> None:
        """Once every journal is read: a gc that found the pack it wrote into removed
        under it did right to skip the node if the chaos process deleted that pack (a
        disk losing a file); any other pack removed is a problem. Settled at the end:
        the deletion's record may be read after the skip it caused."""
        for journal, what, packs in self._lost_pack_skips:
            if all(pack in self._deleted_packs for pack in packs):
                self.notes.append(f"{journal}: a pack the damage deleted: {what}")
            else:
                self.problems.append(f"{journal}: {what}")
        self._lost_pack_skips.clear()

    def observe(self, subject: str, key: str, seen: State, where: str) -> None:
        """Check one observation of a key against the states acceptable now."""
        track = self.subjects.get(subject)
        never: set[State] = {ABSENT}
        allowed = track.keys.get(key, never) if track else never
        if seen not in allowed:
            self._flag(where, seen, allowed)

    def _flag(self, where: str, seen: State, allowed: set[State]) -> None:
        wanted = ", ".join(sorted(_shown(state) for state in allowed))
        if seen is ABSENT:
            self.problems.append(f"{where}: lost acknowledged put: absent, acceptable {wanted}")
        else:
            self.problems.append(f"{where}: wrong bytes: read {_shown(seen)}, acceptable {wanted}")

    def _check_peeks(self) -> None:
        """Check each peek whose window the owner's journal has been read past."""
        waiting = []
        for journal, peek in self._peeks:
            owner, until = str(peek["owner"]), int(str(peek["to"]))
            if self._consumed.get(owner, 0) < until:
                waiting.append((journal, peek))
                continue
            where = f"{journal}: peek {peek['subject']}/{peek['key']} of {owner}"
            if "error" in peek:
                self.problems.append(f"{where} failed: {peek['error']}")
                continue
            allowed = self._allowed_between(peek, int(str(peek["from"])), until)
            if allowed is None:
                self._unchecked(UNCHECKED_OLD)
                continue
            self.checked_peeks += 1
            if _state(peek) not in allowed:
                self._flag(where, _state(peek), allowed)
        self._peeks = waiting

    def _unchecked(self, why: str) -> None:
        self.unchecked_peeks[why] = self.unchecked_peeks.get(why, 0) + 1

    def peeks_line(self) -> str:
        """How many peeks were checked, and how many could not be and why: a run where most
        go unchecked has tested reads under writes far less than its count of peeks says."""
        unchecked = dict(self.unchecked_peeks)
        if self._peeks:  # the owner's journal never read up to the peek's end
            unchecked[UNCHECKED_UNREAD] = len(self._peeks)
        total = sum(unchecked.values())
        line = f"peeks checked: {self.checked_peeks}, unchecked: {total}"
        if total:
            line += " (" + ", ".join(f"{why} {n}" for why, n in sorted(unchecked.items())) + ")"
        return line

    def _allowed_between(self, peek: dict[str, object], start: int, end: int) -> set[State] | None:
        """Every state the key was acceptable in between offsets START and END of its
        owner's journal; None if its history no longer reaches back to START."""
        track = self.subjects.get(str(peek["subject"]))
        history = track.history.get(str(peek["key"]), deque()) if track else deque()
        before = [states for ended, states in history if ended <= start]
        if before:
            allowed = set(before[-1])
        elif len(history) < HISTORY:
            allowed = {ABSENT}  # the key was not touched before START
        else:
            return None
        for ended, states in history:
            if start < ended <= end:
                allowed |= states
        return allowed

    def _noted(self, track: SubjectTrack, key: str) -> None:
        """Keep KEY's states as they are from the record being fed on, for peeks."""
        history = track.history.setdefault(key, deque(maxlen=HISTORY))
        history.append((self._offset, frozenset(track.keys[key])))

    def every_key(self) -> list[tuple[str, str]]:
        """Every (subject, key) ever intended, for the final read of everything."""
        return [(name, key) for name, track in self.subjects.items() for key in track.keys]

    def _intend(self, journal: str, kind: str, record: dict[str, object]) -> None:
        self._open[(journal, int(str(record["id"])))] = record
        name = str(record["subject"])
        if kind == "register":
            self.subject(name, "registering", journal)
            return
        track = self.subject(name)
        if kind == "forget":
            track.status = "forgetting"
            for key, states in track.keys.items():
                states.add(ABSENT)
                self._noted(track, key)
            return
        key = str(record["key"])
        track.keys.setdefault(key, {ABSENT}).add(_state(record) if kind == "put" else ABSENT)
        self._noted(track, key)

    def _acknowledge(self, journal: str, ident: int) -> None:
        intent = self._open.pop((journal, ident), None)
        if intent is None:
            raise ValueError(f"{journal}: acknowledgement of {ident}, never intended")
        kind = str(intent["t"])
        self.acked[kind] = self.acked.get(kind, 0) + 1
        track = self.subjects[str(intent["subject"])]
        if kind == "register":
            track.status = "live"
        elif kind == "forget":
            track.status = "forgotten"
            for key in track.keys:
                track.keys[key] = {ABSENT}
                self._noted(track, key)
        else:
            track.keys[str(intent["key"])] = {_state(intent) if kind == "put" else ABSENT}
            self._noted(track, str(intent["key"]))


def _state(record: dict[str, object]) -> State:
    sha = record.get("sha")
    return None if sha is None else str(sha)


def _shown(state: State) -> str:
    return "absent" if state is ABSENT else state[:12]
