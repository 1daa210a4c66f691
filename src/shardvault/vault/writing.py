"""Put: the write decided, then one version written and committed.

A version is reserved, its shards written and committed, its manifest committed
in one catalog transaction; a one-segment put in memory skips the reservation
(`_write_unreserved`). The vault binds `put` as its method, so the put path has
no call more than when this was a method of the vault.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from shardvault.catalog.port import SubjectRecord, VersionRecord, VersionState
from shardvault.codec.erasure import ErasureCode
from shardvault.codec.segment import SegmentBinding, SegmentCipher
from shardvault.errors import InvalidInput, TooFewNodes, WriteRaced
from shardvault.keys import hierarchy
from shardvault.manifest import Manifest
from shardvault.model import (
    NodeSpec,
    ObjectInfo,
    ObjectRef,
    RequestContext,
    local_context,
    new_object_key,
)
from shardvault.objectid import minted_at, new_object_id
from shardvault.placement import place_stripe, placement_seed
from shardvault.policy import Action
from shardvault.vault.access import (
    AnsweredAfterAudit,
    check_if_match,
    decided,
    home_of,
    live_at_home,
    settled_at_home,
    subject_key_of,
)
from shardvault.vault.cells import Cell
from shardvault.vault.views import info_of
from shardvault.vault.writer import Progress, ShardSetWriter

if TYPE_CHECKING:
    from shardvault.vault.core import Vault

_UNRESERVED_TRIES = 3  # a small put losing this many races in a row takes a reservation
_T = TypeVar("_T")


def put(
    vault: Vault,
    ref: ObjectRef,
    data: bytes | BinaryIO,
    *,
    if_match: int | None = None,
    ctx: RequestContext | None = None,
    progress: Progress | None = None,
) -> ObjectInfo:
    """Store a new version of ref; returns it once durable and visible.

    Bytes-like data is read in place, not copied: leave it unchanged until
    put returns.
    """
    ctx = ctx or local_context("write")
    new_object_key(ref.key)
    check_if_match(if_match)
    source = memoryview(data) if isinstance(data, bytes | bytearray | memoryview) else data
    if isinstance(source, memoryview) and not source.c_contiguous:
        raise InvalidInput("put needs contiguous bytes: pass bytes(data)")
    if not isinstance(source, memoryview) and not hasattr(source, "readinto"):
        raise InvalidInput(  # a str, or a file opened without 'b': refused before audit
            f"put needs bytes or a binary stream, not {type(data).__name__} "
            "(encode text; open files with 'rb')"
        )
    home = home_of(vault, ref.tenant, ref.subject, ctx, Action.WRITE, ref.key)
    access = decided(
        vault, ctx, Action.WRITE, ref.tenant, home, ref.subject, ref=ref, durable=False
    )
    catalog = vault.cells[home].catalog
    with AnsweredAfterAudit(access):  # as authorized, and only after the decision
        if isinstance(source, memoryview) and source.nbytes <= vault.config.segment_size:
            found, version = catalog.lookup_for_write(ref)  # one query for both
        else:
            found, version = catalog.get_subject(ref.tenant, ref.subject), None
        subject = settled_at_home(vault, found, ref.tenant, ref.subject, home)
        subject_key = _once(functools.partial(subject_key_of, vault, subject, access))
        if version is None:
            return _write_version(vault, ref, source, subject, subject_key, if_match, progress)
        assert isinstance(source, memoryview)
        return _write_unreserved(
            vault, ref, source, subject, version, subject_key, if_match, progress
        )


def _write_unreserved(
    vault: Vault,
    ref: ObjectRef,
    source: memoryview,
    subject: SubjectRecord,
    version: int,
    subject_key: Callable[[], bytes],
    if_match: int | None,
    progress: Progress | None,
) -> ObjectInfo:
    """A one-segment put in memory: no reservation, so one catalog write, not two.

    The catalog's write lock was where concurrent small puts queued. A race
    lost to another writer of the key or to gc costs a rewrite of a small
    object, so it is written again (catalog port, `insert_committed`); after
    a few lost races in a row it reserves its version, as a large put does, so
    no rival writer can starve it and a sweep's cutoff no longer matters.

    Progress is reported by the first try, before its commit, as a large put's is: a
    callback that raises (or Ctrl-C in it) then leaves nothing committed. Reported
    after the commit, it raised from a put whose version was stored and visible.
    """
    catalog = vault.cells[subject.jurisdiction].catalog
    for _ in range(_UNRESERVED_TRIES):
        try:
            return _write_version(
                vault, ref, source, subject, subject_key, if_match, progress, version=version
            )
        except WriteRaced:
            progress = None  # the first try reported the bytes: a rewrite reads no new ones
            found, version = catalog.lookup_for_write(ref)
            live_at_home(found, ref.tenant, ref.subject, subject.jurisdiction)
    return _write_version(vault, ref, source, subject, subject_key, if_match, progress)


def _write_version(
    vault: Vault,
    ref: ObjectRef,
    source: BinaryIO | memoryview,
    subject: SubjectRecord,
    subject_key: Callable[[], bytes],
    if_match: int | None,
    progress: Progress | None,
    *,
    version: int | None = None,
) -> ObjectInfo:
    """Write one version: reserved first, unless `version` is the one to try unreserved."""
    reserve = version is None
    cell = vault.cells[subject.jurisdiction]
    nodes = _placed(cell, placement_seed(ref), vault.code)
    object_id = new_object_id(vault._clock())
    created = minted_at(object_id)
    if version is None:
        version = cell.catalog.reserve(ref, object_id, created)
        vault._on_step("reserved")
    binding = SegmentBinding(ref, version, object_id)
    data_key = hierarchy.new_key()
    writer = ShardSetWriter(
        stores=[cell.store(node.id) for node in nodes],
        object_id=object_id,
        version=version,
        code=vault.code,
        cipher=SegmentCipher(data_key, binding),
        segment_size=vault.config.segment_size,
        pool=vault._pool,
        on_step=vault._on_step,
        deadline=vault.deadline,
    )
    try:
        written = writer.write(source, progress)
        # the data key is fresh, so shards need no custodian; wrapping it does
        manifest = Manifest(
            ref=ref,
            version=version,
            object_id=object_id,
            size=written.size,
            segment_size=vault.config.segment_size,
            segments=written.segments,
            k=vault.code.k,
            m=vault.code.m,
            backend=vault.code.backend,
            nodes=tuple(node.id for node in nodes),
            block_size=written.block_size,
            last_block_size=written.last_block_size,
            block_hashes=written.block_hashes,
            locations=written.locations,
            wrapped_data_key=hierarchy.wrap_data_key(subject_key(), data_key, binding),
            subject_key_id=subject.key_id,
            created_at=created,
        )
        if reserve:
            cell.catalog.commit(ref, version, manifest.to_bytes(), written.size, if_match)
        else:
            record = VersionRecord(
                ref,
                version,
                VersionState.COMMITTED,
                object_id,
                written.size,
                created,
                manifest.to_bytes(),
            )
            cell.catalog.insert_committed(record, if_match)
    except BaseException:
        if not _went_through(cell, ref, version, object_id):
            writer.discard()
            if reserve:
                cell.catalog.abandon(ref, version)
        raise
    vault._on_step("committed")
    return info_of(manifest)


def _once(make: Callable[[], _T]) -> Callable[[], _T]:
    """MAKE's result, made at the first call only: a put that writes again after a lost
    race asks the custodian for the subject key once. A closure: functools.cache cost
    each put about 30 k instructions to set up (its wrapper copies attributes)."""
    made: list[_T] = []

    def once() -> _T:
        if not made:
            made.append(make())
        return made[0]

    return once


def _placed(cell: Cell, seed: bytes, code: ErasureCode) -> list[NodeSpec]:
    """The stripe's nodes, among those whose stores could be opened; too few names them."""
    try:
        return place_stripe(seed, cell.placeable_nodes(), cell.jurisdiction, code.k, code.m)
    except TooFewNodes as exc:
        unavailable = cell.unavailable_reasons()
        if not unavailable:
            raise
        raise TooFewNodes(f"{exc}; unavailable: {unavailable}") from None


def _went_through(cell: Cell, ref: ObjectRef, version: int, object_id: bytes) -> bool:
    """Whether a put's commit went through though the put failed after it (Ctrl-C, or a
    flush that failed once the row was written): its shards are then the version's
    and must stay. Not knowing counts as yes: gc takes shards no row names, while
    discarding a committed version's would leave it listed and unreadable."""
    try:
        record = cell.catalog.get_version(ref, version)
    except BaseException:
        return True
    return record is not None and record.object_id == object_id
