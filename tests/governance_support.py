"""Helpers for tests that need a k-of-n approval: the demo's two approvers sign it, each
with the key `shardvault init --demo` wrote for them (``approvers/<id>.skey``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault.errors import ApprovalRequired
from shardvault.governance import Governance
from shardvault.governance.approval_signatures import load_signing_key
from shardvault.model import RequestContext, local_context, new_request_id
from shardvault.policy import Principal, PrincipalKind
from shardvault.vault import ForgetResult, Vault

APPROVERS = {"dpo": PrincipalKind.EMPLOYEE, "partner-officer": PrincipalKind.PARTNER_AUDITOR}


def ensure_approvers(governance: Governance, tenant: str = "intl", location: str = "US") -> None:
    """Register the demo config's approvers (an operator officer and a partner officer)."""
    for ident, kind in APPROVERS.items():
        if governance.registry.find(ident) is None:
            governance.registry.add(Principal(ident, tenant, kind, location), token_ttl=None)


def key_file(governance: Governance, ident: str) -> Path:
    """Where the demo deployment keeps approver IDENT's private key."""
    return governance.spec.policy_path.parent / "approvers" / f"{ident}.skey"


def signing_key(governance: Governance, ident: str) -> Ed25519PrivateKey:
    return load_signing_key(key_file(governance, ident))


def approve(governance: Governance, approval_id: str, tenant: str = "intl") -> None:
    ensure_approvers(governance, tenant)
    for ident in APPROVERS:
        ctx = RequestContext(ident, "approval", new_request_id())
        governance.sign_approval(approval_id, ctx, "approve", signing_key(governance, ident))


def forget_approved(
    vault: Vault, tenant: str, subject: str, ctx: RequestContext | None = None
) -> ForgetResult:
    """Forget, getting the approval the forget invariant demands signed by both approvers."""
    ctx = ctx or local_context("forget-subject")
    try:
        return vault.forget(tenant, subject, ctx)
    except ApprovalRequired as pending:
        assert pending.approval_id is not None
        approve(vault.governance, pending.approval_id, tenant)
        retry = replace(ctx, request_id=new_request_id(), approval_id=pending.approval_id)
        return vault.forget(tenant, subject, retry)
