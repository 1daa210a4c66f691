"""The partner's own copy of the verdicts approvers signed: what a denial stands on.

The approval book is the operator's file, and the custodian's gate counts its
signed approvals, which the operator cannot forge; but a denial is honoured by
its presence, and the operator can delete a row. With a quorum below the number
of approvers, deleting one approver's signed veto let the others' signatures
through. So every verdict signed under a key the partner's policy holds is also
delivered to the partner, which checks the signature and keeps it in a file of
its own, ``<partner_dir>/verdicts.sqlite`` (`verdicts_file`: its schema, how it
is made and opened).

The gate refuses a key use whose approval has a denial there, whatever the book
now holds (`custodian_gate`). A denial also binds the request it refuses, not
only its approval (`VetoedRequest`): the partner keeps, beside it, tags of that
request, and refuses every approval for the same request, whoever signs it,
until the veto lapses. So asking the same thing again does not get round one
approver's no; only the denier lifts it before it lapses, with a withdrawal they
sign (`withdraw`), which the partner checks against its own record and keeps. The
file names no subject (the statement signed is not kept: the book holds it, and
forgets it with the subject; the tags name nobody without the key).

Once an approval book holds a signed verdict, a missing file was lost, with the
denials in it, and every verdict delivered and every key use that names an
approval is refused until it is restored (fail closed). Signed verdicts are rare,
and so are key uses that name an approval, so each call opens a connection of
its own and closes it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shardvault.errors import AccessDenied, IntegrityError
from shardvault.governance.approval_record import Approval
from shardvault.governance.approval_signatures import verifies, withdrawal_verifies
from shardvault.governance.verdicts_file import FILE, VerdictsFile
from shardvault.governance.vetoed_request import VetoedRequest

_KEEP = (
    "INSERT OR IGNORE INTO verdicts (approval, approver, verdict, signature) VALUES (?, ?, ?, ?)"
)
_BIND = "INSERT OR IGNORE INTO vetoes VALUES (?, ?, ?, ?, ?, ?)"
_DENIALS = "SELECT approver FROM verdicts WHERE approval = ? AND verdict = 'deny'"
_DENIERS = "SELECT approver, signature FROM verdicts WHERE approval = ? AND verdict = 'deny'"
_STANDING = """SELECT approval, approver, max(expires_at, denied_at + :period) AS lapses
    FROM vetoes WHERE request = :request
    AND (object_key IS NULL OR :key IS NULL OR object_key = :key)
    AND max(expires_at, denied_at + :period) > :now
    ORDER BY lapses DESC, approval LIMIT 1"""
_WITHDRAWN = "SELECT withdrawn_at FROM withdrawals WHERE approval = ? AND approver = ?"
_LIFT = "DELETE FROM vetoes WHERE approval = ? AND approver = ?"


def _not_withdrawable(approval_id: str, deniers: list[str]) -> AccessDenied:
    """Why an approver not among ``deniers`` cannot withdraw a veto of ``approval_id``:
    nobody's signed denial of it is held, or only others'. Only the denier lifts their
    veto: the others lifting it would make it a vote they win again."""
    if not deniers:
        return AccessDenied(
            f"withdrawal of {approval_id} refused (approval:not-denied): the partner holds no "
            f"signed denial of {approval_id}, so there is no veto to withdraw",
            rule="approval:not-denied",
        )
    return AccessDenied(
        f"withdrawal of {approval_id} refused (approval:not-the-denier): only "
        f"{', '.join(deniers)}, who denied {approval_id}, can withdraw that veto",
        rule="approval:not-the-denier",
    )


@dataclass(frozen=True, slots=True)
class Veto:
    """A signed denial standing against a request: whose, of which approval, till when."""

    approval: str
    approver: str
    lapses_at: float

    def __str__(self) -> str:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.lapses_at))
        return (
            f"approval {self.approval} for the same request was denied by {self.approver} "
            f"(a signed denial the partner holds), a veto that stands until {until}"
        )


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A denier's signed withdrawal of their veto, as the partner keeps it."""

    approval: str
    approver: str
    withdrawn_at: float


