"""Deletion receipts are signed only over a proof that checks out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from conftest import make_deployment
from governance_support import forget_approved
from shardvault.config import load
from shardvault.errors import IntegrityError, InvalidInput
from shardvault.governance.receipts import Forgotten, make_receipt, verify_receipt
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
    ],
    ids=["jurisdiction", "versions", "shards"],
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
            "2026-12-05T00:00:00Z",
        )  # fmt: skip
        verify_receipt(make_receipt(cell, head, done.audit_index, told).to_bytes(), vkey)
        false = make_receipt(cell, head, done.audit_index, replace(told, **lie))
        with pytest.raises(IntegrityError, match="not this forget"):
            verify_receipt(false.to_bytes(), vkey)


def test_a_bad_key_is_the_callers_mistake_not_a_bad_receipt() -> None:
    # it was "not a valid receipt", exit 1, whatever the receipt held
    from tests.audit.conftest import LOG_VKEY, WITNESS_VKEY

    for cell_key, cosigner in (("x+zz+AA", None), (WITNESS_VKEY, None), (LOG_VKEY, LOG_VKEY)):
        with pytest.raises(InvalidInput, match=r"verifier key|key 'audit|key 'partner"):
            verify_receipt(b"anything", cell_key, cosigner)
