"""The decision table, the invariants, explain() and run_table()."""

from __future__ import annotations

import enum
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardvault.errors import InvalidInput
from shardvault.model import DataClass, ObjectRef
from shardvault.policy import (
    DEFAULT_DENY,
    INVARIANTS,
    Action,
    Effect,
    Policy,
    Principal,
    PrincipalKind,
    Resource,
    Rule,
    decide,
    explain,
    load_cases,
    load_policy,
    parse_cases,
    run_table,
)
from shardvault.policy.model import as_enum

HERE = Path(__file__).parent
POLICY = load_policy(HERE / "policy.toml")
CASES = load_cases(HERE / "cases.toml")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_table(case) -> None:
    decision = decide(POLICY, case.principal, case.action, case.resource, case.purpose)
    assert (decision.effect, decision.rule) == (case.expect, case.rule), decision.reason


def test_table_is_big_and_covers_every_invariant() -> None:
    assert len(CASES) >= 40
    assert set(INVARIANTS) | {DEFAULT_DENY} <= {c.rule for c in CASES}
    assert {Effect.ALLOW, Effect.DENY, Effect.APPROVAL_REQUIRED} <= {c.expect for c in CASES}


def test_run_table_reports_pass_and_fail() -> None:
    results = run_table(POLICY, CASES)
    assert all(r.passed for r in results), [r.describe() for r in results if not r.passed]
    wrong = parse_cases(
        (HERE / "cases.toml").read_text().replace('expect = "allow"', 'expect = "deny"', 1)
    )
    results = run_table(POLICY, wrong)
    assert [r.passed for r in results].count(False) == 1
    failed = next(r for r in results if not r.passed)
    assert failed.describe().startswith("FAIL: backend reads its user's data at home")
    assert "got allow by service-serves-users" in failed.describe()


US_SERVICE = Principal("api", "chat", PrincipalKind.SERVICE, "US")
US_DATA = Resource("chat", "US", DataClass.PROTECTED, "u1", "k")


def test_explain_lists_every_invariant_and_rule_in_order() -> None:
    explanation = explain(POLICY, US_SERVICE, Action.READ, US_DATA, "serve-user")
    assert explanation.decision.rule == "service-serves-users"
    ids = [step.rule for step in explanation.trace]
    assert ids[:3] == list(INVARIANTS[:3])
    assert ids[3:] == [r.id for r in POLICY.rules]
    matched = [step.rule for step in explanation.trace if step.matched]
    assert matched == ["service-serves-users"]


def test_explain_shows_the_approval_floor_and_the_rule_it_overrode() -> None:
    pat = Principal("pat", "chat", PrincipalKind.EMPLOYEE, "US", frozenset({"privacy"}))
    explanation = explain(POLICY, pat, Action.FORGET, US_DATA, "user-request")
    assert explanation.decision.effect is Effect.APPROVAL_REQUIRED
    assert "privacy-team-forgets would allow" in explanation.decision.reason
    assert (
        explanation.trace[-1].rule == "invariant:forget-approval" and explanation.trace[-1].matched
    )


def test_explain_stops_at_a_hard_invariant() -> None:
    other = Principal("x", "games", PrincipalKind.SERVICE, "US")
    explanation = explain(POLICY, other, Action.READ, US_DATA, "serve-user")
    assert explanation.decision.rule == "invariant:cross-tenant"
    assert [s.rule for s in explanation.trace] == ["invariant:cross-tenant"]


def test_decide_equals_explain_for_every_case() -> None:
    for case in CASES:
        args = (POLICY, case.principal, case.action, case.resource, case.purpose)
        assert decide(*args) == explain(*args).decision


def test_empty_policy_denies_everything_by_default() -> None:
    for action in Action:
        decision = decide(Policy(), US_SERVICE, action, US_DATA, "serve-user")
        assert (decision.effect, decision.rule) == (Effect.DENY, DEFAULT_DENY)
        assert not decision.allowed


