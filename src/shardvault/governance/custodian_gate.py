"""The key custodian's gate: the partner's own decision before every key use.

The custodian does not trust the operator's policy. Before each wrap (a subject
registered), unwrap (a read or write) and destroy (a forget) it runs its own
policy file (`shardvault.custodian_policy`) on the operation and the
justification that comes with the call, and when the justification names an
approval it checks that the approval is met, unexpired and for this principal,
purpose, tenant and jurisdiction (the partner's officer is one of the
approvers, so the partner can see the signatures); a destroy, which cannot be
undone, needs an approval whatever the grants say, and one of a forget, and the
gate hands the custodian the subject that approval names: the custodian
destroys the key only if it wrapped it for that subject (`keys.port`). A
refusal raises `AccessDenied` naming the operation and carrying the custodian's
rule; the vault audits it and stops the call before anything changes.
"""

from __future__ import annotations

from shardvault import custodian_policy as cp
from shardvault.errors import AccessDenied, ShardvaultError
from shardvault.governance.approvals import APPROVED, Approval, ApprovalBook
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.keys.rootkey import CustodianGate
from shardvault.model import Justification
from shardvault.policy import Action

_ACTION_OF = {KeyOperation.DESTROY: str(Action.FORGET)}
"""The action an approval must be for when it is used for this operation (if any)."""


def _refused(operation: KeyOperation, reason: str) -> AccessDenied:
    return AccessDenied(
        f"key custodian refused the {operation} ({cp.APPROVAL_REQUIRED}): {reason}",
        rule=cp.APPROVAL_REQUIRED,
    )


def _refuse_an_unapproved_destroy(operation: KeyOperation) -> None:
    """A destroy cannot be undone: it needs a met approval of a forget whatever the
    grants say, so a grant that covers every operation (as one written before
    ``operations`` existed does) destroys no key on its purpose alone."""
    if operation in _ACTION_OF:
        raise _refused(operation, f"a {operation} needs a met approval of a forget")


def _matches(
    approval: Approval, operation: KeyOperation, scope: KeyScope, why: Justification
) -> bool:
    return (
        approval.status == APPROVED
        and approval.requester == why.principal
        and approval.purpose == why.purpose
        and approval.tenant == scope.tenant
        and approval.jurisdiction == scope.jurisdiction
        and approval.action == _ACTION_OF.get(operation, approval.action)
    )


def custodian_gate(policy: cp.CustodianPolicy, approvals: ApprovalBook) -> CustodianGate:
    def gate(
        operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification
    ) -> str | None:
        """None, or for a destroy the subject of its approval: the one the key must be."""
        key = cp.KeyScope(scope.tenant, scope.jurisdiction)
        cp.require_key_use(policy, operation, why, key)
        if why.approval_id is None:
            _refuse_an_unapproved_destroy(operation)
            return None
        try:
            approval = approvals.get(why.approval_id)
        except ShardvaultError as exc:
            raise _refused(operation, str(exc)) from None
        if not _matches(approval, operation, scope, why):
            raise _refused(
                operation,
                f"approval {why.approval_id} is {approval.status} or is for another request",
            )
        return approval.subject if operation in _ACTION_OF else None

    return gate


__all__ = ["custodian_gate"]
