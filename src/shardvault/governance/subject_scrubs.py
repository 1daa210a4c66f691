"""A forgotten or newly homed subject's id taken out of every cell's approvals.

An approval asked while the subject's id was registered nowhere lives in the first
cell that needed it; once the subject is forgotten, or homed in another cell, that
approval keeps only the pseudonyms its audit entries carry, so that no cell
outside the user's home names them. The home's are scrubbed at once; every other
cell's on a thread of its own, given up on after `state_timeout`, and recorded
first as owed in the subject directory (`owed_scrubs`), so that a cell that does
not answer, or a process killed meanwhile, leaves the scrub to the cell's next
opener or to gc.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from shardvault.errors import ShardvaultError, Unavailable
from shardvault.governance.approvals import ApprovalBook
from shardvault.governance.audit_logs import AuditLogs
from shardvault.governance.heads import CellAudit
from shardvault.io_threads import IoThread, Stalled


def _pseudonym_of(audit: CellAudit) -> Callable[[str, str], str]:
    """The cell's audit pseudonyms, its key read when called: on the scrub's own thread,
    so a pseudonym key on a hung disk holds up that thread only."""
    return audit.hasher.pseudonym


class SubjectScrubs:
    """Every cell's approvals and pseudonyms, and how long another cell is waited for."""

    def __init__(self, logs: AuditLogs, approvals: ApprovalBook, state_timeout: float) -> None:
        self._logs = logs
        self._approvals = approvals
        self._state_timeout = state_timeout

    def forget_subject(self, jurisdiction: str, tenant: str, subject: str) -> tuple[str, ...]:
        """After a forget: the subject's approvals keep only the pseudonyms its audit
        entries carry, so they still match the log but no longer name anyone. In
        every cell, each with its own pseudonyms: one asked while the id was registered
        nowhere lives in the first cell that needed it, not in ``jurisdiction``. The
        home's are scrubbed here; another cell's as far as it answers (`_scrub_elsewhere`).
        Returns the cells left owing the scrub (recorded: `owed_scrubs`), the home
        first if a reader kept its WAL from being truncated."""
        audit = self._logs.cell(jurisdiction)  # the home cell must be known
        others = self.owe_scrubs(jurisdiction, tenant, subject)
        erased = self._approvals.forget_subject(
            jurisdiction, tenant, subject, audit.hasher.pseudonym
        )
        left = self._scrub_elsewhere(others, tenant, subject, homed_elsewhere=False)
        return left if erased else (jurisdiction, *left)  # its own WAL not truncated: owed

    def subject_homed(
        self, home: str, tenant: str, subject: str, *, owed: list[str] | None = None
    ) -> tuple[str, ...]:
        """A subject now homed in HOME: the approvals other cells hold for its id (asked
        while it was registered nowhere, in the first cell that needed one) keep only
        their pseudonyms, as after a forget. They cover only requests in their own cell,
        which decides none for the subject now, and its id is personal data of HOME's:
        left there, a cell outside its home named the user until a forget. A cell that
        does not answer is left owing it (returned, and recorded: `owed_scrubs`, here
        unless the caller did, ``owed`` the cells it recorded)."""
        others = self.owe_scrubs(home, tenant, subject) if owed is None else owed
        return self._scrub_elsewhere(others, tenant, subject, homed_elsewhere=True)

    def owe_scrubs(self, home: str, tenant: str, subject: str) -> list[str]:
        """Record in the directory that every cell but HOME may still name the subject in
        an approval, before any is tried (a kill -9 then leaves the record); the cells."""
        self._logs.cell(home)
        others = [code for code in self._logs.cells if code != home]
        directory = self._approvals.owed.directory()
        if directory is None:
            raise Unavailable("the subject directory is missing: no scrub can be recorded")
        directory.owe_scrubs(tenant, subject, others)
        return others

    def _scrub_elsewhere(
        self, cells: list[str], tenant: str, subject: str, *, homed_elsewhere: bool
    ) -> tuple[str, ...]:
        """Each cell's approvals scrubbed on a thread of its own, at once; one that fails,
        or does not run for `state_timeout` (a hung disk), is given up on and left to
        its next opener or gc. Returns those cells."""
        workers = {code: IoThread(f"shardvault-scrub-{code}") for code in cells}
        futures = {
            code: worker.submit(
                self._approvals.scrub_apart, code, tenant, subject,
                functools.partial(_pseudonym_of, self._logs.cells[code]),
                homed_elsewhere=homed_elsewhere,
            )
            for code, worker in workers.items()
        }  # fmt: skip
        left = []
        for code, future in futures.items():
            try:
                workers[code].wait(future, self._state_timeout)
            except (ShardvaultError, Stalled):
                left.append(code)
            finally:
                workers[code].shutdown()
        return tuple(left)

    def settle_owed_scrubs(self) -> None:
        """Work off every scrub the directory says a cell owes (gc's). A cell that fails
        stops none of the others (each may name a subject in clear); the first failure
        is raised once every other cell was tried."""
        directory = self._approvals.owed.directory()
        failed: ShardvaultError | None = None
        for code in directory.owing_cells() if directory is not None else []:
            if code in self._logs.cells:
                try:
                    self._approvals.settle_owed(code)
                except ShardvaultError as exc:
                    failed = failed or exc
        if failed is not None:
            raise failed


__all__ = ["SubjectScrubs"]
