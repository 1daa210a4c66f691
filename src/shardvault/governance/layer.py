"""The governance layer of one deployment: opened from its config, its parts wired and closed.

`Governance` owns the registry, the approvals book, the policies, every cell's
audit log and the partner's files, and the parts that use them, each with one
job: the guard that decides every request (`guard`), the approvals desk of the
``approval`` commands (`approval_desk`), the scrubs of a forgotten or rehomed
subject's approvals (`subject_scrubs`) and the cells' logs (`audit_logs`). The
vault asks the guard directly to authorize each get and put, so that path takes
no extra call; everything else the vault, the CLI and the tests ask of
`Governance`, which hands it to the part that does it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault import custodian_policy as cp
from shardvault.audit import AuditEntry, SignedNote
from shardvault.config import DEFAULT_STATE_TIMEOUT, Config, GovernanceSpec, default_governance
from shardvault.errors import AccessDenied, ApprovalRequired, ConfigError
from shardvault.governance.approval_desk import ApprovalDesk
from shardvault.governance.approval_record import Approval
from shardvault.governance.approvals import ApprovalBook
from shardvault.governance.attestations import CustodianKey
from shardvault.governance.audit_logs import AuditLogs
from shardvault.governance.custodian_gate import custodian_gate
from shardvault.governance.guard import Access, Guard
from shardvault.governance.heads import CellAudit, PartnerWitness
from shardvault.governance.partner_verdicts import PartnerVerdicts, Veto, Withdrawal
from shardvault.governance.principals import PrincipalRegistry
from shardvault.governance.requesters import Requesters
from shardvault.governance.required_approvals import RequiredApprovals
from shardvault.governance.subject_scrubs import SubjectScrubs
from shardvault.keys.rootkey import CustodianGate
from shardvault.model import RequestContext
from shardvault.policy import Action, Policy, Principal, load_policy


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
        self.logs = AuditLogs(cells, partner, clock)
        self.requesters = Requesters(spec, registry)
        required = RequiredApprovals(
            spec, registry=registry, logs=self.logs, approvals=approvals,
            partner_verdicts=self.partner_verdicts, custodian_policy=custodian_policy, clock=clock,
        )  # fmt: skip
        self.guard = Guard(
            policy, logs=self.logs, requesters=self.requesters, registry=registry,
            approvals=approvals, required=required,
        )  # fmt: skip
        self.desk = ApprovalDesk(
            logs=self.logs, requesters=self.requesters, approvals=approvals,
            partner_verdicts=self.partner_verdicts, custodian_policy=custodian_policy,
            standing_veto=required.standing_veto,
        )  # fmt: skip
        self.scrubs = SubjectScrubs(self.logs, approvals, state_timeout)

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

    def close(self) -> None:
        """Close every file; last, write out the audit positions the partner's custodian
        holds (`KeyUnavailable` if it cannot: their entries are then covered only by the
        next cosigned head)."""
        self.release_logs()
        self.approvals.close()
        self.registry.close()
        self.partner.close()

    def custodian_gate(self) -> CustodianGate:
        """The partner's check before every wrap, unwrap and destroy: its own policy, and
        any approval named."""
        return custodian_gate(
            self.custodian_policy, self.approvals, self.partner_verdicts, self.partner.seen
        )

    def resolve(self, ctx: RequestContext, tenant: str, jurisdiction: str) -> Principal:
        """`Requesters.resolve`."""
        return self.requesters.resolve(ctx, tenant, jurisdiction)

    # the guard's steps off the per-request path (`Guard`) ----------------------------

    def check_unregistered(
        self,
        ctx: RequestContext,
        action: Action,
        tenant: str,
        jurisdictions: list[str],
        subject: str,
        key: str | None = None,
    ) -> None:
        """`Guard.check_unregistered`: may ``ctx`` learn ``subject`` is registered nowhere?"""
        self.guard.check_unregistered(ctx, action, tenant, jurisdictions, subject, key)

    def refuse_if_homed_elsewhere(
        self, ctx: RequestContext, action: Action, asked: ApprovalRequired
    ) -> None:
        """`Guard.refuse_if_homed_elsewhere`."""
        self.guard.refuse_if_homed_elsewhere(ctx, action, asked)

    def record_custodian_refusal(self, access: Access, refusal: AccessDenied) -> int:
        """`Guard.record_custodian_refusal`: the refusal's index in the cell's log."""
        return self.guard.record_custodian_refusal(access, refusal)

    def record_outcome(self, access: Access, result: str, **details: str | int) -> int:
        """`Guard.record_outcome`: the outcome's index in the cell's log."""
        return self.guard.record_outcome(access, result, **details)

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


__all__ = ["Governance"]
