"""The key custodian's gate: the partner's own decision before every unwrap.

The custodian does not trust the operator's policy. Before each unwrap it runs
its own policy file (`shardvault.custodian_policy`) on the justification that
comes with the call, and when the justification names an approval it checks
that the approval is met, unexpired and for this principal, purpose, tenant and
jurisdiction (the partner's officer is one of the approvers, so the partner can
see the signatures). A refusal raises `AccessDenied` carrying the custodian's
rule; the vault audits it and stops the read.
"""

from __future__ import annotations

from shardvault import custodian_policy as cp
from shardvault.errors import AccessDenied, ShardvaultError
from shardvault.governance.approvals import APPROVED, ApprovalBook
from shardvault.keys.port import KeyScope
from shardvault.keys.rootkey import CustodianGate
from shardvault.model import Justification


def custodian_gate(policy: cp.CustodianPolicy, approvals: ApprovalBook) -> CustodianGate:
    def gate(scope: KeyScope, key_id: str, why: Justification) -> None:
        decision = cp.decide_unwrap(policy, why, cp.KeyScope(scope.tenant, scope.jurisdiction))
        if not decision.allowed:
            raise AccessDenied(
                f"key custodian refused the unwrap ({decision.rule}): {decision.reason}",
                rule=decision.rule,
            )
        if why.approval_id is None:
            return
        try:
            approval = approvals.get(why.approval_id)
        except ShardvaultError as exc:
            raise AccessDenied(
                f"key custodian refused the unwrap ({cp.APPROVAL_REQUIRED}): {exc}",
                rule=cp.APPROVAL_REQUIRED,
            ) from None
        if (
            approval.status != APPROVED
            or approval.requester != why.principal
            or approval.purpose != why.purpose
            or approval.tenant != scope.tenant
            or approval.jurisdiction != scope.jurisdiction
        ):
            raise AccessDenied(
                f"key custodian refused the unwrap ({cp.APPROVAL_REQUIRED}): approval "
                f"{why.approval_id} is {approval.status} or is for another request",
                rule=cp.APPROVAL_REQUIRED,
            )

    return gate


__all__ = ["custodian_gate"]
