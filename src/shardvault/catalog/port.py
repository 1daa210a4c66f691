"""The catalog port: one per cell, so metadata stays in its jurisdiction too.

Versions move pending → committed → deleted. Only committed versions are ever
read; the latest committed version is the object's current one, so concurrent
writers resolve last-writer-wins by version number, or get a Conflict when
they asked for a precondition (``if_match``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from shardvault.model import ObjectRef
from shardvault.slot_init import slot_init


class VersionState(enum.StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"
    DELETED = "deleted"


@slot_init
@dataclass(frozen=True, slots=True)
class SubjectRecord:
    tenant: str
    subject: str
    jurisdiction: str
    key_id: str
    wrapped_key: bytes | None
    created_at: float
    forgotten_at: float | None = None


@slot_init
@dataclass(frozen=True, slots=True)
class VersionRecord:
    ref: ObjectRef
    version: int
    state: VersionState
    object_id: bytes
    size: int
    created_at: float
    manifest: bytes | None


@dataclass(frozen=True, slots=True)
class ForgetProgress:
    """What a forget of a subject has done, kept in the subject's row: a forget run again
    after one was cut short (kill -9) finishes it and states the whole in its receipt.

    ``decided_at`` is the audit index of the forget's decision (its outcome entry
    comes after it; None for a forget from before catalog schema 6), ``outcome``
    that of its outcome entry once written."""

    decided_at: int | None
    versions_deleted: int
    shards_removed: int
    outcome: int | None


@dataclass(frozen=True, slots=True)
class Leftover:
    """A copy of a shard repair wrote or replaced, which may end up named by no manifest
    (a repair killed mid-way, a node it could not reach): gc resolves it. A copy a swap
    replaced carries when (``replaced_at``): a get that loaded the manifest before the
    swap may still be reading it, so gc keeps it for its grace period."""

    object_id: bytes
    version: int
    shard: int
    node: str
    location: str | None
    generation: int = 0  # of the copy's name (nodes/port.py `shard_name`)
    replaced_at: float | None = None  # when a swap named another copy in its place


@dataclass(frozen=True, slots=True)
class DamageRecord:
    ref: ObjectRef
    version: int
    segment: int
    index: int
    node: str
    reason: str
    seen_at: float


class Catalog(Protocol):
    def add_subject(self, record: SubjectRecord) -> None:
        """Raises Conflict when the subject exists."""

    def get_subject(self, tenant: str, subject: str) -> SubjectRecord | None: ...

    def holds_subjects(self) -> bool:
        """Whether any subject (live or forgotten) was ever registered in this catalog."""

    def subjects_with_keys(self, after: tuple[str, str] | None, limit: int) -> list[SubjectRecord]:
        """Up to ``limit`` subjects holding a wrapped key (not forgotten), in (tenant,
        subject) order after ``after``: a page at a time, for a keyring from before the
        custodian recorded whose key is whose (`Vault.open`)."""

    def forget_subject(
        self, tenant: str, subject: str, when: float, decided_at: int | None = None
    ) -> int:
        """Drop the wrapped key, mark every version deleted; returns versions marked.

        A subject already forgotten keeps its time and `ForgetProgress`: a second
        forget racing the first does not make the first's count its own."""

    def forget_progress(self, tenant: str, subject: str) -> ForgetProgress | None:
        """What the forget of a forgotten subject has done (None if not forgotten)."""

    def note_forget_progress(
        self, tenant: str, subject: str, *, shards_removed: int = 0, outcome: int | None = None
    ) -> None:
        """Add shards a forgotten subject's collection removed; note its outcome's index.
        Not synced: a count lost to a power cut makes a receipt say fewer, never more."""

    def reserve(self, ref: ObjectRef, object_id: bytes, when: float) -> int:
        """Record a pending version one above every version of ref; returns it.

        Raises SubjectForgotten, recording nothing, for a forgotten subject: a put
        that found it live before a forget would write its shards after the forget."""

    def commit(
        self, ref: ObjectRef, version: int, manifest: bytes, size: int, if_match: int | None
    ) -> None:
        """Make a pending version committed in one transaction.

        ``if_match`` is the version the caller expects to be current (0: none);
        raises Conflict when it is not, leaving the version pending.
        """

    def abandon(self, ref: ObjectRef, version: int) -> None:
        """Remove a pending version's row."""

    def lookup_for_write(self, ref: ObjectRef) -> tuple[SubjectRecord | None, int]:
        """The subject's record and one above every version of ref in any state (what an
        unreserved write tries), in one query; (None, 0) without the subject."""

    def insert_committed(self, record: VersionRecord, if_match: int | None) -> None:
        """Add a committed version (``record``, with its manifest) whose shards were
        written without a reservation.

        ``record.created_at`` must be the time minted into ``record.object_id``
        (shardvault.objectid). Raises WriteRaced, adding nothing, when the
        version is no longer above every version of the ref, or when a sweep
        that may collect unreserved shards minted then has begun
        (`note_sweep`); SubjectForgotten when the subject was forgotten (or is
        not in this catalog); Conflict when ``if_match`` does not hold.
        """

    def note_sweep(self, minted_until: float) -> None:
        """Durably note, before a gc sweep lists shards, that it may collect
        unreserved shards minted at or before `minted_until` (the latest noted wins)."""

    def get_version(self, ref: ObjectRef, version: int | None = None) -> VersionRecord | None:
        """A committed version (the latest when version is None)."""

    def lookup(
        self, ref: ObjectRef, version: int | None = None
    ) -> tuple[SubjectRecord | None, VersionRecord | None]:
        """The subject's record and `get_version` of ref, in one query: a read's two
        questions to its cell (each query costs a read transaction)."""

    def list_latest(
        self, tenant: str, subject: str, prefix: str, start_after: str, limit: int
    ) -> list[VersionRecord]:
        """Latest committed version per key, in key order, after `start_after`."""

    def list_versions(self, ref: ObjectRef) -> list[VersionRecord]:
        """Committed versions of one key, newest first."""

    def mark_deleted(
        self, ref: ObjectRef, version: int | None = None, if_match: int | None = None
    ) -> int:
        """Mark ref's committed versions (or one) deleted; returns how many.

        ``if_match`` is the version the caller expects to be current (as `commit`'s):
        checked in the same transaction as the mark, Conflict marking nothing when it
        is not, so a delete never takes a version committed after the caller looked.
        """

    def claim_collectable(
        self,
        pending_before: float,
        *,
        created_until: float = math.inf,
        subject: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[VersionRecord]:
        """Deleted versions, and pending versions reserved before `pending_before`, which
        are first marked deleted in the same transaction: a put still writing one can
        then no longer commit it (its commit fails, unacknowledged), so gc never takes
        the shards of a version that commits.

        Only versions created at or before `created_until`, of one (tenant, subject) if
        given, and at most `limit` of them, oldest first: a caller that purges what
        it is given and asks again works through any backlog in bounded memory, and
        stops, since what is created meanwhile is left for the next time. Two callers
        at once are given the same rows: collectors take turns (`Cell.collection`)."""

    def purge(self, versions: Iterable[tuple[ObjectRef, int]]) -> None:
        """Remove deleted versions' rows for good (after their shards are gone), in one
        transaction: one sync for a whole batch of a gc or forget, not one per version."""

    def known_object_ids(self) -> set[bytes]:
        """Object ids of every row, in any state. Sized by the cell: gc asks
        `known_among` a batch at a time instead; this one answers whole-cell checks."""

    def known_among(self, object_ids: Collection[bytes]) -> set[bytes]:
        """Which of these object ids some row (in any state) has: found by an index, so
        gc can check a node's shards a batch at a time, not hold every id of the cell."""

    def versions_with(self, object_ids: Collection[bytes]) -> list[VersionRecord]:
        """The rows, in any state, of these object ids (found by an index, not a scan)."""

    def replace_manifests(
        self, changes: Sequence[tuple[VersionRecord, bytes]], durable: bool = False
    ) -> int:
        """Give each row a new manifest if it still holds the record's, in the record's
        state (a shard's new location after a compaction, a rebuilt shard's node: a
        version deleted meanwhile is the collector's to finish); returns how many
        changed. Synced only if ``durable``: a location is a hint, and one lost to a
        crash costs a reader a lookup; a node is not (repair deletes the old copy)."""

    def committed_after(self, object_id: bytes, limit: int) -> list[VersionRecord]:
        """Up to ``limit`` committed versions whose object id sorts after ``object_id``,
        in object id order: a cursor over the cell for a scrub, a batch at a time."""

    def clear_damage(self, ref: ObjectRef, version: int) -> int:
        """Drop the damage recorded for one version (repaired, or gone); how many."""

    def erase_freed(self) -> None:
        """Overwrite what purged rows left behind in the catalog's files (after a forget)."""

    def record_damage(self, damage: DamageRecord) -> None: ...

    def note_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        """Remember copies that may end up named by no manifest, durably: repair notes
        its targets before writing them and the old copies before its swap."""

    def leftovers(self) -> list[Leftover]:
        """Every copy noted and not yet dropped."""

    def drop_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        """Forget these notes: the copies are named, or gone."""

    def damage(self) -> list[DamageRecord]: ...

    def close(self) -> None: ...
