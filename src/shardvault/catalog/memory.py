"""In-memory catalog: the reference semantics for the contract suite."""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace

from shardvault.catalog.port import (
    DamageRecord,
    ForgetProgress,
    Leftover,
    SubjectRecord,
    VersionRecord,
    VersionState,
)
from shardvault.errors import Conflict, NotFound, SubjectForgotten, WriteRaced
from shardvault.model import ObjectRef


class MemoryCatalog:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subjects: dict[tuple[str, str], SubjectRecord] = {}
        self._versions: dict[ObjectRef, dict[int, VersionRecord]] = {}
        self._damage: list[DamageRecord] = []
        self._swept_until = 0.0
        self._leftovers: dict[tuple[bytes, int, int, str, int], Leftover] = {}
        self._retired: dict[ObjectRef, int] = {}  # the last number of each collected key
        self._forgets: dict[tuple[str, str], ForgetProgress] = {}

    def add_subject(self, record: SubjectRecord) -> None:
        with self._lock:
            key = (record.tenant, record.subject)
            if key in self._subjects:
                raise Conflict(f"subject {record.subject} of tenant {record.tenant} already exists")
            self._subjects[key] = record

    def get_subject(self, tenant: str, subject: str) -> SubjectRecord | None:
        with self._lock:
            return self._subjects.get((tenant, subject))

    def holds_subjects(self) -> bool:
        with self._lock:
            return bool(self._subjects)

    def subjects_with_keys(self, after: tuple[str, str] | None, limit: int) -> list[SubjectRecord]:
        with self._lock:
            keyed = sorted(
                (key, record)
                for key, record in self._subjects.items()
                if record.wrapped_key is not None and key > (after or ("", ""))
            )
        return [record for _, record in keyed[:limit]]

    def forget_subject(
        self, tenant: str, subject: str, when: float, decided_at: int | None = None
    ) -> int:
        with self._lock:
            record = self._subjects.get((tenant, subject))
            if record is None:
                raise NotFound(f"no subject {subject} in tenant {tenant}")
            self._damage = [
                d for d in self._damage if (d.ref.tenant, d.ref.subject) != (tenant, subject)
            ]
            for ref in [r for r in self._retired if (r.tenant, r.subject) == (tenant, subject)]:
                del self._retired[ref]
            marked = 0
            for ref, versions in self._versions.items():
                if ref.tenant == tenant and ref.subject == subject:
                    for number, rec in versions.items():
                        if rec.state is not VersionState.DELETED:
                            versions[number] = replace(rec, state=VersionState.DELETED)
                            marked += 1
            if record.forgotten_at is None:
                self._subjects[(tenant, subject)] = replace(
                    record, wrapped_key=None, forgotten_at=when
                )
                self._forgets[(tenant, subject)] = ForgetProgress(decided_at, marked, 0, None)
            return marked

    def forget_progress(self, tenant: str, subject: str) -> ForgetProgress | None:
        with self._lock:
            record = self._subjects.get((tenant, subject))
            if record is None or record.forgotten_at is None:
                return None
            return self._forgets.get((tenant, subject), ForgetProgress(None, 0, 0, None))

    def note_forget_progress(
        self, tenant: str, subject: str, *, shards_removed: int = 0, outcome: int | None = None
    ) -> None:
        with self._lock:
            progress = self.forget_progress(tenant, subject)
            if progress is not None:
                self._forgets[(tenant, subject)] = replace(
                    progress,
                    shards_removed=progress.shards_removed + shards_removed,
                    outcome=progress.outcome if outcome is None else outcome,
                )

    def reserve(self, ref: ObjectRef, object_id: bytes, when: float) -> int:
        with self._lock:
            found = self._subjects.get((ref.tenant, ref.subject))
            if found is not None and found.forgotten_at is not None:
                raise SubjectForgotten(
                    f"{ref}: subject {ref.subject} was forgotten during the write"
                )
            number = self._next_version(ref)
            versions = self._versions.setdefault(ref, {})
            versions[number] = VersionRecord(
                ref, number, VersionState.PENDING, object_id, 0, when, None
            )
            return number

    def _current(self, ref: ObjectRef) -> VersionRecord | None:
        committed = [
            rec
            for rec in self._versions.get(ref, {}).values()
            if rec.state is VersionState.COMMITTED
        ]
        return max(committed, key=lambda rec: rec.version, default=None)

    def _check_current(self, ref: ObjectRef, if_match: int | None) -> None:
        if if_match is not None:
            current = self._current(ref)
            found = current.version if current else 0
            if found != if_match:
                raise Conflict(f"{ref}: expected version {if_match}, current is {found}")

    def commit(
        self, ref: ObjectRef, version: int, manifest: bytes, size: int, if_match: int | None
    ) -> None:
        with self._lock:
            record = self._versions.get(ref, {}).get(version)
            if record is None or record.state is not VersionState.PENDING:
                raise Conflict(f"{ref} v{version} is not pending (was it collected?)")
            self._check_current(ref, if_match)
            self._versions[ref][version] = replace(
                record, state=VersionState.COMMITTED, manifest=manifest, size=size
            )

    def abandon(self, ref: ObjectRef, version: int) -> None:
        with self._lock:
            versions = self._versions.get(ref, {})
            record = versions.get(version)
            if record is not None and record.state is VersionState.PENDING:
                del versions[version]

    def lookup_for_write(self, ref: ObjectRef) -> tuple[SubjectRecord | None, int]:
        with self._lock:
            record = self.get_subject(ref.tenant, ref.subject)
            return record, (self._next_version(ref) if record else 0)

    def _next_version(self, ref: ObjectRef) -> int:
        return max(max(self._versions.get(ref, {}), default=0), self._retired.get(ref, 0)) + 1

    def insert_committed(self, record: VersionRecord, if_match: int | None) -> None:
        assert record.state is VersionState.COMMITTED and record.manifest is not None
        with self._lock:
            self._check_current(record.ref, if_match)
            subject = self._subjects.get((record.ref.tenant, record.ref.subject))
            if subject is None or subject.forgotten_at is not None:
                raise SubjectForgotten(
                    f"{record.ref}: subject {record.ref.subject} was forgotten during the write"
                )
            if record.created_at <= self._swept_until:
                raise WriteRaced(f"{record.ref}: a gc sweep began after its shards were written")
            if self._next_version(record.ref) > record.version:
                raise WriteRaced(f"{record.ref} v{record.version} was taken meanwhile")
            self._versions.setdefault(record.ref, {})[record.version] = record

    def note_sweep(self, minted_until: float) -> None:
        with self._lock:
            self._swept_until = max(self._swept_until, minted_until)

    def get_version(self, ref: ObjectRef, version: int | None = None) -> VersionRecord | None:
        with self._lock:
            if version is None:
                return self._current(ref)
            record = self._versions.get(ref, {}).get(version)
            return record if record and record.state is VersionState.COMMITTED else None

    def lookup(
        self, ref: ObjectRef, version: int | None = None
    ) -> tuple[SubjectRecord | None, VersionRecord | None]:
        with self._lock:
            record = self.get_subject(ref.tenant, ref.subject)
            return record, (self.get_version(ref, version) if record else None)

    def list_latest(
        self, tenant: str, subject: str, prefix: str, start_after: str, limit: int
    ) -> list[VersionRecord]:
        with self._lock:
            found = []
            for ref in sorted(self._versions, key=lambda r: r.key.encode()):
                if (
                    ref.tenant == tenant
                    and ref.subject == subject
                    and ref.key.startswith(prefix)
                    and ref.key.encode() > start_after.encode()
                ):
                    current = self._current(ref)
                    if current is not None:
                        found.append(current)
                        if len(found) == limit:
                            break
            return found

    def list_versions(self, ref: ObjectRef) -> list[VersionRecord]:
        with self._lock:
            return sorted(
                (
                    r
                    for r in self._versions.get(ref, {}).values()
                    if r.state is VersionState.COMMITTED
                ),
                key=lambda r: -r.version,
            )

    def mark_deleted(
        self, ref: ObjectRef, version: int | None = None, if_match: int | None = None
    ) -> int:
        with self._lock:
            self._check_current(ref, if_match)
            marked = 0
            for number, rec in self._versions.get(ref, {}).items():
                if rec.state is VersionState.COMMITTED and version in (None, number):
                    self._versions[ref][number] = replace(rec, state=VersionState.DELETED)
                    marked += 1
            return marked

    def claim_collectable(
        self,
        pending_before: float,
        *,
        created_until: float = math.inf,
        subject: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[VersionRecord]:
        with self._lock:
            found = []
            for ref, versions in self._versions.items():
                if subject not in (None, (ref.tenant, ref.subject)):
                    continue
                for number, rec in versions.items():
                    if rec.state is VersionState.PENDING and rec.created_at < pending_before:
                        versions[number] = rec = replace(rec, state=VersionState.DELETED)
                    if rec.state is VersionState.DELETED and rec.created_at <= created_until:
                        found.append(rec)
            found.sort(key=lambda rec: rec.created_at)
            return found if limit is None else found[:limit]

    def purge(self, versions: Iterable[tuple[ObjectRef, int]]) -> None:
        with self._lock:
            gone = set(versions)
            for ref, version in gone:
                rows = self._versions.get(ref, {})
                if version in rows and rows[version].state is VersionState.DELETED:
                    del rows[version]
                    subject = self._subjects.get((ref.tenant, ref.subject))
                    if subject is not None and subject.forgotten_at is None:
                        self._retired[ref] = max(self._retired.get(ref, 0), version)
            self._damage = [d for d in self._damage if (d.ref, d.version) not in gone]

    def known_object_ids(self) -> set[bytes]:
        with self._lock:
            return {
                rec.object_id for versions in self._versions.values() for rec in versions.values()
            }

    def known_among(self, object_ids: Collection[bytes]) -> set[bytes]:
        return self.known_object_ids() & set(object_ids)

    def versions_with(self, object_ids: Collection[bytes]) -> list[VersionRecord]:
        wanted = set(object_ids)
        with self._lock:
            return [
                rec
                for versions in self._versions.values()
                for rec in versions.values()
                if rec.object_id in wanted
            ]

    def replace_manifests(
        self, changes: Sequence[tuple[VersionRecord, bytes]], durable: bool = False
    ) -> int:
        changed = 0
        with self._lock:
            for record, manifest in changes:
                versions = self._versions.get(record.ref, {})
                current = versions.get(record.version)
                if current is not None and (current.manifest, current.state) == (
                    record.manifest,
                    record.state,
                ):
                    versions[record.version] = replace(current, manifest=manifest)
                    changed += 1
        return changed

    def erase_freed(self) -> None:
        """Nothing outlives a dropped row in memory."""

    def record_damage(self, damage: DamageRecord) -> None:
        with self._lock:
            self._damage.append(damage)

    def committed_after(self, object_id: bytes, limit: int) -> list[VersionRecord]:
        with self._lock:
            found = sorted(
                (rec for versions in self._versions.values() for rec in versions.values()
                 if rec.state is VersionState.COMMITTED and rec.object_id > object_id),
                key=lambda rec: rec.object_id,
            )  # fmt: skip
        return found[:limit]

    def clear_damage(self, ref: ObjectRef, version: int) -> int:
        with self._lock:
            kept = [d for d in self._damage if (d.ref, d.version) != (ref, version)]
            cleared, self._damage = len(self._damage) - len(kept), kept
        return cleared

    def note_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        with self._lock:
            for x in leftovers:
                self._leftovers[(x.object_id, x.version, x.shard, x.node, x.generation)] = x

    def leftovers(self) -> list[Leftover]:
        with self._lock:
            return list(self._leftovers.values())

    def drop_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        with self._lock:
            for x in leftovers:
                self._leftovers.pop((x.object_id, x.version, x.shard, x.node, x.generation), None)

    def damage(self) -> list[DamageRecord]:
        with self._lock:
            return list(self._damage)

    def close(self) -> None:
        pass
