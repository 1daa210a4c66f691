"""Signed notes, vkeys and cosignatures against published vectors from other implementations."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault.audit.note import (
    COSIGNATURE_V1,
    ED25519,
    Cosigner,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    SignedNote,
    cosigned_message,
    key_id,
    open_note,
    signer_from_skey,
)
from shardvault.errors import IntegrityError, InvalidInput

# golang.org/x/mod/sumdb/note: the package documentation's example.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()

# A real checkpoint of a staging CT log with real witness cosignatures (tlog-cosignature v1),
# as published in the tests of an independent Python implementation.
REAL_CHECKPOINT = """arche2025h1.staging.ct.transparency.dev
1432088532
U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=

— arche2025h1.staging.ct.transparency.dev zTM8sQAAAZ5W0WdjBAMARjBEAiBjW5IQf9pvsYLfQFX6hoGREPMHbdQ3urbllzalApkptQIgIpwtEroeW2BXaHAI4kJXFbon5Ch9MNL5zRNZ55lvGt0=
— arche2025h1.staging.ct.transparency.dev ui8GwCF1+kWqZrxGdhj4aX3gcw7XUlXQQabg/27lefwhUkzbC3NygNI75MdhL1bfTW9g8Ei59RA23oHP7Ry1k3ZFWwQ=
— transparency.dev/DEV:witness-little-garden 2AQqhwAAAABqEiEgzgFIqqhbUoDwjMWE6UP8nd8/KYTzwZ2rhIgcqoXHAwVkjZr4AscylP3v7sEodkRAErumC2q44vdgJY096st5BQ==
— witness1.smartit.nu/witness1 pIyCDwAAAABqEiEghIp82KWebrw7/oHQwlTAm3g2RKS4+eebl8eO0WH+/iEcxZ75W3u5hNI7TOQtmJbqmNWVuE0tgh0XwzdZsDsUAQ==
— remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZI+aVCIobWX9sXTynk5XeU/zZ0WBxtqB0DrAWfBw==
— witness.stagemole.eu Z/euoAAAAABqEiEgw0i+7g2ENfDAWHmtRzCfKTHSDwYDJA2NmKeGi9Y8FtEyOUvVr+AJmIY/2TUFucgKi7lI7cUiOvKFYe/TmN9DAg==
""".encode()  # noqa: E501
REAL_LOG_VKEY = (
    "arche2025h1.staging.ct.transparency.dev+ba2f06c0+AU0vHmlGCS/PdN8b2OaGmKprLI8HKM+dJ472xgFYh15f"
)
SEED = b"\x05" * 32
WITNESS_SIGNER = Cosigner("partner.example/w", Ed25519PrivateKey.from_private_bytes(SEED))
REAL_WITNESS_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"


def test_go_note_vector_is_reproduced_byte_for_byte() -> None:
    signer = signer_from_skey(GO_SKEY)
    assert signer.verifier_key() == GO_VKEY
    assert SignedNote(GO_TEXT, (signer.sign(GO_TEXT),)).to_bytes() == GO_NOTE
    assert open_note(SignedNote.parse(GO_NOTE), NoteVerifier.from_vkey(GO_VKEY)) is None


def test_go_note_tampered_text_fails() -> None:
    bad = GO_NOTE.replace(b"cryptography", b"cryptographY")
    with pytest.raises(IntegrityError, match="does not verify"):
        open_note(SignedNote.parse(bad), NoteVerifier.from_vkey(GO_VKEY))


def test_real_witness_cosignature_verifies() -> None:
    note = SignedNote.parse(REAL_CHECKPOINT)
    assert open_note(note, NoteVerifier.from_vkey(REAL_LOG_VKEY)) is None
    cosigned_at = open_note(note, NoteVerifier.from_vkey(REAL_WITNESS_VKEY))
    assert cosigned_at == int.from_bytes(bytes.fromhex("000000006a122120"), "big")
    tampered = SignedNote.parse(REAL_CHECKPOINT.replace(b"1432088532", b"1432088533"))
    with pytest.raises(IntegrityError):
        open_note(tampered, NoteVerifier.from_vkey(REAL_WITNESS_VKEY))


def test_cosignature_round_trip_and_key_ids() -> None:
    cosigner = Cosigner("partner.example/w", Ed25519PrivateKey.generate())
    verifier = NoteVerifier.from_vkey(cosigner.verifier_key())
    assert verifier.sig_type == 0x04 and verifier.vkey() == cosigner.verifier_key()
    signature = cosigner.sign_at(GO_TEXT, 1_700_000_000)
    assert signature.signature[:8] == (1_700_000_000).to_bytes(8, "big")
    assert len(signature.signature) == 72
    note = SignedNote(GO_TEXT, (signature,))
    assert open_note(SignedNote.parse(note.to_bytes()), verifier) == 1_700_000_000
    # the same key as a plain note signer has another key ID: type byte separates them
    plain = NoteSigner("partner.example/w", cosigner._private)
    assert plain.key_id != cosigner.key_id
    with pytest.raises(InvalidInput, match="timestamp"):
        cosigner.sign(GO_TEXT)


def test_unknown_signatures_are_ignored_but_one_known_is_required() -> None:
    signer = signer_from_skey(GO_SKEY)
    other = NoteSigner("someone.else", Ed25519PrivateKey.generate())
    note = SignedNote(GO_TEXT, (other.sign(GO_TEXT), signer.sign(GO_TEXT)))
    open_note(note, NoteVerifier.from_vkey(GO_VKEY))
    with pytest.raises(IntegrityError, match="not signed by"):
        open_note(SignedNote(GO_TEXT, (other.sign(GO_TEXT),)), NoteVerifier.from_vkey(GO_VKEY))


@pytest.mark.parametrize(
    "vkey",
    [
        GO_VKEY.replace("c74f20a3", "c74f20a4"),  # key ID does not match the key
        GO_VKEY.replace("+ARpc", "+AhpZ"),  # other key material
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        GO_VKEY[:-1],
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        # a name of bytes that are not UTF-8, as a command line passes them: its key ID
        # could not be computed (UnicodeEncodeError, a traceback through the CLI)
        "Peter\udcffNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(InvalidInput):
        NoteVerifier.from_vkey(vkey)


@pytest.mark.parametrize(
    "note",
    [
        GO_TEXT.encode(),  # no signatures
        GO_NOTE.replace("—".encode(), b"-"),  # not an em dash
        GO_NOTE.replace(b"AM=\n", b"AN=\n"),  # non-canonical base64 (unused bits set)
        GO_NOTE.replace(b"\n\n", b"\n\x01\n"),  # control character
        GO_NOTE[:-1],  # no final newline
        GO_NOTE[:-1] + b" ",  # the last signature line not ended by a newline
        b"\xff" + GO_NOTE,
    ],
)
def test_malformed_notes_are_refused(note: bytes) -> None:
    with pytest.raises(InvalidInput):
        SignedNote.parse(note)


@pytest.mark.parametrize("text", ["first\n\nafter a blank line\n", "\n"])
def test_note_text_may_hold_blank_lines(text: str) -> None:
    # as in Go's note.Open, the signatures start after the last blank line
    signer = signer_from_skey(GO_SKEY)
    note = SignedNote.parse(SignedNote(text, (signer.sign(text),)).to_bytes())
    assert note.text == text
    assert open_note(note, NoteVerifier.from_vkey(GO_VKEY)) is None


def test_at_most_sixteen_signatures() -> None:
    other = NoteSigner("someone.else", Ed25519PrivateKey.generate()).sign(GO_TEXT)
    mine = signer_from_skey(GO_SKEY).sign(GO_TEXT)
    sixteen = SignedNote.parse(SignedNote(GO_TEXT, (*[other] * 15, mine)).to_bytes())
    assert open_note(sixteen, NoteVerifier.from_vkey(GO_VKEY)) is None
    with pytest.raises(InvalidInput, match="more than 16 signatures"):
        SignedNote.parse(SignedNote(GO_TEXT, (*[other] * 16, mine)).to_bytes())


def test_a_one_byte_signature_of_another_key_is_parsed_and_ignored() -> None:
    # key ID and at least one byte: shorter is malformed; the length each type needs
    # is checked only for the trusted key's own lines
    def with_line(raw: bytes) -> bytes:
        return GO_NOTE + f"\u2014 someone.else {base64.b64encode(raw).decode()}\n".encode()

    note = SignedNote.parse(with_line(b"\x01\x02\x03\x04\x05"))
    assert note.signatures[-1].signature == b"\x05"
    assert open_note(note, NoteVerifier.from_vkey(GO_VKEY)) is None
    with pytest.raises(InvalidInput, match="too short"):
        SignedNote.parse(with_line(b"\x01\x02\x03\x04"))


@pytest.mark.parametrize("name", ["", "two words", "plus+sign", "no-break\u00a0space"])
def test_key_names_without_spaces_or_plus(name: str) -> None:
    with pytest.raises(InvalidInput, match="key name"):
        NoteSigner(name, Ed25519PrivateKey.generate())
    if name and " " not in name:
        line = GO_NOTE.replace(b"PeterNeumann", name.encode())
        with pytest.raises(InvalidInput, match="key name"):
            SignedNote.parse(line)


def test_signer_repr_names_the_class_and_hides_the_key() -> None:
    signer = signer_from_skey(GO_SKEY)
    assert repr(signer) == "NoteSigner('PeterNeumann', <key hidden>)"
    assert repr(WITNESS_SIGNER).startswith("Cosigner(")


def test_signed_text_must_end_with_a_newline() -> None:
    with pytest.raises(InvalidInput, match="newline"):
        signer_from_skey(GO_SKEY).sign("no newline")
    with pytest.raises(InvalidInput, match="newline"):
        WITNESS_SIGNER.sign_at("no newline", 1)


def test_cosignature_time_is_0_to_2_63_minus_1() -> None:
    verifier = NoteVerifier.from_vkey(WITNESS_SIGNER.verifier_key())
    for timestamp in (0, 2**63 - 1):
        note = SignedNote(GO_TEXT, (WITNESS_SIGNER.sign_at(GO_TEXT, timestamp),))
        assert open_note(SignedNote.parse(note.to_bytes()), verifier) == timestamp
    for timestamp in (-1, 2**63):
        with pytest.raises(InvalidInput, match="timestamp"):
            WITNESS_SIGNER.sign_at(GO_TEXT, timestamp)
    # a correctly signed cosignature for time 2^63 is refused by the verifier
    signature = WITNESS_SIGNER._private.sign(cosigned_message(GO_TEXT, 2**63))
    line = NoteSignature(
        WITNESS_SIGNER.name, WITNESS_SIGNER.key_id, (2**63).to_bytes(8, "big") + signature
    )
    with pytest.raises(IntegrityError, match="invalid time"):
        open_note(SignedNote(GO_TEXT, (line,)), verifier)


def skey(name: str, sig_type: int, seed: bytes, key_type: int | None = None) -> str:
    """Go's signer key text; ``key_type`` overrides the type byte in the key material."""
    public = Ed25519PrivateKey.from_private_bytes(seed[:32]).public_key()
    raw_public = public.public_bytes_raw()
    blob = base64.b64encode(bytes([sig_type if key_type is None else key_type]) + seed).decode()
    return f"PRIVATE+KEY+{name}+{key_id(name, sig_type, raw_public).hex()}+{blob}"


def test_cosigner_signer_key_gives_a_cosigner() -> None:
    text = skey(WITNESS_SIGNER.name, COSIGNATURE_V1, SEED)
    signer = signer_from_skey(text)
    assert isinstance(signer, Cosigner)
    assert signer.verifier_key() == WITNESS_SIGNER.verifier_key()
    assert isinstance(signer_from_skey(skey("log", ED25519, SEED)), NoteSigner)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GO_SKEY.removeprefix("PRIVATE+"), "must start with PRIVATE"),
        ("PRIVATE+KEY+PeterNeumann+c74f20a3", "malformed signer key"),
        (skey("log", ED25519, SEED, key_type=0x02), "type byte and a 32-byte seed"),
        (skey("log", ED25519, SEED + b"\x00"), "type byte and a 32-byte seed"),
        (GO_SKEY.replace("c74f20a3", "c74f20a4"), "does not match"),
    ],
)
def test_malformed_signer_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        signer_from_skey(text)
