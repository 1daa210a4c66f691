"""The custodian's signing key, and checking what it signed: destroy attestations.

The partner's custodian signs, with a key of its own (``custodian.skey`` in the
partner's directory, Ed25519, Go ``note`` format, made on first use with mode
0600 as the witness key is), a statement that it destroyed a subject key
(`keys.attestation`). The statement is a C2SP signed note, so the key's public
half is a vkey like the cell's and the witness's, printed by ``shardvault audit
keys``, and a deletion receipt of version 3 carries the note (docs/formats.md).
"""

from __future__ import annotations

from pathlib import Path

from shardvault.audit.note import ED25519, NoteSigner, NoteVerifier, SignedNote, open_note
from shardvault.errors import AuditUnavailable, IntegrityError, InvalidInput, KeyUnavailable
from shardvault.governance.heads import load_signer
from shardvault.keys.attestation import DestroyStatement, parse_statement
from shardvault.partner_files import CUSTODIAN_KEY

KEY_FILE = CUSTODIAN_KEY


class CustodianKey:
    """The partner custodian's key for destroy attestations, loaded (or made) on first use."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self._signer: NoteSigner | None = None

    @property
    def signer(self) -> NoteSigner:
        """The key; `KeyUnavailable` if it cannot be read or made (no destroy goes ahead)."""
        if self._signer is None:
            path = self.directory / KEY_FILE
            try:
                # the first destroy may come before the witness made the partner's directory
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._signer = load_signer(path, self.name)
            except OSError as exc:
                raise KeyUnavailable(f"the custodian's attestation key {path}: {exc}") from exc
            except AuditUnavailable as exc:  # it is no audit key: say what cannot be used
                raise KeyUnavailable(f"the custodian's attestation key: {exc}") from None
        return self._signer

    def vkey(self) -> str:
        """The public key a receipt's holder checks attestations with."""
        return self.signer.verifier_key()

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_vkey(self.vkey())

    def sign_statement(self, text: str) -> bytes:
        """The signed note of ``text``."""
        return SignedNote(text, (self.signer.sign(text),)).to_bytes()


def custodian_verifier(vkey: str, *others: NoteVerifier | None) -> NoteVerifier:
    """The custodian's public key, as a verifier is given it: an Ed25519 key that is
    none of ``others`` (the cell's key given as the custodian's would take a statement
    the operator signed for the custodian's); `InvalidInput` otherwise."""
    verifier = NoteVerifier.from_vkey(vkey)
    if verifier.sig_type != ED25519:
        raise InvalidInput(
            f"key {verifier.name!r} is not an Ed25519 signing key (type 0x01), as the "
            "custodian's is"
        )
    if any(other is not None and other.public_key == verifier.public_key for other in others):
        raise InvalidInput(
            f"key {verifier.name!r} is the cell's or the partner's witness key, not the "
            "custodian's: pass the custodian's key (shardvault audit keys: custodian)"
        )
    return verifier


def open_attestation(data: bytes, custodian: NoteVerifier | None) -> DestroyStatement:
    """The statement of a destroy attestation, its signature checked against
    ``custodian`` if given; `IntegrityError` if it is not one, or not signed by it."""
    try:
        note = SignedNote.parse(data)
        statement = parse_statement(note.text)
    except InvalidInput as exc:
        raise IntegrityError(f"malformed destroy attestation: {exc}") from None
    if custodian is not None:
        try:
            open_note(note, custodian)
        except IntegrityError as exc:
            raise IntegrityError(f"the destroy attestation is not the custodian's: {exc}") from None
    return statement


def attested_otherwise(
    statement: DestroyStatement,
    *,
    tenant: str,
    jurisdiction: str,
    key_id: str,
    commitment: object,
    forgotten_at: str,
) -> str | None:
    """How the attestation is of another destroy than the one stated beside it, if it
    is: another scope, key, subject (its commitment) or time."""
    if (statement.tenant, statement.jurisdiction) != (tenant, jurisdiction):
        return f"it is of a key of {statement.tenant}/{statement.jurisdiction}"
    if statement.key_id != key_id:
        return f"it is of key {statement.key_id}"
    if statement.subject_commitment != commitment:
        return "it commits to another subject"
    if statement.destroyed_at != forgotten_at:
        return f"it states the key destroyed at {statement.destroyed_at}"
    return None


__all__ = ["CustodianKey", "attested_otherwise", "custodian_verifier", "open_attestation"]
