"""The processes of the kill -9 stress harness (`scripts/stress.py`): workers and maintenance.

A worker owns its keys (`w<N>/k<j>` of every shared subject, and every key of its
own dedicated subjects), so the requests on a key come one at a time and its
journal orders them. Each request is journalled, fsynced, before it is made
(the intent) and after it returned (the acknowledgement): a kill between the
two leaves the intent open, which the checker reads as "may or may not have
happened". Maintenance runs gc with no grace and repair, as an operator's cron
job would, in a loop, through the library.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

from stress_check import Checker

from shardvault.config import load
from shardvault.errors import (
    ApprovalRequired,
    Conflict,
    NotFound,
    StorageError,
    SubjectForgotten,
)
from shardvault.governance.approval_signatures import load_signing_key
from shardvault.model import ObjectRef, RequestContext, local_context, new_request_id
from shardvault.policy import Principal, PrincipalKind
from shardvault.vault import Vault
from shardvault.vault.gc import GcReport

TENANT = "intl"
SHARED_SUBJECTS = {"US": "user-us", "SG": "user-sg", "EU": "user-eu"}
KEYS_PER_SUBJECT = 8
DEDICATED_KEYS = 3
APPROVERS = {"dpo": PrincipalKind.EMPLOYEE, "partner-officer": PrincipalKind.PARTNER_AUDITOR}
SEGMENT_SIZE = 8192
SIZES = (64, 1000, 4000, SEGMENT_SIZE * 3 + 17, SEGMENT_SIZE * 6, SEGMENT_SIZE * 40 + 5)
"""Object sizes: small ones, multi-segment ones (3 and 6 segments), all of them packed, and
one of 40 segments whose shards (80 KiB) pass the demo's `pack_limit` (64 KiB): each a file."""

PLANTED_HANG_AT = 3  # requests a worker planted with a hang makes first

EXPECTED_PUT_FAILURES = (Conflict, StorageError)
"""What a put may meet beside a sweep of no grace (docs/cli.md, gc): never acknowledged."""


class Journal:
    """An append-only file of JSON records, each fsynced before `write` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _end_torn_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, **record: object) -> None:
        os.write(self._fd, json.dumps(record, sort_keys=True).encode() + b"\n")
        os.fsync(self._fd)


def _end_torn_tail(path: Path) -> None:
    """End a record a kill cut short with a newline, so the next one starts a line of its own
    (the checker skips the torn one). Not truncated: peeks name offsets, which only grow."""
    if path.exists() and not path.read_bytes().endswith(b"\n") and path.stat().st_size:
        with open(path, "ab") as journal:
            journal.write(b"\n")


def content(seed: int, worker: int, ident: int, size: int) -> bytes:
    """The bytes of a put, from the seed alone: the journal keeps only their hash."""
    return random.Random(f"{seed}/{worker}/{ident}").randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def set_up(config: Path) -> None:
    """Register the approvers a forget needs and the shared subjects, one per cell."""
    with Vault.open(load(config)) as vault:
        for ident, kind in APPROVERS.items():
            vault.governance.registry.add(Principal(ident, TENANT, kind, "US"), token_ttl=None)
        for jurisdiction, subject in SHARED_SUBJECTS.items():
            vault.register_subject(TENANT, subject, jurisdiction)


def forget_approved(vault: Vault, subject: str, approvers: Path) -> None:
    """Forget SUBJECT, its approval signed by the demo's two approvers."""
    ctx = local_context("forget-subject")
    try:
        vault.forget(TENANT, subject, ctx)
        return
    except ApprovalRequired as pending:
        assert pending.approval_id is not None
        approval = pending.approval_id
    for ident in APPROVERS:
        signer = RequestContext(ident, "approval", new_request_id())
        key = load_signing_key(approvers / f"{ident}.skey")
        vault.governance.sign_approval(approval, signer, "approve", key)
    vault.forget(TENANT, subject, replace(ctx, request_id=new_request_id(), approval_id=approval))


