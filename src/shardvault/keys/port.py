"""The key-custodian port: the independent party that holds root keys.

A root key per (tenant, jurisdiction) never leaves the custodian. The vault
asks it to wrap a new subject key, on every read to unwrap one, and on a forget
to destroy one, always with a Justification the custodian can inspect and
refuse: each of the three is a `KeyOperation` its gate decides. Destroying a
subject key records a tombstone at the custodian, so no restored copy of the
catalog can bring the key back.

A wrap names the subject the key is for, and the custodian records it (as a
tag only it can check); a destroy, or an unwrap that names an approval, is done
only for the subject that approval names, and only if the custodian wrapped the
key for that subject, and a wrap that names an approval only for its subject. So
a met approval to forget (or read) one subject's data destroys (or unwraps) that
subject's key and no other, one to register a subject wraps no other's key, and
the custodian decides it from its own record, not from the vault's catalog.
It then signs an attestation of the destroy with its own key, so a deletion
receipt can prove the key is gone on the custodian's word, not the operator's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from shardvault.model import Justification, jurisdiction_code, tenant_name
from shardvault.slot_init import slot_init


class KeyOperation(enum.StrEnum):
    """What the vault asks of the custodian; its gate decides each one."""

    WRAP = "wrap"
    UNWRAP = "unwrap"
    DESTROY = "destroy"


@slot_init
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
    def wrap(
        self, scope: KeyScope, key_id: str, key: bytes, why: Justification, *, subject: str
    ) -> bytes:
        """Encrypt a subject key under the scope's root key (created on first use), and
        record that it is ``subject``'s; raises AccessDenied, having wrapped nothing, if
        the gate refuses, the key id was recorded for another subject, or (with a gate)
        the justification names an approval of another subject."""

    def unwrap(self, scope: KeyScope, key_id: str, blob: bytes, why: Justification) -> bytes:
        """Decrypt a subject key; raises KeyUnavailable, AccessDenied or SubjectForgotten.
        With a gate, an unwrap whose justification names an approval is done only if the
        key was wrapped for the subject the gate's approval names (AccessDenied if not);
        one naming none is not looked up."""

    def destroy(
        self, scope: KeyScope, key_id: str, why: Justification, *, nonce: bytes | None = None
    ) -> bytes | None:
        """Refuse every later unwrap of this key id, for good; raises AccessDenied,
        leaving the key usable, if the gate refuses, or (with a gate) if the key was not
        wrapped for the subject the gate's approval names.

        With ``nonce``, a gate and a signing key, returns the custodian's signed
        attestation of the destroy (`keys.attestation`), committing with ``nonce`` to
        the subject it checked; for a key destroyed before, the first one it signed.
        Otherwise None."""

    def destroy_attestation(self, scope: KeyScope, key_id: str) -> bytes | None:
        """The attestation the custodian signed when it destroyed this key, if it did:
        a forget run again after its destroy is given the first one."""

    def needs_subjects(self) -> bool:
        """Whether the custodian holds keys wrapped before it recorded their subjects,
        which the vault must name once (`record_subjects`) before they can be destroyed."""

    def record_subjects(self, keys: Iterable[tuple[KeyScope, str, str]]) -> None:
        """Record the subject of each (scope, key id, subject) wrapped before the custodian
        recorded subjects, then take no more: a key that has one keeps it."""

    def close(self) -> None:
        """Release the files it holds open (the vault that opened it closes it); a call
        after it opens them again."""
