"""The key custodian's own policy: whether to honour one key use (pure, plus a loader).

The custodian is held by the partner, not the operator, and must not trust the
operator's access policy: it decides again every wrap (a subject registered),
unwrap (a read or write) and destroy (a forget), from the `Justification` that
comes with it and the scope of the key, under its own versioned file::

    version = 1
    approval_purposes = ["forget", "move", "lawful-request"]   # need an approval id
    approval_quorum = 2         # signatures an approval needs, of the approvers below
    veto_days = 30              # optional: how long a signed denial binds its request

    [[grant]]
    id = "serve-users"
    purposes = ["serve-user"]
    principals = ["*"]          # optional; "*" or absent = anyone
    tenants = ["chat"]          # optional
    jurisdictions = ["US"]      # optional: the key's jurisdiction
    requires_approval = false   # optional
    operations = ["unwrap"]     # optional: of wrap, unwrap, destroy; absent = all three

    [approvers]                 # approver principal id = its Ed25519 public key:
    dpo = "<base64 of the 32-byte key>"   # the partner decides whose signatures count

    [approver_tenants]          # optional: the tenants whose approvals each one's
    dpo = ["chat"]              # signature counts for (absent or "*": every tenant)

Fixed rules, not configurable: the justification must name a principal, a
purpose and a request id; the requester's jurisdiction must be given and equal
the key's; a purpose in ``approval_purposes`` (or a grant that requires it)
needs an approval id. Anything no grant covers is refused (default deny). The
approval an id names counts only with ``approval_quorum`` signatures that verify
under ``[approvers]`` (`shardvault.governance.approval_signatures`), of approvers
``[approver_tenants]`` binds to no other tenant than the approval's; a policy
without ``[approvers]`` lets no approval count. A signed denial refuses every approval
for the same request until ``veto_days`` after it was delivered, or until the
denied approval's expiry if that is later (`shardvault.governance.partner_verdicts`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shardvault.durability import read_bounded
from shardvault.errors import AccessDenied, ConfigError, InvalidInput
from shardvault.format_version import check_version
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.model import (
    Justification,
    is_token,
    jurisdiction_code,
    named,
    principal_id,
    tenant_name,
    token,
)
from shardvault.path_limits import os_reason
from shardvault.slot_init import slot_init

CUSTODIAN_POLICY_VERSION = 1
JUSTIFICATION_REQUIRED = "custodian:justification"
SAME_JURISDICTION = "custodian:same-jurisdiction"
APPROVAL_REQUIRED = "custodian:approval"
DEFAULT_DENY = "custodian:default-deny"
DEFAULT_VETO_DAYS = 30
MAX_VETO_DAYS = 3650

_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_GRANT_KEYS = {
    "id", "purposes", "principals", "tenants", "jurisdictions", "requires_approval", "operations",
}  # fmt: skip
ALL_OPERATIONS = frozenset(KeyOperation)
_OPERATION_NAMES = tuple(op.value for op in KeyOperation)


@dataclass(frozen=True, slots=True)
class Grant:
    """Purposes (and optionally principals, tenants, key jurisdictions) the custodian
    honours, for the key operations it names (all three unless restricted)."""

    id: str
    purposes: frozenset[str]
    principals: frozenset[str] | None = None
    tenants: frozenset[str] | None = None
    jurisdictions: frozenset[str] | None = None
    requires_approval: bool = False
    operations: frozenset[KeyOperation] = ALL_OPERATIONS

    def covers(self, operation: KeyOperation, justification: Justification, key: KeyScope) -> bool:
        return (
            operation in self.operations
            and justification.purpose in self.purposes
            and (self.principals is None or justification.principal in self.principals)
            and (self.tenants is None or key.tenant in self.tenants)
            and (self.jurisdictions is None or key.jurisdiction in self.jurisdictions)
        )


@dataclass(frozen=True, slots=True)
class CustodianPolicy:
    """The partner's grants, the purposes that need an approval, and whose signatures on
    an approval count (``approvers``: principal id → raw Ed25519 public key) and how many
    (``approval_quorum``; 0 with no approvers: then no approval counts), and for how
    many days a signed denial binds its request (``veto_days``)."""

    grants: tuple[Grant, ...] = ()
    approval_purposes: frozenset[str] = frozenset()
    version: int = CUSTODIAN_POLICY_VERSION
    approvers: Mapping[str, bytes] = field(default_factory=dict)
    approval_quorum: int = 0
    veto_days: int = DEFAULT_VETO_DAYS
    approver_tenants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """The tenants whose approvals an approver's signature counts for; one not named
    here, for every tenant."""

    @property
    def veto_seconds(self) -> float:
        return self.veto_days * 86400.0

    def approvers_of(self, tenant: str) -> Mapping[str, bytes]:
        """The keys whose signatures count on an approval of ``tenant``: the operator lets
        an approver sign only its own tenant's approvals, and the partner need not trust
        it to (``[approver_tenants]``)."""
        return {ident: key for ident, key in self.approvers.items() if self.counts(ident, tenant)}

    def counts(self, approver: str, tenant: str) -> bool:
        """Whether ``[approver_tenants]`` lets APPROVER's signature count for TENANT."""
        bound = self.approver_tenants.get(approver)
        return bound is None or tenant in bound


