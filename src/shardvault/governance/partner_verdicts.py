"""The partner's own copy of the verdicts approvers signed: what a denial stands on.

The approval book is the operator's file, and the custodian's gate counts its
signed approvals, which the operator cannot forge; but a denial is honoured by
its presence, and the operator can delete a row. With a quorum below the number
of approvers, deleting one approver's signed veto let the others' signatures
through. So every verdict signed under a key the partner's policy holds is also
delivered to the partner, which checks the signature and keeps it in a file of
its own, ``<partner_dir>/verdicts.sqlite`` (mode 0600, rollback journal,
``synchronous=EXTRA``, ``PRAGMA user_version`` = 1)::

    verdicts(approval TEXT, approver TEXT, verdict TEXT ('approve' or 'deny'),
             signature BLOB, PRIMARY KEY (approval, approver, verdict)) WITHOUT ROWID

The gate refuses a key use whose approval has a denial there, whatever the book
now holds (`custodian_gate`). The file names no subject (the statement signed
is not kept: the book holds it, and forgets it with the subject).

It is made by the first signed verdict of the deployment, and never made anew
once an approval book holds a signed verdict: then a missing file was lost, with
the denials in it, and every verdict delivered and every key use that names an
approval is refused until it is restored (fail closed). An empty file (0 bytes,
mode 0600) is taken as a record with nothing in it: the partner's way to start
again after losing it for good, and what a process killed while making it left.
Signed verdicts are rare, and so are key uses that name an approval, so each
call opens a connection of its own and closes it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import quote

from shardvault import durability
from shardvault.errors import IntegrityError, Unavailable
from shardvault.governance.approval_signatures import verifies
from shardvault.governance.approvals import Approval
from shardvault.sqlite_schema import stamp_schema

FILE = "verdicts.sqlite"
SCHEMA_VERSION = 1
_SCHEMA = """CREATE TABLE IF NOT EXISTS verdicts (
    approval TEXT NOT NULL,
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')),
    signature BLOB NOT NULL,
    PRIMARY KEY (approval, approver, verdict)
) WITHOUT ROWID"""
_KEEP = (
    "INSERT OR IGNORE INTO verdicts (approval, approver, verdict, signature) VALUES (?, ?, ?, ?)"
)
_DENIALS = "SELECT approver FROM verdicts WHERE approval = ? AND verdict = 'deny'"
_BUSY_SECONDS = 10.0


class PartnerVerdicts:
    """The signed verdicts delivered to the partner; shared by processes."""

    def __init__(self, partner_dir: Path) -> None:
        self.path = partner_dir / FILE

    def deliver(
        self,
        approval: Approval,
        approver: str,
        verdict: str,
        signature: bytes,
        key: bytes,
        first: Callable[[], bool],
    ) -> None:
        """Keep ``approver``'s ``verdict`` on ``approval``, durable, once its ``signature``
        verifies under ``key`` (the one the partner's policy holds for them). A missing
        file is made only if ``first()`` says no signed verdict was given before, so none
        can have been lost with it; `IntegrityError` otherwise."""
        if not verifies(key, approval, approver, verdict, signature):
            raise IntegrityError(
                f"{approver}'s signed {verdict} on {approval.id} does not verify under the "
                "key the partner holds for them: not delivered"
            )
        if not self.path.exists():
            if not first():
                raise self._lost()
            self._make()
        with self._connected() as db, db:  # committed whole, or rolled back
            db.execute("BEGIN IMMEDIATE")
            db.execute(_SCHEMA)  # a file left empty: set up now
            stamp_schema(db, SCHEMA_VERSION, self._what)
            db.execute(_KEEP, (approval.id, approver, verdict, signature))

    def denials(self, approval_id: str) -> frozenset[str]:
        """The approvers whose signed denial of ``approval_id`` the partner holds.
        `IntegrityError` if the file is missing, `Unavailable` if it cannot be read."""
        if not self.path.exists():
            raise self._lost()
        with self._connected() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version == 0:  # empty: no verdict was ever kept in it
                return frozenset()
            stamp_schema(db, SCHEMA_VERSION, self._what)  # a newer one: NewerFormat
            return frozenset(row[0] for row in db.execute(_DENIALS, (approval_id,)))

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


__all__ = ["FILE", "SCHEMA_VERSION", "PartnerVerdicts"]
