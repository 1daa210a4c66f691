"""The approval a request needs or brings: step 3 of the guard's decision.

A decision that requires a k-of-n approval is allowed only with one met for
exactly this request (checked by the subject's and key's names, or by the
pseudonyms a forget leaves); without one, a pending approval is booked and the
request refused with its id, naming the approvers who could sign it: not one
registered as another tenant's principal (`approval_record.check_signer`), nor a
revoked one, nor the requester, nor, for a request the custodian checks the approval
of again (a key use's), one the partner's policy holds no key for. Such an approval
needs the larger of the config's quorum and the partner's, which the custodian counts
it by (`_quorum`): booked with the config's smaller one, it was shown met, and the key
use refused. Where fewer than the quorum could sign it, the request is refused
instead, and nothing booked: that approval could never be met. Either way a signed
denial the partner holds for the same request refuses it first (`partner_verdicts`),
as the custodian would. Every refusal here is audited before it is raised.
"""

from __future__ import annotations

from collections.abc import Callable

from shardvault import custodian_policy as cp
from shardvault.config import GovernanceSpec
from shardvault.errors import AccessDenied, ApprovalRequired
from shardvault.governance.approval_record import (
    HOMED_ELSEWHERE,
    Approval,
    approval_cell,
    homed_elsewhere,
)
from shardvault.governance.approvals import ApprovalBook
from shardvault.governance.audit_logs import AuditLogs, entry_details, request_fields
from shardvault.governance.custodian_gate import KEY_USE_ACTIONS
from shardvault.governance.partner_verdicts import PartnerVerdicts, Veto
from shardvault.governance.principals import PrincipalRegistry
from shardvault.governance.vetoed_request import VetoedRequest
from shardvault.model import RequestContext
from shardvault.policy import Action, Decision, Effect, Principal, Resource


