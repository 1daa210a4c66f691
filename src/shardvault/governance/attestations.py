"""The custodian's signing key, and checking what it signed: destroy attestations.

The partner's custodian signs, with a key of its own (``custodian.skey`` in the
partner's directory, Ed25519, Go ``note`` format, made on first use with mode
0600 as the witness key is), a statement that it destroyed a subject key
(`keys.attestation`). The statement is a C2SP signed note, so the key's public
half is a vkey like the cell's and the witness's.
"""

from __future__ import annotations

from pathlib import Path

from shardvault.audit.note import NoteSigner, NoteVerifier, SignedNote, open_note
from shardvault.errors import AuditUnavailable, IntegrityError, InvalidInput, KeyUnavailable
from shardvault.governance.heads import load_signer
from shardvault.keys.attestation import DestroyStatement, parse_statement

KEY_FILE = "custodian.skey"


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


__all__ = ["CustodianKey", "open_attestation"]