class Worker:
    """One worker process: a seeded random mix of put, overwrite, get, rm and forget."""

    def __init__(
        self, config: Path, journal: Path, index: int, seed: int, workers: int, hang: bool = False
    ) -> None:
        self.config = config
        self.hang = hang  # a planted hang, for the harness's own test of its watchdog
        self.index = index
        self.seed = seed
        self.name = f"worker-{index}"
        self.workers = workers
        self.state = Checker(check_peeks=False)
        self.journal = Journal(journal)
        self.state.feed_bytes(self.name, journal.read_bytes())
        self.next_id = _count_lines(journal)  # above every id written before: ids only grow
        incarnation = count_starts(journal)
        self.rng = random.Random(f"{seed}/worker-{index}/{incarnation}")
        self.journal.write(t="start", incarnation=incarnation)
        self.dedicated = self._dedicated_now()

    def run(self) -> None:
        with Vault.open(load(self.config)) as vault:
            self.vault = vault
            if self.dedicated and self.state.subjects[self.dedicated].status == "forgetting":
                self._forget(self.dedicated)  # finish what the killed incarnation began
            for steps in itertools.count():
                if self.hang and steps == PLANTED_HANG_AT:
                    planted_hang()
                self.step()

    def step(self) -> None:
        roll = self.rng.random()
        if self.dedicated is None or self.state.subjects[self.dedicated].status != "live":
            self._register()
        elif roll < 0.03:
            self._forget(self.dedicated)
        else:
            subject, key = self._pick_key()
            if roll < 0.45:
                self._put(subject, key)
            elif roll < 0.7:
                self._get(subject, key)
            elif roll < 0.85:
                self._peek()
            else:
                self._rm(subject, key)

    def _pick_key(self) -> tuple[str, str]:
        if self.dedicated and self.rng.random() < 0.2:
            return self.dedicated, f"d{self.rng.randrange(DEDICATED_KEYS)}"
        subject = self.rng.choice(sorted(SHARED_SUBJECTS.values()))
        return subject, f"w{self.index}/k{self.rng.randrange(KEYS_PER_SUBJECT)}"

    def _intend(self, kind: str, **fields: object) -> int:
        ident = self.next_id
        self.next_id += 1
        self.journal.write(t=kind, id=ident, **fields)
        self.state.feed(self.name, {"t": kind, "id": ident, **fields})
        return ident

    def _settle(self, kind: str, ident: int, **fields: object) -> None:
        self.journal.write(t=kind, id=ident, **fields)
        self.state.feed(self.name, {"t": kind, "id": ident, **fields})

    def _put(self, subject: str, key: str) -> None:
        ident = self.next_id
        data = content(self.seed, self.index, ident, self.rng.choice(SIZES))
        self._intend("put", subject=subject, key=key, sha=sha(data))
        try:
            self.vault.put(ObjectRef(TENANT, subject, key), data)
        except EXPECTED_PUT_FAILURES as exc:
            self._settle("fail", ident, error=f"{type(exc).__name__}: {exc}")
            return
        self._settle("ack", ident)

    def _rm(self, subject: str, key: str) -> None:
        ident = self._intend("rm", subject=subject, key=key)
        with contextlib.suppress(NotFound):  # absent already: the state the rm leaves
            self.vault.delete(ObjectRef(TENANT, subject, key))
        self._settle("ack", ident)

    def _get(self, subject: str, key: str) -> None:
        record: dict[str, object] = {"t": "get", "subject": subject, "key": key}
        try:
            record["sha"] = sha(self.vault.get(ObjectRef(TENANT, subject, key)))
        except (NotFound, SubjectForgotten):
            record["sha"] = None
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        self.journal.write(**record)
        self.state.feed(self.name, record)

    def _peek(self) -> None:
        """Read another worker's key while it may be writing it, between two sizes of its
        journal: the checker accepts any state the key was in between them."""
        owner = self.rng.randrange(self.workers)
        subject = self.rng.choice(sorted(SHARED_SUBJECTS.values()))
        key = f"w{owner}/k{self.rng.randrange(KEYS_PER_SUBJECT)}"
        journal = self.journal.path.with_name(f"worker-{owner}.jsonl")
        record: dict[str, object] = {"t": "peek", "owner": f"worker-{owner}"}
        record |= {"subject": subject, "key": key, "from": _size(journal)}
        try:
            record["sha"] = sha(self.vault.get(ObjectRef(TENANT, subject, key)))
        except NotFound:
            record["sha"] = None
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["to"] = _size(journal)
        self.journal.write(**record)

    def _register(self) -> None:
        generation = sum(1 for t in self.state.subjects.values() if t.owner == self.name)
        subject = f"w{self.index}-g{generation}"
        jurisdiction = self.rng.choice(sorted(SHARED_SUBJECTS))
        ident = self._intend("register", subject=subject, jurisdiction=jurisdiction)
        self.dedicated = subject
        self.vault.register_subject(TENANT, subject, jurisdiction)
        self._settle("ack", ident)

    def _forget(self, subject: str) -> None:
        ident = self._intend("forget", subject=subject)
        forget_approved(self.vault, subject, self.config.parent / "approvers")
        self._settle("ack", ident)

    def _dedicated_now(self) -> str | None:
        """The newest dedicated subject; one whose registration was killed is left."""
        mine = [name for name, track in self.state.subjects.items() if track.owner == self.name]
        if not mine or self.state.subjects[mine[-1]].status == "registering":
            return None
        return mine[-1]


def planted_hang() -> None:
    """Wait for ever, as a deadlock would (`stress.py --plant-hang`, its watchdog's test)."""
    threading.Event().wait()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def count_starts(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"t": "start"' in line)


_PACK_LOST = re.compile(r"pack (\S+\.pack) was removed or replaced under this process")


def _lost_packs(gc: GcReport) -> list[tuple[str, str]]:
    """(node, pack) of each skipped node's pack found removed under the gc, if that is
    why every skipped node was skipped (the checker asks whether the damage did it);
    else none."""
    found = [(f.node, _PACK_LOST.search(f.error)) for f in gc.failed_nodes]
    if gc.unavailable_nodes or not found or not all(match for _, match in found):
        return []
    return [(node, match.group(1)) for node, match in found if match]


def maintain(config: Path, journal_path: Path, index: int, seed: int) -> None:
    """Sweep and repair in a loop, journalling what each run reported (one that raises ends
    the process, which the harness reports as a problem)."""
    journal = Journal(journal_path)
    incarnation = count_starts(journal_path)
    journal.write(t="start", incarnation=incarnation)
    rng = random.Random(f"{seed}/maintenance-{index}/{incarnation}")
    while True:
        roll = rng.random()
        with Vault.open(load(config)) as vault:
            if roll < 0.6:
                gc = vault.gc(grace_seconds=0)
                journal.write(t="gc", versions=gc.versions, orphans=gc.orphans, moved=gc.moved)
                if gc.skipped_nodes:
                    why = [f"{failed.node}: {failed.error}" for failed in gc.failed_nodes]
                    why += [f"{node}: could not be opened" for node in gc.unavailable_nodes]
                    journal.write(t="problem", what=f"gc skipped {gc.skipped_nodes}: {why}",
                                  lost_packs=_lost_packs(gc))  # fmt: skip
            else:
                began, scrub = time.time(), roll > 0.9
                repair = vault.repair(scrub=scrub)
                journal.write(t="repair", rebuilt=repair.rebuilt, problems=list(repair.problems),
                              scrub=scrub, began=began)  # fmt: skip