class RequiredApprovals:
    """The approvals book, the partner's signed verdicts and the approval rules in force,
    and the registry, which says whose tenant an approver is."""

    def __init__(
        self,
        spec: GovernanceSpec,
        *,
        registry: PrincipalRegistry,
        logs: AuditLogs,
        approvals: ApprovalBook,
        partner_verdicts: PartnerVerdicts,
        custodian_policy: cp.CustodianPolicy,
        clock: Callable[[], float],
    ) -> None:
        self._spec = spec
        self._registry = registry
        self._logs = logs
        self._approvals = approvals
        self._partner_verdicts = partner_verdicts
        self._custodian_policy = custodian_policy
        self._clock = clock

    def approved(
        self,
        ctx: RequestContext,
        action: Action,
        principal: Principal,
        resource: Resource,
        decision: Decision,
    ) -> str | None:
        """The request's approval id once checked for exactly this use (None if it brings
        none and the decision needs none). A decision that needs one it lacks records a
        pending approval and raises `ApprovalRequired`, unless a signed denial binds the
        request; a bad one, or one such a denial binds, is refused, audited."""
        if ctx.approval_id is None and decision.effect is not Effect.APPROVAL_REQUIRED:
            return None
        veto = None
        try:
            if ctx.approval_id is None:
                asked = VetoedRequest.of(
                    principal.id, str(action), resource.tenant, resource.subject,
                    resource.key, ctx.purpose,
                )  # fmt: skip
            else:
                approval = self._check_approval(ctx.approval_id, ctx, action, principal, resource)
                asked = VetoedRequest.of_approval(approval)
            veto = self.standing_veto(asked)
            if veto is not None:
                raise AccessDenied(str(veto), rule="approval:vetoed")
        except AccessDenied as exc:
            rule = exc.rule or "approval:invalid"
            self._logs.audit(
                resource, **request_fields(ctx, action), decision="deny", rule=rule,
                result="refused",
                details=entry_details(principal, resource, "policy", approval_id=ctx.approval_id,
                                      vetoed_by=veto.approval if veto else None),
            ).wait()  # fmt: skip
            raise AccessDenied(f"{action} refused ({rule}): {exc}", rule=rule) from None
        if ctx.approval_id is None:
            self._request_approval(ctx, principal, action, resource, decision)
        return ctx.approval_id

    def standing_veto(self, asked: VetoedRequest) -> Veto | None:
        """The signed denial the partner holds that binds ``asked``, if one does: the
        guard refuses what the custodian will, so no approval is opened for a vetoed
        request, nor used (for a list or stat no custodian sees). The partner's record
        lost (`IntegrityError`) or unreadable (`Unavailable`, `NewerFormat`) refuses it
        too, as it refuses a verdict: a veto may be in it. Asked only of requests that
        need or bring an approval, never of a plain get or put."""
        return self._partner_verdicts.standing_veto(
            asked, self._custodian_policy.veto_seconds,
            first=lambda: not self._approvals.holds_signed_verdicts(),
        )  # fmt: skip

    def _check_approval(
        self,
        approval_id: str,
        ctx: RequestContext,
        action: Action,
        principal: Principal,
        resource: Resource,
    ) -> Approval:
        """`ApprovalBook.check_use` for this request: by the subject's and key's names, or
        by their pseudonyms, which is all a forget leaves in its approvals (so a retry of
        an interrupted forget, say, still gets its answer). One that covers it not, but
        would in the cell it was asked in, left there as the subject was homed here, is
        refused saying so (`_left_outside_home`)."""
        names = [(resource.subject, resource.key)]
        if resource.subject is not None:
            pseudonym = self._logs.cell(resource.jurisdiction).hasher.pseudonym
            key = pseudonym("key", resource.key) if resource.key is not None else None
            names.append((pseudonym("subject", resource.subject), key))
        mismatch = None
        for subject, key in names:
            try:
                return self._approvals.check_use(
                    approval_id, principal=principal.id, action=str(action),
                    tenant=resource.tenant, jurisdiction=resource.jurisdiction,
                    subject=subject, key=key, purpose=ctx.purpose,
                )  # fmt: skip
            except AccessDenied as exc:
                if exc.rule != "approval:mismatch":
                    raise
                mismatch = exc
        assert mismatch is not None
        raise self._left_outside_home(approval_id, ctx, action, principal, resource) or mismatch

    def _left_outside_home(
        self,
        approval_id: str,
        ctx: RequestContext,
        action: Action,
        principal: Principal,
        resource: Resource,
    ) -> AccessDenied | None:
        """The refusal of an approval asked for exactly this request in another cell, while
        the subject was registered nowhere, and marked homed elsewhere since (it keeps the
        pseudonyms of that cell's log): it tells the requester to ask in the home, which
        decides this request, without naming it. None for any other approval, which is
        told only that it does not cover the request. Read only after that refusal."""
        cell, cells = approval_cell(approval_id), self._logs.cells
        if cell == resource.jurisdiction or resource.subject is None or cell not in cells:
            return None
        approval = self._approvals.get(approval_id)
        pseudonym = cells[cell].hasher.pseudonym
        key = pseudonym("key", resource.key) if resource.key is not None else None
        asked_there = approval.covers(
            principal.id, str(action), resource.tenant, cell,
            pseudonym("subject", resource.subject), key, ctx.purpose,
        )  # fmt: skip
        if approval.homed_elsewhere_at is None or not asked_there:
            return None
        return AccessDenied(
            f"approval {approval_id} covers nothing now: {homed_elsewhere(approval)}",
            rule=f"approval:{HOMED_ELSEWHERE}",
        )

    def _request_approval(
        self,
        ctx: RequestContext,
        principal: Principal,
        action: Action,
        resource: Resource,
        decision: Decision,
    ) -> None:
        """Book a pending approval for the request, its entry durable first, and refuse the
        request with its id (`ApprovalRequired`), saying who could sign it and how; or,
        if too few could, refuse it (`AccessDenied`, audited) and book nothing."""
        able, unable = self._possible_approvers(principal, resource.tenant, action)
        quorum, why = self._quorum(action)
        if len(able) < quorum:
            raise self._unsignable(ctx, action, principal, resource, able, unable)
        approval_id = self._approvals.new_id(resource.jurisdiction)
        self._logs.audit(
            resource, principal=principal.id, request_id=ctx.request_id, action=str(action),
            purpose=ctx.purpose, decision="approval-required", rule=decision.rule,
            result="pending", details=entry_details(principal, resource, "policy",
                                                    approval_id=approval_id),
        ).wait()  # fmt: skip
        now = self._clock()
        self._approvals.create(
            Approval(
                id=approval_id, jurisdiction=resource.jurisdiction, requester=principal.id,
                action=str(action), tenant=resource.tenant, subject=resource.subject,
                key=resource.key, purpose=ctx.purpose, request_id=ctx.request_id,
                created_at=now, expires_at=now + self._spec.approval_ttl,
                quorum=quorum, approvers=tuple(able),
            )
        )  # fmt: skip
        approvers = ", ".join(able)
        signed = " --signing-key THEIR-KEY" if self._custodian_policy.approvers else ""
        raise ApprovalRequired(
            f"{action} needs approval ({decision.rule}): approval {approval_id} is pending; "
            f"{quorum} of [{approvers}]{why} must run 'shardvault approval "
            f"approve {approval_id}{signed}', then retry with the global option (before the "
            f"command) --approval {approval_id}",
            approval_id=approval_id,
        )

    def _quorum(self, action: Action) -> tuple[int, str]:
        """The signatures an approval of ``action`` needs, and why, where not simply the
        config's: a key use's, which the custodian counts again by the partner's own
        ``approval_quorum``, needs that one where it is the larger. The partner's policy
        is the partner's file, so a config asking fewer is not refused for it."""
        ours, partners = self._spec.approval_quorum, self._custodian_policy.approval_quorum
        if str(action) in KEY_USE_ACTIONS and partners > ours:
            counted = "the partner's approval_quorum, by which the custodian counts it"
            return partners, f" ({counted}; the config's is {ours})"
        return ours, ""

    def _possible_approvers(
        self, principal: Principal, tenant: str, action: Action
    ) -> tuple[list[str], list[str]]:
        """The configured approvers who could sign an approval of ``principal``'s ``action``
        in ``tenant``, and why each other could not. One not registered may yet be, to
        this tenant; one registered to another, or revoked (never to be registered
        again), or the requester, may not sign (`approval_record.check_signer`). Of a
        key use's approval, which the custodian counts again, no signature counts there
        but under a key its policy holds (``[approvers]``), for an approver it does not
        bind to other tenants (``[approver_tenants]``): the operator would show met an
        approval the custodian refuses."""
        able: list[str] = []
        unable: list[str] = []
        partner = self._custodian_policy
        key_use = str(action) in KEY_USE_ACTIONS
        for ident in self._spec.approvers:
            record = self._registry.find(ident)
            if ident == principal.id:
                unable.append(f"{ident} is the requester")
            elif record is not None and record.revoked_at is not None:
                unable.append(f"{ident} is revoked")
            elif record is not None and record.principal.tenant != tenant:
                unable.append(f"{ident} is of tenant {record.principal.tenant}")
            elif key_use and ident not in partner.approvers:
                unable.append(f"the partner's policy holds no key for {ident}")
            elif not partner.counts(ident, tenant):
                counted = ", ".join(sorted(partner.approver_tenants[ident])) or "no tenant"
                unable.append(f"the partner's policy counts {ident} for {counted} only")
            else:
                able.append(ident)
        return able, unable

    def _unsignable(
        self,
        ctx: RequestContext,
        action: Action,
        principal: Principal,
        resource: Resource,
        able: list[str],
        unable: list[str],
    ) -> AccessDenied:
        """Audit (durably) the refusal of a request whose approval too few could sign,
        and return the error that says so and what to do."""
        rule = "approval:no-approvers"
        self._logs.audit(
            resource, **request_fields(ctx, action), decision="deny", rule=rule,
            result="refused", details=entry_details(principal, resource, "policy"),
        ).wait()  # fmt: skip
        tenant, (quorum, why_quorum) = resource.tenant, self._quorum(action)
        could = f"only {', '.join(able)}" if able else "none"
        why = "; ".join(unable) if self._spec.approvers else "it names none"
        return AccessDenied(
            f"{action} refused ({rule}): its approval needs {quorum} signatures{why_quorum} by "
            f"approvers of tenant {tenant}, and {could} of the config's governance.approvers "
            f"could sign it ({why}): name principals of tenant {tenant} there, and their keys in "
            "the partner's policy [approvers]",
            rule=rule,
        )


__all__ = ["RequiredApprovals"]
