"""Every cell's approvals (`approval_record.Approval`), in a book per cell.

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
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from shardvault import sqlite_connections
from shardvault.errors import AccessDenied, Conflict, InvalidInput, NotFound, Unavailable
from shardvault.governance.approval_record import APPROVED, PENDING, Approval, approval_cell
from shardvault.governance.approval_rows import (
    approval_ids,
    forget_rows,
    holds_signature,
    read_approval,
)
from shardvault.governance.approval_schema import (
    CURRENT_LAYOUT,
    SCHEMA_VERSION,
    Layout,
    layout_of,
    migrate_book,
)
from shardvault.governance.owed_scrubs import OwedLedger, Pseudonym, work_off
from shardvault.policy import Principal
from shardvault.sqlite_schema import refuse_newer


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
        self._layouts: dict[str, Layout] = {}  # each open book's, as `_db` last read it
        self._pseudonyms = pseudonyms  # a cell's audit pseudonyms, for the scrubs it owes
        self.owed = OwedLedger(state_dir)

    def _db(self, jurisdiction: str, *, write: bool = False) -> sqlite3.Connection:
        """The cell's connection (the caller holds the lock), its owed scrubs worked off.
        A read leaves a book from before as it is (`layout_of`: an older shardvault can
        still open it); the first write migrates it (`migrate_book`)."""
        if jurisdiction not in self._jurisdictions:
            raise NotFound(f"no cell {jurisdiction!r} for this approval")
        db = self._dbs.get(jurisdiction)
        try:
            if db is None:
                db = self._connect(jurisdiction, migrate=write)
                self._dbs[jurisdiction] = db
            else:  # a scrub recorded since this process opened the book is owed here too
                if write and jurisdiction not in self._migrated:  # opened by a read
                    migrate_book(db, f"approvals of cell {jurisdiction}")
                self._work_off(db, jurisdiction)
            if write:
                self._migrated.add(jurisdiction)
            if self._layouts.get(jurisdiction) != CURRENT_LAYOUT:  # another process may migrate it
                migrated = jurisdiction in self._migrated
                self._layouts[jurisdiction] = CURRENT_LAYOUT if migrated else layout_of(db)
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
                migrate_book(db, what)
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
            migrate_book(db, f"approvals of cell {jurisdiction}")
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
                _, erased = forget_rows(
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
                approval = read_approval(
                    self._db(jurisdiction),
                    self._layouts[jurisdiction],
                    jurisdiction,
                    approval_id,
                    self._clock(),
                )
        if approval is None:
            raise NotFound(f"no approval {approval_id}")
        return approval

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
                    layout = self._layouts[code]
                    rows = approval_ids(db, layout, pending, self._clock())
                except sqlite3.Error as exc:
                    raise Unavailable(f"approvals of cell {code}: {exc}") from exc
                read = [read_approval(db, layout, code, ident, self._clock()) for (ident,) in rows]
            found += [approval for approval in read if approval is not None]
        return sorted(
            (a for a in found if not pending or a.status == PENDING), key=lambda a: a.created_at
        )

    def holds_signed_verdicts(self) -> bool:
        """Whether any cell's book holds a verdict given with a signature: then the
        partner was delivered one, and its record of them cannot be missing for want of
        any (`partner_verdicts`). Asked only when that record is missing."""
        for code in self._jurisdictions:
            with self._lock:
                if not self._holds_book(code):
                    continue
                try:
                    signed = holds_signature(self._db(code), self._layouts[code])
                except sqlite3.Error as exc:
                    raise Unavailable(f"approvals of cell {code}: {exc}") from exc
            if signed:
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
                _, erased = forget_rows(
                    db, tenant, subject, pseudonym, erase_always=erase_always, homed_at=homed_at
                )
            except sqlite3.Error as exc:
                raise Unavailable(f"approvals of cell {jurisdiction}: {exc}") from exc
        directory = self.owed.directory()
        if not erased and directory is not None:
            directory.owe_scrubs(tenant, subject, [jurisdiction])
        return erased

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


__all__ = ["ApprovalBook"]
