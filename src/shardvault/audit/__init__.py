"""Tamper-evident audit log of one cell: entries, Merkle proofs, signed heads, export.

The vault uses, in order: `AuditHasher` + `new_entry` to build an entry,
`AuditLog.append` to make it durable (fail closed: `AuditUnavailable`) or
`AuditLog.submit` to overlap the fsync with other work,
`AuditLog.checkpoint` + `sign_checkpoint` + `AuditLog.store_head` to publish a
head, `cosign_checkpoint` on the partner's side, and `export_to_directory` /
`verify_export` for auditors. Formats are described in ``docs/audit-log.md``.
"""

from shardvault.audit.checkpoint import (
    Checkpoint,
    VerifiedHead,
    cosign_checkpoint,
    open_checkpoint,
    sign_checkpoint,
)
from shardvault.audit.entry import ENTRY_VERSION, AuditEntry, AuditHasher, format_time, new_entry
from shardvault.audit.export import ExportSummary, export_to_directory, export_to_file
from shardvault.audit.log import AuditLog, AuditTicket
from shardvault.audit.note import Cosigner, NoteSigner, NoteVerifier, SignedNote, signer_from_skey
from shardvault.audit.verify import VerifyReport, verify_export

__all__ = [
    "ENTRY_VERSION",
    "AuditEntry",
    "AuditHasher",
    "AuditLog",
    "AuditTicket",
    "Checkpoint",
    "Cosigner",
    "ExportSummary",
    "NoteSigner",
    "NoteVerifier",
    "SignedNote",
    "VerifiedHead",
    "VerifyReport",
    "cosign_checkpoint",
    "export_to_directory",
    "export_to_file",
    "format_time",
    "new_entry",
    "open_checkpoint",
    "sign_checkpoint",
    "signer_from_skey",
    "verify_export",
]
