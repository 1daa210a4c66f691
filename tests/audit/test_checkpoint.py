"""Checkpoints: body format, signing and the witness's consistency check."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault.audit import merkle
from shardvault.audit.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    open_checkpoint,
    sign_checkpoint,
)
from shardvault.audit.note import Cosigner, NoteSigner, NoteVerifier
from shardvault.errors import IntegrityError, InvalidInput

ORIGIN = "audit.us.example/chat"
LOG = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
WITNESS = Cosigner("partner.example/witness", Ed25519PrivateKey.from_private_bytes(b"\x02" * 32))
LOG_KEY = NoteVerifier.from_vkey(LOG.verifier_key())
WITNESS_KEY = NoteVerifier.from_vkey(WITNESS.verifier_key())
LEAVES = [merkle.leaf_hash(b"%d" % i) for i in range(20)]


def head(size: int, leaves: list[bytes] = LEAVES) -> Checkpoint:
    return Checkpoint(ORIGIN, size, merkle.root_of(leaves[:size]))


def test_body_is_the_c2sp_text() -> None:
    cp = Checkpoint(ORIGIN, 20852163, bytes(range(32)), ("ext one",))
    root = base64.b64encode(bytes(range(32))).decode()
    assert cp.body() == f"{ORIGIN}\n20852163\n{root}\next one\n"
    assert Checkpoint.parse(cp.body()) == cp


@pytest.mark.parametrize(
    "body",
    [
        "o\n012\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",  # leading zero
        "o\n-1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "o\n1\nAAAA\n",  # short root
        "o\n1\n",
        "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",  # no final newline
        "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n",  # empty extension
        "\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    ],
)
def test_malformed_bodies_are_refused(body: str) -> None:
    with pytest.raises(InvalidInput):
        Checkpoint.parse(body)


def test_signed_and_cosigned_head_opens() -> None:
    note = sign_checkpoint(head(10), LOG)
    assert note.to_bytes().decode().startswith(head(10).body() + "\n— " + ORIGIN + " ")
    cosigned = cosign_checkpoint(note.to_bytes(), LOG_KEY, WITNESS, timestamp=1_750_000_000)
    opened = open_checkpoint(cosigned.to_bytes(), LOG_KEY, cosigner_key=WITNESS_KEY, origin=ORIGIN)
    assert opened.checkpoint == head(10) and opened.cosigned_at == 1_750_000_000
    with pytest.raises(IntegrityError, match="not signed by"):
        open_checkpoint(note.to_bytes(), LOG_KEY, cosigner_key=WITNESS_KEY)
    with pytest.raises(IntegrityError, match="expected"):
        open_checkpoint(note.to_bytes(), LOG_KEY, origin="other.example/log")


def test_cosigning_again_replaces_the_witness_line() -> None:
    note = sign_checkpoint(head(5), LOG).to_bytes()
    once = cosign_checkpoint(note, LOG_KEY, WITNESS, timestamp=1)
    twice = cosign_checkpoint(once.to_bytes(), LOG_KEY, WITNESS, timestamp=2)
    assert len(twice.signatures) == 2
    assert open_note_time(twice.to_bytes()) == 2


def open_note_time(data: bytes) -> int | None:
    return open_checkpoint(data, LOG_KEY, cosigner_key=WITNESS_KEY).cosigned_at


def test_witness_checks_consistency_with_what_it_saw_before() -> None:
    proof = merkle.consistency_proof(LEAVES[:15], 10)
    note = sign_checkpoint(head(15), LOG).to_bytes()
    cosign_checkpoint(note, LOG_KEY, WITNESS, timestamp=5, previous=head(10), proof=proof)
    forked = [*LEAVES[:7], merkle.leaf_hash(b"rewritten"), *LEAVES[8:]]
    fork_note = sign_checkpoint(head(15, forked), LOG).to_bytes()
    with pytest.raises(IntegrityError):
        cosign_checkpoint(fork_note, LOG_KEY, WITNESS, timestamp=5, previous=head(10), proof=proof)
    with pytest.raises(IntegrityError):
        cosign_checkpoint(note, LOG_KEY, WITNESS, timestamp=5, previous=head(16), proof=proof)
    stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError, match=r"does not verify|not signed"):
        cosign_checkpoint(
            sign_checkpoint(head(15), stranger).to_bytes(), LOG_KEY, WITNESS, timestamp=5
        )


def test_origin_may_hold_spaces_but_no_other_whitespace() -> None:
    root = merkle.root_of([])
    assert Checkpoint.parse(Checkpoint("log with spaces", 0, root).body()).origin == (
        "log with spaces"
    )
    for origin in ("a\nb", "a\tb", "a\x85b", "a\u2028b"):
        with pytest.raises(InvalidInput, match="one non-empty line"):
            Checkpoint(origin, 0, root)
    with pytest.raises(InvalidInput, match="one non-empty line"):
        Checkpoint.parse(Checkpoint("o", 0, root).body().replace("o", "o\x85p", 1))


def test_size_is_from_0_to_2_64_minus_1() -> None:
    root = bytes(32)
    for size in (0, 2**64 - 1):
        assert Checkpoint.parse(Checkpoint(ORIGIN, size, root).body()).size == size
    for size in (-1, 2**64):
        with pytest.raises(InvalidInput, match="out of range"):
            Checkpoint(ORIGIN, size, root)
    too_big = Checkpoint(ORIGIN, 1, root).body().replace("\n1\n", f"\n{2**64}\n")
    with pytest.raises(InvalidInput, match="out of range"):
        Checkpoint.parse(too_big)


def test_extension_lines_are_single_non_empty_lines() -> None:
    for extensions in (("one\ntwo",), ("",)):
        with pytest.raises(InvalidInput, match="extension"):
            Checkpoint(ORIGIN, 1, bytes(32), extensions)


def test_witness_refuses_a_previous_head_of_another_log() -> None:
    # the same tree under another origin passes the consistency check: only the origin
    # tells the witness this head does not extend what it cosigned
    proof = merkle.consistency_proof(LEAVES[:15], 10)
    note = sign_checkpoint(head(15), LOG).to_bytes()
    previous = Checkpoint("other.example/log", 10, head(10).root_hash)
    with pytest.raises(IntegrityError, match="previous head is for another log"):
        cosign_checkpoint(note, LOG_KEY, WITNESS, timestamp=5, previous=previous, proof=proof)


def test_keys_of_the_wrong_kind_are_refused_not_satisfied_by_the_other_signature() -> None:
    """Given the cell's key as the partner's, a head the partner never saw was
    "cosigned" by the cell's own signature; given the partner's as the cell's, by
    the partner's cosignature alone."""
    note = sign_checkpoint(head(10), LOG).to_bytes()
    with pytest.raises(InvalidInput, match="cosignature key"):
        open_checkpoint(note, LOG_KEY, cosigner_key=LOG_KEY)
    cosigned = cosign_checkpoint(note, LOG_KEY, WITNESS, timestamp=1).to_bytes()
    with pytest.raises(InvalidInput, match="Ed25519 signing key"):
        open_checkpoint(cosigned, WITNESS_KEY)
