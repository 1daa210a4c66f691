"""Deletion receipts are signed only over a proof that checks out."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import make_deployment
from governance_support import forget_approved
from shardvault.audit.entry import canonical_json
from shardvault.audit.note import SignedNote
from shardvault.config import load
from shardvault.errors import IntegrityError, InvalidInput
from shardvault.governance.receipts import (
    Forgotten,
    make_receipt,
    receipt_nonce,
    subject_commitment,
    verify_receipt,
)
from shardvault.keys.port import KeyScope
from shardvault.model import ObjectRef
from shardvault.vault import Vault

FORGOTTEN = Forgotten("intl", "alice", "US", "kid", 1, 6, "2026-12-05T00:00:00Z")


def test_a_receipt_is_signed_only_over_a_proof_that_leads_to_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proofs come from stored tree nodes (audit/tree.py); a damaged one must give a
    # refusal, never a signed receipt that fails its holder's check
    with Vault.open(load(make_deployment(tmp_path / "deploy"))) as vault:
        vault.register_subject("intl", "alice", "US")
        for i in range(3):
            vault.put(ObjectRef("intl", "alice", f"k{i}"), b"x")
        governance = vault.governance
        head = governance.publish_head("US")
        cell = governance.cell("US")
        index = cell.log.size - 2
        assert (
            b"shardvault-deletion-receipt" in make_receipt(cell, head, index, FORGOTTEN).to_bytes()
        )
        real = cell.log.inclusion_proof
        monkeypatch.setattr(
            cell.log, "inclusion_proof", lambda i, size: [b"\x07" * 32, *real(i, size)[1:]]
        )
        with pytest.raises(IntegrityError):
            make_receipt(cell, head, index, FORGOTTEN)


@pytest.mark.parametrize(
    "lie",
    [
        {"jurisdiction": "EU"},
        {"versions_deleted": 99},
        {"shards_removed": 0},
        {"forgotten_at": "2026-12-04T00:00:00Z"},
    ],
    ids=["jurisdiction", "versions", "shards", "time"],
)
def test_a_receipt_saying_other_than_its_audit_entry_is_refused(
    tmp_path: Path, lie: dict[str, object]
) -> None:
    # what the receipt states is what the cosigned log recorded, or the receipt is refused
    with Vault.open(load(make_deployment(tmp_path / "deploy"))) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ObjectRef("intl", "alice", "k"), b"x")
        done = forget_approved(vault, "intl", "alice")
        cell = vault.governance.cell("US")
        head = vault.governance.publish_head("US")
        vkey = cell.signer.verifier_key()
        told = Forgotten(
            "intl", "alice", "US", done.key_id, done.versions_deleted, done.shards_removed,
            str(cell.log.entry(done.audit_index).details["forgotten_at"]),
            receipt_nonce(cell, "intl", "alice", done.key_id),
            vault.custodian.destroy_attestation(KeyScope("intl", "US"), done.key_id),
        )  # fmt: skip
        genuine = make_receipt(cell, head, done.audit_index, told)
        assert verify_receipt(genuine.to_bytes(), vkey)["v"] == 3
        # the vault signs no such receipt (the attestation states what the entry does):
        # the operator, who holds the cell's key, edits one and signs it again
        body = json.loads(genuine.text) | lie
        text = canonical_json(body).decode() + "\n"
        false = SignedNote(text, (cell.signer.sign(text),))
        with pytest.raises(IntegrityError, match="not this forget"):
            verify_receipt(false.to_bytes(), vkey)


def test_no_receipt_is_signed_for_a_subject_its_entry_does_not_commit_to(
    tmp_path: Path,
) -> None:
    # signed, it would be a receipt its holder's own check refuses
    with Vault.open(load(make_deployment(tmp_path / "deploy"))) as vault:
        vault.register_subject("intl", "alice", "US")
        done = forget_approved(vault, "intl", "alice")
        cell = vault.governance.cell("US")
        head = vault.governance.publish_head("US")
        at = str(cell.log.entry(done.audit_index).details["forgotten_at"])
        nonce = receipt_nonce(cell, "intl", "alice", done.key_id)
        for subject, given in (("bob", nonce), ("alice", bytes(32)), ("alice", None)):
            what = Forgotten("intl", subject, "US", done.key_id, 0, 0, at, given)
            with pytest.raises(IntegrityError, match="does not commit to subject"):
                make_receipt(cell, head, done.audit_index, what)


def test_a_bad_key_is_the_callers_mistake_not_a_bad_receipt() -> None:
    # it was "not a valid receipt", exit 1, whatever the receipt held
    from tests.audit.conftest import LOG_VKEY, WITNESS_VKEY

    for cell_key, cosigner in (("x+zz+AA", None), (WITNESS_VKEY, None), (LOG_VKEY, LOG_VKEY)):
        with pytest.raises(InvalidInput, match=r"verifier key|key 'audit|key 'partner"):
            verify_receipt(b"anything", cell_key, cosigner)


def test_the_subject_commitment_and_its_nonce_are_as_formats_md_says(tmp_path: Path) -> None:
    # known answers, and the same computed from the words of docs/formats.md
    from shardvault.governance.heads import CellAudit

    nonce = bytes(range(32))
    parts = [b"shardvault/deletion-receipt/subject-commitment/v1", b"intl", b"alice", nonce]
    spelled = hashlib.sha256(b"".join(len(p).to_bytes(8, "big") + p for p in parts)).hexdigest()
    known = "2131cd804e4b478b68583b36ca3a8811eb47482324cdd43ca9e74a57d97ebdf0"
    assert subject_commitment("intl", "alice", nonce) == "v1:" + known == "v1:" + spelled
    assert subject_commitment("intl", "alice", bytes(32)) != subject_commitment(
        "intl", "alicf", bytes(32)
    )

    (tmp_path / "hmac.key").write_bytes(bytes(32))
    (tmp_path / "hmac.key").chmod(0o600)
    cell = CellAudit("US", tmp_path, "example.org/cell-us")
    message = b'secret:deletion-receipt-nonce\x00["intl", "alice", "kid"]'
    derived = receipt_nonce(cell, "intl", "alice", "kid")
    assert derived == hmac.digest(bytes(32), message, "sha256")
    assert derived.hex() == "f09492080ee4bc35eaa674023e4572f9f473cf76682c3161f71ef89425022ae4"
    assert derived != receipt_nonce(cell, "intl", "bob", "kid")


def test_no_receipt_is_signed_with_an_attestation_of_another_destroy(tmp_path: Path) -> None:
    # signed, it would be a receipt its holder's check refuses (or, unchecked, a lie)
    from shardvault.governance.attestations import CustodianKey

    with Vault.open(load(make_deployment(tmp_path / "deploy"))) as vault:
        for subject in ("alice", "bob"):
            vault.register_subject("intl", subject, "US")
        alice, bob = (forget_approved(vault, "intl", s) for s in ("alice", "bob"))
        cell = vault.governance.cell("US")
        head = vault.governance.publish_head("US")
        custodian = vault.governance.custodian_key
        scope = KeyScope("intl", "US")
        theirs = vault.custodian.destroy_attestation(scope, bob.key_id)
        ours = vault.custodian.destroy_attestation(scope, alice.key_id)
        assert theirs is not None and ours is not None
        told = Forgotten(
            "intl", "alice", "US", alice.key_id, alice.versions_deleted, alice.shards_removed,
            str(cell.log.entry(alice.audit_index).details["forgotten_at"]),
            receipt_nonce(cell, "intl", "alice", alice.key_id), ours,
        )  # fmt: skip
        genuine = make_receipt(cell, head, alice.audit_index, told, custodian.verifier)
        assert verify_receipt(genuine.to_bytes(), cell.signer.verifier_key())["v"] == 3
        with pytest.raises(IntegrityError, match="attestation is not of this forget: it is of key"):
            make_receipt(cell, head, alice.audit_index, replace(told, destroy_attestation=theirs))
        (tmp_path / "other").mkdir()
        other = CustodianKey(tmp_path / "other", custodian.name).verifier
        with pytest.raises(IntegrityError, match="not the custodian's"):
            make_receipt(cell, head, alice.audit_index, told, other)
