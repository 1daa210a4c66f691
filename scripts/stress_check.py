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

No shardvault import here: the checker is pure, so it is tested on fabricated
journals (tests/test_stress_harness.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

ABSENT = None
"""A key not there (never put, removed, or its subject forgotten)."""

State = str | None  # the SHA-256 (hex) of an object's bytes, or ABSENT


@dataclass
class SubjectTrack:
    """A subject's keys, each with the set of states it may be in now."""

    keys: dict[str, set[State]] = field(default_factory=dict)
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
    _open: dict[tuple[str, int], dict[str, object]] = field(default_factory=dict)

    def subject(self, name: str, status: str = "live", owner: str = "") -> SubjectTrack:
        """The track of subject NAME, begun with STATUS if new (a setup's subject is live)."""
        if name not in self.subjects:
            self.subjects[name] = SubjectTrack(status=status, owner=owner)
        return self.subjects[name]

    def feed_lines(self, journal: str, lines: Iterable[str]) -> None:
        for line in lines:
            if line.strip():
                self.feed(journal, json.loads(line))

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
        elif kind in ("gc", "repair"):  # a maintenance run that ended
            self.acked[kind] = self.acked.get(kind, 0) + 1
            problems = record.get("problems", [])
            assert isinstance(problems, list)
            self.notes += [f"{journal}: repair: {problem}" for problem in problems]
        elif kind == "problem":
            self.problems.append(f"{journal}: {record['what']}")
        else:
            raise ValueError(f"unknown journal record {record!r}")

    def observe(self, subject: str, key: str, seen: State, where: str) -> None:
        """Check one observation of a key against the states acceptable now."""
        track = self.subjects.get(subject)
        allowed = track.keys.get(key, {ABSENT}) if track else {ABSENT}
        if seen in allowed:
            return
        wanted = ", ".join(sorted(_shown(state) for state in allowed))
        if seen is ABSENT:
            self.problems.append(f"{where}: lost acknowledged put: absent, acceptable {wanted}")
        else:
            self.problems.append(f"{where}: wrong bytes: read {_shown(seen)}, acceptable {wanted}")

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
            for states in track.keys.values():
                states.add(ABSENT)
            return
        key = str(record["key"])
        track.keys.setdefault(key, {ABSENT}).add(_state(record) if kind == "put" else ABSENT)

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
        else:
            track.keys[str(intent["key"])] = {_state(intent) if kind == "put" else ABSENT}


def _state(record: dict[str, object]) -> State:
    sha = record.get("sha")
    return None if sha is None else str(sha)


def _shown(state: State) -> str:
    return "absent" if state is ABSENT else state[:12]