@slot_init
@dataclass(frozen=True, slots=True)
class CustodianDecision:
    """Whether to do the key operation, the rule (grant id or fixed rule) that decided, and why."""

    allowed: bool
    rule: str
    reason: str
    operation: KeyOperation

    def refusal(self) -> AccessDenied:
        """The `AccessDenied` a refusal raises: names the operation and carries the rule."""
        return AccessDenied(
            f"key custodian refused the {self.operation} ({self.rule}): {self.reason}",
            rule=self.rule,
        )


def _valid(value: str | None, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def decide_key_use(
    policy: CustodianPolicy,
    operation: KeyOperation,
    justification: Justification,
    key: KeyScope,
) -> CustodianDecision:
    """Decide one wrap, unwrap or destroy. Pure; every refusal names its rule so it can
    be audited. The fixed rules are the same for the three operations."""
    j = justification

    def decision(allowed: bool, rule: str, reason: str) -> CustodianDecision:
        return CustodianDecision(allowed, rule, reason, operation)

    if not (is_token(j.principal) and is_token(j.purpose) and is_token(j.request_id)):
        return decision(
            False, JUSTIFICATION_REQUIRED, "principal, purpose and request id are required"
        )
    if j.requester_jurisdiction != key.jurisdiction:
        return decision(
            False,
            SAME_JURISDICTION,
            f"requester jurisdiction {j.requester_jurisdiction!r} is not the key's "
            f"({key.jurisdiction})",
        )
    for grant in policy.grants:  # the first that covers it (a loop: no generator per use)
        if grant.covers(operation, j, key):
            break
    else:
        return decision(
            False, DEFAULT_DENY, f"no grant covers the {operation} for purpose {j.purpose!r}"
        )
    needs_approval = grant.requires_approval or j.purpose in policy.approval_purposes
    if needs_approval and not is_token(j.approval_id):
        return decision(False, APPROVAL_REQUIRED, f"purpose {j.purpose!r} needs an approval id")
    return decision(
        True, grant.id, f"grant {grant.id} covers the {operation} for purpose {j.purpose!r}"
    )


def require_key_use(
    policy: CustodianPolicy,
    operation: KeyOperation,
    justification: Justification,
    key: KeyScope,
) -> CustodianDecision:
    """`decide_key_use`, raising `AccessDenied` (with the rule) when it refuses."""
    decision = decide_key_use(policy, operation, justification, key)
    if not decision.allowed:
        raise decision.refusal()
    return decision


def _names(table: dict[str, Any], key: str, where: str, check: Any) -> frozenset[str] | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key} must be a non-empty list of strings")
    if value == ["*"]:
        return None
    try:
        return frozenset(check(v) for v in value)
    except InvalidInput as exc:
        raise ConfigError(f"{where}.{key}: {exc}") from None


