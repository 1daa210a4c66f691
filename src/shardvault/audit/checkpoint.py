"""Signed tree heads as C2SP ``tlog-checkpoint`` notes, cosigned by the partner.

A checkpoint body is three lines: origin, tree size (decimal, no leading zeros),
base64 root hash; optional extension lines follow. The cell signs the body as a
signed note (Ed25519, type 0x01); the partner's witness adds a ``cosignature/v1``
line (type 0x04) after checking the new head is consistent with the last one it
cosigned. Keeping the wire format standard is what lets third-party witnesses
and verifiers check our heads without shardvault code.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from shardvault.audit.merkle import HASH_SIZE, verify_consistency
from shardvault.audit.note import (
    COSIGNATURE_V1,
    ED25519,
    Cosigner,
    NoteSigner,
    NoteVerifier,
    SignedNote,
    open_note,
)
from shardvault.errors import IntegrityError, InvalidInput

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: which log, how many entries, and the Merkle root over them."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or any(c.isspace() and c != " " for c in self.origin):
            raise InvalidInput(f"checkpoint origin {self.origin!r} must be one non-empty line")
        if not 0 <= self.size < 2**64:
            raise InvalidInput(f"checkpoint size {self.size} is out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise InvalidInput(f"checkpoint root hash must be {HASH_SIZE} bytes")
        for line in self.extensions:
            if not line or "\n" in line:
                raise InvalidInput("checkpoint extension lines must be non-empty single lines")

    def body(self) -> str:
        root = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        if not body.endswith("\n"):
            raise InvalidInput("checkpoint body must end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise InvalidInput("checkpoint body needs origin, size and root hash lines")
        origin, size, root, *extensions = lines
        if not _SIZE.fullmatch(size):
            raise InvalidInput(f"checkpoint size {size!r} is not a decimal without leading zeros")
        try:
            root_hash = base64.b64decode(root, validate=True)
        except ValueError:
            raise InvalidInput("checkpoint root hash is not base64") from None
        if base64.b64encode(root_hash).decode("ascii") != root:
            raise InvalidInput("checkpoint root hash is not canonical base64")
        return cls(origin, int(size), root_hash, tuple(extensions))


@dataclass(frozen=True, slots=True)
class VerifiedHead:
    """A checkpoint whose signatures have been checked, and when the partner cosigned it."""

    checkpoint: Checkpoint
    note: SignedNote
    cosigned_at: int | None


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> SignedNote:
    """The cell's signed tree head. The key name should equal the origin (C2SP advice)."""
    return SignedNote(checkpoint.body(), (signer.sign(checkpoint.body()),))


def check_key_kinds(log_key: NoteVerifier, cosigner_key: NoteVerifier | None) -> None:
    """`InvalidInput` unless ``log_key`` is a cell's key (Ed25519, type 0x01) and
    ``cosigner_key`` a witness's (cosignature/v1, type 0x04). A key of the other
    kind is matched by the other signature line: the cell's key given as the
    partner's would take the cell's own signature for the partner's cosignature."""
    if log_key.sig_type != ED25519:
        raise InvalidInput(
            f"key {log_key.name!r} is not an Ed25519 signing key (type 0x01), as a log's is"
        )
    if cosigner_key is not None and cosigner_key.sig_type != COSIGNATURE_V1:
        raise InvalidInput(
            f"key {cosigner_key.name!r} is not a cosignature key (type 0x04), as a witness's is"
        )


def open_checkpoint(
    data: bytes,
    log_key: NoteVerifier,
    *,
    cosigner_key: NoteVerifier | None = None,
    origin: str | None = None,
) -> VerifiedHead:
    """Parse a signed head and check the cell's signature (and the partner's, if given).

    Raises `IntegrityError` if a required signature is missing or wrong, or the
    origin is not the expected one; `InvalidInput` if the note is malformed or a
    key is not of its kind (`check_key_kinds`).
    """
    check_key_kinds(log_key, cosigner_key)
    note = SignedNote.parse(data)
    open_note(note, log_key)
    checkpoint = Checkpoint.parse(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise IntegrityError(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    cosigned_at = open_note(note, cosigner_key) if cosigner_key is not None else None
    return VerifiedHead(checkpoint, note, cosigned_at)


def cosign_checkpoint(
    data: bytes,
    log_key: NoteVerifier,
    cosigner: Cosigner,
    *,
    timestamp: int,
    previous: Checkpoint | None = None,
    proof: Sequence[bytes] = (),
) -> SignedNote:
    """What the partner's witness does: verify, check consistency, countersign.

    ``previous`` is the last head this witness cosigned for the same origin and
    ``proof`` the consistency proof from it to the new head. The witness refuses
    (`IntegrityError`) a head that does not extend what it saw before, and one whose
    origin is not the name of the key that signed it.
    """
    head = open_checkpoint(data, log_key)
    checkpoint = head.checkpoint
    if checkpoint.origin != log_key.name:
        # a log's key vouches for that log alone: a head of another origin under it
        # (another cell given a copy of the key) would verify as a second history of it
        raise IntegrityError(
            f"cannot cosign: a head of {checkpoint.origin!r} signed by the key of "
            f"{log_key.name!r}; a log's key signs its own log's heads only"
        )
    if previous is not None:
        if previous.origin != checkpoint.origin:
            raise IntegrityError("cannot cosign: the previous head is for another log")
        verify_consistency(
            previous.size, checkpoint.size, proof, previous.root_hash, checkpoint.root_hash
        )
    return head.note.with_signature(cosigner.sign_at(head.note.text, timestamp))


__all__ = [
    "Checkpoint",
    "VerifiedHead",
    "check_key_kinds",
    "cosign_checkpoint",
    "open_checkpoint",
    "sign_checkpoint",
]
