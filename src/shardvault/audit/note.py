"""C2SP signed notes with Ed25519 signatures and timestamped cosignatures.

Implements exactly what shardvault needs from three C2SP specs so that tools
built for Go's ``golang.org/x/mod/sumdb/note``, Sigstore and the witness network
can check our tree heads:

- ``signed-note``: text ending in ``\\n``, a blank line, then lines
  ``— <name> base64(key ID || signature)``; Ed25519 is signature type ``0x01``.
- ``tlog-cosignature`` v1: signature type ``0x04``; the signed message is
  ``cosignature/v1\\ntime <t>\\n`` + note text; the signature is
  ``u64 big-endian t || Ed25519 signature``.
- verifier keys (vkeys): ``<name>+<hex key ID>+base64(type || public key)``.

Key ID = SHA-256(name || 0x0A || type || public key)[:4]. All Ed25519 work is
done by pyca/cryptography. A failed verification raises `IntegrityError`;
malformed notes or keys raise `InvalidInput`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shardvault.errors import IntegrityError, InvalidInput
from shardvault.model import shown

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
MAX_SIGNATURES = 16
_DASH = "\u2014 "
_NAME = re.compile(r"[^\s+]+")
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _b64decode(text: str, what: str) -> bytes:
    if not _B64.fullmatch(text) or len(text) % 4:
        raise InvalidInput(f"{what} is not standard padded base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise InvalidInput(f"{what} is not standard padded base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        # Unused trailing bits must be zero: one encoding per value, so a changed
        # character can never leave the signature bytes unchanged.
        raise InvalidInput(f"{what} is not canonical base64")
    return raw


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"key name {shown(name)} must be non-empty, without spaces or '+'")
    if not name.isascii():  # bytes of a command line that are not UTF-8 have no key ID
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"key name {shown(name)} is not UTF-8 text") from None
    return name


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4]."""
    material = name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key
    return hashlib.sha256(material).digest()[:4]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a note."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{_DASH}{self.name} {blob}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A note text and its signature lines, in order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def to_bytes(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode("utf-8")

    def with_signature(self, signature: NoteSignature) -> SignedNote:
        """Add a signature line, replacing one from the same key (name and key ID)."""
        kept = tuple(
            s for s in self.signatures if (s.name, s.key_id) != (signature.name, signature.key_id)
        )
        return SignedNote(self.text, (*kept, signature))

    @classmethod
    def parse(cls, data: bytes) -> SignedNote:
        try:
            message = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("signed note is not valid UTF-8") from None
        if any(ord(c) < 0x20 and c != "\n" for c in message):
            raise InvalidInput("signed note contains a control character other than newline")
        split = message.rfind("\n\n")
        if split < 0 or not message.endswith("\n"):
            raise InvalidInput("signed note has no blank line before its signatures")
        text, block = message[: split + 1], message[split + 2 :]
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise InvalidInput(f"signed note has more than {MAX_SIGNATURES} signatures")
        signatures = []
        for line in lines:
            if not line.startswith(_DASH):
                raise InvalidInput(f"malformed signature line {line!r}")
            name, sep, blob = line[len(_DASH) :].partition(" ")
            _check_name(name)
            raw = _b64decode(blob, "signature") if sep else b""
            if len(raw) < 5:
                raise InvalidInput(f"signature line for {name!r} is too short")
            signatures.append(NoteSignature(name, raw[:4], raw[4:]))
        return cls(text, tuple(signatures))


class NoteSigner:
    """Signs note texts with an Ed25519 key under a name (signature type 0x01)."""

    sig_type = ED25519

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.name = _check_name(name)
        self._private = private_key
        self.public_key = _raw_public(private_key.public_key())
        self.key_id = key_id(name, self.sig_type, self.public_key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, <key hidden>)"

    def verifier_key(self) -> str:
        """The vkey string a verifier is configured with."""
        return format_vkey(self.name, self.sig_type, self.public_key)

    def sign(self, text: str) -> NoteSignature:
        _check_text(text)
        return NoteSignature(self.name, self.key_id, self._private.sign(text.encode("utf-8")))


class Cosigner(NoteSigner):
    """A witness (the partner) countersigning checkpoints: tlog-cosignature v1, type 0x04."""

    sig_type = COSIGNATURE_V1

    def sign_at(self, text: str, timestamp: int) -> NoteSignature:
        """Cosign ``text`` (a checkpoint body) as of ``timestamp`` (POSIX seconds)."""
        _check_text(text)
        if not 0 <= timestamp < 2**63:
            raise InvalidInput("cosignature timestamp must be in 0..2^63-1")
        signature = self._private.sign(cosigned_message(text, timestamp))
        return NoteSignature(self.name, self.key_id, timestamp.to_bytes(8, "big") + signature)

    def sign(self, text: str) -> NoteSignature:
        raise InvalidInput("a cosignature needs a timestamp: use sign_at(text, timestamp)")


def cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise InvalidInput("note text must end with a newline")


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted public key: name, signature type and the 32-byte Ed25519 key."""

    name: str
    sig_type: int
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.sig_type not in (ED25519, COSIGNATURE_V1):
            raise InvalidInput(f"unsupported note signature type 0x{self.sig_type:02x}")
        if len(self.public_key) != 32:
            raise InvalidInput("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.sig_type, self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``name+hexkeyid+base64(type || key)``; the key ID must match the key."""
        parts = vkey.split("+", 2)
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise InvalidInput(
                f"malformed verifier key {shown(vkey, 200)}: want name+hexkeyid+base64"
            )
        name, hex_id, blob = parts
        raw = _b64decode(blob, "verifier key material")
        if len(raw) != 33:
            raise InvalidInput("verifier key material must be a type byte and 32 key bytes")
        verifier = cls(name, raw[0], raw[1:])
        if verifier.key_id.hex() != hex_id:
            raise InvalidInput(
                f"verifier key {shown(name)}: key ID {hex_id} does not match the key"
            )
        return verifier

    def vkey(self) -> str:
        return format_vkey(self.name, self.sig_type, self.public_key)

    def matches(self, signature: NoteSignature) -> bool:
        return signature.name == self.name and signature.key_id == self.key_id

    def verify(self, text: str, signature: NoteSignature) -> int | None:
        """Check one matching signature; returns the cosignature time (type 0x04) or None."""
        key = Ed25519PublicKey.from_public_bytes(self.public_key)
        timestamp: int | None = None
        body = signature.signature
        if self.sig_type == COSIGNATURE_V1:
            if len(body) != 72:
                raise IntegrityError(f"cosignature by {self.name!r} has the wrong length")
            timestamp = int.from_bytes(body[:8], "big")
            if timestamp >= 2**63:
                raise IntegrityError(f"cosignature by {self.name!r} has an invalid time")
            message, body = cosigned_message(text, timestamp), body[8:]
        else:
            if len(body) != 64:
                raise IntegrityError(f"signature by {self.name!r} has the wrong length")
            message = text.encode("utf-8")
        try:
            key.verify(body, message)
        except InvalidSignature:
            raise IntegrityError(f"signature by {self.name!r} does not verify") from None
        return timestamp


def format_vkey(name: str, sig_type: int, public_key: bytes) -> str:
    material = base64.b64encode(bytes([sig_type]) + public_key).decode("ascii")
    return f"{name}+{key_id(name, sig_type, public_key).hex()}+{material}"


def open_note(note: SignedNote, verifier: NoteVerifier) -> int | None:
    """Verify ``note`` against one trusted key, as C2SP requires.

    Signatures from other keys are ignored; a signature from this key that fails
    is fatal; no signature from this key is fatal. Returns the cosignature time.
    """
    mine = [s for s in note.signatures if verifier.matches(s)]
    if not mine:
        raise IntegrityError(
            f"note is not signed by {verifier.name!r} (key ID {verifier.key_id.hex()})"
        )
    times = [verifier.verify(note.text, s) for s in mine]
    return times[-1]


def signer_from_skey(skey: str) -> NoteSigner:
    """Parse Go's ``PRIVATE+KEY+name+hexkeyid+base64(0x01 || seed)`` signer key format."""
    prefix = "PRIVATE+KEY+"
    if not skey.startswith(prefix):
        raise InvalidInput("signer key must start with PRIVATE+KEY+")
    parts = skey[len(prefix) :].split("+", 2)
    if len(parts) != 3:
        raise InvalidInput("malformed signer key: want PRIVATE+KEY+name+hexkeyid+base64")
    name, hex_id, blob = parts
    raw = _b64decode(blob, "signer key material")
    if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
        raise InvalidInput("signer key material must be a type byte and a 32-byte seed")
    private = Ed25519PrivateKey.from_private_bytes(raw[1:])
    signer = (Cosigner if raw[0] == COSIGNATURE_V1 else NoteSigner)(name, private)
    if signer.key_id.hex() != hex_id:
        raise InvalidInput(
            f"signer key {shown(name)}: key ID {shown(hex_id)} does not match the key"
        )
    return signer


__all__ = [
    "COSIGNATURE_V1",
    "ED25519",
    "Cosigner",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "SignedNote",
    "format_vkey",
    "key_id",
    "open_note",
    "signer_from_skey",
]
