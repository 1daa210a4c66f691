"""Decision tables: a TOML file of requests and the decisions they must get.

``shardvault policy test FILE`` runs one against a policy, so a policy change
comes with executable expectations, like a unit test for the rules.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from shardvault.errors import ConfigError, InvalidInput
from shardvault.model import token
from shardvault.policy.engine import decide
from shardvault.policy.loader import (
    _read,
    _text,
    _toml,
    _unknown,
    parse_principal,
    parse_resource,
)
from shardvault.policy.model import (
    Action,
    Decision,
    Effect,
    Policy,
    Principal,
    Resource,
    as_enum,
)

_CASE_KEYS = {"name", "principal", "action", "resource", "purpose", "expect", "rule"}


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    principal: Principal
    action: Action
    resource: Resource
    purpose: str
    expect: Effect
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    decision: Decision
    passed: bool

    def describe(self) -> str:
        status = "ok" if self.passed else "FAIL"
        want = f"{self.case.expect}" + (f" by {self.case.rule}" if self.case.rule else "")
        got = f"{self.decision.effect} by {self.decision.rule}"
        return f"{status}: {self.case.name}: expected {want}, got {got}"


def parse_cases(text: str, source: str = "cases") -> list[Case]:
    data = _toml(text, source)
    _unknown(data, {"version", "case"}, source)
    raw = data.get("case", [])
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: needs at least one [[case]]")
    cases = []
    for i, table in enumerate(raw):
        where = f"{source} case #{i + 1}"
        _unknown(table, _CASE_KEYS, where)
        try:
            cases.append(
                Case(
                    name=_text(table, "name", where) or where,
                    principal=parse_principal(table.get("principal", {}), f"{where}.principal"),
                    action=as_enum(Action, table.get("action"), "action"),
                    resource=parse_resource(table.get("resource", {}), f"{where}.resource"),
                    purpose=token(table.get("purpose"), "purpose"),
                    expect=as_enum(Effect, table.get("expect"), "expected effect"),
                    # a rule of another type, or empty, could never match: the case
                    # would fail as if the policy had changed
                    rule=token(table["rule"], "rule") if "rule" in table else None,
                )
            )
        except ConfigError:
            raise
        except InvalidInput as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return cases


def load_cases(path: str | os.PathLike[str]) -> list[Case]:
    return parse_cases(_read(path), str(path))


def run_table(policy: Policy, cases: Sequence[Case]) -> list[CaseResult]:
    """Decide every case; a case passes when the effect (and rule id, if given) match."""
    results = []
    for case in cases:
        decision = decide(policy, case.principal, case.action, case.resource, case.purpose)
        passed = decision.effect is case.expect and case.rule in (None, decision.rule)
        results.append(CaseResult(case, decision, passed))
    return results


__all__ = ["Case", "CaseResult", "load_cases", "parse_cases", "run_table"]
