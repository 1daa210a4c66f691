"""The key-custodian port: the independent party that holds root keys.

A root key per (tenant, jurisdiction) never leaves the custodian. The vault
asks it to wrap a new subject key, on every read to unwrap one, and on a forget
to destroy one, always with a Justification the custodian can inspect and
refuse: each of the three is a `KeyOperation` its gate decides. Destroying a
subject key records a tombstone at the custodian, so no restored copy of the
catalog can bring the key back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from shardvault.model import Justification, jurisdiction_code, tenant_name


class KeyOperation(enum.StrEnum):
    """What the vault asks of the custodian; its gate decides each one."""

    WRAP = "wrap"
    UNWRAP = "unwrap"
    DESTROY = "destroy"


@dataclass(frozen=True, slots=True)
class KeyScope:
    """Which root key: one per (tenant, jurisdiction)."""

    tenant: str
    jurisdiction: str

    def __post_init__(self) -> None:
        tenant_name(self.tenant)
        jurisdiction_code(self.jurisdiction)

    def label(self) -> str:
        return f"{self.tenant}/{self.jurisdiction}"


class KeyCustodian(Protocol):
    def wrap(self, scope: KeyScope, key_id: str, key: bytes, why: Justification) -> bytes:
        """Encrypt a subject key under the scope's root key (created on first use);
        raises AccessDenied, having created nothing, if the gate refuses."""

    def unwrap(self, scope: KeyScope, key_id: str, blob: bytes, why: Justification) -> bytes:
        """Decrypt a subject key; raises KeyUnavailable, AccessDenied or SubjectForgotten."""

    def destroy(self, scope: KeyScope, key_id: str, why: Justification) -> None:
        """Refuse every later unwrap of this key id, for good; raises AccessDenied,
        leaving the key usable, if the gate refuses."""
