"""Deletion receipts: a signed, self-verifying statement that a user was forgotten.

A receipt is a C2SP signed note, signed by the cell's audit key, whose text is
one line of canonical JSON (version 3)::

    {"type": "shardvault-deletion-receipt", "v": 3, "tenant", "subject",
     "subject_nonce": <base64 of 32 bytes>, "jurisdiction", "key_id",
     "key_destroyed": true, "versions_deleted", "shards_removed", "forgotten_at",
     "destroy_attestation": <the custodian's signed note>,
     "audit": {"origin", "index", "entry": <base64 of the audit entry>,
               "inclusion_proof": [<base64 hash>...], "head": <the cosigned head note>}}

Anyone with the cell's public key (and the partner's) can check, with
`verify_receipt` and nothing else, that the receipt is genuine, that the head is
signed by the cell and cosigned by the partner, that the forget's audit entry
is in the log under that head (RFC 9162 inclusion proof), and that the entry is
this subject's forget: the entry names the subject by a pseudonym only the cell
can compute, but it also carries a commitment to the tenant and subject id
(`subject_commitment`), which the receipt's nonce opens, and the receipt's
``forgotten_at``. The subject id and nonce are in the receipt only: it is for the
user (or their regulator), not for the public log, where the commitment reveals
nothing of the id. A receipt of version 1 (no nonce) is still verified, but binds
neither its subject nor its time; one built on an entry that commits to its
subject is refused (a version 2 receipt of that forget binds them).

What the cell signs is the operator's word, and so is its log. A receipt of
version 3 also carries the custodian's own signed statement that it destroyed
the key (`keys.attestation`), for the subject the entry commits to, at the
receipt's time of the forget: checked with the custodian's public key, the
destroy no longer rests on the operator's word. One of version 2 or 1 (a
custodian that signed none, a key destroyed before the custodian attested destroys) states
the destroy on the operator's word only; a verifier given the custodian's key
refuses it. The forget's outcome entry commits to the attestation the custodian
returned (``destroy_attestation``: ``sha256:`` and the hex SHA-256 of the note),
so a receipt stripped of it, or carrying another, is refused without that key too.
"""

from __future__ import annotations

import base64
import hashlib
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
from shardvault.governance.attestations import (
    attested_otherwise,
    custodian_verifier,
    open_attestation,
)
from shardvault.governance.heads import CellAudit
from shardvault.keys.attestation import COMMITMENT_PREFIX, subject_commitment
from shardvault.model import jurisdiction_code, subject_id, tenant_name

RECEIPT_TYPE = "shardvault-deletion-receipt"
RECEIPT_VERSION = 3
NONCE_BYTES = 32
_NONCE_LABEL = "deletion-receipt-nonce"
ATTESTATION_DIGEST_PREFIX = "sha256:"  # names the hash: another one is a new form
_ATTESTATION_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


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
    subject_nonce: bytes | None = None  # what opens the entry's subject commitment
    destroy_attestation: bytes | None = None  # the custodian's, signed at the destroy


def receipt_nonce(cell: CellAudit, tenant: str, subject: str, key_id: str) -> bytes:
    """The nonce of a forget's subject commitment: 32 bytes nobody without the cell's
    audit HMAC key can compute (so the commitment in the log hides the id as a random
    nonce would), and the same on every run of one forget, so a run finishing one cut
    short opens the commitment an earlier run wrote, with no secret stored."""
    return cell.hasher.secret(_NONCE_LABEL, json.dumps([tenant, subject, key_id]))


def attestation_digest(note: bytes) -> str:
    """What a forget's outcome entry records of the custodian's attestation of its
    destroy: ``sha256:`` and the hex SHA-256 of the signed note, as a receipt carries it.
    The log then says, for anyone to check, that a receipt of this forget carries it."""
    return ATTESTATION_DIGEST_PREFIX + hashlib.sha256(note).hexdigest()


