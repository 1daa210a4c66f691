"""The rows of one cell's approvals book, on a connection the book gives: an approval
read (as the book is laid out: `approval_schema.Layout`), the ids listed, a
forgotten subject's names replaced. sqlite3 errors are the caller's to name,
but for a read's (`Unavailable`, naming the cell).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

from shardvault.errors import Unavailable
from shardvault.governance.approval_record import (
    APPROVED,
    DENIED,
    EXPIRED,
    HOMED_ELSEWHERE,
    PENDING,
    Approval,
)
from shardvault.governance.approval_schema import Layout
from shardvault.governance.owed_scrubs import Pseudonym, pseudonymize, truncate_wal
from shardvault.policy import Action

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


def read_approval(
    db: sqlite3.Connection, layout: Layout, jurisdiction: str, approval_id: str, now: float
) -> Approval | None:
    """The approval on DB, a connection `ApprovalBook._db` gave (its owed scrubs worked off): a
    listing reads each of a cell's approvals on one, not asking the directory again."""
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
    return replace(approval, status=_status(approval, now))


def approval_ids(
    db: sqlite3.Connection, layout: Layout, pending: bool, now: float
) -> list[tuple[str]]:
    """The ids of the cell's approvals on DB (`ApprovalBook._db`'s), the pending ones if
    ``pending``."""
    if not layout.tables:
        return []
    if pending:
        return db.execute(_PENDING.format(homed=layout.homed), (now,)).fetchall()
    return db.execute("SELECT id FROM approvals").fetchall()


def holds_signature(db: sqlite3.Connection, layout: Layout) -> bool:
    """Whether the book holds a verdict given with a signature."""
    signed = _SIGNED.format(signature=layout.signature)
    row = db.execute(signed).fetchone() if layout.tables else None
    return row is not None


def forget_rows(
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


__all__ = ["approval_ids", "forget_rows", "holds_signature", "read_approval"]
