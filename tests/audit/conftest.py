"""Shared builders for audit tests: real keys, real files, a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault.audit import merkle
from shardvault.audit.checkpoint import cosign_checkpoint, sign_checkpoint
from shardvault.audit.entry import AuditEntry, AuditHasher, new_entry
from shardvault.audit.log import AuditLog
from shardvault.audit.note import Cosigner, NoteSigner, NoteVerifier

ORIGIN = "audit.us.example/cell-us"
LOG_SIGNER = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(b"\x11" * 32))
WITNESS = Cosigner("partner.example/witness", Ed25519PrivateKey.from_private_bytes(b"\x22" * 32))
LOG_VKEY = LOG_SIGNER.verifier_key()
WITNESS_VKEY = WITNESS.verifier_key()
HASHER = AuditHasher(b"\x33" * 32)
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def make_entry(i: int, decision: str = "allow") -> AuditEntry:
    return new_entry(
        at=T0 + timedelta(seconds=i),
        hasher=HASHER,
        request_id=f"req-{i}",
        principal="svc-api",
        tenant="chat",
        action="read",
        purpose="serve-user",
        decision=decision,
        rule="allow-service",
        result="ok",
        subject=f"user{i % 7}",
        key=f"k/{i}",
    )


def publish_head(log: AuditLog, previous_size: int | None, timestamp: int = 1_760_000_000) -> int:
    """Sign the current head, have the witness cosign it after a consistency check, store it."""
    checkpoint = log.checkpoint(ORIGIN)
    note = sign_checkpoint(checkpoint, LOG_SIGNER).to_bytes()
    previous = proof = None
    if previous_size is not None:
        previous = log.checkpoint(ORIGIN).__class__(
            ORIGIN, previous_size, log.root_at(previous_size)
        )
        proof = log.consistency_proof(previous_size, checkpoint.size)
    cosigned = cosign_checkpoint(
        note,
        NoteVerifier.from_vkey(LOG_VKEY),
        WITNESS,
        timestamp=timestamp,
        previous=previous,
        proof=proof or [],
    )
    log.store_head(cosigned)
    return checkpoint.size


def naive_root(log: AuditLog) -> bytes:
    return merkle.root_of([merkle.leaf_hash(b) for b in log.iter_entry_bytes()])
