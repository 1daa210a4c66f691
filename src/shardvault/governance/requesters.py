"""Who a request comes from: its registered principal, or the built-in local administrator.

A request names a principal; what it may do follows from the registered kind,
tenant, roles and location, never from the caller's claim. The guard, the
approvals desk and the CLI ask here before anything else, and every refusal
(a revoked or expired token, an unknown or revoked principal, a disabled local
administrator) is an `AccessDenied` with a rule, which they audit.
"""

from __future__ import annotations

import functools

from shardvault.config import GovernanceSpec
from shardvault.errors import AccessDenied
from shardvault.governance.principals import PrincipalRegistry
from shardvault.model import LOCAL_ADMIN, RequestContext
from shardvault.policy import Principal, PrincipalKind


def _local_admin(tenant: str, location: str) -> Principal:
    """The built-in administrator acting on TENANT from LOCATION: made once per pair and
    process, as it is a pure function of the two and immutable, and its checks were a
    thirtieth of a small get's instructions. Only plain strings are remembered (a str
    subclass may claim equality with what it does not spell); a bad one is refused each
    time, as the checks raise before anything is remembered."""
    if type(tenant) is str and type(location) is str:
        return _remembered_local_admin(tenant, location)
    return _new_local_admin(tenant, location)


def _new_local_admin(tenant: str, location: str) -> Principal:
    return Principal(LOCAL_ADMIN, tenant, PrincipalKind.EMPLOYEE, location, frozenset({"admin"}))


_remembered_local_admin = functools.lru_cache(maxsize=256)(_new_local_admin)


class Requesters:
    """The registry of principals, and whether the deployment enables the local administrator."""

    def __init__(self, spec: GovernanceSpec, registry: PrincipalRegistry) -> None:
        self._spec = spec
        self._registry = registry

    def resolve(self, ctx: RequestContext, tenant: str, jurisdiction: str) -> Principal:
        """The registered principal behind ``ctx`` (`AccessDenied` with a rule if none)."""
        principal = self.registered(ctx)
        if principal is None:
            # On one machine every cell is local: the administrator acts from the
            # cell it touches unless the caller says otherwise.
            return _local_admin(tenant, ctx.location or jurisdiction)
        return principal

    def registered(self, ctx: RequestContext) -> Principal | None:
        """``ctx``'s registered principal, or None for the (enabled) local administrator."""
        if ctx.refused_credential is not None:
            raise AccessDenied(
                f"token refused: the token of {ctx.principal} is {ctx.refused_credential}",
                rule="governance:token",
            )
        if ctx.principal == LOCAL_ADMIN:
            if not self._spec.local_admin:
                raise AccessDenied(
                    "the local administrator is disabled in this deployment",
                    rule="governance:local-admin-disabled",
                )
            return None
        record = self._registry.find(ctx.principal)
        if record is None:
            raise AccessDenied(
                f"unknown principal {ctx.principal!r}", rule="governance:unknown-principal"
            )
        if record.revoked_at is not None:
            raise AccessDenied(
                f"principal {ctx.principal!r} is revoked", rule="governance:revoked-principal"
            )
        return record.principal


__all__ = ["Requesters"]
