"""The one place that decides an access, audits it, and only then lets it happen.

Per vault call, `Guard.authorize`:

1. resolves the request's principal in the registry (or the built-in local
   administrator), so roles, kind and location are the registered ones
   (`requesters`);
2. asks the pure policy engine (`shardvault.policy.decide`);
3. checks a k-of-n approval when the decision requires one (or creates a
   pending one and refuses with its id), refusing one, or a new one, for a request
   a signed denial the partner holds still binds (`required_approvals`);
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
destroy) is audited too, as is the outcome of a forget; approval signatures are
audited by the approvals desk (`approval_desk`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardvault.audit import AuditTicket
from shardvault.errors import AccessDenied, ApprovalRequired
from shardvault.governance.approval_record import HOMED_ELSEWHERE, approval_cell, homed_elsewhere
from shardvault.governance.approvals import ApprovalBook
from shardvault.governance.audit_logs import (
    AuditLogs,
    approval_resource,
    entry_details,
    request_fields,
)
from shardvault.governance.principals import PrincipalRegistry
from shardvault.governance.requesters import Requesters
from shardvault.governance.required_approvals import RequiredApprovals
from shardvault.model import (
    AuditPosition,
    DataClass,
    Justification,
    ObjectRef,
    RequestContext,
    token,
)
from shardvault.policy import Action, Decision, Effect, Policy, Principal, Resource, decide
from shardvault.slot_init import slot_init


@slot_init
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
        return Justification(  # in field order, by position: keywords cost 2 k a get
            self.principal.id,
            self.purpose,
            self.request_id,
            self.principal.location,
            self.approval_id,
            AuditPosition(self.resource.jurisdiction, index, self.audit.leaf),
        )


def _check_request(ctx: RequestContext) -> None:
    """The request context's own names, which its maker did not check (`InvalidInput`)."""
    token(ctx.principal, "principal id")
    token(ctx.purpose, "purpose")
    token(ctx.request_id, "request id")
    if ctx.approval_id is not None:
        approval_cell(ctx.approval_id)


class Guard:
    """Decides each request under the policy, audits the decision, then allows or refuses it."""

    def __init__(
        self,
        policy: Policy,
        *,
        logs: AuditLogs,
        requesters: Requesters,
        registry: PrincipalRegistry,
        approvals: ApprovalBook,
        required: RequiredApprovals,
    ) -> None:
        self._policy = policy
        self._logs = logs
        self._requesters = requesters
        self._registry = registry
        self._approvals = approvals
        self._required = required

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
        decision = decide(self._policy, principal, action, resource, ctx.purpose)
        if decision.effect is Effect.DENY:
            raise self._refused(ctx, action, principal, resource, decision)
        approval_id = self._required.approved(ctx, action, principal, resource, decision)
        ticket = self._logs.audit(
            resource, **audit, decision="allow", rule=decision.rule, result="allowed",
            details=entry_details(principal, resource, "policy", approval_id=approval_id),
        )  # fmt: skip
        if durable:
            ticket.wait()
        return Access(
            principal, ctx.purpose, ctx.request_id, action, resource, decision, ticket, approval_id
        )

    def _resolve_audited(
        self, ctx: RequestContext, action: Action, resource: Resource
    ) -> Principal:
        """`resolve`, auditing a refusal in the resource's cell; a revoked principal is
        still recorded (and counted) as what it is."""
        try:
            return self._requesters.resolve(ctx, resource.tenant, resource.jurisdiction)
        except AccessDenied as exc:
            known = self._registry.find(ctx.principal)
            self._logs.audit(
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
            decision = decide(self._policy, principal, action, resource, ctx.purpose)
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
        approval_id = self._required.approved(ctx, action, principal, resource, decision)
        self._logs.audit(
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
        self._logs.audit(
            resource, **request_fields(ctx, action), decision="deny", rule=decision.rule,
            result="refused",
            details=entry_details(principal, resource, "policy", reason=decision.reason),
        ).wait()  # fmt: skip
        return AccessDenied(
            f"{action} refused ({decision.rule}): {decision.reason}", rule=decision.rule
        )

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
        approval = self._approvals.get(asked.approval_id)
        if approval.homed_elsewhere_at is None:
            return
        resource = approval_resource(approval)
        principal = self._requesters.resolve(ctx, approval.tenant, approval.jurisdiction)
        rule = f"approval:{HOMED_ELSEWHERE}"
        self._logs.audit(
            resource, **request_fields(ctx, action), decision="deny", rule=rule,
            result="refused", details=entry_details(principal, resource, "policy",
                                                    approval_id=approval.id),
        ).wait()  # fmt: skip
        raise AccessDenied(
            f"{action} refused ({rule}): approval {approval.id} covers nothing now: "
            f"{homed_elsewhere(approval)}",
            rule=rule,
        ) from None

    def record_custodian_refusal(self, access: Access, refusal: AccessDenied) -> int:
        """Audit that the key custodian refused a key use the policy had allowed."""
        rule = refusal.rule or "custodian:refused"
        return self._logs.audit(
            access.resource, principal=access.principal.id, request_id=access.request_id,
            action=str(access.action), purpose=access.purpose, decision="deny", rule=rule,
            result="refused",
            details=entry_details(access.principal, access.resource, "custodian",
                                  approval_id=access.approval_id),
        ).wait()  # fmt: skip

    def record_outcome(self, access: Access, result: str, **details: str | int) -> int:
        """Audit what an allowed access did (e.g. a forget's destroyed key and shards)."""
        return self._logs.audit(
            access.resource, principal=access.principal.id, request_id=access.request_id,
            action=str(access.action), purpose=access.purpose, decision="allow",
            rule=access.decision.rule, result=result,
            details=entry_details(access.principal, access.resource, "outcome",
                                  approval_id=access.approval_id, **details),
        ).wait()  # fmt: skip


__all__ = ["Access", "Guard"]
