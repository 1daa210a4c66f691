"""k-of-n approvals: a request the policy sends for approval waits for named approvers.

An approval is created, pending, when the policy answers ``approval-required``.
It names the request it covers (requesting principal, action, tenant, subject,
object key or none, purpose), the approvers who may sign (from the config, fixed
when it is created), the quorum ``k`` and an expiry. Each named
approver signs once, approve or deny; one denial ends it (a veto), ``k``
approvals make it met. A met approval lets exactly the request it names through
until it expires. Nobody approves their own request, and approvers belong to
the request's tenant.

Approvals live in the home cell of the subject
(``state/cells/<J>/approvals.sqlite``): they name the subject, which is
personal data and stays in its jurisdiction. One asked for an id registered
nowhere lives in the first cell where the request needs one, and covers only
requests in that cell; once the id is registered in another cell it keeps only
its pseudonyms there (`SubjectScrubs.subject_homed`), as after a forget, and is
marked homed elsewhere: it covers no request of theirs, so it can no longer be
signed, is not pending, and a request that brings it is told to ask in the
subject's home (without naming that cell). A
registration of an id that has a home is decided there, whatever cell it asks
for (`Vault.register_subject`). The approval id carries the cell
(``apr-us-<16 hex>``) so it can be found without a global index.

Each verdict may carry its approver's Ed25519 signature of the approval's
statement (`approval_signatures`): the guard here counts the rows, as the
operator's own rule; the partner's custodian counts only the signatures that
verify under the keys its policy holds.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from shardvault import sqlite_connections
from shardvault.errors import AccessDenied, Conflict, InvalidInput, NotFound, Unavailable
from shardvault.governance.owed_scrubs import (
    OwedLedger,
    Pseudonym,
    pseudonymize,
    truncate_wal,
    work_off,
)
from shardvault.model import shown
from shardvault.policy import Action, Principal
from shardvault.sqlite_schema import refuse_newer, stamp_schema

_ID = re.compile(r"apr-([a-z]{2,8})-([0-9a-f]{16})")

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
HOMED_ELSEWHERE = "homed-elsewhere"
"""Asked in a cell while its subject was registered nowhere, that subject since homed in
another: it covers no request of theirs (an approval covers only its own cell)."""
SCHEMA_VERSION = 3  # PRAGMA user_version of approvals.sqlite (docs/formats.md)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, requester TEXT NOT NULL, action TEXT NOT NULL, tenant TEXT NOT NULL,
    subject TEXT, key TEXT, purpose TEXT NOT NULL, request_id TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, quorum INTEGER NOT NULL,
    approvers TEXT NOT NULL, homed_elsewhere_at REAL
);
CREATE TABLE IF NOT EXISTS signatures (
    approval TEXT NOT NULL REFERENCES approvals(id), approver TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')), at REAL NOT NULL,
    signature BLOB, PRIMARY KEY (approval, approver)
);
CREATE INDEX IF NOT EXISTS approvals_expiry ON approvals (expires_at);
CREATE INDEX IF NOT EXISTS approvals_subject ON approvals (tenant, subject);
"""
_PENDING = (  # as _status: unexpired, not homed elsewhere, no denial, fewer approvals than k
    "SELECT id FROM approvals a WHERE expires_at > ? AND {homed} IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM signatures"
    " WHERE approval = a.id AND verdict = 'deny') AND (SELECT COUNT(*) FROM signatures"
    " WHERE approval = a.id AND verdict = 'approve') < quorum"
)

_SIGNED = "SELECT 1 FROM signatures WHERE {signature} IS NOT NULL LIMIT 1"
_APPROVAL = (
    "SELECT id, requester, action, tenant, subject, key, purpose, request_id, created_at,"
    " expires_at, quorum, approvers, {homed} FROM approvals WHERE id = ?"
)
_VERDICTS = (
    "SELECT approver, verdict, at, {signature} FROM signatures WHERE approval = ? ORDER BY at"
)

