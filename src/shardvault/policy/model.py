"""Policy domain types: who asks, what for, on what, and what was decided.

Values validate on construction (as in `shardvault.model`), so the engine never
sees a principal without a tenant or an external requester without a country.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TypeVar

from shardvault.errors import InvalidInput
from shardvault.model import (
    DataClass,
    ObjectRef,
    jurisdiction_code,
    object_key,
    principal_id,
    shown,
    subject_id,
    tenant_name,
    token,
)
from shardvault.slot_init import slot_init

_E = TypeVar("_E", bound=enum.Enum)
_RULE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class Action(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    REGISTER = "register"
    """Registering a subject: named apart from a write so that an approval of one is
    not an approval of the other (a rule naming ``write`` covers it too: `Rule`)."""
    DELETE = "delete"
    LIST = "list"
    STAT = "stat"
    FORGET = "forget"
    MOVE = "move"
    ADMIN = "admin"
    AUDIT = "audit"


class Effect(enum.StrEnum):
    """Ordered by strength: when several rules match, the strongest wins."""

    ALLOW = "allow"
    APPROVAL_REQUIRED = "approval-required"
    DENY = "deny"

    @property
    def strength(self) -> int:
        return _STRENGTH[self]


_STRENGTH = {Effect.ALLOW: 0, Effect.APPROVAL_REQUIRED: 1, Effect.DENY: 2}


class PrincipalKind(enum.StrEnum):
    SERVICE = "service"
    EMPLOYEE = "employee"
    PARTNER_AUDITOR = "partner-auditor"
    EXTERNAL_REQUESTER = "external-requester"


def as_enum(kind: type[_E], value: object, what: str) -> _E:
    """An enum member from its value, or `InvalidInput` listing the allowed values. A member
    is returned as it is, as ``kind(value)`` would, without that call's two Python frames
    (a get asks twice: the resource's data class and the action)."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise InvalidInput(f"{what} {shown(value)} is not one of {allowed}") from None


def rule_id(value: object) -> str:
    if not isinstance(value, str) or not _RULE_ID.fullmatch(value):
        raise InvalidInput(
            f"invalid rule id {value!r}: lower-case letters, digits, '.', '_', '-' "
            "(the 'invariant:' and 'default:' prefixes are reserved)"
        )
    return value


@dataclass(frozen=True, slots=True)
class Principal:
    """Who acts. Bound to one tenant; ``location`` is the jurisdiction they act from."""

    id: str
    tenant: str
    kind: PrincipalKind
    location: str
    roles: frozenset[str] = frozenset()
    authority: str | None = None
    authority_country: str | None = None

    def __post_init__(self) -> None:
        principal_id(self.id)
        tenant_name(self.tenant)
        object.__setattr__(self, "kind", as_enum(PrincipalKind, self.kind, "principal kind"))
        jurisdiction_code(self.location)
        object.__setattr__(self, "roles", frozenset(token(r, "role") for r in self.roles))
        if self.kind is PrincipalKind.EXTERNAL_REQUESTER:
            if self.authority is None or self.authority_country is None:
                raise InvalidInput(
                    f"external requester {self.id!r} needs an authority and its country"
                )
            token(self.authority, "authority")
            jurisdiction_code(self.authority_country)
        elif self.authority is not None or self.authority_country is not None:
            raise InvalidInput(f"only an external requester has an authority ({self.id!r})")


@dataclass(frozen=True, slots=True)
class Resource:
    """What is acted on: a tenant's data of one subject jurisdiction and data class."""

    tenant: str
    jurisdiction: str
    data_class: DataClass = DataClass.PROTECTED
    subject: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        tenant_name(self.tenant)
        jurisdiction_code(self.jurisdiction)
        object.__setattr__(self, "data_class", as_enum(DataClass, self.data_class, "data class"))
        if self.subject is not None:
            subject_id(self.subject)
        if self.key is not None:
            if self.subject is None:
                raise InvalidInput("a resource with an object key needs its subject")
            object_key(self.key)

    @classmethod
    def of_object(cls, ref: ObjectRef, jurisdiction: str) -> Resource:
        """The protected object REF names, in JURISDICTION. Only the jurisdiction is
        checked: REF's tenant, subject and key were, by the same checks, when it was
        made (an ObjectRef is immutable), and checking them again cost every get and
        put about 10 k instructions. The fields are set as the constructor sets them.
        Anything but an ObjectRef itself (a subclass may skip its checks) is checked."""
        if type(ref) is not ObjectRef:
            return cls(ref.tenant, jurisdiction, DataClass.PROTECTED, ref.subject, ref.key)
        resource = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(resource, "tenant", ref.tenant)
        setattr_(resource, "jurisdiction", jurisdiction_code(jurisdiction))
        setattr_(resource, "data_class", DataClass.PROTECTED)
        setattr_(resource, "subject", ref.subject)
        setattr_(resource, "key", ref.key)
        return resource


@slot_init
@dataclass(frozen=True, slots=True)
class Decision:
    """The effect, the id of the rule (or invariant) that made it, and why."""

    effect: Effect
    rule: str
    reason: str

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule. A condition left as ``None`` matches anything."""

    id: str
    effect: Effect
    actions: frozenset[Action] | None = None
    principal_kinds: frozenset[PrincipalKind] | None = None
    roles: frozenset[str] | None = None
    principals: frozenset[str] | None = None
    purposes: frozenset[str] | None = None
    data_classes: frozenset[DataClass] | None = None
    tenants: frozenset[str] | None = None
    jurisdictions: frozenset[str] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        rule_id(self.id)
        object.__setattr__(self, "effect", as_enum(Effect, self.effect, "effect"))
        if self.actions is not None and Action.WRITE in self.actions:
            # a registration was decided as a write before it had an action of its own:
            # a rule naming write governs it still, as policy files written then expect
            object.__setattr__(self, "actions", self.actions | {Action.REGISTER})

    def matches(
        self, principal: Principal, action: Action, resource: Resource, purpose: str
    ) -> bool:
        return (
            (self.actions is None or action in self.actions)
            and (self.principal_kinds is None or principal.kind in self.principal_kinds)
            and (self.roles is None or not self.roles.isdisjoint(principal.roles))
            and (self.principals is None or principal.id in self.principals)
            and (self.purposes is None or purpose in self.purposes)
            and (self.data_classes is None or resource.data_class in self.data_classes)
            and (self.tenants is None or resource.tenant in self.tenants)
            and (self.jurisdictions is None or resource.jurisdiction in self.jurisdictions)
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """A versioned, ordered rule set. Order only breaks ties between equal effects."""

    rules: tuple[Rule, ...] = ()
    version: int = 1

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise InvalidInput(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One rule or invariant considered by `explain`, and what it did."""

    rule: str
    matched: bool
    effect: Effect | None
    note: str


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    trace: tuple[TraceStep, ...] = field(default=())


__all__ = [
    "Action",
    "Decision",
    "Effect",
    "Explanation",
    "Policy",
    "Principal",
    "PrincipalKind",
    "Resource",
    "Rule",
    "TraceStep",
]
