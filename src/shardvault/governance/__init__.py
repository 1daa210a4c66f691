"""Governance wired into the vault: principals, approvals, the audited guard, heads, reports.

`Guard.authorize` (``Governance.guard``) is called by the vault on every access;
the policy engine (`shardvault.policy`), the audit log (`shardvault.audit`) and
the custodian's policy (`shardvault.custodian_policy`) are the libraries it puts
together.
See docs/trust-model.md for who holds which key and who can verify what.
"""

from shardvault.governance.approval_record import Approval
from shardvault.governance.approvals import ApprovalBook
from shardvault.governance.guard import Access
from shardvault.governance.layer import Governance
from shardvault.governance.principals import IssuedToken, PrincipalRecord, PrincipalRegistry

__all__ = [
    "Access",
    "Approval",
    "ApprovalBook",
    "Governance",
    "IssuedToken",
    "PrincipalRecord",
    "PrincipalRegistry",
]