_REGISTER = str(Action.REGISTER)


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval: the request it covers, who may sign, and the signatures so far."""

    id: str
    jurisdiction: str
    requester: str
    action: str
    tenant: str
    subject: str | None
    key: str | None
    purpose: str
    request_id: str
    created_at: float
    expires_at: float
    quorum: int
    approvers: tuple[str, ...]
    signatures: tuple[tuple[str, str, float], ...] = ()
    status: str = PENDING
    signed: tuple[tuple[str, bytes], ...] = ()
    """Each approver's Ed25519 signature of their verdict's statement, where one was given."""
    homed_elsewhere_at: float | None = None
    """When its subject, registered nowhere when it was asked, was homed in another cell."""

    @property
    def approvals(self) -> int:
        return sum(1 for _, verdict, _ in self.signatures if verdict == "approve")

    def signature_of(self, approver: str) -> bytes | None:
        """The signature stored with ``approver``'s verdict (None: signed by no key)."""
        return next((sig for who, sig in self.signed if who == approver), None)

    def covers(
        self,
        principal: str,
        action: str,
        tenant: str,
        jurisdiction: str,
        subject: str | None,
        key: str | None,
        purpose: str,
    ) -> bool:
        """Exactly this request, in the cell it was asked for: one asked for an id that
        was registered nowhere then does not cover that id registered elsewhere later.
        One that names no object key covers a request that names none: it is no
        approval of every key of the subject (a registration's was, of every put)."""
        return (principal, action, tenant, jurisdiction, subject, key, purpose) == (
            self.requester,
            self.action,
            self.tenant,
            self.jurisdiction,
            self.subject,
            self.key,
            self.purpose,
        )


def approval_cell(approval_id: str) -> str:
    """The jurisdiction an approval id belongs to; `InvalidInput` if it is malformed."""
    match = _ID.fullmatch(approval_id) if isinstance(approval_id, str) else None
    if match is None:
        raise InvalidInput(
            f"invalid approval id {shown(approval_id)}: expected apr-<cell>-<16 hex>"
        )
    return match.group(1).upper()


def _booked_action(action: str, key: str | None) -> str:
    """A registration was booked as a write with no object key before it had an action of
    its own (no other write names no key): such a row is read as a registration's, and
    covers one only (docs/formats.md, "Approvals")."""
    return _REGISTER if action == "write" and key is None else action


def _status(approval: Approval, now: float) -> str:
    if any(verdict == "deny" for _, verdict, _ in approval.signatures):
        return DENIED
    if approval.homed_elsewhere_at is not None:
        return HOMED_ELSEWHERE
    if now >= approval.expires_at:
        return EXPIRED
    return APPROVED if approval.approvals >= approval.quorum else PENDING


def homed_elsewhere(approval: Approval) -> str:
    """Why ``approval`` covers nothing: naming its own cell, never the subject's home."""
    return (
        f"it was asked in {approval.jurisdiction} while its subject was registered nowhere, "
        "and their home is another cell, which alone decides their requests; ask there: "
        "run the request again without --approval"
    )


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a book holds, read as it is by a command that only reads it: a column a
    book from before lacks reads NULL (the value a migration would give it), and a
    book made by a process killed before its tables holds no approval."""

    tables: bool
    homed: str  # "homed_elsewhere_at", or "NULL" in a book of schema 1 or 2
    signature: str  # "signature", or "NULL" in a book of schema 1


_CURRENT = _Layout(tables=True, homed="homed_elsewhere_at", signature="signature")


def _layout(db: sqlite3.Connection) -> _Layout:
    def columns(table: str) -> set[str]:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    approvals, signatures = columns("approvals"), columns("signatures")
    return _Layout(
        tables=bool(approvals and signatures),
        homed="homed_elsewhere_at" if "homed_elsewhere_at" in approvals else "NULL",
        signature="signature" if "signature" in signatures else "NULL",
    )


def _migrate(db: sqlite3.Connection, what: str) -> None:
    """The book at this schema, for a command that writes it: WAL, the stamp, the
    tables, then each column a book from before lacks (every step a no-op on a
    book already migrated)."""
    db.execute("PRAGMA journal_mode=WAL")
    stamp_schema(db, SCHEMA_VERSION, what)
    db.executescript(_SCHEMA)
    _add_column(db, "signatures", "signature BLOB")
    _add_column(db, "approvals", "homed_elsewhere_at REAL")


def _add_column(db: sqlite3.Connection, table: str, column: str) -> None:
    """A column a book from before lacks, added NULL in every row: schema 1 → 2, verdicts
    gain their ``signature BLOB``; 2 → 3, approvals their ``homed_elsewhere_at REAL``.
    Checked by the column itself, under the write lock, so that a process killed
    after the stamp, or two processes opening the book at once, migrate it once."""
    name = column.split()[0]

    def missing() -> bool:
        return name not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    if not missing():  # every open but the first of a book from before: no write
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if missing():
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _forget_rows(
    db: sqlite3.Connection,
    tenant: str,
    subject: str,
    pseudonym: Pseudonym,
    *,
    erase_always: bool,
    homed_at: float | None,
) -> tuple[int, bool]:
    """`ApprovalBook.forget_subject`'s work on one connection (sqlite3 errors raised):
    the approvals changed, and whether the WAL's truncation (if one was due) completed."""
    db.execute("BEGIN IMMEDIATE")
    try:
        rows = db.execute(
            "SELECT id, key FROM approvals WHERE tenant = ? AND subject = ?",
            (tenant, subject),
        ).fetchall()
        for ident, key in rows:
            pseudonymize(db, ident, subject, key, pseudonym, homed_at)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if rows or erase_always:  # the old rows' frames too
        return len(rows), truncate_wal(db)
    return 0, True