def test_deny_beats_approval_beats_allow_regardless_of_order() -> None:
    rules = [
        Rule("a", Effect.ALLOW),
        Rule("b", Effect.APPROVAL_REQUIRED),
        Rule("c", Effect.DENY),
        Rule("d", Effect.DENY),
    ]
    for ordered in (rules, rules[::-1]):
        decision = decide(Policy(tuple(ordered)), US_SERVICE, Action.WRITE, US_DATA, "p")
        assert decision.effect is Effect.DENY
    decision = decide(Policy(tuple(rules[:2])), US_SERVICE, Action.WRITE, US_DATA, "p")
    assert (decision.effect, decision.rule) == (Effect.APPROVAL_REQUIRED, "b")


def test_a_rule_naming_write_governs_registration_and_one_naming_register_only_it() -> None:
    # a registration is the action `register` (its approval must not be a write's), and
    # policy files written when it was decided as a write keep governing it
    user = Resource("chat", "US", DataClass.PROTECTED, "u1")
    writes = Rule("writes-reviewed", Effect.APPROVAL_REQUIRED, frozenset({Action.WRITE}))
    signups = Rule("signups", Effect.DENY, frozenset({Action.REGISTER}))
    decision = decide(Policy((writes,)), US_SERVICE, Action.REGISTER, user, "p")
    assert (decision.effect, decision.rule) == (Effect.APPROVAL_REQUIRED, "writes-reviewed")
    decision = decide(Policy((signups,)), US_SERVICE, Action.WRITE, US_DATA, "p")
    assert decision.rule == DEFAULT_DENY
    decision = decide(Policy((writes, signups)), US_SERVICE, Action.REGISTER, user, "p")
    assert (decision.effect, decision.rule) == (Effect.DENY, "signups")


class _Verb(enum.StrEnum):
    READ = "read"


def test_an_enum_value_is_taken_as_its_member_and_a_member_as_itself() -> None:
    # as_enum returns a member as it is given (no call): a value, even another enum's
    # member that equals one, still becomes the member, and anything else is refused
    assert as_enum(Action, Action.READ, "action") is Action.READ
    assert as_enum(Action, "read", "action") is Action.READ
    assert as_enum(Action, _Verb.READ, "action") is Action.READ
    assert as_enum(DataClass, DataClass.PUBLIC, "data class") is DataClass.PUBLIC
    for wrong in (DataClass.PUBLIC, "READ", 1, None):
        with pytest.raises(InvalidInput, match=r"^action .* is not one of read, write"):
            as_enum(Action, wrong, "action")


NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
KEYS = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,9}(/[A-Za-z0-9_-]{1,10}){0,2}", fullmatch=True)


@given(
    NAMES,
    st.from_regex(r"[a-z][a-z0-9._@+-]{0,20}", fullmatch=True),
    KEYS,
    st.sampled_from(["US", "EU", "SG"]),
)
def test_a_resource_of_an_object_is_the_checked_constructors(
    tenant: str, subject: str, key: str, jurisdiction: str
) -> None:
    # Resource.of_object skips the checks ObjectRef made; what it makes is the same value
    made = Resource.of_object(ObjectRef(tenant, subject, key), jurisdiction)
    built = Resource(tenant, jurisdiction, DataClass.PROTECTED, subject, key)
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert made.data_class is DataClass.PROTECTED


def test_a_resource_of_an_object_checks_the_jurisdiction_and_any_stand_in() -> None:
    ref = ObjectRef("intl", "alice", "a.txt")
    with pytest.raises(InvalidInput, match=r"^invalid jurisdiction 'us': use an upper"):
        Resource.of_object(ref, "us")

    class Unchecked(ObjectRef):
        def __post_init__(self) -> None:  # a subclass may skip the checks: not trusted
            pass

    with pytest.raises(InvalidInput, match=r"^invalid object key"):
        Resource.of_object(Unchecked("intl", "alice", "../x"), "US")
