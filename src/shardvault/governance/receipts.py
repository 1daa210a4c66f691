"""Deletion receipts: a signed, self-verifying statement that a user was forgotten.

A receipt is a C2SP signed note, signed by the cell's audit key, whose text is
one line of canonical JSON (version 1)::

    {"type": "shardvault-deletion-receipt", "v": 1, "tenant", "subject",
     "jurisdiction", "key_id", "key_destroyed": true, "versions_deleted",
     "shards_removed", "forgotten_at",
     "audit": {"origin", "index", "entry": <base64 of the audit entry>,
               "inclusion_proof": [<base64 hash>...], "head": <the cosigned head note>}}

Anyone with the cell's public key (and the partner's) can check, with
`verify_receipt` and nothing else, that the receipt is genuine, that the head is
signed by the cell and cosigned by the partner, and that the forget's audit entry
is in the log under that head (RFC 9162 inclusion proof). The subject id is in
clear: the receipt is for the user (or their regulator), not for the public log.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from shardvault.audit import AuditEntry, Checkpoint, SignedNote, open_checkpoint
from shardvault.audit.checkpoint import check_key_kinds
from shardvault.audit.entry import canonical_json
from shardvault.audit.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from shardvault.audit.note import NoteVerifier, open_note
from shardvault.errors import IntegrityError, InvalidInput
from shardvault.governance.heads import CellAudit
from shardvault.model import jurisdiction_code, subject_id, tenant_name

RECEIPT_TYPE = "shardvault-deletion-receipt"
RECEIPT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What a forget did, as the receipt states it."""

    tenant: str
    subject: str
    jurisdiction: str
    key_id: str
    versions_deleted: int
    shards_removed: int
    forgotten_at: str


def make_receipt(cell: CellAudit, head: SignedNote, index: int, what: Forgotten) -> SignedNote:
    """Sign a receipt for ``what``, proving audit entry ``index`` is under ``head``."""
    checkpoint = Checkpoint.parse(head.text)
    entry = next(iter(cell.log.iter_entry_bytes(index, index + 1)))
    proof = cell.log.inclusion_proof(index, checkpoint.size)
    # checked before it is signed: a proof built from damaged stored nodes is refused
    verify_inclusion(leaf_hash(entry), index, checkpoint.size, proof, checkpoint.root_hash)
    body = {
        "type": RECEIPT_TYPE,
        "v": RECEIPT_VERSION,
        "tenant": what.tenant,
        "subject": what.subject,
        "jurisdiction": what.jurisdiction,
        "key_id": what.key_id,
        "key_destroyed": True,
        "versions_deleted": what.versions_deleted,
        "shards_removed": what.shards_removed,
        "forgotten_at": what.forgotten_at,
        "audit": {
            "origin": cell.origin,
            "index": index,
            "entry": base64.b64encode(entry).decode("ascii"),
            "inclusion_proof": [base64.b64encode(h).decode("ascii") for h in proof],
            "head": head.to_bytes().decode("utf-8"),
        },
    }
    text = canonical_json(body).decode("utf-8") + "\n"
    return SignedNote(text, (cell.signer.sign(text),))


def verify_receipt(data: bytes, cell_key: str, cosigner_key: str | None = None) -> dict[str, Any]:
    """Check a receipt with public keys only; returns its fields or raises `IntegrityError`.

    A malformed key, or one of the wrong kind, is the caller's mistake, not the
    receipt's: `InvalidInput`."""
    verifier = NoteVerifier.from_vkey(cell_key)
    cosigner = NoteVerifier.from_vkey(cosigner_key) if cosigner_key else None
    check_key_kinds(verifier, cosigner)
    try:
        note = SignedNote.parse(data)
    except InvalidInput as exc:
        raise IntegrityError(f"not a valid receipt: {exc}") from None
    open_note(note, verifier)
    body = _body(note.text)
    audit = body["audit"]
    if audit["origin"] != verifier.name:  # the key's own log, not one signed with a copy
        raise IntegrityError(
            f"the receipt's head is for log {audit['origin']!r}, not {verifier.name!r}"
        )
    try:
        head = open_checkpoint(
            audit["head"].encode("utf-8"), verifier, cosigner_key=cosigner, origin=audit["origin"]
        )
        raw_entry = base64.b64decode(audit["entry"], validate=True)
        proof = [base64.b64decode(h, validate=True) for h in audit["inclusion_proof"]]
    except (ValueError, InvalidInput) as exc:
        raise IntegrityError(f"malformed deletion receipt: {exc}") from None
    if any(len(h) != HASH_SIZE for h in proof):
        raise IntegrityError(f"malformed deletion receipt: a proof hash is not {HASH_SIZE} bytes")
    checkpoint = head.checkpoint
    verify_inclusion(
        leaf_hash(raw_entry), audit["index"], checkpoint.size, proof, checkpoint.root_hash
    )
    if not _states(AuditEntry.from_bytes(raw_entry), body):
        raise IntegrityError("the audit entry in the receipt is not this forget")
    return body


