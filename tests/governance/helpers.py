"""Principals of the demo policy's story, and reading a cell's audit log back."""

from __future__ import annotations

from shardvault.audit import AuditEntry
from shardvault.model import RequestContext, new_request_id
from shardvault.policy import Principal, PrincipalKind
from shardvault.vault import Vault

SERVICE = Principal("svc-api", "intl", PrincipalKind.SERVICE, "US")
SUPPORT = Principal("sam", "intl", PrincipalKind.EMPLOYEE, "US", frozenset({"support"}))
SG_SUPPORT = Principal("sook", "intl", PrincipalKind.EMPLOYEE, "SG", frozenset({"support"}))
CN_POLICE = Principal(
    "cn-mps", "intl", PrincipalKind.EXTERNAL_REQUESTER, "CN",
    authority="ministry-of-public-security", authority_country="CN",
)  # fmt: skip
US_COURT = Principal(
    "us-doj", "intl", PrincipalKind.EXTERNAL_REQUESTER, "US",
    authority="us-doj", authority_country="US",
)  # fmt: skip
OTHER_TENANT = Principal("svc-dom", "domestic", PrincipalKind.SERVICE, "US")
ALL = (SERVICE, SUPPORT, SG_SUPPORT, CN_POLICE, US_COURT, OTHER_TENANT)


def register(vault: Vault, *principals: Principal) -> None:
    for principal in principals or ALL:
        vault.governance.registry.add(principal, token_ttl=None)


def as_(principal: Principal, purpose: str, approval: str | None = None) -> RequestContext:
    return RequestContext(principal.id, purpose, new_request_id(), approval_id=approval)


def entries(vault: Vault, cell: str = "US") -> list[AuditEntry]:
    log = vault.governance.cell(cell).log
    return [AuditEntry.from_bytes(raw) for raw in log.iter_entry_bytes(0, log.size)]


def entries_of(vault: Vault, ctx: RequestContext, cell: str = "US") -> list[AuditEntry]:
    return [e for e in entries(vault, cell) if e.request_id == ctx.request_id]
