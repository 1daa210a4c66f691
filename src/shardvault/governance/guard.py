"""The one place that decides an access, audits it, and only then lets it happen.

Per vault call, `Governance.authorize`:

1. resolves the request's principal in the registry (or the built-in local
   administrator), so roles, kind and location are the registered ones;
2. asks the pure policy engine (`shardvault.policy.decide`);
3. checks a k-of-n approval when the decision requires one (or creates a
   pending one and refuses with its id), refusing one, or a new one, for a request
   a signed denial the partner holds still binds (`partner_verdicts`);
4. appends the decision to the home cell's audit log and waits until it is
   durable. If that fails the access is refused (`AuditUnavailable`) and
   nothing else happens: fail closed;
5. raises `AccessDenied` on deny, or returns an `Access` the vault acts under.

A caller may ask not to wait in step 4 (``durable=False``) to do work nobody
can see first (reading and verifying shards, writing shards of a version not
yet committed); an entry queued behind another's write overlaps it that way.
It must then call `Access.wait_audited` before the
custodian is asked for a key, before any byte or answer is returned and before
anything is committed; that call raises `AuditUnavailable` if the entry could not
be written. Refusals are always durable before they are raised.

Every later step that can still refuse (the custodian, on a wrap, unwrap or
destroy) is audited too, as are approval signatures and the outcome of a forget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault import custodian_policy as cp
from shardvault.audit import AuditEntry, AuditTicket, SignedNote
from shardvault.config import DEFAULT_STATE_TIMEOUT, Config, GovernanceSpec, default_governance
from shardvault.errors import (
    AccessDenied,
    ApprovalRequired,
    ConfigError,
)
from shardvault.governance.approval_desk import ApprovalDesk
from shardvault.governance.approvals import (
    HOMED_ELSEWHERE,
    Approval,
    ApprovalBook,
    approval_cell,
    homed_elsewhere,
)
from shardvault.governance.attestations import CustodianKey
from shardvault.governance.audit_logs import (
    AuditLogs,
    approval_resource,
    entry_details,
    request_fields,
)
from shardvault.governance.custodian_gate import custodian_gate
from shardvault.governance.heads import CellAudit, PartnerWitness
from shardvault.governance.partner_verdicts import (
    PartnerVerdicts,
    Veto,
    VetoedRequest,
    Withdrawal,
)
from shardvault.governance.principals import PrincipalRegistry
from shardvault.governance.requesters import Requesters
from shardvault.governance.subject_scrubs import SubjectScrubs
from shardvault.keys.rootkey import CustodianGate
from shardvault.model import (
    AuditPosition,
    DataClass,
    Justification,
    ObjectRef,
    RequestContext,
)
from shardvault.policy import (
    Action,
    Decision,
    Effect,
    Policy,
    Principal,
    Resource,
    decide,
    load_policy,
)
from shardvault.policy.model import token

Details = dict[str, str | int | bool | None]


@dataclass(frozen=True, slots=True)
class Access:
    """An allowed access: who (as registered), what, the decision and its audit index."""

    principal: Principal
    purpose: str
    request_id: str
    action: Action
    resource: Resource
    decision: Decision
    audit: AuditTicket = field(compare=False, repr=False)
    approval_id: str | None = None

    def wait_audited(self) -> None:
        """Return once the decision's audit entry is durable (`AuditUnavailable` if not)."""
        self.audit.wait()

    @property
    def audit_index(self) -> int:
        """The decision's index in its cell's log, once durable."""
        return self.audit.wait()

    def justification(self) -> Justification:
        """What the key custodian is shown with every key use for this access: with where
        the decision's entry is, once durable (the custodian keeps it: `governance.seen`)."""
        index = self.audit.wait()
        return Justification(
            principal=self.principal.id,
            purpose=self.purpose,
            request_id=self.request_id,
            requester_jurisdiction=self.principal.location,
            approval_id=self.approval_id,
            audit=AuditPosition(self.resource.jurisdiction, index, self.audit.leaf),
        )


def _check_request(ctx: RequestContext) -> None:
    """The request context's own names, which its maker did not check (`InvalidInput`)."""
    token(ctx.principal, "principal id")
    token(ctx.purpose, "purpose")
    token(ctx.request_id, "request id")
    if ctx.approval_id is not None:
        approval_cell(ctx.approval_id)


