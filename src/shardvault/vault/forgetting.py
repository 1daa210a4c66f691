"""Forgetting a subject: the key destroyed, the subject marked, the rest collected.

The custodian destroys the key first; the catalog mark, the collection and the
audited outcome follow, and the receipt signed by the cell proves it all
(docs/trust-model.md). A forget cut short finishes when run again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardvault.catalog.port import SubjectRecord
from shardvault.governance.attestations import open_attestation
from shardvault.governance.guard import Access
from shardvault.governance.receipts import (
    Forgotten,
    attestation_digest,
    make_receipt,
    receipt_nonce,
    subject_commitment,
)
from shardvault.keys.attestation import utc_seconds
from shardvault.keys.port import KeyScope
from shardvault.model import RequestContext, local_context
from shardvault.policy import Action
from shardvault.vault.access import (
    AnsweredAfterAudit,
    at_home,
    decided,
    home_of,
    key_use,
    registered,
)
from shardvault.vault.cells import Cell
from shardvault.vault.forget_collection import collect_forgotten
from shardvault.vault.views import ForgetResult

if TYPE_CHECKING:
    from shardvault.vault.core import Vault


def forget(
    vault: Vault, tenant: str, subject: str, ctx: RequestContext | None = None
) -> ForgetResult:
    """Destroy the subject's key at the custodian, then collect every shard of theirs.

    Needs a met approval (an invariant of the policy). Returns a deletion
    receipt signed by the cell, with the audit entry of the forget and its
    inclusion proof under a head cosigned by the partner. Run again for a
    subject already forgotten (a forget cut short by kill -9, say, or a receipt
    lost on its way), it finishes what is left and returns the receipt of that
    forget: one outcome entry per forget, whichever run wrote it.
    """
    ctx = ctx or local_context("forget-subject")
    # decided and audited first, like every access: "already forgotten" is an answer
    home = home_of(vault, tenant, subject, ctx, Action.FORGET)
    access = decided(vault, ctx, Action.FORGET, tenant, home, subject)
    cell = vault.cells[home]
    with AnsweredAfterAudit(access):
        found = cell.catalog.get_subject(tenant, subject)
        record = at_home(registered(found, tenant, subject), home)
    if record.forgotten_at is None:
        vault.directory.settle(tenant, subject, home)
        scope = KeyScope(tenant, record.jurisdiction)
        nonce = receipt_nonce(vault.governance.cell(home), tenant, subject, record.key_id)
        # recorded first: a kill -9 from here on leaves the other cells' scrubs owed
        vault.governance.owe_scrubs(home, tenant, subject)
        # the custodian's tombstone first: refused, the catalog and shards stay as they were
        attested = key_use(
            vault,
            access,
            lambda why: vault.custodian.destroy(scope, record.key_id, why, nonce=nonce),
        )
        # the forget's time is the one the custodian attests, so receipts state one time
        at = open_attestation(attested, None).epoch() if attested else vault._clock()
        cell.catalog.forget_subject(tenant, subject, at, access.audit_index)
    return _finish_forget_with_receipt(vault, access, cell, record)


def _finish_forget_with_receipt(
    vault: Vault, access: Access, cell: Cell, record: SubjectRecord
) -> ForgetResult:
    """After the catalog mark: collect what is left, audit the outcome unless a run
    before did (none did if this run's decision made the mark), then a head
    cosigned by the partner and the receipt."""
    tenant, subject = record.tenant, record.subject
    skipped, unscrubbed = collect_forgotten(vault, cell, tenant, subject)
    forgotten = cell.catalog.get_subject(tenant, subject)
    progress = cell.catalog.forget_progress(tenant, subject)
    assert forgotten is not None and forgotten.forgotten_at is not None and progress
    audit = vault.governance.cell(cell.jurisdiction)
    # the same on every run of this forget: one cut short left a commitment it opens
    nonce = receipt_nonce(audit, tenant, subject, record.key_id)
    forgotten_at = utc_seconds(forgotten.forgotten_at)
    attested = vault.custodian.destroy_attestation(
        KeyScope(tenant, record.jurisdiction), record.key_id
    )  # none from a custodian that signs none, or for a key destroyed before one did
    index = None
    if progress.decided_at != access.audit_index:
        index = vault.governance.forget_outcome(
            cell.jurisdiction, tenant, subject, record.key_id,
            known=progress.outcome, since=progress.decided_at or 0,
        )  # fmt: skip
    if index is None:
        # the log says the destroy was attested, so a receipt without it is refused
        committed = {"destroy_attestation": attestation_digest(attested)} if attested else {}
        index = vault.governance.record_outcome(
            access, "forgotten", key_id=record.key_id,
            versions_deleted=progress.versions_deleted, shards_removed=progress.shards_removed,
            subject_commitment=subject_commitment(tenant, subject, nonce),
            forgotten_at=forgotten_at, **committed,
        )  # fmt: skip
    if index != progress.outcome:
        cell.catalog.note_forget_progress(tenant, subject, outcome=index)
    told = audit.log.entry(index).details  # an entry written before v2 has no time
    what = Forgotten(
        tenant, subject, cell.jurisdiction, record.key_id, int(told["versions_deleted"] or 0),
        int(told["shards_removed"] or 0), str(told.get("forgotten_at") or forgotten_at), nonce,
        attested,
    )  # fmt: skip
    head = vault.governance.publish_head(cell.jurisdiction)
    # checked against the partner's key before it is signed into a receipt
    custodian = vault.governance.custodian_key.verifier if attested else None
    receipt = make_receipt(audit, head, index, what, custodian)
    return ForgetResult(
        tenant, subject, cell.jurisdiction, record.key_id, what.versions_deleted,
        what.shards_removed, forgotten.forgotten_at, index, receipt.to_bytes().decode("utf-8"),
        tuple(sorted(skipped)), tuple(sorted(unscrubbed)),
    )  # fmt: skip
