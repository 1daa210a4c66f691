"""k-of-n approvals: a request the policy sends for approval waits for named approvers.

An approval is created, pending, when the policy answers ``approval-required``.
It names the request it covers (requesting principal, action, tenant, subject,
object key or none, purpose), the approvers who may sign (those of the config's
who could when it is created: not another tenant's, a revoked one, the requester,
or one the partner's policy binds to other tenants), the quorum ``k`` and an
expiry. Each named approver signs once, approve or deny; one denial ends it (a
veto), ``k`` approvals make it met. A met approval lets exactly the request it names through
until it expires. Nobody approves their own request, and approvers belong to
the request's tenant. This module is one approval, its statuses and its id;
`approvals.ApprovalBook` keeps them, a book per cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shardvault.errors import AccessDenied, InvalidInput
from shardvault.model import shown
from shardvault.policy import Principal

_ID = re.compile(r"apr-([a-z]{2,8})-([0-9a-f]{16})")

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
HOMED_ELSEWHERE = "homed-elsewhere"
"""Asked in a cell while its subject was registered nowhere, that subject since homed in
another: it covers no request of theirs (an approval covers only its own cell)."""


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


def homed_elsewhere(approval: Approval) -> str:
    """Why ``approval`` covers nothing: naming its own cell, never the subject's home."""
    return (
        f"it was asked in {approval.jurisdiction} while its subject was registered nowhere, "
        "and their home is another cell, which alone decides their requests; ask there: "
        "run the request again without --approval"
    )


def check_signer(approval: Approval, approver: Principal) -> None:
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


__all__ = [
    "APPROVED",
    "DENIED",
    "EXPIRED",
    "HOMED_ELSEWHERE",
    "PENDING",
    "Approval",
    "approval_cell",
    "check_signer",
    "homed_elsewhere",
]
