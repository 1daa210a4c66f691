"""Read policy files and decision tables (TOML, ``version = 1``).

The only module of the policy package that touches files. A file is validated
whole: an unknown key, an unknown action or a duplicate rule id is a
`ConfigError` naming the rule, because a typo in a security policy must not
silently widen or narrow access.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from shardvault.durability import read_bounded
from shardvault.errors import ConfigError, InvalidInput
from shardvault.format_version import check_version
from shardvault.model import DataClass, jurisdiction_code, named, tenant_name, token
from shardvault.path_limits import os_reason
from shardvault.policy.model import (
    Action,
    Effect,
    Policy,
    Principal,
    PrincipalKind,
    Resource,
    Rule,
    as_enum,
)

POLICY_VERSION = 1
_RULE_KEYS = {
    "id",
    "effect",
    "description",
    "actions",
    "principal_kinds",
    "roles",
    "principals",
    "purposes",
    "data_classes",
    "tenants",
    "jurisdictions",
}
E = TypeVar("E", bound=StrEnum)


def _toml(text: str, what: str) -> dict[str, Any]:
    """The document, once its version is the one this reads: one of a later version is
    `NewerFormat` before its other keys are judged (they are that format's)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} is not valid TOML: {exc}") from None
    check_version(data.get("version"), POLICY_VERSION, what)
    return data


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Refuse keys outside ``allowed``, and a value that is no table at all: TOML lets
    ``rule = [1]`` or ``principal = "x"`` through, which reached the checks as a number
    (a traceback from every command) or a string (its letters named as unknown keys)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, not {type(table).__name__} {table!r:.40}")
    extra = set(table) - allowed
    if extra:
        raise ConfigError(f"{where}: unknown keys {sorted(extra)}")


def _text(table: Mapping[str, Any], key: str, where: str) -> str:
    """A string value, or empty if absent: not a number turned into its digits."""
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string, not {type(value).__name__}")
    return value


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a non-empty list of strings")
    return value


def _set(table: Mapping[str, Any], key: str, where: str, parse: Any) -> frozenset[Any] | None:
    """None when absent or ``["*"]`` (match anything); otherwise the parsed set."""
    if key not in table:
        return None
    values = _strings(table[key], f"{where}.{key}")
    if values == ["*"]:
        return None
    try:
        return frozenset(parse(v) for v in values)
    except (InvalidInput, ValueError) as exc:
        raise ConfigError(f"{where}.{key}: {exc}") from None


def _enum(kind: type[E]) -> Any:
    def parse(value: str) -> E:
        return as_enum(kind, value, "value")

    return parse


def parse_rule(table: Mapping[str, Any], where: str) -> Rule:
    _unknown(table, _RULE_KEYS, where)
    if "actions" not in table:
        raise ConfigError(f"{where}: 'actions' is required (use [\"*\"] for every action)")
    try:
        return Rule(
            id=table.get("id", ""),
            effect=_enum(Effect)(table.get("effect", "")),
            actions=_set(table, "actions", where, _enum(Action)),
            principal_kinds=_set(table, "principal_kinds", where, _enum(PrincipalKind)),
            roles=_set(table, "roles", where, lambda v: token(v, "role")),
            principals=_set(table, "principals", where, lambda v: token(v, "principal")),
            purposes=_set(table, "purposes", where, lambda v: token(v, "purpose")),
            data_classes=_set(table, "data_classes", where, _enum(DataClass)),
            tenants=_set(table, "tenants", where, tenant_name),
            jurisdictions=_set(table, "jurisdictions", where, jurisdiction_code),
            description=_text(table, "description", where),
        )
    except InvalidInput as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Parse a whole policy file; `ConfigError` says what and where if it is wrong."""
    data = _toml(text, source)
    _unknown(data, {"version", "rule"}, source)
    rules_raw = data.get("rule", [])
    if not isinstance(rules_raw, list):
        raise ConfigError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    rules = [parse_rule(r, f"{source} rule #{i + 1}") for i, r in enumerate(rules_raw)]
    try:
        return Policy(tuple(rules), POLICY_VERSION)
    except InvalidInput as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_policy(path: str | os.PathLike[str]) -> Policy:
    return parse_policy(_read(path), str(path))


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return read_bounded(path).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {named(str(path))}: {os_reason(exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {named(str(path))}: not UTF-8 text") from None


def parse_principal(table: Mapping[str, Any], where: str) -> Principal:
    allowed = {"id", "tenant", "kind", "location", "roles", "authority", "authority_country"}
    _unknown(table, allowed, where)
    try:
        return Principal(
            id=table.get("id", ""),
            tenant=table.get("tenant", ""),
            kind=_enum(PrincipalKind)(table.get("kind", "")),
            location=table.get("location", ""),
            roles=frozenset(_iter(table.get("roles", []))),
            authority=table.get("authority"),
            authority_country=table.get("authority_country"),
        )
    except InvalidInput as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_resource(table: Mapping[str, Any], where: str) -> Resource:
    _unknown(table, {"tenant", "jurisdiction", "data_class", "subject", "key"}, where)
    try:
        return Resource(
            tenant=table.get("tenant", ""),
            jurisdiction=table.get("jurisdiction", ""),
            data_class=_enum(DataClass)(table.get("data_class", "protected")),
            subject=table.get("subject"),
            key=table.get("key"),
        )
    except InvalidInput as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _iter(value: object) -> Iterable[str]:
    if not isinstance(value, list):
        raise InvalidInput("roles must be a list of strings")
    return value


__all__ = [
    "POLICY_VERSION",
    "load_policy",
    "parse_policy",
    "parse_principal",
    "parse_resource",
    "parse_rule",
]
