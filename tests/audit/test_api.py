"""Pin the public API the vault is wired to: a change here is a deliberate one."""

from __future__ import annotations

import shardvault.audit
import shardvault.custodian_policy
import shardvault.policy


def test_audit_exports() -> None:
    assert set(shardvault.audit.__all__) == {
        "ENTRY_VERSION", "AuditEntry", "AuditHasher", "AuditLog", "AuditTicket", "Checkpoint",
        "Cosigner", "ExportSummary", "NoteSigner", "NoteVerifier", "SignedNote", "VerifiedHead",
        "VerifyReport", "cosign_checkpoint", "export_to_directory", "export_to_file",
        "format_time", "new_entry", "open_checkpoint", "sign_checkpoint", "signer_from_skey",
        "verify_export",
    }  # fmt: skip
    for name in shardvault.audit.__all__:
        assert getattr(shardvault.audit, name) is not None


def test_policy_exports() -> None:
    assert set(shardvault.policy.__all__) == {
        "CROSS_TENANT", "DEFAULT_DENY", "FOREIGN_GOVERNMENT", "FORGET_APPROVAL", "INVARIANTS",
        "MOVE_APPROVAL", "POLICY_VERSION", "PROTECTED_READ_LOCATION", "Action", "Case",
        "CaseResult", "Decision", "Effect", "Explanation", "Policy", "Principal",
        "PrincipalKind", "Resource", "Rule", "TraceStep", "decide", "explain", "load_cases",
        "load_policy", "parse_cases", "parse_policy", "run_table",
    }  # fmt: skip
    for name in shardvault.policy.__all__:
        assert getattr(shardvault.policy, name) is not None


def test_custodian_policy_exports() -> None:
    assert {"decide_key_use", "require_key_use", "KeyScope", "load_custodian_policy"} <= set(
        shardvault.custodian_policy.__all__
    )
