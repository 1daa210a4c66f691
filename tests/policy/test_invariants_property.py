"""Property tests: no generated rule set can break an invariant."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shardvault.model import DataClass
from shardvault.policy import (
    Action,
    Effect,
    Policy,
    Principal,
    PrincipalKind,
    Resource,
    Rule,
    decide,
)

TENANTS = ["chat", "games", "maps"]
PLACES = ["US", "SG", "EU", "CN"]
ROLES = ["support", "admin", "ops", "privacy"]
PURPOSES = ["serve-user", "support-ticket", "lawful-request", "anything"]


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """None (match anything) or a non-empty set drawn from ``strategy``."""
    return st.none() | st.frozensets(strategy, min_size=1)


rules_st = st.lists(
    st.builds(
        Rule,
        id=st.uuids().map(lambda u: f"r-{u.hex[:12]}"),
        effect=st.sampled_from(list(Effect)),
        actions=maybe(st.sampled_from(list(Action))),
        principal_kinds=maybe(st.sampled_from(list(PrincipalKind))),
        roles=maybe(st.sampled_from(ROLES)),
        principals=maybe(st.sampled_from(["p1", "p2"])),
        purposes=maybe(st.sampled_from(PURPOSES)),
        data_classes=maybe(st.sampled_from(list(DataClass))),
        tenants=maybe(st.sampled_from(TENANTS)),
        jurisdictions=maybe(st.sampled_from(PLACES)),
    ),
    max_size=12,
    unique_by=lambda r: r.id,
)


@st.composite
def principals(draw: st.DrawFn) -> Principal:
    kind = draw(st.sampled_from(list(PrincipalKind)))
    external = kind is PrincipalKind.EXTERNAL_REQUESTER
    return Principal(
        id=draw(st.sampled_from(["p1", "p2"])),
        tenant=draw(st.sampled_from(TENANTS)),
        kind=kind,
        location=draw(st.sampled_from(PLACES)),
        roles=draw(st.frozensets(st.sampled_from(ROLES))),
        authority="authority" if external else None,
        authority_country=draw(st.sampled_from(PLACES)) if external else None,
    )


resources = st.builds(
    Resource,
    tenant=st.sampled_from(TENANTS),
    jurisdiction=st.sampled_from(PLACES),
    data_class=st.sampled_from(list(DataClass)),
)
everything = (
    rules_st,
    principals(),
    st.sampled_from(list(Action)),
    resources,
    st.sampled_from(PURPOSES),
)


@settings(max_examples=200, deadline=None)
@given(*everything)
def test_no_rule_set_lets_a_principal_cross_tenants(rules, principal, action, resource, purpose):
    decision = decide(Policy(tuple(rules)), principal, action, resource, purpose)
    if principal.tenant != resource.tenant:
        assert (decision.effect, decision.rule) == (Effect.DENY, "invariant:cross-tenant")


@settings(max_examples=200, deadline=None)
@given(*everything)
def test_no_rule_set_breaks_the_other_invariants(rules, principal, action, resource, purpose):
    decision = decide(Policy(tuple(rules)), principal, action, resource, purpose)
    protected = resource.data_class is DataClass.PROTECTED
    if (
        protected
        and principal.kind is PrincipalKind.EXTERNAL_REQUESTER
        and principal.authority_country != resource.jurisdiction
    ):
        assert decision.effect is Effect.DENY
    disclosing = action in (Action.READ, Action.LIST, Action.STAT)
    if protected and disclosing and principal.location != resource.jurisdiction:
        assert decision.effect is Effect.DENY
    if action in (Action.FORGET, Action.MOVE):
        assert decision.effect is not Effect.ALLOW
    if not rules:
        assert decision.effect is Effect.DENY
