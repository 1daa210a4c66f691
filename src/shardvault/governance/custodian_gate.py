"""The key custodian's gate: the partner's own decision before every key use.

The custodian does not trust the operator's policy. Before each wrap (a subject
registered), unwrap (a read or write) and destroy (a forget) it runs its own
policy file (`shardvault.custodian_policy`) on the operation and the
justification that comes with the call. When the justification names an
approval it checks that the approval is for this principal, purpose, tenant and
jurisdiction, and for this operation (a wrap's of a registration, an unwrap's of
a read or write, a destroy's of a forget), unexpired and vetoed by nobody,
and met by the partner's own rule, not the book's: the approval book is the
operator's file, so the gate
counts only verdicts signed under the public keys the partner's policy holds
(``[approvers]``), for the approval's exact statement (`approval_signatures`),
and wants ``approval_quorum`` of them; any denial in the book refuses, and so does a
signed denial the partner was delivered (`partner_verdicts`), which the operator
cannot take back by deleting its row. That denial also binds the request it
refused: while it stands (``veto_days``, unless its denier withdraws it), any other
approval for the same request is refused too, whoever signed it. A policy with no
``[approvers]`` lets no approval count. A destroy, which cannot be undone, needs
an approval whatever the grants say, and one of a forget. For a destroy, and for
a wrap or unwrap that names an approval, the gate hands the custodian the subject
that approval names: the custodian destroys or unwraps the key only if it wrapped
it for that subject, and wraps one only for that subject (`keys.port`), so a met
approval to read alice's data unwraps no key of bob's, and one to register alice
registers no one else. A refusal raises `AccessDenied`
naming the operation and carrying the custodian's rule; the vault audits it and
stops the call before anything changes. Every key use the gate is asked for
shows where its decision's audit entry is; the gate keeps it
(`governance.seen`), and the partner's witness cosigns no head without it.
"""

from __future__ import annotations

from shardvault import custodian_policy as cp
from shardvault.errors import AccessDenied, ShardvaultError
from shardvault.governance.approval_record import DENIED, EXPIRED, HOMED_ELSEWHERE, Approval
from shardvault.governance.approval_signatures import counted_verdicts
from shardvault.governance.approvals import ApprovalBook
from shardvault.governance.partner_verdicts import PartnerVerdicts
from shardvault.governance.seen import SeenRecorder
from shardvault.governance.vetoed_request import VetoedRequest
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.keys.rootkey import CustodianGate
from shardvault.model import Justification
from shardvault.policy import Action

_ACTIONS_OF = {
    KeyOperation.WRAP: frozenset({str(Action.REGISTER)}),
    KeyOperation.UNWRAP: frozenset({str(Action.READ), str(Action.WRITE)}),
    KeyOperation.DESTROY: frozenset({str(Action.FORGET)}),
}
"""The actions an approval used for this operation may be of: what the vault does it for
(a registration wraps, a get or put unwraps, a forget destroys)."""

KEY_USE_ACTIONS = frozenset().union(*_ACTIONS_OF.values())
"""The actions whose approval the custodian counts again, by its own keys: an approval of
any other (a list, a stat, a delete) names no key use, and the operator's count is all."""


def _refused(operation: KeyOperation, reason: str) -> AccessDenied:
    return AccessDenied(
        f"key custodian refused the {operation} ({cp.APPROVAL_REQUIRED}): {reason}",
        rule=cp.APPROVAL_REQUIRED,
    )


def _refuse_an_unapproved_destroy(operation: KeyOperation) -> None:
    """A destroy cannot be undone: it needs a met approval of a forget whatever the
    grants say, so a grant that covers every operation (as one written before
    ``operations`` existed does) destroys no key on its purpose alone."""
    if operation is KeyOperation.DESTROY:
        raise _refused(operation, f"a {operation} needs a met approval of a forget")