def make_receipt(
    cell: CellAudit,
    head: SignedNote,
    index: int,
    what: Forgotten,
    custodian: NoteVerifier | None = None,
) -> SignedNote:
    """Sign a receipt for ``what``, proving audit entry ``index`` is under ``head``: of
    version 2 if the entry commits to its subject (which ``what``'s nonce must open), and
    3 if ``what`` also has the custodian's attestation of the destroy (checked against
    the entry, and ``custodian``'s key if given); of version 1 for an entry written
    before entries committed to their subject."""
    checkpoint = Checkpoint.parse(head.text)
    entry = next(iter(cell.log.iter_entry_bytes(index, index + 1)))
    proof = cell.log.inclusion_proof(index, checkpoint.size)
    # checked before it is signed: a proof built from damaged stored nodes is refused
    verify_inclusion(leaf_hash(entry), index, checkpoint.size, proof, checkpoint.root_hash)
    parsed = AuditEntry.from_bytes(entry)
    binding = _binding(parsed, what, custodian)
    unlike = _unlike_committed(parsed, binding.get("destroy_attestation"))
    if unlike:  # signed, it would be a receipt its holder's check refuses
        raise IntegrityError(
            f"the forget's audit entry is not of this receipt: {unlike}; no receipt signed"
        )
    body = {
        "type": RECEIPT_TYPE,
        "v": 1 if not binding else 3 if "destroy_attestation" in binding else 2,
        "tenant": what.tenant,
        "subject": what.subject,
        **binding,
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


def _binding(entry: AuditEntry, what: Forgotten, custodian: NoteVerifier | None) -> dict[str, str]:
    """The fields a receipt of ENTRY adds to bind its subject: none for an entry with no
    commitment; else the nonce, checked to open it, and the custodian's attestation if
    there is one, checked to be of this destroy (`IntegrityError` if not: signed, it
    would be a receipt its holder's check refuses)."""
    if "subject_commitment" not in entry.details:
        return {}
    nonce = what.subject_nonce
    committed = entry.details["subject_commitment"]
    if nonce is None or committed != subject_commitment(what.tenant, what.subject, nonce):
        raise IntegrityError(
            f"the forget's audit entry does not commit to subject {what.subject} of tenant "
            f"{what.tenant}: no receipt signed"
        )
    binding = {"subject_nonce": base64.b64encode(nonce).decode("ascii")}
    if what.destroy_attestation is None:
        return binding
    statement = open_attestation(what.destroy_attestation, custodian)
    wrong = attested_otherwise(
        statement, tenant=what.tenant, jurisdiction=what.jurisdiction, key_id=what.key_id,
        commitment=committed, forgotten_at=what.forgotten_at,
    )  # fmt: skip
    if wrong:
        raise IntegrityError(
            f"the custodian's destroy attestation is not of this forget: {wrong}; no receipt signed"
        )
    return binding | {"destroy_attestation": what.destroy_attestation.decode("utf-8")}


def verify_receipt(
    data: bytes,
    cell_key: str,
    cosigner_key: str | None = None,
    custodian_key: str | None = None,
) -> dict[str, Any]:
    """Check a receipt with public keys only; returns its fields or raises `IntegrityError`.

    With ``custodian_key`` the receipt must carry the custodian's attestation of the
    destroy (version 3), signed by that key. Without it, a version 3 receipt's
    attestation is checked to be of this forget, but not its signature.
    A malformed key, or one of the wrong kind, is the caller's mistake, not the
    receipt's: `InvalidInput`."""
    verifier = NoteVerifier.from_vkey(cell_key)
    cosigner = NoteVerifier.from_vkey(cosigner_key) if cosigner_key else None
    check_key_kinds(verifier, cosigner)
    custodian = custodian_verifier(custodian_key, verifier, cosigner) if custodian_key else None
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
    entry = AuditEntry.from_bytes(raw_entry)
    wrong = _contradiction(entry, body)
    if wrong:
        raise IntegrityError(f"the audit entry in the receipt is not this forget: {wrong}")
    _check_attestation(body, custodian)
    # without the custodian's key too: the log says whether, and which, it attested
    wrong = _unlike_committed(entry, body.get("destroy_attestation"))
    if wrong:
        raise IntegrityError(f"the audit entry in the receipt is not this forget: {wrong}")
    return body


def _check_attestation(body: dict[str, Any], custodian: NoteVerifier | None) -> None:
    """A version 3 receipt's attestation is of its forget (and, given the custodian's key,
    signed by it); a receipt without one is refused when the caller asked for one."""
    if body["v"] < 3:
        if custodian is not None:
            raise IntegrityError(
                f"this version {body['v']} receipt carries no destroy attestation by the "
                "custodian: its key's destroy rests on the operator's word only"
            )
        return
    statement = open_attestation(body["destroy_attestation"].encode("utf-8"), custodian)
    wrong = attested_otherwise(
        statement, tenant=body["tenant"], jurisdiction=body["jurisdiction"],
        key_id=body["key_id"], commitment=subject_commitment(
            body["tenant"], body["subject"], _nonce(body)
        ), forgotten_at=body["forgotten_at"],
    )  # fmt: skip
    if wrong:
        raise IntegrityError(f"the receipt's destroy attestation is not of this forget: {wrong}")


_FIELDS_V1 = frozenset(
    {"type", "v", "tenant", "subject", "jurisdiction", "key_id", "key_destroyed",
     "versions_deleted", "shards_removed", "forgotten_at", "audit"}
)  # fmt: skip
_FIELDS = {
    1: _FIELDS_V1,
    2: _FIELDS_V1 | {"subject_nonce"},
    3: _FIELDS_V1 | {"subject_nonce", "destroy_attestation"},
}
_KNOWN = "1, 2 or 3"  # as the refusals name the versions of _FIELDS
_AUDIT_FIELDS = frozenset({"origin", "index", "entry", "inclusion_proof", "head"})
_FORGOTTEN_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_MAX_COUNT = 2**53 - 1
_MAX_PROOF = 64  # hashes: one per level of a tree of up to 2^64 entries


def _body(text: str) -> dict[str, Any]:
    """The receipt's JSON, if it is as `make_receipt` writes it (`IntegrityError` if not):
    one encoding, the fields of its version and no other, each of its type, and what is
    shown on the verifier's one line of output printable. The cell's key signs whatever
    its holder, the operator, gives it: the signature does not make a field well formed."""
    try:
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        version = body.get("v")
        fields = _FIELDS.get(version) if type(version) is int else None  # not true, 1.0
        if body.get("type") == RECEIPT_TYPE and type(version) is int and version > max(_FIELDS):
            raise IntegrityError(  # not verified, as any receipt that does not check out
                f"a deletion receipt of version {version}; this shardvault checks versions "
                f"{_KNOWN}: upgrade shardvault to verify it"
            )
        if body.get("type") != RECEIPT_TYPE or fields is None:
            raise IntegrityError(f"not a deletion receipt of version {_KNOWN}")
        audit = body.get("audit")
        if set(body) != fields or not isinstance(audit, dict) or set(audit) != _AUDIT_FIELDS:
            raise ValueError(f"not the fields of a version {version} deletion receipt")
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
    if "subject_nonce" in body and len(_nonce(body)) != NONCE_BYTES:
        raise ValueError(f"subject_nonce is not {NONCE_BYTES} bytes")
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
    if not isinstance(body.get("destroy_attestation", ""), str):
        raise ValueError("destroy_attestation must be a string")


def _is_count(value: object) -> bool:
    """Whether VALUE is a JSON integer (not a boolean, which equals 0 or 1) in range."""
    return type(value) is int and 0 <= value <= _MAX_COUNT


def _nonce(body: dict[str, Any]) -> bytes:
    """The receipt's ``subject_nonce``, decoded (ValueError if it is not base64)."""
    if not isinstance(body["subject_nonce"], str):
        raise ValueError("subject_nonce is not a string")
    return base64.b64decode(body["subject_nonce"], validate=True)


_RECORDED = ("key_id", "jurisdiction", "versions_deleted", "shards_removed")
"""What every receipt states that its forget's audit entry records too (the subject
is there as a pseudonym, which a verifier without the cell's key cannot compute)."""


def _contradiction(entry: AuditEntry, body: dict[str, Any]) -> str | None:
    """How the receipt states other than the cosigned log recorded of its forget, if it
    does: a signed receipt saying more shards were removed than the log says, another
    cell, or (version 2 and 3) another subject or time, is false. A version 1 receipt of an
    entry that commits to its subject is refused: it would drop the binding."""
    if not (
        entry.action == "forget"
        and entry.result == "forgotten"
        and entry.tenant == body["tenant"]
        and all(entry.details.get(field) == body[field] for field in _RECORDED)
    ):
        return "it records another forget, key or count"
    committed = entry.details.get("subject_commitment")
    if body["v"] == 1:
        if committed is not None:
            return "it commits to its subject, which a version 1 receipt does not bind"
        return None
    if committed is None:
        return "it commits to no subject"
    if not isinstance(committed, str) or not committed.startswith(COMMITMENT_PREFIX):
        return "it commits to its subject in a form this verifier does not know"
    if committed != subject_commitment(body["tenant"], body["subject"], _nonce(body)):
        return f"it commits to another subject than {body['subject']}"
    if entry.details.get("forgotten_at") != body["forgotten_at"]:
        return "it records another time of the forget"
    return None


def _unlike_committed(entry: AuditEntry, attestation: str | None) -> str | None:
    """How ATTESTATION (None: the receipt carries none) is not the one ENTRY commits to,
    if it is not. An entry written before entries committed to it commits to none, and
    its receipts are checked as before."""
    committed = entry.details.get("destroy_attestation")
    if committed is None:
        return None
    if not isinstance(committed, str) or not _ATTESTATION_DIGEST.fullmatch(committed):
        return "it commits to a destroy attestation in a form this verifier does not know"
    if attestation is None:
        return (
            "it commits to a destroy attestation by the custodian, which the receipt does not carry"
        )
    if attestation_digest(attestation.encode("utf-8")) != committed:
        return "it commits to another destroy attestation by the custodian than the receipt carries"
    return None


__all__ = [
    "RECEIPT_TYPE",
    "RECEIPT_VERSION",
    "Forgotten",
    "attestation_digest",
    "make_receipt",
    "receipt_nonce",
    "subject_commitment",
    "verify_receipt",
]