def _operations(table: dict[str, Any], where: str) -> frozenset[KeyOperation]:
    if "operations" not in table:
        return ALL_OPERATIONS
    value = table["operations"]
    known = ", ".join(_OPERATION_NAMES)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.operations must be a non-empty list of: {known}")
    unknown = [v for v in value if v not in _OPERATION_NAMES]
    if unknown:
        raise ConfigError(f"{where}.operations: {unknown[0]!r} is not one of: {known}")
    return frozenset(KeyOperation(v) for v in value)


PUBLIC_KEY_BYTES = 32


def public_key_text(key: Ed25519PublicKey) -> str:
    """How ``[approvers]`` writes a public key: standard base64 of its 32 raw bytes."""
    return base64.b64encode(key.public_bytes_raw()).decode("ascii")


def parse_public_key(text: object) -> bytes:
    """The raw Ed25519 public key ``[approvers]`` gives as base64 (`InvalidInput`)."""
    if not isinstance(text, str):
        raise InvalidInput("must be a string: the base64 of a 32-byte Ed25519 public key")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("is not base64 (of a 32-byte Ed25519 public key)") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise InvalidInput(
            f"is {len(raw)} bytes, not the {PUBLIC_KEY_BYTES} of an Ed25519 public key"
        )
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise InvalidInput("is not an Ed25519 public key") from None
    return raw


def _approvers(data: dict[str, Any], source: str) -> tuple[dict[str, bytes], int]:
    """``[approvers]`` and ``approval_quorum``, which come together or not at all: the
    partner names whose signatures count and how many."""
    table, quorum = data.get("approvers"), data.get("approval_quorum")
    if table is None and quorum is None:
        return {}, 0
    if not isinstance(table, dict) or not table:
        raise ConfigError(
            f"{source}: [approvers] must name at least one approver and its public key"
            + (" (approval_quorum is given)" if table is None else "")
        )
    keys: dict[str, bytes] = {}
    for name, text in table.items():
        try:
            principal_id(name)
        except InvalidInput as exc:
            raise ConfigError(f"{source}: approvers: {exc}") from None
        try:
            raw = parse_public_key(text)
        except InvalidInput as exc:
            raise ConfigError(f"{source}: approvers.{name} {exc}") from None
        twin = next((other for other, held in keys.items() if held == raw), None)
        if twin is not None:  # one key holder would count twice
            raise ConfigError(f"{source}: approvers.{name} has the same key as {twin}")
        keys[name] = raw
    if type(quorum) is not int or not 1 <= quorum <= len(keys):  # not 2.0, nor true
        raise ConfigError(
            f"{source}: approval_quorum must be a whole number from 1 to {len(keys)} "
            f"(the approvers named), not {quorum!r}"
        )
    return keys, quorum


def _approver_tenants(
    data: dict[str, Any], approvers: Mapping[str, bytes], source: str
) -> dict[str, frozenset[str]]:
    """``[approver_tenants]``: the tenants whose approvals each approver's signature counts
    for. Without it the partner counted any ``approval_quorum`` of its keys on any
    tenant's approval, two approvers of one tenant on another's included."""
    table = data.get("approver_tenants")
    if table is None:
        return {}
    where = f"{source}: approver_tenants"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table: approver id = [tenants]")
    bound: dict[str, frozenset[str]] = {}
    for name in table:
        if name not in approvers:
            raise ConfigError(f"{where}.{name} is not an approver of [approvers]")
        tenants = _names(table, name, where, tenant_name)
        if tenants is not None:  # "*": every tenant, as if not named
            bound[name] = tenants
    return bound


