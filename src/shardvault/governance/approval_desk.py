"""The approvals desk: what requesters and approvers do with approvals between requests.

The CLI's ``approval`` commands come here: list the approvals a principal may
see, sign one (approve or deny, with the approver's own key when the partner
holds one for them), tell which a standing signed denial binds, and withdraw
one's own denial. Every answer and every refusal is audited in the approval's
cell before it is given; a verdict the partner's custodian would not count is
refused here rather than shown as met.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault import custodian_policy as cp
from shardvault.errors import AccessDenied, InvalidInput, ShardvaultError
from shardvault.governance.approval_record import APPROVED, PENDING, Approval, check_signer
from shardvault.governance.approval_signatures import sign_verdict, sign_withdrawal
from shardvault.governance.approvals import ApprovalBook
from shardvault.governance.audit_logs import (
    AuditLogs,
    approval_resource,
    entry_details,
    request_fields,
)
from shardvault.governance.partner_verdicts import PartnerVerdicts, Veto, Withdrawal
from shardvault.governance.requesters import Requesters
from shardvault.governance.vetoed_request import VetoedRequest
from shardvault.model import LOCAL_ADMIN, RequestContext
from shardvault.policy import Principal


def _may_see(principal: Principal, approval: Approval) -> bool:
    """Whether `ApprovalDesk.visible_approvals` shows ``approval`` to ``principal``: the
    local administrator (resolved into the approval's tenant) sees every one; anyone
    else only its own tenant's, and of those the ones it requested or may sign."""
    if principal.id == LOCAL_ADMIN:
        return True
    return principal.tenant == approval.tenant and principal.id in (
        approval.requester,
        *approval.approvers,
    )


class ApprovalDesk:
    """The approvals book and the partner's record of signed verdicts, as approvers use them."""

    def __init__(
        self,
        *,
        logs: AuditLogs,
        requesters: Requesters,
        approvals: ApprovalBook,
        partner_verdicts: PartnerVerdicts,
        custodian_policy: cp.CustodianPolicy,
        standing_veto: Callable[[VetoedRequest], Veto | None],
    ) -> None:
        """``standing_veto``: the signed denial binding a request now, read as the guard
        reads it (`RequiredApprovals.standing_veto`)."""
        self._logs = logs
        self._requesters = requesters
        self._approvals = approvals
        self._partner_verdicts = partner_verdicts
        self._custodian_policy = custodian_policy
        self._standing_veto = standing_veto

    def visible_approvals(self, ctx: RequestContext, *, decided: bool = False) -> list[Approval]:
        """The approvals ``ctx``'s principal may see, each shown audited in its cell.

        They name subjects and object keys: the local administrator sees every one,
        any other principal those of its own tenant it requested or is named to sign.
        An approval names only approvers of its own tenant, so an approver is shown
        no other tenant's subjects. Pending ones only, unless ``decided``.
        """
        self._requesters.registered(ctx)  # an unknown or revoked principal sees nothing at all
        shown = []
        for approval in self._approvals.all(pending=not decided):
            principal = self._requesters.resolve(ctx, approval.tenant, approval.jurisdiction)
            if not _may_see(principal, approval):
                continue
            resource = approval_resource(approval)
            self._logs.audit(
                resource, principal=principal.id, request_id=ctx.request_id, action="list",
                purpose=ctx.purpose, decision="allow", rule="approval:visible", result="shown",
                details=entry_details(principal, resource, "approval", approval_id=approval.id),
            ).wait()  # fmt: skip
            shown.append(approval)
        return shown

    def sign_approval(
        self,
        approval_id: str,
        ctx: RequestContext,
        verdict: str,
        key: Ed25519PrivateKey | None = None,
    ) -> Approval:
        """One approver's approve or deny, audited in the approval's cell before it counts,
        signed with the approver's own ``key`` (`approval_signatures`) when given.

        The partner's custodian counts only verdicts signed under the key its policy
        holds for the approver. This deployment can read that policy, so an approver
        the partner holds a key for must sign (`InvalidInput` without a key), and
        with that key (`AccessDenied`, audited, with another): a verdict the custodian
        would not count is refused here rather than shown as met. So is an approve of an
        approval whose request a standing signed denial binds (`standing_veto_of`,
        ``approval:vetoed``, audited naming the denial): the custodian counts none."""
        approval = self._approvals.get(approval_id)
        resource = approval_resource(approval)
        audit = request_fields(ctx, approval.action)
        principal: Principal | None = None
        veto: Veto | None = None
        try:
            principal = self._requesters.resolve(ctx, approval.tenant, approval.jurisdiction)
            check_signer(approval, principal)
            veto = self.standing_veto_of(approval) if verdict == "approve" else None
            if veto is not None:  # an approve the custodian would never count
                raise AccessDenied(
                    f"verdict on {approval_id} refused (approval:vetoed): {veto}",
                    rule="approval:vetoed",
                )
            self._check_signing_key(approval, principal.id, key)
            signature = None if key is None else sign_verdict(key, approval, principal.id, verdict)
        except AccessDenied as exc:
            self._logs.audit(
                resource, **audit, decision="deny", rule=exc.rule or "approval:refused",
                result="refused", details=entry_details(principal, resource, "approval",
                                                        approval_id=approval_id,
                                                        vetoed_by=veto.approval if veto else None),
            ).wait()  # fmt: skip
            raise
        self._deliver_to_partner(approval, principal.id, verdict, signature)
        count = approval.approvals + (1 if verdict == "approve" else 0)
        result = (
            "vetoed" if verdict == "deny"
            else "quorum-met" if count >= approval.quorum
            else f"signed-{count}-of-{approval.quorum}"
        )  # fmt: skip
        self._logs.audit(
            resource, **audit, decision="allow" if verdict == "approve" else "deny",
            rule=f"approval:{verdict}", result=result,
            details=entry_details(principal, resource, "approval", approval_id=approval_id),
        ).wait()  # fmt: skip
        return self._approvals.sign(approval_id, principal, verdict, signature)

    def standing_veto_of(self, approval: Approval) -> Veto | None:
        """The signed denial that binds ``approval``'s request now, if it is still pending or
        met (None for one denied or expired, whose own status says it all): the custodian
        counts no signature on it while the veto stands, so it is no longer signed and
        `approval ls` shows it vetoed. Reads the partner's record (`_standing_veto`: lost or
        unreadable, it raises, as a veto may be in it)."""
        if approval.status not in (PENDING, APPROVED):
            return None
        return self._standing_veto(VetoedRequest.of_approval(approval))

    def standing_vetoes_of(self, approvals: Sequence[Approval]) -> list[Veto | None]:
        """`standing_veto_of` each of ``approvals``, the partner's record opened once for
        them all (`approval ls` opened it once per row), and not at all if none is
        pending or met."""
        vetoes: list[Veto | None] = [None] * len(approvals)
        asked = [at for at, a in enumerate(approvals) if a.status in (PENDING, APPROVED)]
        if asked:
            found = self._partner_verdicts.standing_vetoes(
                [VetoedRequest.of_approval(approvals[at]) for at in asked],
                self._custodian_policy.veto_seconds,
                first=lambda: not self._approvals.holds_signed_verdicts(),
            )
            for at, veto in zip(asked, found, strict=True):
                vetoes[at] = veto
        return vetoes

    def _deliver_to_partner(
        self, approval: Approval, approver: str, verdict: str, signature: bytes | None
    ) -> None:
        """A verdict signed under the key the partner holds for ``approver`` goes to the
        partner too, before it is audited and booked: the custodian honours a denial
        from its own record, which the operator cannot delete a row of. Any other signed
        verdict makes that record if it is the deployment's first: once a book holds a
        signature, a missing record reads as lost (`PartnerVerdicts.made`)."""
        if signature is None:
            return  # a verdict the custodian does not count: nothing of it to keep
        key = self._custodian_policy.approvers.get(approver)
        if key is None:
            self._partner_verdicts.made(self._first_signed_verdict)
            return
        self._partner_verdicts.deliver(
            approval, approver, verdict, signature, self._first_signed_verdict
        )

    def _first_signed_verdict(self) -> bool:
        """Whether no book holds a signed verdict yet: the partner's record may be missing
        only then (else it was lost, with whatever denials it held)."""
        return not self._approvals.holds_signed_verdicts()

    def _check_signing_key(
        self,
        approval: Approval,
        approver: str,
        key: Ed25519PrivateKey | None,
        *,
        withdrawal: bool = False,
    ) -> None:
        """The key the partner's policy holds for ``approver``, if it holds one, is the one
        ``key`` is (see `sign_approval`), for a verdict or a ``withdrawal`` of a denial."""
        held = self._custodian_policy.approvers.get(approver)
        if held is None:
            return
        if key is None:
            raise InvalidInput(
                f"{approver} must sign the withdrawal with their key: the partner lifts a veto "
                "only on a signed withdrawal (give --signing-key FILE)"
                if withdrawal
                else f"{approver} must sign {approval.id} with their key: the partner's "
                "custodian counts only signed verdicts (give --signing-key FILE)"
            )
        if key.public_key().public_bytes_raw() != held:
            what = "withdrawal of" if withdrawal else "verdict on"
            raise AccessDenied(
                f"{what} {approval.id} refused (approval:signing-key): the signing key "
                f"given is not the one the partner's custodian policy holds for {approver}: "
                "its signature would not count",
                rule="approval:signing-key",
            )

    def withdraw_denial(
        self, approval_id: str, ctx: RequestContext, key: Ed25519PrivateKey | None
    ) -> Withdrawal:
        """The denier's own signed withdrawal of their veto of ``approval_id``'s request,
        delivered to the partner, which checks it against its own record (the denial's
        signature it holds, the key its policy holds for them) and lifts the veto; the
        approval itself stays denied. Only the denier may: the others lifting it would
        make the veto a vote they win again. A refusal is `AccessDenied`, audited in the
        approval's cell; without ``key`` `InvalidInput`, as for a verdict. The withdrawal
        is audited before the partner lifts anything (it allows more: fail closed), and a
        refusal by the partner then (two at once), or its record failing then (busy,
        lost), is audited as a second entry (``refused``, ``failed``)."""
        approval = self._approvals.get(approval_id)  # its cell and tenant, for the audit
        resource = approval_resource(approval)
        audit = request_fields(ctx, approval.action)
        principal: Principal | None = None

        def refused(exc: AccessDenied) -> AccessDenied:
            self._logs.audit(
                resource, **audit, decision="deny", rule=exc.rule or "approval:refused",
                result="refused", details=entry_details(principal, resource, "approval",
                                                        approval_id=approval_id),
            ).wait()  # fmt: skip
            return exc

        try:
            principal = self._requesters.resolve(ctx, approval.tenant, approval.jurisdiction)
            signature = self._signed_withdrawal(approval, principal.id, key)
        except AccessDenied as exc:
            raise refused(exc) from None
        self._logs.audit(
            resource, **audit, decision="allow", rule="approval:withdraw", result="withdrawn",
            details=entry_details(principal, resource, "approval", approval_id=approval_id),
        ).wait()  # fmt: skip
        try:
            return self._partner_verdicts.withdraw(approval_id, principal.id, signature)
        except AccessDenied as exc:
            raise refused(exc) from None
        except ShardvaultError:  # the log said withdrawn: it says too that nothing was
            self._logs.audit(
                resource, **audit, decision="deny", rule="approval:withdraw", result="failed",
                details=entry_details(principal, resource, "approval", approval_id=approval_id),
            ).wait()  # fmt: skip
            raise

    def _signed_withdrawal(
        self, approval: Approval, approver: str, key: Ed25519PrivateKey | None
    ) -> bytes:
        """``approver``'s signature withdrawing their denial of ``approval``, checked first
        against the partner's record (theirs to withdraw) and the key it holds for them."""
        denial = self._partner_verdicts.withdrawable(
            approval.id, approver, self._first_signed_verdict
        )
        self._check_signing_key(approval, approver, key, withdrawal=True)
        held = self._custodian_policy.approvers.get(approver)
        if held is None or key is None:  # its denial was kept under a key since removed
            raise AccessDenied(
                f"withdrawal of {approval.id} refused (approval:signing-key): the partner's "
                f"custodian policy holds no key for {approver}, so it cannot verify it",
                rule="approval:signing-key",
            )
        return sign_withdrawal(key, approval.id, approver, denial)


__all__ = ["ApprovalDesk"]
