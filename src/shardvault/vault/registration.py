"""Registering a subject: a home jurisdiction and a fresh subject key.

The custodian wraps the key before anything is recorded; the directory's home
and the cell's row are written under the directory's registration turn, and a
registration killed between them is undone by the next one.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from shardvault.catalog.port import SubjectRecord
from shardvault.errors import Conflict, InvalidInput, ShardvaultError
from shardvault.governance.guard import Access
from shardvault.keys import hierarchy
from shardvault.keys.port import KeyScope
from shardvault.model import RequestContext, jurisdiction_code, local_context, subject_id
from shardvault.policy import Action
from shardvault.vault.access import decided, forgotten_on, homed_meanwhile, key_use

if TYPE_CHECKING:
    from shardvault.vault.core import Vault


def register_subject(
    vault: Vault, tenant: str, subject: str, jurisdiction: str, ctx: RequestContext | None = None
) -> SubjectRecord:
    """Give a subject a home jurisdiction and a fresh subject key.

    The custodian wraps the key before anything is recorded: if it refuses
    (audited), the subject is in neither the directory nor the catalog. It is
    decided as the action ``register``, not as a write: an approval of it lets
    no put of the subject's objects through (docs/policy.md).
    """
    ctx = ctx or local_context("register-subject")
    spec = vault.config.tenant(tenant)
    subject_id(subject)
    vault.config.jurisdiction(jurisdiction_code(jurisdiction))
    if not spec.allows(jurisdiction):
        raise InvalidInput(
            f"tenant {tenant} does not keep users in {jurisdiction} "
            f"(it allows {', '.join(spec.jurisdictions or ())})"
        )
    # opened before the directory homes the id there: a catalog missing where the
    # directory homes a subject is a lost one, and refused (`sqlite_catalogs`)
    catalog = vault.cells[jurisdiction].catalog
    access = _registration_decided(vault, ctx, tenant, subject, jurisdiction)
    key_id = hierarchy.new_key_id()
    scope, key = KeyScope(tenant, jurisdiction), hierarchy.new_key()
    wrapped = key_use(
        vault, access, lambda why: vault.custodian.wrap(scope, key_id, key, why, subject=subject)
    )
    record = SubjectRecord(tenant, subject, jurisdiction, key_id, wrapped, vault._clock())
    with vault.directory.registration():
        _drop_unfinished_registration(vault, tenant, subject)
        try:
            vault.directory.add(tenant, subject, jurisdiction)
        except Conflict as taken:
            _refuse_if_forgotten(vault, tenant, subject)
            raise taken
        try:
            # the id is now this home's alone: no other cell keeps it in an approval
            # (one that does not answer is left owing it, recorded first)
            owed = vault.governance.owe_scrubs(jurisdiction, tenant, subject)
            vault.governance.subject_homed(jurisdiction, tenant, subject, owed=owed)
            catalog.add_subject(record)
        except BaseException:
            # not if the row was committed before the failure: a home whose cell holds
            # the subject is never removed (other processes answer it from memory);
            # one the catalog cannot vouch for stays for the next registration to drop
            with contextlib.suppress(ShardvaultError):
                _drop_unfinished_registration(vault, tenant, subject)
            raise
    return record


def _registration_decided(
    vault: Vault, ctx: RequestContext, tenant: str, subject: str, jurisdiction: str
) -> Access:
    """The registration decided and audited in the id's home if it has one, where an
    approval it asks lives (with pseudonyms at once for a forgotten id: `access.decided`),
    and then refused, with no key wrapped; else in JURISDICTION, the home it asks for.

    Decided in JURISDICTION whatever the directory said, an approval named a user in
    clear in a cell outside their home, and no registration followed to take the name
    out. A home with no subject behind it (a registration killed between its two
    writes) is dropped, and the registration decided again where it asks."""
    home = vault.directory.home(tenant, subject)
    if home is not None:
        access = decided(vault, ctx, Action.REGISTER, tenant, home, subject)
        with vault.directory.registration():
            _drop_unfinished_registration(vault, tenant, subject)
            if vault.directory.home(tenant, subject) is not None:
                _refuse_if_forgotten(vault, tenant, subject)
                raise Conflict(f"subject {subject} of tenant {tenant} is already registered")
        if home == jurisdiction:
            return access
    with homed_meanwhile(vault, ctx, Action.REGISTER, tenant, subject):
        return vault.governance.guard.authorize(ctx, Action.REGISTER, tenant, jurisdiction, subject)


def _refuse_if_forgotten(vault: Vault, tenant: str, subject: str) -> None:
    """A forgotten subject's id stays taken: say so, not "already registered"."""
    home = vault.directory.home(tenant, subject)
    cell = vault.cells.get(home) if home is not None else None
    found = cell.catalog.get_subject(tenant, subject) if cell is not None else None
    if found is not None and found.forgotten_at is not None:
        raise Conflict(
            f"subject {subject} of tenant {tenant} was forgotten on {forgotten_on(found)}; "
            "its id cannot be registered again: give the user a new one"
        )


def _drop_unfinished_registration(vault: Vault, tenant: str, subject: str) -> None:
    """A registration killed between its directory row and its cell's row left a home
    with nothing behind it: no put or read could use it, and the id could never be
    registered again. Holding the registration turn, such a row is that, not one
    another registration is about to complete: it goes."""
    home = vault.directory.home(tenant, subject)
    cell = vault.cells.get(home) if home is not None else None
    if cell is not None and cell.catalog.get_subject(tenant, subject) is None:
        vault.directory.remove(tenant, subject)
