"""What the custodian signs when it destroys a subject key: a destroy attestation.

A deletion receipt is signed by the cell, which the operator holds: on its own it
proves only what the operator's log records. The custodian (the partner) attests
the destroy itself, with its own key, in a statement of two lines (docs/formats.md,
"Destroy attestation")::

    shardvault-destroy/v1
    {"destroyed_at":"2026-12-06T10:00:00Z","jurisdiction":"US","key_id":"<id>",
     "subject_commitment":"v1:<hex>","tenant":"intl"}

The first line separates its domain (the custodian's key signs nothing else) and
names the version; the second is JSON with sorted keys and no whitespace. The
commitment is the receipts' own (`subject_commitment`): the vault passes the
nonce, and the custodian commits to the subject *it* checked the key was wrapped
for, so it never signs a commitment to another subject. The signature (a C2SP
signed note, Ed25519) is made by a `StatementSigner` the deployment wires in, so
this module needs no key and no note code.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Protocol

from shardvault.errors import InvalidInput
from shardvault.keys.port import KeyScope
from shardvault.model import jurisdiction_code, tenant_name

HEADER = "shardvault-destroy/v1"
COMMITMENT_PREFIX = "v1:"  # the version of the commitment's own format
_COMMITMENT_TAG = b"shardvault/deletion-receipt/subject-commitment/v1"
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_COMMITMENT = re.compile(r"v1:[0-9a-f]{64}")
_FIELDS = frozenset({"tenant", "jurisdiction", "key_id", "destroyed_at", "subject_commitment"})


def subject_commitment(tenant: str, subject: str, nonce: bytes) -> str:
    """What a forget's outcome entry and the custodian's attestation record of its
    subject: ``v1:`` and the hex SHA-256 of a tag, the tenant, the subject id and the
    nonce, each prefixed by its length. Without the nonce it tells nothing of the id;
    with it, the receipt's holder shows the entry is theirs, and no other (tenant,
    subject, nonce) gives it."""
    digest = hashlib.sha256()
    for part in (_COMMITMENT_TAG, tenant.encode("utf-8"), subject.encode("utf-8"), nonce):
        digest.update(len(part).to_bytes(8, "big") + part)
    return COMMITMENT_PREFIX + digest.hexdigest()


def utc_seconds(at: float) -> str:
    """RFC 3339 UTC to the second, as receipts and attestations state times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


@dataclass(frozen=True, slots=True)
class DestroyStatement:
    """What the custodian attests: this key of this scope, wrapped for the subject the
    commitment opens to, was destroyed at this time."""

    tenant: str
    jurisdiction: str
    key_id: str
    destroyed_at: str
    subject_commitment: str

    def text(self) -> str:
        """The note text the custodian signs."""
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return f"{HEADER}\n{body}\n"

    def epoch(self) -> int:
        """``destroyed_at`` in POSIX seconds: the time the vault records for the forget."""
        return calendar.timegm(time.strptime(self.destroyed_at, "%Y-%m-%dT%H:%M:%SZ"))


def parse_statement(text: str) -> DestroyStatement:
    """The statement of a note text, if it is one exactly as `DestroyStatement.text`
    writes it; `InvalidInput` naming what is not."""
    header, _, rest = text.partition("\n")
    if header != HEADER:
        raise InvalidInput(f"not a destroy attestation: its first line is not {HEADER}")
    try:
        body = json.loads(rest)
    except (ValueError, RecursionError):
        raise InvalidInput("destroy attestation: its second line is not JSON") from None
    if not isinstance(body, dict) or set(body) != _FIELDS:
        raise InvalidInput(f"destroy attestation: not the fields of {HEADER}")
    if not all(isinstance(value, str) for value in body.values()):
        raise InvalidInput("destroy attestation: every field must be a string")
    statement = DestroyStatement(**body)
    _check_fields(statement)
    if statement.text() != text:
        raise InvalidInput("destroy attestation: not in its canonical form")
    return statement


def _check_fields(statement: DestroyStatement) -> None:
    """`InvalidInput` naming the first field that is not of its kind."""
    tenant_name(statement.tenant)
    jurisdiction_code(statement.jurisdiction)
    if not statement.key_id or not statement.key_id.isprintable():
        raise InvalidInput("destroy attestation: key_id is not a printable string")
    if not _TIME.fullmatch(statement.destroyed_at):
        raise InvalidInput("destroy attestation: destroyed_at is not an RFC 3339 UTC time")
    try:
        statement.epoch()
    except ValueError:
        raise InvalidInput("destroy attestation: destroyed_at is not a time") from None
    if not _COMMITMENT.fullmatch(statement.subject_commitment):
        raise InvalidInput("destroy attestation: subject_commitment is not v1: and 64 hex")


class StatementSigner(Protocol):
    """The custodian's signing key: signs a statement's text, returning the signed note.
    Raises `KeyUnavailable` (or another `ShardvaultError`) if the key cannot be used."""

    def sign_statement(self, text: str) -> bytes: ...


def sign_destroy(
    signer: StatementSigner, scope: KeyScope, key_id: str, subject: str, nonce: bytes, at: float
) -> bytes:
    """The signed attestation that the key of ``subject`` (the one the custodian checked
    it was wrapped for) was destroyed at ``at``, committing to the subject with ``nonce``."""
    statement = DestroyStatement(
        scope.tenant, scope.jurisdiction, key_id, utc_seconds(at),
        subject_commitment(scope.tenant, subject, nonce),
    )  # fmt: skip
    return signer.sign_statement(statement.text())


__all__ = [
    "HEADER",
    "DestroyStatement",
    "StatementSigner",
    "parse_statement",
    "sign_destroy",
    "subject_commitment",
    "utc_seconds",
]