def _matches(
    approval: Approval, operation: KeyOperation, scope: KeyScope, why: Justification
) -> bool:
    """For this request, and neither expired, vetoed nor homed elsewhere in the book (a
    refusal the operator records is one the partner honours: refusing is always safe)."""
    return (
        approval.status not in (DENIED, EXPIRED, HOMED_ELSEWHERE)
        and approval.requester == why.principal
        and approval.purpose == why.purpose
        and approval.tenant == scope.tenant
        and approval.jurisdiction == scope.jurisdiction
        and _for_operation(approval, operation)
    )


def _for_operation(approval: Approval, operation: KeyOperation) -> bool:
    """Whether the approvers signed ``approval`` for this operation: a wrap's must be of a
    registration, an unwrap's of a read or write, a destroy's of a forget. So an approval
    of a registration, a forget, a listing or a stat unwraps no key: the approvers let a
    user be registered, forgotten or their object names be seen, not their data be read."""
    return approval.action in _ACTIONS_OF[operation]


def _unsigned(approval: Approval, policy: cp.CustodianPolicy) -> str | None:
    """Why the partner does not count ``approval`` as met (None: it does). Only verdicts
    signed under its own ``[approvers]`` keys count, whatever the book's rows say, and
    only of approvers it binds to the approval's tenant, if it binds them."""
    if not policy.approvers:
        return (
            "its policy names no [approvers], so no approval counts (docs/trust-model.md, "
            "signed approvals)"
        )
    counted = policy.approvers_of(approval.tenant)
    approved, _ = counted_verdicts(approval, counted)  # a denial: `_matches`
    if len(approved) < policy.approval_quorum:
        of = f" of tenant {approval.tenant}'s approvers" if policy.approver_tenants else ""
        return (
            f"approval {approval.id} has {len(approved)} of the {policy.approval_quorum} "
            f"signatures the partner requires that verify under its [approvers] keys{of}"
        )
    return None


def _kept_denial(approval: Approval, verdicts: PartnerVerdicts) -> str | None:
    """Why the partner refuses ``approval`` on its own record of signed verdicts (None: it
    holds no denial of it). The record missing or unreadable refuses too: a denial may be
    in it (fail closed)."""
    try:
        denied = verdicts.denials(approval.id)
    except ShardvaultError as exc:
        return str(exc)
    if denied:
        return (
            f"approval {approval.id} was denied by {', '.join(sorted(denied))} (a signed "
            "denial the partner holds)"
        )
    return None


def _standing_veto(
    approval: Approval, verdicts: PartnerVerdicts, policy: cp.CustodianPolicy
) -> str | None:
    """Why the partner refuses ``approval`` for a signed denial of another approval of the
    same request, still standing (None: none is). Without this a veto refused one ask
    only: the same request asked again was met by the other approvers' signatures."""
    try:
        veto = verdicts.standing_veto(VetoedRequest.of_approval(approval), policy.veto_seconds)
    except ShardvaultError as exc:
        return str(exc)
    return None if veto is None else str(veto)


def custodian_gate(
    policy: cp.CustodianPolicy,
    approvals: ApprovalBook,
    verdicts: PartnerVerdicts,
    seen: SeenRecorder | None = None,
) -> CustodianGate:
    def gate(
        operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification
    ) -> str | None:
        """For a destroy, or a wrap or unwrap naming an approval, the subject of that
        approval: the one the key must be (the custodian checks it against its own record,
        or, for a wrap, against the subject it is asked to wrap the key for). First keeps
        where the decision's audit entry is, granted or not: the vault asks only once it
        is durable, so the witness holds the log to it (`governance.seen`)."""
        if seen is not None and why.audit is not None:
            seen.record(why.audit)
        key = KeyScope(scope.tenant, scope.jurisdiction)  # checked again: nothing on trust
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
        reason = (
            _unsigned(approval, policy)
            or _kept_denial(approval, verdicts)
            or _standing_veto(approval, verdicts, policy)
        )
        if reason is not None:
            raise _refused(operation, reason)
        return approval.subject

    return gate


__all__ = ["KEY_USE_ACTIONS", "custodian_gate"]
