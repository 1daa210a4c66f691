"""The partner's own copy of the verdicts approvers signed: what a denial stands on.

The approval book is the operator's file, and the custodian's gate counts its
signed approvals, which the operator cannot forge; but a denial is honoured by
its presence, and the operator can delete a row. With a quorum below the number
of approvers, deleting one approver's signed veto let the others' signatures
through. So every verdict signed under a key the partner's policy holds is also
delivered to the partner, which checks the signature and keeps it in a file of
its own, ``<partner_dir>/verdicts.sqlite`` (mode 0600, rollback journal,
``synchronous=EXTRA``, ``PRAGMA user_version`` = 3)::

    verdicts(approval TEXT, approver TEXT, verdict TEXT ('approve' or 'deny'),
             signature BLOB, PRIMARY KEY (approval, approver, verdict)) WITHOUT ROWID
    vetoes(request BLOB, object_key BLOB, approval TEXT, approver TEXT,
           denied_at REAL, expires_at REAL,
           PRIMARY KEY (request, approval, approver)) WITHOUT ROWID
    veto_key(id INTEGER PRIMARY KEY CHECK (id = 1), key BLOB)
    withdrawals(approval TEXT, approver TEXT, withdrawn_at REAL, signature BLOB,
                PRIMARY KEY (approval, approver)) WITHOUT ROWID

The gate refuses a key use whose approval has a denial there, whatever the book
now holds (`custodian_gate`). A denial also binds the request it refuses, not
only its approval (`VetoedRequest`): the partner keeps, beside it, tags of that
request (HMAC-SHA256 under the record's own random ``veto_key``), and refuses
every approval for the same request, whoever signs it, until the veto lapses.
So asking the same thing again does not get round one approver's no; only the
denier lifts it before it lapses, with a withdrawal they sign (`withdraw`), which
the partner checks against its own record and keeps. The file
names no subject (the statement signed is not kept: the book holds it, and
forgets it with the subject; the tags name nobody without the key).

It is made by the first signed verdict of the deployment, and never made anew
once an approval book holds a signed verdict: then a missing file was lost, with
the denials in it, and every verdict delivered and every key use that names an
approval is refused until it is restored (fail closed). An empty file (0 bytes,
mode 0600) is taken as a record with nothing in it: the partner's way to start
again after losing it for good, and what a process killed while making it left.
A file of schema 1 (from before vetoes) is read as it is, holding no veto, and
given the veto tables by the next verdict delivered; one of schema 2 (from before
withdrawals) is read as holding none, and given the table by the next write. Signed
verdicts are rare, and so are key uses that name an approval, so each call opens a
connection of its own and closes it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from shardvault import durability
from shardvault.audit.entry import canonical_json
from shardvault.errors import AccessDenied, IntegrityError, Unavailable
from shardvault.governance.approval_record import Approval
from shardvault.governance.approval_signatures import verifies, withdrawal_verifies
from shardvault.policy import Action
from shardvault.sqlite_schema import stamp_schema

FILE = "verdicts.sqlite"
SCHEMA_VERSION = 3
_VERDICTS = """CREATE TABLE IF NOT EXISTS verdicts (
    approval TEXT NOT NULL,
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')),
    signature BLOB NOT NULL,
    PRIMARY KEY (approval, approver, verdict)
) WITHOUT ROWID"""
_VETOES = """CREATE TABLE IF NOT EXISTS vetoes (
    request BLOB NOT NULL,
    object_key BLOB,
    approval TEXT NOT NULL,
    approver TEXT NOT NULL,
    denied_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (request, approval, approver)
) WITHOUT ROWID"""
_VETO_KEY = """CREATE TABLE IF NOT EXISTS veto_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    key BLOB NOT NULL CHECK (length(key) = 32)
)"""
_WITHDRAWALS = """CREATE TABLE IF NOT EXISTS withdrawals (
    approval TEXT NOT NULL,
    approver TEXT NOT NULL,
    withdrawn_at REAL NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (approval, approver)
) WITHOUT ROWID"""
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
_TAG = b"shardvault-veto/v1\n"
_BUSY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class VetoedRequest:
    """What a signed denial binds: the request its approval was asked for, less what
    each ask makes new (its request id and expiry), or the same request asked again
    would be another.

    A forget's is its tenant and subject: what it does (the subject's key destroyed,
    for good) is the same whoever asks and whatever purpose they give, so neither
    another administrator nor another wording gets round a veto. Any other's is also
    who asks (``requester``) and why (``purpose``): a court's lawful read vetoed does
    not stop another authority's request, or the service serving the user, which the
    approvers judge on their own. ``key`` None: the request names no object key (a
    list, a registration; an approval names exactly the key of its request). A veto
    naming none still matches an ask naming one, and the reverse (from when an
    approval could be for any key of the subject), though no action is asked both
    ways. The cell is left out: a tenant's subject id names one user wherever they
    live."""

    action: str
    tenant: str
    subject: str | None
    key: str | None = None
    requester: str | None = None
    purpose: str | None = None

    @classmethod
    def of(
        cls,
        requester: str,
        action: str,
        tenant: str,
        subject: str | None,
        key: str | None,
        purpose: str,
    ) -> VetoedRequest:
        if action == str(Action.FORGET):
            return cls(action, tenant, subject)
        return cls(action, tenant, subject, key, requester, purpose)

    @classmethod
    def of_approval(cls, approval: Approval) -> VetoedRequest:
        """The request ``approval`` covers, as the book holds it: the statement its
        signatures verify against, so a row edited to escape a veto counts for nothing."""
        return cls.of(
            approval.requester, approval.action, approval.tenant, approval.subject,
            approval.key, approval.purpose,
        )  # fmt: skip

    def tags(self, veto_key: bytes) -> tuple[bytes, bytes | None]:
        """The request's tag, and its object key's (None: the request names none)."""
        fields: dict[str, str | None] = {
            "action": self.action, "tenant": self.tenant, "subject": self.subject,
            "requester": self.requester, "purpose": self.purpose,
        }  # fmt: skip
        request = _tag(veto_key, fields)
        return request, None if self.key is None else _tag(veto_key, {**fields, "key": self.key})


def _tag(veto_key: bytes, fields: Mapping[str, str | None]) -> bytes:
    try:
        text = canonical_json(fields)
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise IntegrityError(f"a request that cannot be stated: {exc}") from None
    return hmac.new(veto_key, _TAG + text, hashlib.sha256).digest()


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
        with self._connected() as db, db:  # committed whole, or rolled back
            db.execute("BEGIN IMMEDIATE")
            self._set_up(db)
            db.execute(_KEEP, (approval.id, approver, verdict, signature))
            if verdict == "deny" and not self._was_withdrawn(db, approval.id, approver):
                request, object_key = VetoedRequest.of_approval(approval).tags(self._key(db))
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
        if not self.path.exists():
            if not first():
                raise self._lost()
            self._make()

    def denials(self, approval_id: str) -> frozenset[str]:
        """The approvers whose signed denial of ``approval_id`` the partner holds.
        `IntegrityError` if the file is missing, `Unavailable` if it cannot be read."""
        if not self.path.exists():
            raise self._lost()
        with self._connected() as db:
            if self._version(db) == 0:  # empty: no verdict was ever kept in it
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
        if not self.path.exists():
            if first is not None and first():
                return [None] * len(requests)
            raise self._lost()
        with self._connected() as db:
            if self._version(db) < 2:  # empty, or kept before denials bound their request
                return [None] * len(requests)
            veto_key, now = self._key(db), self._clock()
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
        if not self.path.exists():
            if first():
                raise _not_withdrawable(approval_id, [])
            raise self._lost()
        with self._connected() as db:
            return self._withdrawable(db, approval_id, approver)

    def withdraw(self, approval_id: str, approver: str, signature: bytes) -> Withdrawal:
        """Lift ``approver``'s veto of ``approval_id``'s request, once ``signature`` verifies
        under the key the partner's own ``[approvers]`` holds for them as their withdrawal
        of the denial this record holds; keep who withdrew it and when. The key is never
        the caller's: operator code would hand it one of its own. The denial stays: its
        approval stays refused (`denials`). `AccessDenied` as `withdrawable`, and
        ``approval:signing-key`` for a signature that does not verify."""
        if not self.path.exists():
            raise self._lost()
        key = self._approvers.get(approver)
        with self._connected() as db, db:  # committed whole, or rolled back
            db.execute("BEGIN IMMEDIATE")
            self._set_up(db)
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
        version = self._version(db)
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

    def _set_up(self, db: sqlite3.Connection) -> None:
        """The tables and the veto key of a file left empty, or of schema 1 or 2; stamped 3.
        In the caller's write transaction: two processes set it up once."""
        self._version(db)  # a newer one: NewerFormat, before anything is written
        for table in (_VERDICTS, _VETOES, _VETO_KEY, _WITHDRAWALS):
            db.execute(table)
        db.execute("INSERT OR IGNORE INTO veto_key (id, key) VALUES (1, ?)", (os.urandom(32),))
        stamp_schema(db, SCHEMA_VERSION, self._what)

    def _version(self, db: sqlite3.Connection) -> int:
        """The file's schema (0: left empty); `NewerFormat` if a newer shardvault wrote it."""
        (found,) = db.execute("PRAGMA user_version").fetchone()
        if found > SCHEMA_VERSION:
            stamp_schema(db, SCHEMA_VERSION, self._what)  # raises: it names both versions
        return int(found)

    def _key(self, db: sqlite3.Connection) -> bytes:
        row = db.execute("SELECT key FROM veto_key WHERE id = 1").fetchone()
        if row is None:  # set up with the tables, in one transaction: damage
            raise IntegrityError(f"{self._what} has lost its veto key: restore it from a backup")
        return bytes(row[0])

    @property
    def _what(self) -> str:
        return f"the partner's record of signed verdicts {self.path}"

    def _lost(self) -> IntegrityError:
        return IntegrityError(
            f"{self._what} is missing, while approvals have signed verdicts: restore it "
            "from the partner's backup (docs/trust-model.md, signed approvals)"
        )

    def _make(self) -> None:
        """The empty file, mode 0600, made once whoever else makes it at the same time."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            durability.fsync_directory(self.path.parent)
        except OSError as exc:
            raise Unavailable(f"cannot make {self._what}: {exc.strerror or exc}") from None

    @contextmanager
    def _connected(self) -> Iterator[sqlite3.Connection]:
        """A connection to the existing file, checked to be a private regular file. A
        rollback journal and ``synchronous=EXTRA``: a verdict is durable once delivered."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise Unavailable(f"cannot use {self._what}: {exc.strerror or exc}") from None
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode) or mode & 0o077:
            raise Unavailable(
                f"{self._what} is not a regular file only its owner can read (mode {mode:o}): "
                "run chmod 600 on it"
            )
        try:
            db = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode=rw", _BUSY_SECONDS, isolation_level=None,
                uri=True,
            )  # fmt: skip
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot use {self._what}: {exc}") from exc
        with closing(db):
            try:
                db.execute("PRAGMA journal_mode=DELETE").fetchall()
                db.execute("PRAGMA synchronous=EXTRA")
                yield db
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot use {self._what}: {exc}") from exc


__all__ = ["FILE", "SCHEMA_VERSION", "PartnerVerdicts", "Veto", "VetoedRequest", "Withdrawal"]
