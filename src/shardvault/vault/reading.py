"""Reads: the version looked up once its access is decided, and a reader opened on it.

The reader starts fetching and verifying shards before the subject key is asked
for, which waits for the access's audit entry; a manifest is read only if it is
the one written for its row's version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardvault.catalog.port import SubjectRecord, VersionRecord
from shardvault.codec.segment import SegmentCipher
from shardvault.errors import IntegrityError, NotFound
from shardvault.governance.guard import Access
from shardvault.keys import hierarchy
from shardvault.manifest import Manifest
from shardvault.model import ObjectRef, RequestContext
from shardvault.nodes.port import ShardStore
from shardvault.policy import Action
from shardvault.vault.access import (
    AnsweredAfterAudit,
    check_version,
    decided,
    home_of,
    settled_at_home,
    subject_key_of,
)
from shardvault.vault.cells import Cell
from shardvault.vault.reader import ObjectReader

if TYPE_CHECKING:
    from shardvault.vault.core import Vault


def authorized_version(
    vault: Vault,
    ref: ObjectRef,
    version: int | None,
    ctx: RequestContext,
    action: Action,
    *,
    durable: bool = True,
) -> tuple[Cell, SubjectRecord, VersionRecord, Access]:
    """As `access.authorized`, with the version looked up in the same query as the subject."""
    check_version(version)
    home = home_of(vault, ref.tenant, ref.subject, ctx, action, ref.key)
    access = decided(vault, ctx, action, ref.tenant, home, ref.subject, ref=ref, durable=durable)
    cell = vault.cells[home]
    with AnsweredAfterAudit(access):
        subject, record = cell.catalog.lookup(ref, version)
        subject = settled_at_home(vault, subject, ref.tenant, ref.subject, home)
        if record is None or record.manifest is None:
            what = f"{ref} v{version}" if version else str(ref)
            raise NotFound(f"no object {what}")
    return cell, subject, record, access


def open_reader(
    vault: Vault, ref: ObjectRef, cell: Cell, subject: SubjectRecord, record: VersionRecord,
    access: Access,
) -> ObjectReader:  # fmt: skip
    manifest = manifest_of(record)
    code = vault.code.matching(manifest.k, manifest.m, manifest.backend)
    reader = ObjectReader(  # starts fetching and verifying shards: no key needed
        manifest=manifest,
        stores=[cell.store(node_id) for node_id in manifest.nodes],
        code=code,
        pool=vault._pool,
        deadline=vault.deadline,
        reload=lambda: _manifest_now(cell, manifest),
    )
    try:
        subject_key = subject_key_of(vault, subject, access)
        binding = manifest.binding(ref)
        data_key = hierarchy.unwrap_data_key(subject_key, manifest.wrapped_data_key, binding)
        reader.unlock(SegmentCipher(data_key, binding))
    except BaseException:
        reader.close()
        raise
    return reader


def manifest_of(record: VersionRecord) -> Manifest:
    """The row's manifest, if it is the one written for the row's version.

    A manifest is self-consistent: its version and object id bind its data key,
    so one misfiled under another version's row (a catalog restored or edited by
    hand) would decrypt and be returned, its bytes and number, as that version.
    Two comparisons: the read path can afford them.
    """
    assert record.manifest is not None
    manifest = Manifest.from_bytes(record.manifest)
    if manifest.object_id != record.object_id or manifest.version != record.version:
        raise IntegrityError(  # naming no other object: it may be another tenant's
            f"catalog row {record.ref} v{record.version} holds a manifest written for "
            "another version: refusing to read it as this one; restore the catalog"
        )
    return manifest


def _manifest_now(cell: Cell, manifest: Manifest) -> tuple[Manifest, list[ShardStore]] | None:
    """MANIFEST's version as its row holds it now, with its nodes' stores; None if it is
    no longer committed (deleted, forgotten). A reader asks it when the copies it names
    are not enough: a repair or spread may have replaced them since it loaded the
    manifest. A row of another object (version numbers are never given again: a catalog
    edited by hand) is returned as it is, for the reader to find it is not its stripe."""
    record = cell.catalog.get_version(manifest.ref, manifest.version)
    if record is None or record.manifest is None:
        return None
    now = manifest_of(record)
    return now, [cell.store(node_id) for node_id in now.nodes]