class ApprovalBook:
    """Every cell's approvals. Thread-safe; several processes may share the files."""

    def __init__(
        self,
        state_dir: Path,
        jurisdictions: list[str],
        clock: Callable[[], float] = time.time,
        pseudonyms: Callable[[str], Pseudonym] | None = None,
    ) -> None:
        self._state_dir = state_dir
        self._jurisdictions = list(jurisdictions)
        self._clock = clock
        self._lock = threading.Lock()
        self._dbs: dict[str, sqlite3.Connection] = {}
        self._migrated: set[str] = set()  # the cells whose open connection migrated the book
        self._layouts: dict[str, _Layout] = {}  # each open book's, as `_db` last read it
        self._pseudonyms = pseudonyms  # a cell's audit pseudonyms, for the scrubs it owes
        self.owed = OwedLedger(state_dir)

    def _db(self, jurisdiction: str, *, write: bool = False) -> sqlite3.Connection:
        """The cell's connection (the caller holds the lock), its owed scrubs worked off.
        A read leaves a book from before as it is (`_layout`: an older shardvault can
        still open it); the first write migrates it (`_migrate`)."""
        if jurisdiction not in self._jurisdictions:
            raise NotFound(f"no cell {jurisdiction!r} for this approval")
        db = self._dbs.get(jurisdiction)
        try:
            if db is None:
                db = self._connect(jurisdiction, migrate=write)
                self._dbs[jurisdiction] = db
            else:  # a scrub recorded since this process opened the book is owed here too
                if write and jurisdiction not in self._migrated:  # opened by a read
                    _migrate(db, f"approvals of cell {jurisdiction}")
                self._work_off(db, jurisdiction)
            if write:
                self._migrated.add(jurisdiction)
            if self._layouts.get(jurisdiction) != _CURRENT:  # another process may migrate it
                migrated = jurisdiction in self._migrated
                self._layouts[jurisdiction] = _CURRENT if migrated else _layout(db)
        except sqlite3.Error as exc:
            raise Unavailable(f"approvals of cell {jurisdiction}: {exc}") from exc
        return db

    def _connect(
        self, jurisdiction: str, *, owed: bool = True, migrate: bool = True
    ) -> sqlite3.Connection:
        """A connection to the cell's book, migrated unless not ``migrate`` (then a
        newer book is still refused), and (``owed``) with the scrubs the directory says
        it owes worked off first: until they are, no approval there is used, listed or
        signed (`owed_scrubs`)."""
        path = self._path(jurisdiction)
        what = f"approvals of cell {jurisdiction}"
        db = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite_connections.connect(path, what)
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA secure_delete=ON")  # a forgotten subject's id is overwritten
            if migrate:
                _migrate(db, what)
            else:
                refuse_newer(db, SCHEMA_VERSION, what)
            if owed:
                self._work_off(db, jurisdiction)
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise Unavailable(f"{what}: {exc}") from exc
            raise
        return db

    def _work_off(self, db: sqlite3.Connection, jurisdiction: str) -> None:
        directory = self.owed.directory()
        if directory is None:
            return
        pseudonyms = self._pseudonyms
        if pseudonyms is None:  # a book opened without the cells' keys: nothing to scrub with
            if directory.owed_in(jurisdiction):
                raise Unavailable(f"approvals of cell {jurisdiction}: scrubs owed, no key")
            return

        def scrubbing() -> Pseudonym:
            """Asked for only when a scrub is due, which writes ``homed_elsewhere_at``: a
            book a read left as it is is migrated first (a no-op on one migrated)."""
            _migrate(db, f"approvals of cell {jurisdiction}")
            return pseudonyms(jurisdiction)

        work_off(db, jurisdiction, directory, scrubbing, self._clock())

    def settle_owed(self, jurisdiction: str) -> None:
        """Work off what the directory says the cell's book owes, on a connection of its
        own (a caller may give up on it: a hung disk holds no lock of this book's)."""
        directory = self.owed.directory()
        # the rows read before the book is looked for: a book another process makes
        # after the look works off what it owes itself as it opens, and a row it adds
        # after this read is not among those dropped here
        owed = directory.owed_in(jurisdiction) if directory is not None else {}
        if not self._holds_book(jurisdiction):
            if directory is not None and owed:  # no book, so no approval there names anyone
                directory.scrubbed(jurisdiction, owed)
            return
        self._connect(jurisdiction).close()

    def scrub_apart(
        self,
        jurisdiction: str,
        tenant: str,
        subject: str,
        pseudonym: Callable[[], Pseudonym],
        *,
        homed_elsewhere: bool,
    ) -> None:
        """`forget_subject` in a cell that is not the subject's home, on a connection of
        its own, then the scrub the directory recorded as owed there is dropped: a
        caller gives up on it if the disk hangs, and a hung call holds no lock of this
        book's (nor is its connection one another caller uses)."""
        if self._holds_book(jurisdiction):
            db = self._connect(jurisdiction, owed=False)
            try:
                _, erased = _forget_rows(
                    db, tenant, subject, pseudonym(), erase_always=not homed_elsewhere,
                    homed_at=self._clock() if homed_elsewhere else None,
                )  # fmt: skip
            except sqlite3.Error as exc:
                raise Unavailable(f"approvals of cell {jurisdiction}: {exc}") from exc
            finally:
                db.close()
            if not erased:  # a reader kept the old pages: the record stays, for the next
                raise Unavailable(f"approvals of cell {jurisdiction}: a reader held the WAL")
        directory = self.owed.directory()
        if directory is not None:
            directory.scrubbed(jurisdiction, [directory.token(tenant, subject)])

    def _path(self, jurisdiction: str) -> Path:
        return self._state_dir / "cells" / jurisdiction / "approvals.sqlite"

    def _holds_book(self, jurisdiction: str) -> bool:
        """Whether the cell has a book: a read makes none, it finds no approval there."""
        return jurisdiction in self._dbs or self._path(jurisdiction).exists()

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()
        self._migrated.clear()
        self._layouts.clear()
        self.owed.close()

    @staticmethod
    def new_id(jurisdiction: str) -> str:
        return f"apr-{jurisdiction.lower()}-{os.urandom(8).hex()}"

    def create(self, approval: Approval) -> Approval:
        if approval_cell(approval.id) != approval.jurisdiction:
            raise InvalidInput("approval id and cell disagree")
        with self._lock:
            db = self._db(approval.jurisdiction, write=True)
            try:
                db.execute(
                    "INSERT INTO approvals (id, requester, action, tenant, subject, key, purpose,"
                    " request_id, created_at, expires_at, quorum, approvers)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        approval.id,
                        approval.requester,
                        approval.action,
                        approval.tenant,
                        approval.subject,
                        approval.key,
                        approval.purpose,
                        approval.request_id,
                        approval.created_at,
                        approval.expires_at,
                        approval.quorum,
                        json.dumps(list(approval.approvers)),
                    ),
                )
            except sqlite3.Error as exc:
                raise Unavailable(f"approval not recorded: {exc}") from exc
        return approval

    def get(self, approval_id: str) -> Approval:
        jurisdiction = approval_cell(approval_id)
        with self._lock:
            approval = None
            # a cell not configured is refused by `_db`; a read makes no book
            if jurisdiction not in self._jurisdictions or self._holds_book(jurisdiction):
                approval = self._read(self._db(jurisdiction), jurisdiction, approval_id)
        if approval is None:
            raise NotFound(f"no approval {approval_id}")
        return approval

    def _read(self, db: sqlite3.Connection, jurisdiction: str, approval_id: str) -> Approval | None:
        """The approval on DB, a connection `_db` gave (its owed scrubs worked off): a
        listing reads each of a cell's approvals on one, not asking the directory again."""
        layout = self._layouts[jurisdiction]
        if not layout.tables:
            return None
        try:
            row = db.execute(_APPROVAL.format(homed=layout.homed), (approval_id,)).fetchone()
            verdicts = _VERDICTS.format(signature=layout.signature)
            signatures = db.execute(verdicts, (approval_id,)).fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"approvals of cell {jurisdiction}: {exc}") from exc
        if row is None:
            return None
        approval = Approval(
            id=row[0],
            jurisdiction=jurisdiction,
            requester=row[1],
            action=_booked_action(row[2], row[5]),
            tenant=row[3],
            subject=row[4],
            key=row[5],
            purpose=row[6],
            request_id=row[7],
            created_at=row[8],
            expires_at=row[9],
            quorum=row[10],
            approvers=tuple(json.loads(row[11])),
            signatures=tuple((a, v, t) for a, v, t, _ in signatures),
            signed=tuple((a, bytes(sig)) for a, _, _, sig in signatures if sig is not None),
            homed_elsewhere_at=row[12],
        )
        return replace(approval, status=_status(approval, self._clock()))

    def all(self, jurisdiction: str | None = None, *, pending: bool = False) -> list[Approval]:
        """Every approval (of one cell if given), oldest first; only the pending ones if
        `pending`, found by the expiry index rather than by reading every approval."""
        found = []
        for code in [jurisdiction] if jurisdiction else self._jurisdictions:
            if not self._holds_book(code):
                continue
            with self._lock:
                try:
                    db = self._db(code)
                    rows = self._ids(db, code, pending)
                except sqlite3.Error as exc:
                    raise Unavailable(f"approvals of cell {code}: {exc}") from exc
                read = [self._read(db, code, ident) for (ident,) in rows]
            found += [approval for approval in read if approval is not None]
        return sorted(
            (a for a in found if not pending or a.status == PENDING), key=lambda a: a.created_at
        )

    def _ids(self, db: sqlite3.Connection, code: str, pending: bool) -> list[tuple[str]]:
        """The ids of the cell's approvals on DB (`_db`'s), the pending ones if ``pending``."""
        layout = self._layouts[code]
        if not layout.tables:
            return []
        if pending:
            return db.execute(_PENDING.format(homed=layout.homed), (self._clock(),)).fetchall()
        return db.execute("SELECT id FROM approvals").fetchall()

    def holds_signed_verdicts(self) -> bool:
        """Whether any cell's book holds a verdict given with a signature: then the
        partner was delivered one, and its record of them cannot be missing for want of
        any (`partner_verdicts`). Asked only when that record is missing."""
        for code in self._jurisdictions:
            with self._lock:
                if not self._holds_book(code):
                    continue
                try:
                    db = self._db(code)
                    layout = self._layouts[code]
                    signed = _SIGNED.format(signature=layout.signature)
                    row = db.execute(signed).fetchone() if layout.tables else None
                except sqlite3.Error as exc:
                    raise Unavailable(f"approvals of cell {code}: {exc}") from exc
            if row is not None:
                return True
        return False

    def forget_subject(
        self,
        jurisdiction: str,
        tenant: str,
        subject: str,
        pseudonym: Callable[[str, str], str],
        *,
        erase_always: bool = True,
        homed_elsewhere: bool = False,
    ) -> bool:
        """Replace a forgotten subject's id and object keys in its approvals by their audit
        pseudonyms: the approvals stay as evidence (they match the log's entries), the
        names go. With ``homed_elsewhere`` (the subject's home is another cell) they are
        marked so, in the same transaction: they cover no request of theirs now
        (`HOMED_ELSEWHERE`). The WAL is then truncated, unless none changed and not
        ``erase_always`` (a forget run again erases what a run killed before its
        truncation left). Returns whether that truncation completed; if another
        process's read snapshot kept the old pages, the id in them, in the files, the
        scrub is recorded as owed here (`owed_scrubs`), for the next opener or gc."""
        homed_at = self._clock() if homed_elsewhere else None
        with self._lock:
            if not self._holds_book(jurisdiction):
                return True
            db = self._db(jurisdiction, write=True)
            try:
                _, erased = _forget_rows(
                    db, tenant, subject, pseudonym, erase_always=erase_always, homed_at=homed_at
                )
            except sqlite3.Error as exc:
                raise Unavailable(f"approvals of cell {jurisdiction}: {exc}") from exc
        directory = self.owed.directory()
        if not erased and directory is not None:
            directory.owe_scrubs(tenant, subject, [jurisdiction])
        return erased

    def check_signer(self, approval: Approval, approver: Principal) -> None:
        """Whether ``approver`` may sign now; `AccessDenied` naming the reason otherwise.
        That the subject of an approval was homed elsewhere is said only to its approvers."""
        if approval.status not in (PENDING, HOMED_ELSEWHERE):
            raise AccessDenied(
                f"approval {approval.id} is {approval.status}; it can no longer be signed",
                rule=f"approval:{approval.status}",
            )
        if approver.id not in approval.approvers:
            raise AccessDenied(
                f"{approver.id} is not an approver of {approval.id} "
                f"(approvers: {', '.join(approval.approvers) or 'none configured'})",
                rule="approval:not-an-approver",
            )
        if approver.id == approval.requester:
            raise AccessDenied("nobody approves their own request", rule="approval:self")
        if approver.tenant != approval.tenant:
            raise AccessDenied(
                f"{approver.id} belongs to tenant {approver.tenant}, not {approval.tenant}",
                rule="approval:cross-tenant",
            )
        if approval.status == HOMED_ELSEWHERE:
            raise AccessDenied(
                f"approval {approval.id} can no longer be signed: {homed_elsewhere(approval)}",
                rule=f"approval:{HOMED_ELSEWHERE}",
            )
        if any(who == approver.id for who, _, _ in approval.signatures):
            raise AccessDenied(f"{approver.id} already signed {approval.id}", rule="approval:twice")

    def sign(
        self, approval_id: str, approver: Principal, verdict: str, signature: bytes | None = None
    ) -> Approval:
        """Record one approver's verdict, with their signature of its statement if given
        (call `check_signer` and audit it first)."""
        if verdict not in ("approve", "deny"):
            raise InvalidInput("verdict must be approve or deny")
        jurisdiction = approval_cell(approval_id)
        with self._lock:
            db = self._db(jurisdiction, write=True)
            try:
                db.execute(
                    "INSERT INTO signatures (approval, approver, verdict, at, signature)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (approval_id, approver.id, verdict, self._clock(), signature),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"{approver.id} already signed {approval_id}") from exc
            except sqlite3.Error as exc:
                raise Unavailable(f"signature not recorded: {exc}") from exc
        return self.get(approval_id)

    def check_use(
        self,
        approval_id: str,
        *,
        principal: str,
        action: str,
        tenant: str,
        jurisdiction: str,
        subject: str | None,
        key: str | None,
        purpose: str,
    ) -> Approval:
        """The met approval covering this request; `AccessDenied` with the reason otherwise."""
        try:
            approval = self.get(approval_id)
        except NotFound:
            raise AccessDenied(f"no approval {approval_id}", rule="approval:unknown") from None
        if not approval.covers(principal, action, tenant, jurisdiction, subject, key, purpose):
            raise AccessDenied(
                f"approval {approval_id} does not cover this request", rule="approval:mismatch"
            )
        if approval.status != APPROVED:
            detail = (
                f"{approval.approvals} of {approval.quorum} approvals"
                if approval.status == PENDING
                else approval.status
            )
            raise AccessDenied(
                f"approval {approval_id} is {approval.status} ({detail})",
                rule=f"approval:{approval.status}",
            )
        return approval


__all__ = [
    "APPROVED",
    "DENIED",
    "EXPIRED",
    "HOMED_ELSEWHERE",
    "PENDING",
    "Approval",
    "ApprovalBook",
    "approval_cell",
    "homed_elsewhere",
]