def _veto_days(data: dict[str, Any], source: str) -> int:
    """``veto_days``: the partner's, as the quorum is, since it bounds what one approver's
    denial is worth. Absent, a month: long enough to outlast the approvals asked again
    after a veto, short enough that a request judged anew later can be asked."""
    days = data.get("veto_days", DEFAULT_VETO_DAYS)
    if type(days) is not int or not 0 <= days <= MAX_VETO_DAYS:  # not 30.0, nor true
        raise ConfigError(
            f"{source}: veto_days must be a whole number of days from 0 to {MAX_VETO_DAYS}, "
            f"not {days!r}"
        )
    return days


def _purpose(value: str) -> str:
    return token(value, "purpose")


def parse_custodian_policy(text: str, source: str = "custodian policy") -> CustodianPolicy:
    """Parse and validate a whole custodian policy file (`ConfigError` on any problem)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    check_version(data.get("version"), CUSTODIAN_POLICY_VERSION, source)
    extra = set(data) - {
        "version", "approval_purposes", "grant", "approvers", "approval_quorum", "veto_days",
        "approver_tenants",
    }  # fmt: skip
    if extra:
        raise ConfigError(f"{source}: unknown keys {sorted(extra)}")
    approval = _names(data, "approval_purposes", source, _purpose) or frozenset()
    grants_raw = data.get("grant", [])
    if not isinstance(grants_raw, list):
        raise ConfigError(f"{source}: 'grant' must be an array of tables ([[grant]])")
    grants, seen = [], set()
    for i, table in enumerate(grants_raw):
        where = f"{source} grant #{i + 1}"
        if not isinstance(table, dict):  # `grant = [1]`: a TypeError, not a message, before
            raise ConfigError(f"{where} must be a table ([[grant]] with id and purposes)")
        extra = set(table) - _GRANT_KEYS
        if extra:
            raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
        grant_id: Any = table.get("id")
        if not _valid(grant_id, _ID) or grant_id in seen:
            raise ConfigError(f"{where}: id {grant_id!r} is missing, invalid or used twice")
        seen.add(grant_id)
        purposes = _names(table, "purposes", where, _purpose)
        if purposes is None:
            raise ConfigError(f"{where}: 'purposes' must list the purposes it grants")
        requires = table.get("requires_approval", False)
        if not isinstance(requires, bool):
            raise ConfigError(f"{where}.requires_approval must be true or false")
        grants.append(
            Grant(
                id=grant_id,
                purposes=purposes,
                principals=_names(table, "principals", where, principal_id),
                tenants=_names(table, "tenants", where, tenant_name),
                jurisdictions=_names(table, "jurisdictions", where, jurisdiction_code),
                requires_approval=requires,
                operations=_operations(table, where),
            )
        )
    approvers, quorum = _approvers(data, source)
    return CustodianPolicy(
        tuple(grants), approval, approvers=approvers, approval_quorum=quorum,
        veto_days=_veto_days(data, source),
        approver_tenants=_approver_tenants(data, approvers, source),
    )  # fmt: skip


def load_custodian_policy(path: str | os.PathLike[str]) -> CustodianPolicy:
    try:
        text = read_bounded(path).decode("utf-8")  # not a FIFO's open, which may wait for ever
    except OSError as exc:
        raise ConfigError(f"cannot read {named(os.fspath(path))}: {os_reason(exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {named(os.fspath(path))}: not UTF-8 text") from None
    return parse_custodian_policy(text, str(path))


__all__ = [
    "APPROVAL_REQUIRED",
    "CUSTODIAN_POLICY_VERSION",
    "DEFAULT_DENY",
    "DEFAULT_VETO_DAYS",
    "JUSTIFICATION_REQUIRED",
    "SAME_JURISDICTION",
    "CustodianDecision",
    "CustodianPolicy",
    "Grant",
    "KeyOperation",
    "KeyScope",
    "decide_key_use",
    "load_custodian_policy",
    "parse_custodian_policy",
    "parse_public_key",
    "public_key_text",
    "require_key_use",
]