_FIELDS = frozenset(
    {"type", "v", "tenant", "subject", "jurisdiction", "key_id", "key_destroyed",
     "versions_deleted", "shards_removed", "forgotten_at", "audit"}
)  # fmt: skip
_AUDIT_FIELDS = frozenset({"origin", "index", "entry", "inclusion_proof", "head"})
_FORGOTTEN_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_MAX_COUNT = 2**53 - 1
_MAX_PROOF = 64  # hashes: one per level of a tree of up to 2^64 entries


def _body(text: str) -> dict[str, Any]:
    """The receipt's JSON, if it is as `make_receipt` writes it (`IntegrityError` if not):
    one encoding, the fields of version 1 and no other, each of its type, and what is
    shown on the verifier's one line of output printable. The cell's key signs whatever
    its holder, the operator, gives it: the signature does not make a field well formed."""
    try:
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        if body.get("type") != RECEIPT_TYPE or not _is_count(body.get("v"), RECEIPT_VERSION):
            raise IntegrityError(f"not a version {RECEIPT_VERSION} deletion receipt")
        audit = body.get("audit")
        if set(body) != _FIELDS or not isinstance(audit, dict) or set(audit) != _AUDIT_FIELDS:
            raise ValueError("not the fields of a deletion receipt")
        _check_fields(body, audit)
        if canonical_json(body).decode("utf-8") + "\n" != text:
            raise ValueError("not in canonical JSON form")
    except (ValueError, RecursionError, InvalidInput) as exc:
        # RecursionError: brackets nested deeper than the parser recurses
        raise IntegrityError(f"malformed deletion receipt: {exc}") from None
    return body


def _check_fields(body: dict[str, Any], audit: dict[str, Any]) -> None:
    """ValueError or `InvalidInput` naming the first field that is not of its kind."""
    tenant_name(body["tenant"])
    subject_id(body["subject"])
    jurisdiction_code(body["jurisdiction"])
    for name, value in (("key_id", body["key_id"]), ("origin", audit["origin"])):
        if not isinstance(value, str) or not value or not value.isprintable():
            raise ValueError(f"{name} is not a printable string")
    if not isinstance(body["forgotten_at"], str) or not _FORGOTTEN_AT.fullmatch(
        body["forgotten_at"]
    ):
        raise ValueError("forgotten_at is not an RFC 3339 UTC time")
    if body["key_destroyed"] is not True:
        raise ValueError("it does not state the subject's key destroyed")
    for name, value in (
        ("versions_deleted", body["versions_deleted"]),
        ("shards_removed", body["shards_removed"]),
        ("index", audit["index"]),
    ):
        if not _is_count(value):
            raise ValueError(f"{name} is not a whole number from 0 to {_MAX_COUNT}")
    proof = audit["inclusion_proof"]
    if not isinstance(proof, list) or len(proof) > _MAX_PROOF:
        raise ValueError(f"inclusion_proof is not a list of at most {_MAX_PROOF} hashes")
    if not all(isinstance(h, str) for h in [*proof, audit["entry"], audit["head"]]):
        raise ValueError("inclusion_proof, entry and head must be strings")


def _is_count(value: object, exactly: int | None = None) -> bool:
    """Whether VALUE is a JSON integer (not a boolean, which equals 0 or 1) in range."""
    if type(value) is not int or not 0 <= value <= _MAX_COUNT:
        return False
    return exactly is None or value == exactly


_RECORDED = ("key_id", "jurisdiction", "versions_deleted", "shards_removed")
"""What a receipt states that its forget's audit entry records too (the subject is
there as a pseudonym only, which a verifier without the cell's key cannot check)."""


def _states(entry: AuditEntry, body: dict[str, Any]) -> bool:
    """Whether the receipt states what the cosigned log recorded of its forget: a signed
    receipt saying more shards were removed than the log says, or another cell, is false."""
    return (
        entry.action == "forget"
        and entry.result == "forgotten"
        and entry.tenant == body.get("tenant")
        and all(entry.details.get(field) == body.get(field) for field in _RECORDED)
    )


__all__ = ["RECEIPT_TYPE", "RECEIPT_VERSION", "Forgotten", "make_receipt", "verify_receipt"]
