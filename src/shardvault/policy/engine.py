"""Decide an access: invariants first, then rules (strongest effect wins), default deny.

The invariants encode the system's promises (tenant isolation, residency of
protected data, refusal of foreign government requests, approval for forget and
move). They are code, not policy data, so no policy file can switch them off:
a hard invariant denies before any rule is looked at, and the approval floor
turns an "allow" for forget/move into "approval-required" after the rules ran.
"""

from __future__ import annotations

from collections.abc import Callable

from shardvault.model import DataClass
from shardvault.policy.model import (
    Action,
    Decision,
    Effect,
    Explanation,
    Policy,
    Principal,
    PrincipalKind,
    Resource,
    TraceStep,
    as_enum,
)

CROSS_TENANT = "invariant:cross-tenant"
FOREIGN_GOVERNMENT = "invariant:foreign-government"
PROTECTED_READ_LOCATION = "invariant:protected-read-location"
FORGET_APPROVAL = "invariant:forget-approval"
MOVE_APPROVAL = "invariant:move-approval"
DEFAULT_DENY = "default:deny"
INVARIANTS = (
    CROSS_TENANT,
    FOREIGN_GOVERNMENT,
    PROTECTED_READ_LOCATION,
    FORGET_APPROVAL,
    MOVE_APPROVAL,
)

DISCLOSING_ACTIONS = frozenset({Action.READ, Action.LIST, Action.STAT, Action.DELETE})
"""Actions that reveal protected data or its metadata: allowed only from its jurisdiction.
A delete answers whether a name exists and how many versions it had."""

_DONE = {
    Action.READ: "read",
    Action.LIST: "listed",
    Action.STAT: "inspected",
    Action.DELETE: "deleted",
}

_APPROVAL_FLOORS = {Action.FORGET: FORGET_APPROVAL, Action.MOVE: MOVE_APPROVAL}

_Check = Callable[[Principal, Action, Resource], str | None]


def _cross_tenant(p: Principal, a: Action, r: Resource) -> str | None:
    if p.tenant != r.tenant:
        return f"principal of tenant {p.tenant!r} may not act on tenant {r.tenant!r}"
    return None


def _foreign_government(p: Principal, a: Action, r: Resource) -> str | None:
    if (
        p.kind is PrincipalKind.EXTERNAL_REQUESTER
        and r.data_class is DataClass.PROTECTED
        and p.authority_country != r.jurisdiction
    ):
        # the data's jurisdiction is not named: it would tell the requester where a
        # registered subject lives, and that an unregistered one is not (the audit
        # entry records it)
        return (
            f"request by {p.authority!r} ({p.authority_country}) for protected data "
            "of another jurisdiction is refused"
        )
    return None


def _protected_read_location(p: Principal, a: Action, r: Resource) -> str | None:
    if (
        a in DISCLOSING_ACTIONS
        and r.data_class is DataClass.PROTECTED
        and p.location != r.jurisdiction
    ):
        return (
            f"protected data cannot be {_DONE[a]} from {p.location}; "
            "only from inside its jurisdiction"
        )
    return None


_HARD: tuple[tuple[str, _Check], ...] = (
    (CROSS_TENANT, _cross_tenant),
    (FOREIGN_GOVERNMENT, _foreign_government),
    (PROTECTED_READ_LOCATION, _protected_read_location),
)


def _evaluate(
    policy: Policy,
    principal: Principal,
    action: Action,
    resource: Resource,
    purpose: str,
    trace: list[TraceStep] | None,
) -> Decision:
    for invariant, check in _HARD:
        reason = check(principal, action, resource)
        if trace is not None:
            trace.append(TraceStep(invariant, reason is not None, Effect.DENY, reason or "holds"))
        if reason is not None:
            return Decision(Effect.DENY, invariant, reason)
    winner = None
    for rule in policy.rules:
        matched = rule.matches(principal, action, resource, purpose)
        if trace is not None:
            trace.append(TraceStep(rule.id, matched, rule.effect, rule.description))
        if matched and (winner is None or rule.effect.strength > winner.effect.strength):
            winner = rule
            if trace is None and rule.effect is Effect.DENY:
                break  # nothing is stronger than deny
    if winner is None:
        decision = Decision(
            Effect.DENY, DEFAULT_DENY, f"no rule matches {action} by {principal.id} for {purpose!r}"
        )
    else:
        decision = Decision(winner.effect, winner.id, winner.description or f"rule {winner.id}")
    floor = _APPROVAL_FLOORS.get(action)
    if floor is not None:
        raised = decision.effect is Effect.ALLOW
        if trace is not None:
            trace.append(TraceStep(floor, raised, Effect.APPROVAL_REQUIRED, "approval floor"))
        if raised:
            decision = Decision(
                Effect.APPROVAL_REQUIRED,
                floor,
                f"{action} always needs an approval (rule {decision.rule} would allow it)",
            )
    return decision


def decide(
    policy: Policy, principal: Principal, action: Action, resource: Resource, purpose: str
) -> Decision:
    """The decision for one request. Pure and fast: call it on every access."""
    return _evaluate(policy, principal, as_enum(Action, action, "action"), resource, purpose, None)


def explain(
    policy: Policy, principal: Principal, action: Action, resource: Resource, purpose: str
) -> Explanation:
    """The same decision, with every invariant and rule considered, in order."""
    trace: list[TraceStep] = []
    decision = _evaluate(
        policy, principal, as_enum(Action, action, "action"), resource, purpose, trace
    )
    return Explanation(decision, tuple(trace))


__all__ = [
    "CROSS_TENANT",
    "DEFAULT_DENY",
    "DISCLOSING_ACTIONS",
    "FOREIGN_GOVERNMENT",
    "FORGET_APPROVAL",
    "INVARIANTS",
    "MOVE_APPROVAL",
    "PROTECTED_READ_LOCATION",
    "decide",
    "explain",
]
