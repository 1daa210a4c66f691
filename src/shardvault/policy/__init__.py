"""The access policy engine: pure decisions over typed requests, with fixed invariants.

The vault calls `decide(policy, principal, action, resource, purpose)` on every
access and audits the `Decision` (its ``effect`` and ``rule``) before acting on
it. `explain` and `run_table` back ``shardvault policy check`` and
``shardvault policy test``. The file format is described in ``docs/policy.md``.
"""

from shardvault.policy.engine import (
    CROSS_TENANT,
    DEFAULT_DENY,
    FOREIGN_GOVERNMENT,
    FORGET_APPROVAL,
    INVARIANTS,
    MOVE_APPROVAL,
    PROTECTED_READ_LOCATION,
    decide,
    explain,
)
from shardvault.policy.loader import POLICY_VERSION, load_policy, parse_policy
from shardvault.policy.model import (
    Action,
    Decision,
    Effect,
    Explanation,
    Policy,
    Principal,
    PrincipalKind,
    Resource,
    Rule,
    TraceStep,
)
from shardvault.policy.table import Case, CaseResult, load_cases, parse_cases, run_table

__all__ = [
    "CROSS_TENANT",
    "DEFAULT_DENY",
    "FOREIGN_GOVERNMENT",
    "FORGET_APPROVAL",
    "INVARIANTS",
    "MOVE_APPROVAL",
    "POLICY_VERSION",
    "PROTECTED_READ_LOCATION",
    "Action",
    "Case",
    "CaseResult",
    "Decision",
    "Effect",
    "Explanation",
    "Policy",
    "Principal",
    "PrincipalKind",
    "Resource",
    "Rule",
    "TraceStep",
    "decide",
    "explain",
    "load_cases",
    "load_policy",
    "parse_cases",
    "parse_policy",
    "run_table",
]