class PartnerVerdicts:
    """The signed verdicts delivered to the partner; shared by processes."""

    def __init__(
        self,
        partner_dir: Path,
        clock: Callable[[], float] = time.time,
        approvers: Mapping[str, bytes] | None = None,
    ) -> None:
        """``approvers``: the public keys of the partner's own ``[approvers]``, the only ones
        a verdict or a withdrawal is verified under (never a key its caller hands it)."""
        self.path = partner_dir / FILE
        self._file = VerdictsFile(self.path)
        self._clock = clock
        self._approvers: Mapping[str, bytes] = approvers or {}

    def deliver(
        self,
        approval: Approval,
        approver: str,
        verdict: str,
        signature: bytes,
        first: Callable[[], bool],
    ) -> None:
        """Keep ``approver``'s ``verdict`` on ``approval``, durable, once its ``signature``
        verifies under the key the partner's own ``[approvers]`` holds for them (never one
        its caller hands it: operator code would sign a denial in their name); a denial
        binds the approval's request too (`VetoedRequest`), unless its denier withdrew
        it (delivered again, it binds nothing). A missing file is made only
        if ``first()`` says no signed verdict was given before, so none can have been
        lost with it; `IntegrityError` otherwise."""
        key = self._approvers.get(approver)
        if key is None or not verifies(key, approval, approver, verdict, signature):
            raise IntegrityError(
                f"{approver}'s signed {verdict} on {approval.id} does not verify under the "
                "key the partner holds for them: not delivered"
            )
        self.made(first)
        with self._file.connected() as db, db:  # committed whole, or rolled back
            db.execute("BEGIN IMMEDIATE")
            self._file.set_up(db)
            db.execute(_KEEP, (approval.id, approver, verdict, signature))
            if verdict == "deny" and not self._was_withdrawn(db, approval.id, approver):
                request, object_key = VetoedRequest.of_approval(approval).tags(
                    self._file.veto_key(db)
                )
                db.execute(
                    _BIND,
                    (request, object_key, approval.id, approver, self._clock(),
                     approval.expires_at),
                )  # fmt: skip

    @staticmethod
    def _was_withdrawn(db: sqlite3.Connection, approval_id: str, approver: str) -> bool:
        """Whether ``approver`` withdrew their denial of ``approval_id``: that denial's
        signature, which the operator's book holds, delivered again binds nothing, or
        the veto would be back, for good (a denial is withdrawn once), past its denier."""
        return db.execute(_WITHDRAWN, (approval_id, approver)).fetchone() is not None

    def made(self, first: Callable[[], bool]) -> None:
        """The record made, empty, if it is missing and ``first()`` says no signed verdict was
        given before: a signed verdict the partner holds no key for is not kept, but booked
        with its signature it tells every later reader that the record exists. Missing
        otherwise, it was lost (`IntegrityError`)."""
        if self._missing(first):
            self._file.make()

    def _missing(self, first: Callable[[], bool] | None) -> bool:
        """Whether the record is missing while ``first()`` says no signed verdict was given
        before; `IntegrityError` if it is missing otherwise (lost). Looked for again once
        a book is found holding one: the process that signed it made the record before
        booking it, maybe between this one's look and its question, and a process that
        read the deployment's first signed verdict so took the record for lost."""
        if self.path.exists():
            return False
        if first is not None and first():
            return True
        if self.path.exists():  # made by the process whose verdict was booked meanwhile
            return False
        raise self._file.lost()

    def denials(self, approval_id: str) -> frozenset[str]:
        """The approvers whose signed denial of ``approval_id`` the partner holds.
        `IntegrityError` if the file is missing, `Unavailable` if it cannot be read."""
        if not self.path.exists():
            raise self._file.lost()
        with self._file.connected() as db:
            if self._file.version(db) == 0:  # empty: no verdict was ever kept in it
                return frozenset()
            return frozenset(row[0] for row in db.execute(_DENIALS, (approval_id,)))

    def standing_veto(
        self, request: VetoedRequest, period: float, first: Callable[[], bool] | None = None
    ) -> Veto | None:
        """The signed denial binding ``request`` now, if one does: it stands ``period``
        seconds from its delivery, or until its approval's expiry if that is later (the
        one lasting longest, if several do). A missing file holds none only if ``first``
        is given and says no signed verdict was ever given; else `IntegrityError`, and
        `Unavailable` if it cannot be read."""
        return self.standing_vetoes([request], period, first)[0]

    def standing_vetoes(
        self,
        requests: Sequence[VetoedRequest],
        period: float,
        first: Callable[[], bool] | None = None,
    ) -> list[Veto | None]:
        """`standing_veto` of each of ``requests``, the file opened once for them all: a
        listing of approvals opened it once per row."""
        if self._missing(first):
            return [None] * len(requests)
        with self._file.connected() as db:
            if self._file.version(db) < 2:  # empty, or kept before denials bound their request
                return [None] * len(requests)
            veto_key, now = self._file.veto_key(db), self._clock()
            return [self._standing(db, request.tags(veto_key), period, now) for request in requests]

    @staticmethod
    def _standing(
        db: sqlite3.Connection, tags: tuple[bytes, bytes | None], period: float, now: float
    ) -> Veto | None:
        row = db.execute(
            _STANDING, {"request": tags[0], "key": tags[1], "period": period, "now": now}
        ).fetchone()
        return None if row is None else Veto(row[0], row[1], float(row[2]))

    def withdrawable(self, approval_id: str, approver: str, first: Callable[[], bool]) -> bytes:
        """The signature of ``approver``'s denial of ``approval_id``, which their withdrawal
        signs over; `AccessDenied` if they hold no veto of it to withdraw (nobody denied it,
        someone else did, or they withdrew it). A missing file holds none if ``first()``
        says no signed verdict was ever given, else `IntegrityError`; `Unavailable` if it
        cannot be read."""
        if self._missing(first):
            raise _not_withdrawable(approval_id, [])
        with self._file.connected() as db:
            return self._withdrawable(db, approval_id, approver)

    def withdraw(self, approval_id: str, approver: str, signature: bytes) -> Withdrawal:
        """Lift ``approver``'s veto of ``approval_id``'s request, once ``signature`` verifies
        under the key the partner's own ``[approvers]`` holds for them as their withdrawal
        of the denial this record holds; keep who withdrew it and when. The key is never
        the caller's: operator code would hand it one of its own. The denial stays: its
        approval stays refused (`denials`). `AccessDenied` as `withdrawable`, and
        ``approval:signing-key`` for a signature that does not verify."""
        if not self.path.exists():
            raise self._file.lost()
        key = self._approvers.get(approver)
        with self._file.connected() as db, db:  # committed whole, or rolled back
            db.execute("BEGIN IMMEDIATE")
            self._file.set_up(db)
            denial = self._withdrawable(db, approval_id, approver)
            if key is None or not withdrawal_verifies(
                key, approval_id, approver, denial, signature
            ):
                held = "the key the partner holds" if key is not None else "a key the partner holds"
                raise AccessDenied(
                    f"withdrawal of {approval_id} refused (approval:signing-key): it does not "
                    f"verify under {held} for {approver}",
                    rule="approval:signing-key",
                )
            at = self._clock()
            db.execute(
                "INSERT INTO withdrawals VALUES (?, ?, ?, ?)",
                (approval_id, approver, at, signature),
            )
            db.execute(_LIFT, (approval_id, approver))
        return Withdrawal(approval_id, approver, at)

    def _withdrawable(self, db: sqlite3.Connection, approval_id: str, approver: str) -> bytes:
        version = self._file.version(db)
        deniers = dict(db.execute(_DENIERS, (approval_id,)).fetchall()) if version else {}
        if approver not in deniers:
            raise _not_withdrawable(approval_id, sorted(deniers))
        withdrawn = (
            db.execute(_WITHDRAWN, (approval_id, approver)).fetchone() if version > 2 else None
        )
        if withdrawn is not None:
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(withdrawn[0]))
            raise AccessDenied(
                f"withdrawal of {approval_id} refused (approval:withdrawn): {approver}'s "
                f"denial of {approval_id} was withdrawn at {at}",
                rule="approval:withdrawn",
            )
        return bytes(deniers[approver])


__all__ = ["PartnerVerdicts", "Veto", "Withdrawal"]