class Governance:
    """Principals, policy, approvals, the custodian's policy and every cell's audit log."""

    def __init__(
        self,
        spec: GovernanceSpec,
        *,
        jurisdictions: list[str],
        registry: PrincipalRegistry,
        approvals: ApprovalBook,
        policy: Policy,
        custodian_policy: cp.CustodianPolicy,
        cells: dict[str, CellAudit],
        partner: PartnerWitness,
        clock: Callable[[], float] = time.time,
        state_timeout: float = DEFAULT_STATE_TIMEOUT,
    ) -> None:
        self.spec = spec
        self.state_timeout = state_timeout  # how long another cell's approvals are waited for
        self.jurisdictions = jurisdictions
        self.registry = registry
        self.approvals = approvals
        self.policy = policy
        self.custodian_policy = custodian_policy
        self.cells = cells
        self.partner = partner
        # the partner's too: the custodian's key for destroy attestations
        self.custodian_key = CustodianKey(spec.partner_dir, spec.custodian_name)
        # and its copy of the signed verdicts, which the custodian honours denials from
        self.partner_verdicts = PartnerVerdicts(spec.partner_dir, clock, custodian_policy.approvers)
        self._clock = clock
        self.logs = AuditLogs(cells, partner, clock)
        self.requesters = Requesters(spec, registry)
        self.scrubs = SubjectScrubs(self.logs, approvals, state_timeout)
        self.desk = ApprovalDesk(
            logs=self.logs, requesters=self.requesters, approvals=approvals,
            partner_verdicts=self.partner_verdicts, custodian_policy=custodian_policy,
            standing_veto=self._standing_veto,
        )  # fmt: skip

    @classmethod
    def open(cls, config: Config, clock: Callable[[], float] = time.time) -> Governance:
        spec = config.governance or default_governance(config.base_dir)
        for what, path in (
            ("access policy", spec.policy_path),
            ("custodian policy", spec.custodian_policy_path),
        ):
            if not path.exists():  # what is there but no file, its loader names
                raise ConfigError(
                    f"{what} {path} not found: write one (docs/policy.md) or start from "
                    "'shardvault init --demo DIR'"
                )
        codes = list(config.jurisdictions)
        state = config.state_dir
        if state.exists() and not state.is_dir():
            raise ConfigError(
                f"storage.state_dir {state} is not a directory: move that file away "
                "or point state_dir elsewhere"
            )
        cells = {
            code: CellAudit(code, state / "cells" / code / "audit", spec.origin(code))
            for code in codes
        }
        return cls(
            spec,
            jurisdictions=codes,
            registry=PrincipalRegistry(state / "governance.sqlite", clock),
            approvals=ApprovalBook(state, codes, clock, lambda code: cells[code].hasher.pseudonym),
            policy=load_policy(spec.policy_path),
            custodian_policy=cp.load_custodian_policy(spec.custodian_policy_path),
            cells=cells,
            partner=PartnerWitness(spec.partner_dir, spec.partner_name),
            clock=clock,
            state_timeout=config.state_timeout,
        )

    # the subject's approvals in other cells (`SubjectScrubs`) ---------------------------

    def forget_subject(self, jurisdiction: str, tenant: str, subject: str) -> tuple[str, ...]:
        """`SubjectScrubs.forget_subject`: the cells left owing the scrub."""
        return self.scrubs.forget_subject(jurisdiction, tenant, subject)

    def subject_homed(
        self, home: str, tenant: str, subject: str, *, owed: list[str] | None = None
    ) -> tuple[str, ...]:
        """`SubjectScrubs.subject_homed`: the cells left owing the scrub."""
        return self.scrubs.subject_homed(home, tenant, subject, owed=owed)

    def owe_scrubs(self, home: str, tenant: str, subject: str) -> list[str]:
        """`SubjectScrubs.owe_scrubs`: the cells recorded as owing."""
        return self.scrubs.owe_scrubs(home, tenant, subject)

    def settle_owed_scrubs(self) -> None:
        """`SubjectScrubs.settle_owed_scrubs` (gc's)."""
        self.scrubs.settle_owed_scrubs()

    def refuse_if_homed_elsewhere(
        self, ctx: RequestContext, action: Action, asked: ApprovalRequired
    ) -> None:
        """After ``asked`` sent a request for an id registered nowhere for approval: if its
        approval was marked homed elsewhere as it was booked (`subject_homed`, the id homed
        in another cell meanwhile), refuse the request saying so, audited in that cell at
        the tenant, rather than tell its requester to have an approval signed that can no
        longer be."""
        if asked.approval_id is None:
            return
        approval = self.approvals.get(asked.approval_id)
        if approval.homed_elsewhere_at is None:
            return
        resource = approval_resource(approval)
        principal = self.requesters.resolve(ctx, approval.tenant, approval.jurisdiction)
        rule = f"approval:{HOMED_ELSEWHERE}"
        self.logs.audit(
            resource, **request_fields(ctx, action), decision="deny", rule=rule,
            result="refused", details=entry_details(principal, resource, "policy",
                                                    approval_id=approval.id),
        ).wait()  # fmt: skip
        raise AccessDenied(
            f"{action} refused ({rule}): approval {approval.id} covers nothing now: "
            f"{homed_elsewhere(approval)}",
            rule=rule,
        ) from None

    def close(self) -> None:
        """Close every file; last, write out the audit positions the partner's custodian
        holds (`KeyUnavailable` if it cannot: their entries are then covered only by the
        next cosigned head)."""
        self.release_logs()
        self.approvals.close()
        self.registry.close()
        self.partner.close()

    def resolve(self, ctx: RequestContext, tenant: str, jurisdiction: str) -> Principal:
        """`Requesters.resolve`."""
        return self.requesters.resolve(ctx, tenant, jurisdiction)

    # the decision -----------------------------------------------------------------

    def authorize(
        self,
        ctx: RequestContext,
        action: Action,
        tenant: str,
        jurisdiction: str,
        subject: str | None = None,
        key: str | None = None,
        *,
        durable: bool = True,
    ) -> Access:
        """Decide, audit, then allow (return) or refuse (raise). See the module doc."""
        _check_request(ctx)
        resource = Resource(tenant, jurisdiction, DataClass.PROTECTED, subject, key)
        return self._authorize(ctx, action, resource, durable)

    def authorize_object(
        self, ctx: RequestContext, action: Action, ref: ObjectRef, jurisdiction: str,
        *, durable: bool = True,
    ) -> Access:  # fmt: skip
        """`authorize` for the object REF names, in JURISDICTION; REF's names are not
        checked again (`Resource.of_object`)."""
        _check_request(ctx)
        return self._authorize(ctx, action, Resource.of_object(ref, jurisdiction), durable)

    def _authorize(
        self, ctx: RequestContext, action: Action, resource: Resource, durable: bool
    ) -> Access:
        audit = request_fields(ctx, action)
        principal = self._resolve_audited(ctx, action, resource)
        decision = decide(self.policy, principal, action, resource, ctx.purpose)
        if decision.effect is Effect.DENY:
            raise self._refused(ctx, action, principal, resource, decision)
        approval_id = self._approved(ctx, action, principal, resource, decision)
        ticket = self.logs.audit(
            resource, **audit, decision="allow", rule=decision.rule, result="allowed",
            details=entry_details(principal, resource, "policy", approval_id=approval_id),
        )  # fmt: skip
        if durable:
            ticket.wait()
        return Access(
            principal, ctx.purpose, ctx.request_id, action, resource, decision, ticket, approval_id
        )

    def _approved(
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
            veto = self._standing_veto(asked)
            if veto is not None:
                raise AccessDenied(str(veto), rule="approval:vetoed")
        except AccessDenied as exc:
            rule = exc.rule or "approval:invalid"
            self.logs.audit(
                resource, **request_fields(ctx, action), decision="deny", rule=rule,
                result="refused",
                details=entry_details(principal, resource, "policy", approval_id=ctx.approval_id,
                                      vetoed_by=veto.approval if veto else None),
            ).wait()  # fmt: skip
            raise AccessDenied(f"{action} refused ({rule}): {exc}", rule=rule) from None
        if ctx.approval_id is None:
            self._request_approval(ctx, principal, action, resource, decision)
        return ctx.approval_id

    def _standing_veto(self, asked: VetoedRequest) -> Veto | None:
        """The signed denial the partner holds that binds ``asked``, if one does: the
        guard refuses what the custodian will, so no approval is opened for a vetoed
        request, nor used (for a list or stat no custodian sees). The partner's record
        lost (`IntegrityError`) or unreadable (`Unavailable`, `NewerFormat`) refuses it
        too, as it refuses a verdict: a veto may be in it. Asked only of requests that
        need or bring an approval, never of a plain get or put."""
        return self.partner_verdicts.standing_veto(
            asked, self.custodian_policy.veto_seconds,
            first=lambda: not self.approvals.holds_signed_verdicts(),
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
            pseudonym = self.logs.cell(resource.jurisdiction).hasher.pseudonym
            key = pseudonym("key", resource.key) if resource.key is not None else None
            names.append((pseudonym("subject", resource.subject), key))
        mismatch = None
        for subject, key in names:
            try:
                return self.approvals.check_use(
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
        cell = approval_cell(approval_id)
        if cell == resource.jurisdiction or resource.subject is None or cell not in self.cells:
            return None
        approval = self.approvals.get(approval_id)
        pseudonym = self.cells[cell].hasher.pseudonym
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

    def _resolve_audited(
        self, ctx: RequestContext, action: Action, resource: Resource
    ) -> Principal:
        """`resolve`, auditing a refusal in the resource's cell; a revoked principal is
        still recorded (and counted) as what it is."""
        try:
            return self.requesters.resolve(ctx, resource.tenant, resource.jurisdiction)
        except AccessDenied as exc:
            known = self.registry.find(ctx.principal)
            self.logs.audit(
                resource, **request_fields(ctx, action), decision="deny",
                rule=exc.rule or "governance:principal", result="refused",
                details=entry_details(known.principal if known else None, resource, "policy"),
            ).wait()  # fmt: skip
            raise

    def check_unregistered(
        self,
        ctx: RequestContext,
        action: Action,
        tenant: str,
        jurisdictions: list[str],
        subject: str,
        key: str | None = None,
    ) -> None:
        """May ``ctx`` learn that ``subject`` is registered in no cell? Raise if not.

        Only a principal the policy would let act on the subject in one of the
        tenant's ``jurisdictions`` may: where it is allowed, or, where it needs an
        approval, with one met for exactly this request (without one it gets a
        pending approval and `ApprovalRequired`, as for a registered subject:
        docs/trust-model.md). The answer is audited in that cell. Anyone else
        (another tenant, a foreign authority, an unknown or revoked principal) gets
        a refusal, audited and counted in the tenant's first cell: otherwise "not
        registered" would tell them, unaudited, who is.
        """
        if ctx.approval_id is not None:
            approval_cell(ctx.approval_id)
        first = Resource(tenant, jurisdictions[0], DataClass.PROTECTED, subject, key)
        principal = self._resolve_audited(ctx, action, first)
        refusal = chosen = None
        for jurisdiction in jurisdictions:
            resource = Resource(tenant, jurisdiction, DataClass.PROTECTED, subject, key)
            decision = decide(self.policy, principal, action, resource, ctx.purpose)
            if decision.effect is Effect.ALLOW:
                chosen = resource, decision
                break
            if decision.effect is Effect.APPROVAL_REQUIRED:
                chosen = chosen or (resource, decision)
            else:
                refusal = refusal or decision
        if chosen is None:
            assert refusal is not None
            raise self._refused(ctx, action, principal, first, refusal)
        resource, decision = chosen
        approval_id = self._approved(ctx, action, principal, resource, decision)
        self.logs.audit(
            resource, **request_fields(ctx, action), decision="allow",
            rule=decision.rule, result="not-registered",
            details=entry_details(principal, resource, "policy", approval_id=approval_id),
        ).wait()  # fmt: skip

    def _refused(
        self,
        ctx: RequestContext,
        action: Action,
        principal: Principal,
        resource: Resource,
        decision: Decision,
    ) -> AccessDenied:
        """Audit the policy's refusal (durably) and return the error that says it."""
        self.logs.audit(
            resource, **request_fields(ctx, action), decision="deny", rule=decision.rule,
            result="refused",
            details=entry_details(principal, resource, "policy", reason=decision.reason),
        ).wait()  # fmt: skip
        return AccessDenied(
            f"{action} refused ({decision.rule}): {decision.reason}", rule=decision.rule
        )

    def _request_approval(
        self,
        ctx: RequestContext,
        principal: Principal,
        action: Action,
        resource: Resource,
        decision: Decision,
    ) -> None:
        approval_id = self.approvals.new_id(resource.jurisdiction)
        self.logs.audit(
            resource, principal=principal.id, request_id=ctx.request_id, action=str(action),
            purpose=ctx.purpose, decision="approval-required", rule=decision.rule,
            result="pending", details=entry_details(principal, resource, "policy",
                                                    approval_id=approval_id),
        ).wait()  # fmt: skip
        now = self._clock()
        self.approvals.create(
            Approval(
                id=approval_id, jurisdiction=resource.jurisdiction, requester=principal.id,
                action=str(action), tenant=resource.tenant, subject=resource.subject,
                key=resource.key, purpose=ctx.purpose, request_id=ctx.request_id,
                created_at=now, expires_at=now + self.spec.approval_ttl,
                quorum=self.spec.approval_quorum, approvers=self.spec.approvers,
            )
        )  # fmt: skip
        approvers = ", ".join(self.spec.approvers) or "no approvers configured"
        signed = " --signing-key THEIR-KEY" if self.custodian_policy.approvers else ""
        raise ApprovalRequired(
            f"{action} needs approval ({decision.rule}): approval {approval_id} is pending; "
            f"{self.spec.approval_quorum} of [{approvers}] must run 'shardvault approval "
            f"approve {approval_id}{signed}', then retry with --approval {approval_id}",
            approval_id=approval_id,
        )

    # after the decision --------------------------------------------------------------

    def record_custodian_refusal(self, access: Access, refusal: AccessDenied) -> int:
        """Audit that the key custodian refused a key use the policy had allowed."""
        rule = refusal.rule or "custodian:refused"
        return self.logs.audit(
            access.resource, principal=access.principal.id, request_id=access.request_id,
            action=str(access.action), purpose=access.purpose, decision="deny", rule=rule,
            result="refused", details=entry_details(access.principal, access.resource, "custodian",
                                                    approval_id=access.approval_id),
        ).wait()  # fmt: skip

    def record_outcome(self, access: Access, result: str, **details: str | int) -> int:
        """Audit what an allowed access did (e.g. a forget's destroyed key and shards)."""
        return self.logs.audit(
            access.resource, principal=access.principal.id, request_id=access.request_id,
            action=str(access.action), purpose=access.purpose, decision="allow",
            rule=access.decision.rule, result=result,
            details=entry_details(access.principal, access.resource, "outcome",
                                  approval_id=access.approval_id, **details),
        ).wait()  # fmt: skip

    def custodian_gate(self) -> CustodianGate:
        """The partner's check before every wrap, unwrap and destroy: its own policy, and
        any approval named."""
        return custodian_gate(
            self.custodian_policy, self.approvals, self.partner_verdicts, self.partner.seen
        )

    # approvals (`ApprovalDesk`) ----------------------------------------------------------

    def visible_approvals(self, ctx: RequestContext, *, decided: bool = False) -> list[Approval]:
        """`ApprovalDesk.visible_approvals`."""
        return self.desk.visible_approvals(ctx, decided=decided)

    def sign_approval(
        self,
        approval_id: str,
        ctx: RequestContext,
        verdict: str,
        key: Ed25519PrivateKey | None = None,
    ) -> Approval:
        """`ApprovalDesk.sign_approval`."""
        return self.desk.sign_approval(approval_id, ctx, verdict, key)

    def standing_veto_of(self, approval: Approval) -> Veto | None:
        """`ApprovalDesk.standing_veto_of`."""
        return self.desk.standing_veto_of(approval)

    def standing_vetoes_of(self, approvals: Sequence[Approval]) -> list[Veto | None]:
        """`ApprovalDesk.standing_vetoes_of`."""
        return self.desk.standing_vetoes_of(approvals)

    def withdraw_denial(
        self, approval_id: str, ctx: RequestContext, key: Ed25519PrivateKey | None
    ) -> Withdrawal:
        """`ApprovalDesk.withdraw_denial`."""
        return self.desk.withdraw_denial(approval_id, ctx, key)

    # the cells' logs (`AuditLogs`) ------------------------------------------------------

    def cell(self, jurisdiction: str) -> CellAudit:
        """`AuditLogs.cell`: the cell's audit log and keys (`InvalidInput` if no such cell)."""
        return self.logs.cell(jurisdiction)

    def publish_head(self, jurisdiction: str) -> SignedNote:
        """`AuditLogs.publish_head`: a fresh head, signed by the cell, cosigned by the partner."""
        return self.logs.publish_head(jurisdiction)

    def entries(self, jurisdiction: str, end: int) -> list[AuditEntry]:
        """`AuditLogs.entries`: the cell's first ``end`` entries."""
        return self.logs.entries(jurisdiction, end)

    def forget_outcome(
        self,
        jurisdiction: str,
        tenant: str,
        subject: str,
        key_id: str,
        *,
        known: int | None,
        since: int,
    ) -> int | None:
        """`AuditLogs.forget_outcome`: where the forget that destroyed ``key_id`` is logged."""
        return self.logs.forget_outcome(
            jurisdiction, tenant, subject, key_id, known=known, since=since
        )

    def release_logs(self) -> None:
        """`AuditLogs.release`: every cell's log closed, reopened (and recovered) by its
        next use."""
        self.logs.release()


__all__ = ["Access", "Governance"]
