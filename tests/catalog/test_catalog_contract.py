"""One contract for every catalog: memory and SQLite run the same tests."""

from __future__ import annotations

import fcntl
import math
import multiprocessing
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tests.interrupts import Interrupted, interrupts_on_sigusr1

from conftest import Flushes
from shardvault.catalog import sqlite as sqlite_module
from shardvault.catalog.memory import MemoryCatalog
from shardvault.catalog.port import (
    Catalog,
    DamageRecord,
    ForgetProgress,
    Leftover,
    SubjectRecord,
    VersionRecord,
    VersionState,
)
from shardvault.catalog.sqlite import (
    _FLOCK_TURNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    SqliteCatalog,
    _above_prefix,
)
from shardvault.errors import (
    Conflict,
    NewerFormat,
    NotFound,
    StorageError,
    SubjectForgotten,
    WriteRaced,
)
from shardvault.group_commit import GroupSync
from shardvault.model import ObjectRef

REF = ObjectRef("intl", "alice", "a.txt")


def oid(number: int) -> bytes:
    return number.to_bytes(16, "big")


@pytest.fixture(params=["memory", "sqlite"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    cat: Catalog = (
        MemoryCatalog() if request.param == "memory" else SqliteCatalog(tmp_path / "c.sqlite")
    )
    yield cat
    cat.close()


def put(catalog: Catalog, ref: ObjectRef, number: int, when: float = 1.0) -> int:
    version = catalog.reserve(ref, oid(number), when)
    catalog.commit(ref, version, b"manifest-%d" % number, number, None)
    return version


def subject(name: str = "alice", tenant: str = "intl") -> SubjectRecord:
    return SubjectRecord(tenant, name, "US", "kid-" + name, b"wrapped", 1.0)


def test_subjects(catalog: Catalog) -> None:
    assert catalog.get_subject("intl", "alice") is None
    assert not catalog.holds_subjects()
    catalog.add_subject(subject())
    assert catalog.holds_subjects()
    assert catalog.get_subject("intl", "alice") == subject()
    assert catalog.get_subject("other", "alice") is None
    with pytest.raises(Conflict, match="already exists"):
        catalog.add_subject(subject())


def test_reserve_then_commit(catalog: Catalog) -> None:
    version = catalog.reserve(REF, oid(1), 5.0)
    assert version == 1
    assert catalog.get_version(REF) is None  # pending is invisible
    assert catalog.list_versions(REF) == []
    catalog.commit(REF, version, b"m1", 42, None)
    record = catalog.get_version(REF)
    assert record is not None
    assert (record.version, record.state, record.size, record.manifest) == (
        1,
        VersionState.COMMITTED,
        42,
        b"m1",
    )
    assert (record.object_id, record.created_at, record.ref) == (oid(1), 5.0, REF)


def test_reserve_numbers_above_every_version(catalog: Catalog) -> None:
    assert catalog.reserve(REF, oid(1), 1.0) == 1
    assert catalog.reserve(REF, oid(2), 1.0) == 2
    catalog.commit(REF, 1, b"m", 1, None)
    assert catalog.reserve(REF, oid(3), 1.0) == 3
    assert catalog.reserve(ObjectRef("intl", "alice", "b"), oid(4), 1.0) == 1


def test_commit_twice_or_unknown_is_a_conflict(catalog: Catalog) -> None:
    version = put(catalog, REF, 1)
    with pytest.raises(Conflict, match="not pending"):
        catalog.commit(REF, version, b"again", 1, None)
    with pytest.raises(Conflict, match="not pending"):
        catalog.commit(REF, 99, b"never", 1, None)


def test_abandon_removes_only_pending(catalog: Catalog) -> None:
    committed = put(catalog, REF, 1)
    pending = catalog.reserve(REF, oid(2), 1.0)
    catalog.abandon(REF, pending)
    catalog.abandon(REF, committed)  # not pending: kept
    assert [r.version for r in catalog.list_versions(REF)] == [1]
    assert catalog.claim_collectable(1e12) == []
    with pytest.raises(Conflict):
        catalog.commit(REF, pending, b"late", 1, None)


def test_if_match(catalog: Catalog) -> None:
    first = catalog.reserve(REF, oid(1), 1.0)
    with pytest.raises(Conflict, match="expected version 1, current is 0"):
        catalog.commit(REF, first, b"m1", 1, 1)
    catalog.commit(REF, first, b"m1", 1, 0)  # 0: must not exist yet
    second = catalog.reserve(REF, oid(2), 1.0)
    with pytest.raises(Conflict, match="expected version 0, current is 1"):
        catalog.commit(REF, second, b"m2", 2, 0)
    # the failed commit left it pending, so it can still commit with the right precondition
    catalog.commit(REF, second, b"m2", 2, 1)
    current = catalog.get_version(REF)
    assert current is not None and current.version == 2


def committed(
    version: int, number: int, minted: float = 10.0, ref: ObjectRef = REF
) -> VersionRecord:
    """The row of an unreserved write."""
    return VersionRecord(
        ref, version, VersionState.COMMITTED, oid(number), number, minted, b"m%d" % number
    )


def next_version(catalog: Catalog, ref: ObjectRef = REF) -> int:
    return catalog.lookup_for_write(ref)[1]


def test_lookup_for_write_answers_subject_and_next_version_together(catalog: Catalog) -> None:
    assert catalog.lookup_for_write(REF) == (None, 0)
    catalog.add_subject(subject())
    assert catalog.lookup_for_write(REF) == (subject(), 1)
    catalog.reserve(REF, oid(1), 1.0)  # any state counts: pending, committed, deleted
    put(catalog, REF, 2)
    catalog.mark_deleted(REF, 2)
    assert catalog.lookup_for_write(REF) == (subject(), 3)
    other = ObjectRef(REF.tenant, REF.subject, "other")
    assert catalog.lookup_for_write(other) == (subject(), 1)
    assert catalog.lookup_for_write(ObjectRef("intl", "bob", REF.key)) == (None, 0)


def test_unreserved_write_inserts_a_committed_version(catalog: Catalog) -> None:
    assert next_version(catalog) == 0  # no subject yet
    catalog.add_subject(subject())
    assert next_version(catalog) == 1
    catalog.insert_committed(committed(1, 7), None)
    assert catalog.get_version(REF) == committed(1, 7)
    assert next_version(catalog) == 2
    assert oid(7) in catalog.known_object_ids()
    assert catalog.claim_collectable(float("inf")) == []


def test_unreserved_write_loses_a_taken_version(catalog: Catalog) -> None:
    catalog.add_subject(subject())
    catalog.insert_committed(committed(1, 1), None)
    with pytest.raises(WriteRaced, match="v1"):
        catalog.insert_committed(committed(1, 2), None)
    pending = catalog.reserve(REF, oid(3), 1.0)  # a reservation takes a version too
    assert pending == next_version(catalog) - 1 == 2
    with pytest.raises(WriteRaced):
        catalog.insert_committed(committed(2, 4), None)
    # and nothing below the newest version, which would not read as the latest
    catalog.commit(REF, pending, b"m3", 3, None)
    with pytest.raises(WriteRaced):
        catalog.insert_committed(committed(1, 5), None)
    assert [(r.version, r.object_id) for r in catalog.list_versions(REF)] == [
        (2, oid(3)),
        (1, oid(1)),
    ]


def test_unreserved_write_minted_before_a_sweep_is_refused(catalog: Catalog) -> None:
    catalog.add_subject(subject())
    catalog.note_sweep(10.0)
    with pytest.raises(WriteRaced, match="gc sweep"):
        catalog.insert_committed(committed(1, 1, minted=10.0), None)
    catalog.note_sweep(5.0)  # an earlier cutoff (a longer grace) does not lower it
    with pytest.raises(WriteRaced):
        catalog.insert_committed(committed(1, 1, minted=9.0), None)
    assert catalog.get_version(REF) is None and catalog.known_object_ids() == set()
    catalog.insert_committed(committed(1, 2, minted=10.001), None)
    assert catalog.get_version(REF) == committed(1, 2, minted=10.001)


def test_unreserved_write_for_a_forgotten_subject_is_refused(catalog: Catalog) -> None:
    with pytest.raises(SubjectForgotten, match="forgotten during the write"):
        catalog.insert_committed(committed(1, 1), None)  # never registered here
    catalog.add_subject(subject())
    catalog.forget_subject("intl", "alice", 2.0)
    with pytest.raises(SubjectForgotten, match="forgotten during the write"):
        catalog.insert_committed(committed(1, 1), None)
    assert catalog.known_object_ids() == set()


def test_unreserved_write_with_if_match(catalog: Catalog) -> None:
    catalog.add_subject(subject())
    with pytest.raises(Conflict, match="expected version 1, current is 0"):
        catalog.insert_committed(committed(1, 1), 1)
    catalog.insert_committed(committed(1, 1), 0)
    with pytest.raises(Conflict, match="expected version 0, current is 1"):
        catalog.insert_committed(committed(2, 2), 0)
    catalog.insert_committed(committed(2, 2), 1)
    assert [r.version for r in catalog.list_versions(REF)] == [2, 1]


def test_latest_committed_wins(catalog: Catalog) -> None:
    one = catalog.reserve(REF, oid(1), 1.0)
    two = catalog.reserve(REF, oid(2), 1.0)
    catalog.commit(REF, two, b"m2", 2, None)
    catalog.commit(REF, one, b"m1", 1, None)  # a slower writer commits later
    current = catalog.get_version(REF)
    assert current is not None and current.version == 2
    old = catalog.get_version(REF, 1)
    assert old is not None and old.manifest == b"m1"
    assert catalog.get_version(REF, 3) is None
    assert [r.version for r in catalog.list_versions(REF)] == [2, 1]


def test_list_latest_order_prefix_and_pagination(catalog: Catalog) -> None:
    keys = ["b", "a/2", "a/10", "a/1", "é", "z", "Z", "a/1/x", "ab"]
    for number, key in enumerate(keys, start=1):
        put(catalog, ObjectRef("intl", "alice", key), number)
    put(catalog, ObjectRef("intl", "alice", "b"), 50)  # second version of b
    put(catalog, ObjectRef("intl", "bob", "a/3"), 60)
    put(catalog, ObjectRef("other", "alice", "a/4"), 70)
    pending_only = ObjectRef("intl", "alice", "a/pending")
    catalog.reserve(pending_only, oid(80), 1.0)

    everything = catalog.list_latest("intl", "alice", "", "", 100)
    by_bytes = sorted(keys, key=lambda key: key.encode())
    assert [r.ref.key for r in everything] == by_bytes
    assert next(r for r in everything if r.ref.key == "b").version == 2

    pages, after = [], ""
    while True:
        page = catalog.list_latest("intl", "alice", "", after, 2)
        if not page:
            break
        assert len(page) <= 2
        pages.append([r.ref.key for r in page])
        after = page[-1].ref.key
    assert [key for page in pages for key in page] == by_bytes

    assert [r.ref.key for r in catalog.list_latest("intl", "alice", "a/", "", 100)] == [
        "a/1",
        "a/1/x",
        "a/10",
        "a/2",
    ]
    assert [r.ref.key for r in catalog.list_latest("intl", "alice", "a/", "a/1/x", 2)] == [
        "a/10",
        "a/2",
    ]
    assert catalog.list_latest("intl", "alice", "nothing", "", 100) == []
    assert [r.ref.key for r in catalog.list_latest("intl", "bob", "", "", 100)] == ["a/3"]


@pytest.mark.parametrize("prefix", ["é", "日本", "a~", "photos/", "z"])
def test_list_latest_by_prefix_takes_exactly_the_keys_that_start_with_it(
    catalog: Catalog, prefix: str
) -> None:
    keys = {"a", "a~", "a~b", "photos", "photos/1", "photos0", "y", "z", "z/z", "é", "éa"}
    keys |= {"ê", "日本", "日本/x", "日朝", "\uff5a"}  # a fullwidth z: above every ASCII key
    for number, key in enumerate(sorted(keys), start=1):
        put(catalog, ObjectRef("intl", "alice", key), number)
    found = [r.ref.key for r in catalog.list_latest("intl", "alice", prefix, "", 100)]
    assert found == sorted((k for k in keys if k.startswith(prefix)), key=str.encode)


def test_the_least_string_above_a_prefix() -> None:
    assert [_above_prefix(p) for p in ("", "ab", "a\U0010ffff", "\U0010ffff", "a\ud7ff")] == [
        None,
        "ac",
        "b",
        None,
        "a\ue000",
    ]


def test_sqlite_lists_a_prefix_as_a_range_of_the_key_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a prefix was tested on every key after start-after: a page of few matches read the
    # rest of the subject (16.6 ms at 100,000 keys, a scale probe)
    catalog = SqliteCatalog(tmp_path / "c.sqlite")
    asked = []
    real_query = catalog._query
    monkeypatch.setattr(
        catalog, "_query", lambda sql, p=(): asked.append((sql, p)) or real_query(sql, p)
    )
    catalog.list_latest("intl", "alice", "photos/", "", 10)
    catalog.close()
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        plan = db.execute(f"EXPLAIN QUERY PLAN {asked[0][0]}", asked[0][1]).fetchall()
    assert "key>? AND key<?)" in plan[0][3]


def test_list_latest_skips_deleted(catalog: Catalog) -> None:
    put(catalog, REF, 1)
    put(catalog, ObjectRef("intl", "alice", "b"), 2)
    catalog.mark_deleted(REF)
    assert [r.ref.key for r in catalog.list_latest("intl", "alice", "", "", 10)] == ["b"]


def test_mark_deleted_one_version_or_all(catalog: Catalog) -> None:
    for number in (1, 2, 3):
        put(catalog, REF, number)
    assert catalog.mark_deleted(REF, 3) == 1
    current = catalog.get_version(REF)
    assert current is not None and current.version == 2
    assert catalog.mark_deleted(REF, 3) == 0
    assert catalog.mark_deleted(REF) == 2
    assert catalog.get_version(REF) is None
    assert catalog.list_versions(REF) == []
    assert catalog.mark_deleted(REF) == 0


def test_mark_deleted_if_match_marks_only_while_it_is_the_current_version(
    catalog: Catalog,
) -> None:
    for number in (1, 2):
        put(catalog, REF, number)
    catalog.reserve(REF, oid(3), 1.0)  # pending: not current, and not marked
    with pytest.raises(Conflict, match="expected version 1, current is 2"):
        catalog.mark_deleted(REF, if_match=1)
    assert [record.version for record in catalog.list_versions(REF)] == [2, 1]
    with pytest.raises(Conflict, match="expected version 1, current is 2"):
        catalog.mark_deleted(REF, 1, if_match=1)
    assert catalog.mark_deleted(REF, 1, if_match=2) == 1
    assert catalog.mark_deleted(REF, if_match=2) == 1
    assert catalog.list_versions(REF) == []
    with pytest.raises(Conflict, match="expected version 2, current is 0"):
        catalog.mark_deleted(REF, if_match=2)
    catalog.commit(REF, 3, b"manifest-3", 3, None)  # the pending version was left pending
    assert catalog.mark_deleted(REF, if_match=3) == 1


def test_a_claimed_pending_version_can_no_longer_commit(catalog: Catalog) -> None:
    # gc read pending rows, a put committed one, and gc then took its shards and its row:
    # an acknowledged put was lost. Claiming marks the row first; the commit then fails.
    late = catalog.reserve(REF, oid(1), 10.0)
    assert [r.version for r in catalog.claim_collectable(15.0)] == [late]
    with pytest.raises(Conflict, match="not pending"):
        catalog.commit(REF, late, b"manifest", 1, None)
    committed = catalog.reserve(REF, oid(2), 10.0)
    catalog.commit(REF, committed, b"manifest", 1, None)  # committed before gc looks
    assert committed not in {r.version for r in catalog.claim_collectable(15.0)}
    catalog.purge([(REF, committed)])  # a purge never takes a committed row
    assert catalog.get_version(REF, committed) is not None


def test_claims_come_in_bounded_batches_of_one_subject_and_of_their_time(
    catalog: Catalog,
) -> None:
    # gc and forget work through a backlog a batch at a time, in bounded memory, and
    # stop: what is created after they start is left for the next time
    bob = ObjectRef("intl", "bob", "a.txt")
    for number, when in enumerate((30.0, 10.0, 20.0, 40.0), start=1):
        catalog.mark_deleted(REF, put(catalog, REF, number, when=when))
    catalog.mark_deleted(bob, put(catalog, bob, 5, when=5.0))
    bob_pending = catalog.reserve(bob, oid(6), 1.0)
    alice_pending = catalog.reserve(REF, oid(7), 1.0)
    first = catalog.claim_collectable(2.0, subject=("intl", "alice"), limit=2)
    assert [r.created_at for r in first] == [1.0, 10.0]  # oldest first, alice's only
    assert first[0].version == alice_pending and first[0].state is VersionState.DELETED
    catalog.commit(bob, bob_pending, b"manifest-6", 6, None)  # bob's pending was not claimed
    for record in first:
        catalog.purge([(record.ref, record.version)])
    rest = catalog.claim_collectable(0.0, subject=("intl", "alice"), created_until=30.0)
    assert [r.created_at for r in rest] == [20.0, 30.0]  # the one created at 40 waits
    assert {r.ref.subject for r in catalog.claim_collectable(2.0, limit=10)} == {"alice", "bob"}


def test_collectable_with_cutoff_and_purge(catalog: Catalog) -> None:
    put(catalog, REF, 1, when=10.0)
    deleted = put(catalog, REF, 2, when=10.0)
    catalog.mark_deleted(REF, deleted)
    old_pending = catalog.reserve(REF, oid(3), 10.0)
    young = catalog.reserve(REF, oid(4), 20.0)
    found = {(r.version, r.state) for r in catalog.claim_collectable(10.0)}
    assert found == {(deleted, VersionState.DELETED)}  # strictly before the cutoff
    found = {(r.version, r.state) for r in catalog.claim_collectable(15.0)}
    assert found == {(deleted, VersionState.DELETED), (old_pending, VersionState.DELETED)}
    catalog.purge((r.ref, r.version) for r in catalog.claim_collectable(15.0))  # both at once
    assert {r.version for r in catalog.claim_collectable(15.0)} == set()
    catalog.purge([(REF, young)])  # a pending row is not purged: gc claims it first
    catalog.purge([(REF, 1)])  # nor a committed one
    assert catalog.known_object_ids() == {oid(1), oid(4)}
    current = catalog.get_version(REF)
    assert current is not None and current.version == 1


def test_known_object_ids_covers_every_state(catalog: Catalog) -> None:
    put(catalog, REF, 1)
    catalog.reserve(REF, oid(2), 1.0)
    put(catalog, ObjectRef("intl", "alice", "b"), 3)
    catalog.mark_deleted(ObjectRef("intl", "alice", "b"))
    assert catalog.known_object_ids() == {oid(1), oid(2), oid(3)}


def test_sqlite_purges_a_batch_with_one_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a gc or forget made one durable transaction, a filesystem sync, per version:
    # 2-3.5 ms each, so forgetting a user with 100,000 objects took minutes
    catalog = SqliteCatalog(tmp_path / "c.sqlite")
    catalog.add_subject(subject())
    refs = [ObjectRef("intl", "alice", f"k{i}") for i in range(50)]
    for number, ref in enumerate(refs, start=1):
        catalog.mark_deleted(ref, put(catalog, ref, number))
    catalog.record_damage(DamageRecord(refs[0], 1, 0, 2, "n1", "bad hash", 1.0))
    claimed = catalog.claim_collectable(math.inf)
    assert catalog._wal_sync is not None
    syncs = []
    real_sync = catalog._wal_sync.sync
    # the process's one group commit of the filesystem: patched for this test only
    monkeypatch.setattr(catalog._wal_sync, "sync", lambda *a, **k: syncs.append(real_sync(*a, **k)))
    catalog.purge((r.ref, r.version) for r in claimed)
    assert len(syncs) == 1
    assert catalog.known_object_ids() == set() and catalog.damage() == []
    assert next_version(catalog, refs[7]) == 2  # each key's number is still retired
    catalog.close()


def test_known_among_says_which_ids_have_rows(catalog: Catalog) -> None:
    put(catalog, REF, 1)
    catalog.reserve(REF, oid(2), 1.0)
    assert catalog.known_among({oid(1), oid(2), oid(3)}) == {oid(1), oid(2)}
    many = {oid(n) for n in range(100, 1300)} | {oid(2)}  # more than one query's worth
    assert catalog.known_among(many) == {oid(2)} and catalog.known_among(set()) == set()


def test_versions_with_finds_rows_of_given_object_ids_in_any_state(catalog: Catalog) -> None:
    put(catalog, REF, 1)
    catalog.reserve(REF, oid(2), 1.0)
    other = ObjectRef("intl", "alice", "b")
    put(catalog, other, 3)
    catalog.mark_deleted(other)
    found = catalog.versions_with({oid(2), oid(3), oid(9)})
    assert sorted((r.ref.key, r.version, r.state) for r in found) == [
        ("a.txt", 2, VersionState.PENDING),
        ("b", 1, VersionState.DELETED),
    ]
    assert catalog.versions_with(set()) == []
    many = {oid(n) for n in range(100, 1300)} | {oid(1)}  # more than one query's worth
    assert [r.object_id for r in catalog.versions_with(many)] == [oid(1)]


def test_replace_manifests_swaps_only_rows_still_holding_the_old_one(catalog: Catalog) -> None:
    put(catalog, REF, 1)
    other = ObjectRef("intl", "alice", "b")
    put(catalog, other, 2)
    first, second = catalog.versions_with({oid(1), oid(2)})
    stale = replace(second, manifest=b"not what the row holds")
    gone = replace(first, version=7)  # no such row
    assert catalog.replace_manifests([(first, b"moved-1"), (stale, b"x"), (gone, b"y")]) == 1
    assert catalog.replace_manifests([]) == 0
    assert (catalog.get_version(REF) or first).manifest == b"moved-1"
    assert (catalog.get_version(other) or first).manifest == b"manifest-2"
    # deleted since it was read (a forget's claim): the swap is refused, so a repair
    # cannot name a node the collector, going by what it read, will not clean
    catalog.mark_deleted(other)
    assert catalog.replace_manifests([(second, b"rebuilt elsewhere")]) == 0
    (deleted,) = catalog.versions_with({oid(2)})
    assert (deleted.state, deleted.manifest) == (VersionState.DELETED, b"manifest-2")


def test_subjects_with_keys_are_read_a_page_at_a_time(catalog: Catalog) -> None:
    """What the custodian is told, once, of keys it wrapped before it recorded whose
    they are: every live subject's key, in (tenant, subject) order, none forgotten."""
    names = [("domestic", "zoe"), ("intl", "alice"), ("intl", "bob"), ("intl", "carol")]
    for tenant, name in reversed(names):
        catalog.add_subject(subject(name, tenant))
    catalog.forget_subject("intl", "bob", 5.0)
    seen, after = [], None
    while page := catalog.subjects_with_keys(after, 2):
        assert len(page) <= 2
        seen += [(r.tenant, r.subject, r.key_id) for r in page]
        after = (page[-1].tenant, page[-1].subject)
    assert seen == [(t, n, "kid-" + n) for t, n in names if n != "bob"]


def test_forget_subject(catalog: Catalog) -> None:
    catalog.add_subject(subject())
    catalog.add_subject(subject("bob"))
    put(catalog, REF, 1)
    put(catalog, REF, 2)
    put(catalog, ObjectRef("intl", "alice", "b"), 3)
    put(catalog, ObjectRef("intl", "bob", "a.txt"), 4)
    assert catalog.forget_subject("intl", "alice", 99.0) == 3
    record = catalog.get_subject("intl", "alice")
    assert record is not None
    assert record.wrapped_key is None and record.forgotten_at == 99.0
    assert record.key_id == "kid-alice"
    assert catalog.get_version(REF) is None
    assert {r.ref.subject for r in catalog.claim_collectable(0.0)} == {"alice"}
    bob = catalog.get_subject("intl", "bob")
    assert bob is not None and bob.wrapped_key == b"wrapped"
    assert catalog.get_version(ObjectRef("intl", "bob", "a.txt")) is not None
    with pytest.raises(NotFound):
        catalog.forget_subject("intl", "nobody", 1.0)
    # a reservation for a forgotten subject records nothing (a put that found it live)
    with pytest.raises(SubjectForgotten):
        catalog.reserve(REF, oid(9), 100.0)
    assert catalog.known_among({oid(9)}) == set()


def test_a_forget_marks_every_version_a_batch_at_a_time(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one statement over every version held its whole journal in memory (temp_store)
    monkeypatch.setattr(sqlite_module, "_FORGET_BATCH", 2)
    catalog.add_subject(subject())
    catalog.add_subject(subject("bob"))
    for number in range(5):
        put(catalog, ObjectRef("intl", "alice", f"k{number}"), number + 1)
    put(catalog, ObjectRef("intl", "bob", "k0"), 9)
    assert catalog.forget_subject("intl", "alice", 99.0) == 5
    assert {r.ref for r in catalog.claim_collectable(0.0)} == {
        ObjectRef("intl", "alice", f"k{number}") for number in range(5)
    }
    assert catalog.get_version(ObjectRef("intl", "bob", "k0")) is not None


def test_a_forget_keeps_its_progress_for_a_run_that_finishes_it(catalog: Catalog) -> None:
    catalog.add_subject(subject())
    catalog.add_subject(subject("bob"))
    put(catalog, REF, 1)
    put(catalog, REF, 2)
    assert catalog.forget_progress("intl", "alice") is None  # not forgotten
    assert catalog.forget_subject("intl", "alice", 99.0, decided_at=41) == 2
    catalog.note_forget_progress("intl", "alice", shards_removed=6)
    catalog.note_forget_progress("intl", "alice", shards_removed=6, outcome=45)
    catalog.note_forget_progress("intl", "bob", shards_removed=6)  # live: nothing noted
    assert catalog.forget_progress("intl", "alice") == ForgetProgress(41, 2, 12, 45)
    assert catalog.forget_progress("intl", "bob") is None
    # a second forget racing the first marks nothing more and keeps the first's record
    assert catalog.forget_subject("intl", "alice", 120.0, decided_at=50) == 0
    assert catalog.forget_progress("intl", "alice") == ForgetProgress(41, 2, 12, 45)
    record = catalog.get_subject("intl", "alice")
    assert record is not None and record.forgotten_at == 99.0


def test_damage_log(catalog: Catalog) -> None:
    assert catalog.damage() == []
    first = DamageRecord(REF, 1, 0, 3, "us-n2", "hash mismatch", 5.0)
    second = DamageRecord(REF, 1, 2, 0, "us-n1", "missing", 6.0)
    other = DamageRecord(REF, 2, 0, 1, "us-n1", "missing", 7.0)
    for record in (first, second, other):
        catalog.record_damage(record)
    assert catalog.damage() == [first, second, other]
    assert catalog.clear_damage(REF, 1) == 2
    assert catalog.damage() == [other]
    assert catalog.clear_damage(REF, 1) == 0


def test_leftovers_are_noted_durably_updated_and_dropped(catalog: Catalog) -> None:
    assert catalog.leftovers() == []
    first = Leftover(oid(1), 1, 2, "us-n7", None)
    second = Leftover(oid(1), 1, 3, "us-n1", "p.pack:9")
    catalog.note_leftovers([first, second])
    located = Leftover(oid(1), 1, 2, "us-n7", "q.pack:4")
    catalog.note_leftovers([located])  # the same copy, now with where it went
    assert sorted(catalog.leftovers(), key=lambda x: x.shard) == [located, second]
    catalog.drop_leftovers([first, Leftover(oid(9), 1, 0, "us-n1", None)])
    assert catalog.leftovers() == [second]


def test_leftovers_of_one_shard_on_one_node_are_told_apart_by_generation(
    catalog: Catalog,
) -> None:
    # a shard rebuilt on the node its bad copy is on: both copies are noted at once
    old = Leftover(oid(1), 1, 3, "us-n1", "p.pack:9")
    rebuilt = Leftover(oid(1), 1, 3, "us-n1", None, generation=1)
    catalog.note_leftovers([old, rebuilt])
    assert sorted(catalog.leftovers(), key=lambda x: x.generation) == [old, rebuilt]
    catalog.drop_leftovers([old])
    assert catalog.leftovers() == [rebuilt]


def test_a_replaced_copys_note_keeps_when_it_was_replaced(catalog: Catalog) -> None:
    # gc keeps a copy a swap replaced for its grace period, from this time
    old = Leftover(oid(1), 1, 3, "us-n1", "p.pack:9", replaced_at=1234.5)
    catalog.note_leftovers([old, Leftover(oid(1), 1, 3, "us-n2", None)])
    assert [x for x in catalog.leftovers() if x.node == "us-n1"] == [old]
    catalog.drop_leftovers([Leftover(oid(1), 1, 3, "us-n1", "p.pack:9")])  # by the copy
    assert [x.node for x in catalog.leftovers()] == ["us-n2"]


def test_committed_after_walks_committed_versions_in_object_id_order(catalog: Catalog) -> None:
    refs = [ObjectRef("intl", "alice", f"k{i}") for i in range(7)]
    for number, ref in zip([5, 3, 9, 1, 7, 2, 8], refs, strict=True):
        put(catalog, ref, number)
    catalog.mark_deleted(refs[3])  # oid 1
    catalog.reserve(ObjectRef("intl", "alice", "pending"), oid(4), 1.0)
    seen, cursor = [], b""
    while batch := catalog.committed_after(cursor, 2):
        assert len(batch) <= 2
        seen += [record.object_id for record in batch]
        cursor = batch[-1].object_id
    assert seen == [oid(n) for n in (2, 3, 5, 7, 8, 9)]


def test_sqlite_replaces_manifests_durably_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a location is a hint, but a rebuilt shard's node is not: repair deletes the old copy
    catalog = SqliteCatalog(tmp_path / "c.sqlite")
    put(catalog, REF, 1)
    assert catalog._wal_sync is not None
    syncs = []
    real_sync = catalog._wal_sync.sync
    # the process's one group commit of the filesystem: patched for this test only
    monkeypatch.setattr(catalog._wal_sync, "sync", lambda *a, **k: syncs.append(real_sync(*a, **k)))
    (record,) = catalog.versions_with({oid(1)})
    assert catalog.replace_manifests([(record, b"hint")]) == 1 and syncs == []
    (record,) = catalog.versions_with({oid(1)})
    assert catalog.replace_manifests([(record, b"moved")], durable=True) == 1
    assert len(syncs) == 1 and (catalog.get_version(REF) or record).manifest == b"moved"
    catalog.close()


# SQLite only ----------------------------------------------------------------


def test_sqlite_records_its_schema_version_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    catalog = SqliteCatalog(path)
    put(catalog, REF, 1)
    catalog.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
    again = SqliteCatalog(path)
    record = again.get_version(REF)
    again.close()
    assert record is not None and record.manifest == b"manifest-1"


def test_sqlite_migrates_a_first_schema_catalog_forward(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.executescript(f"BEGIN;{MIGRATIONS[0]};PRAGMA user_version=1;COMMIT;")
        db.execute(
            "INSERT INTO versions VALUES (?, ?, ?, 1, 'committed', ?, 3, 1.0, ?)",
            (REF.tenant, REF.subject, REF.key, oid(1), b"old"),
        )
    db.close()
    catalog = SqliteCatalog(path)
    try:
        old = catalog.get_version(REF)
        assert old is not None and old.manifest == b"old"
        catalog.add_subject(subject())
        catalog.note_sweep(5.0)  # the second schema's sweep record exists
        with pytest.raises(WriteRaced):
            catalog.insert_committed(committed(2, 2, minted=4.0), None)
        catalog.insert_committed(committed(2, 2, minted=6.0), None)
        found = catalog.versions_with({oid(1)})  # the fourth schema's index on object ids
        assert [(r.version, r.manifest) for r in found] == [(1, b"old")]
        catalog.mark_deleted(REF)
        for record in catalog.claim_collectable(0.0):
            catalog.purge([(record.ref, record.version)])
        assert next_version(catalog) == 3  # the third schema's record of collected numbers
        left = Leftover(oid(1), 1, 0, "us-n1", None)
        catalog.note_leftovers([left])  # the fifth schema's record of repair's leftovers
        assert catalog.leftovers() == [left]
        catalog.forget_subject("intl", "alice", 7.0, decided_at=3)  # the sixth's progress
        assert catalog.forget_progress("intl", "alice") == ForgetProgress(3, 0, 0, None)
    finally:
        catalog.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM versions WHERE object_id IN (?)", (oid(1),)
        ).fetchall()
        assert "versions_object" in str(plan)  # found by the index, not a scan


# Each layout a shardvault ever wrote, as its code wrote it (git log -p
# src/shardvault/catalog/sqlite.py): migrations 4 and 5 were edited in place after
# catalogs of their first forms could exist. 1 to 3 are as MIGRATIONS has them.
_V4_FIRST = "CREATE INDEX versions_object ON versions (object_id);"  # 25af023
_V5_FIRST = "CREATE TABLE stale_nodes (node TEXT PRIMARY KEY, noted_at REAL NOT NULL);"  # 32a948e
OLD_LAYOUTS = {
    "v1": MIGRATIONS[:1],
    "v2": MIGRATIONS[:2],
    "v3": MIGRATIONS[:3],
    "v4-first": (*MIGRATIONS[:3], _V4_FIRST),
    "v4": MIGRATIONS[:4],
    "v5-stale-nodes": (*MIGRATIONS[:4], _V5_FIRST),
    "v5": MIGRATIONS[:5],
    "v6": MIGRATIONS[:6],
    "v7": MIGRATIONS[:7],
    "v8": MIGRATIONS[:8],
}


def _layout(db: sqlite3.Connection) -> dict[str, object]:
    """Every table's columns and every index's definition."""
    names = db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    found: dict[str, object] = {}
    for kind, name, sql in names.fetchall():
        if kind == "table":
            found[name] = [row[1:] for row in db.execute(f"PRAGMA table_info({name})")]
        else:
            found[name] = sql
    return found


def test_a_version_7_catalogs_leftovers_are_kept_as_of_generation_0(tmp_path: Path) -> None:
    # the eighth schema adds a note's generation to its key: notes taken before stay
    path = tmp_path / "c.sqlite"
    with sqlite3.connect(path, isolation_level=None) as db:
        for number, script in enumerate(MIGRATIONS[:7], 1):
            db.executescript(f"BEGIN IMMEDIATE;{script};PRAGMA user_version={number};COMMIT;")
        db.execute("INSERT INTO leftovers VALUES (?, 1, 2, 'us-n3', 'p.pack:7')", (oid(1),))
    db.close()
    catalog = SqliteCatalog(path)
    try:
        assert catalog.leftovers() == [Leftover(oid(1), 1, 2, "us-n3", "p.pack:7", 0)]
        catalog.drop_leftovers(catalog.leftovers())
        assert catalog.leftovers() == []
    finally:
        catalog.close()


def test_a_version_8_catalogs_leftovers_are_kept_with_no_replaced_time(tmp_path: Path) -> None:
    # the ninth schema adds when a swap replaced a copy: notes taken before have none,
    # so gc resolves them as it did (no grace: their repairs deleted the copies they replaced)
    path = tmp_path / "c.sqlite"
    with sqlite3.connect(path, isolation_level=None) as db:
        for number, script in enumerate(MIGRATIONS[:8], 1):
            db.executescript(f"BEGIN IMMEDIATE;{script};PRAGMA user_version={number};COMMIT;")
        db.execute("INSERT INTO leftovers VALUES (?, 1, 2, 'us-n3', 'p.pack:7', 1)", (oid(1),))
    db.close()
    catalog = SqliteCatalog(path)
    try:
        assert catalog.leftovers() == [Leftover(oid(1), 1, 2, "us-n3", "p.pack:7", 1, None)]
    finally:
        catalog.close()


@pytest.mark.parametrize("layout", list(OLD_LAYOUTS))
def test_sqlite_migrates_every_layout_it_ever_wrote(tmp_path: Path, layout: str) -> None:
    """A version-5 catalog written while schema 5 was `stale_nodes` has no `leftovers`:
    it was taken as current, and every gc and repair failed on it ("no such table");
    one of the first version 4 lacked `damage_version`, so each purge scanned the damage."""
    fresh, old = tmp_path / "fresh.sqlite", tmp_path / "old.sqlite"
    SqliteCatalog(fresh).close()
    with sqlite3.connect(old, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for number, script in enumerate(OLD_LAYOUTS[layout], 1):
            db.executescript(f"BEGIN IMMEDIATE;{script};PRAGMA user_version={number};COMMIT;")
    db.close()
    catalog = SqliteCatalog(old)
    try:
        left = Leftover(oid(1), 1, 0, "us-n1", None)
        catalog.note_leftovers([left])
        assert catalog.leftovers() == [left]
    finally:
        catalog.close()
    with sqlite3.connect(fresh) as want, sqlite3.connect(old) as got:
        expected, migrated = _layout(want), _layout(got)
        assert {name: migrated.get(name) for name in expected} == expected
        assert got.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    want.close()
    got.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    SqliteCatalog(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(NewerFormat, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        SqliteCatalog(path)


def test_sqlite_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "cells" / "US" / "catalog.sqlite"
    SqliteCatalog(path).close()
    assert path.exists()


def test_sqlite_writers_take_turns_on_the_lock_file(tmp_path: Path) -> None:
    """Another process's writer holds the flock: a write waits for it, then goes on."""
    catalog = SqliteCatalog(tmp_path / "c.sqlite")
    other = os.open(tmp_path / "c.sqlite.lock", os.O_RDWR)  # its own open file: conflicts
    fcntl.flock(other, fcntl.LOCK_EX)
    done = threading.Event()
    writer = threading.Thread(target=lambda: (put(catalog, REF, 1), done.set()))
    writer.start()
    assert not done.wait(0.3), "the write went ahead while another writer held the lock"
    fcntl.flock(other, fcntl.LOCK_UN)
    assert done.wait(10)
    writer.join()
    os.close(other)
    catalog.close()


def _reserve_many(path: Path, count: int) -> None:
    catalog = SqliteCatalog(path)
    for number in range(count):
        catalog.reserve(REF, oid(number), 1.0)
    catalog.close()


def test_sqlite_reservations_of_concurrent_processes_never_collide(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    SqliteCatalog(path).close()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_reserve_many, args=(path, 60)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    with sqlite3.connect(path) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM versions")]
    assert sorted(versions) == list(range(1, 181))


def _insert_unreserved(path: Path, first: int, count: int) -> None:
    catalog = SqliteCatalog(path)
    for number in range(first, first + count):
        while True:
            try:
                catalog.insert_committed(committed(next_version(catalog), number), None)
                break
            except WriteRaced:
                continue
    catalog.close()


def test_sqlite_unreserved_writes_of_concurrent_processes_never_collide(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    created = SqliteCatalog(path)
    created.add_subject(subject())
    created.close()
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_insert_unreserved, args=(path, 100 * n, 40)) for n in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    catalog = SqliteCatalog(path)
    versions = catalog.list_versions(REF)
    catalog.close()
    assert sorted(r.version for r in versions) == list(range(1, 121))
    assert len({r.object_id for r in versions}) == 120


def test_lookup_answers_subject_and_version_together(catalog: Catalog) -> None:
    assert catalog.lookup(REF) == (None, None)
    catalog.add_subject(subject())
    assert catalog.lookup(REF) == (subject(), None)
    catalog.reserve(REF, oid(9), 1.0)  # pending: invisible
    assert catalog.lookup(REF) == (subject(), None)
    put(catalog, REF, 1)
    put(catalog, REF, 2)
    put(catalog, ObjectRef("intl", "bob", REF.key), 3)  # another subject's object, same key
    for version in (None, 1, 2, 3):
        assert catalog.lookup(REF, version) == (
            subject(),
            catalog.get_version(REF, version),
        )
    found = catalog.lookup(REF)[1]
    assert found is not None and (found.version, found.manifest) == (3, b"manifest-2")
    assert catalog.lookup(REF, 99) == (subject(), None)
    catalog.mark_deleted(REF, 3)
    found = catalog.lookup(REF)[1]
    assert found is not None and found.version == 2
    assert catalog.lookup(ObjectRef("other", "alice", REF.key)) == (None, None)


def test_sqlite_writers_of_one_process_pass_the_flock_on_but_never_keep_it_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued writers of this process share a turn on the flock (fewer flock calls
    under load), at most _FLOCK_TURNS writes long; with nobody queued it is let go."""
    catalog = SqliteCatalog(tmp_path / "c.sqlite")
    calls: list[int] = []
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        calls.append(operation)
        real_flock(fd, operation)

    monkeypatch.setattr(sqlite_module.fcntl, "flock", flock)
    catalog._queued.append(None)  # as if another writer of this process were waiting
    for number in range(_FLOCK_TURNS):  # reserve + commit: two writes each
        put(catalog, REF, number)
    assert calls.count(fcntl.LOCK_EX) == 2 and calls.count(fcntl.LOCK_UN) == 2
    catalog._queued.pop()
    calls.clear()
    put(catalog, REF, 99)
    assert calls == [fcntl.LOCK_EX, fcntl.LOCK_UN, fcntl.LOCK_EX, fcntl.LOCK_UN]
    other = os.open(tmp_path / "c.sqlite.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # idle: another process gets it at once
    os.close(other)
    catalog.close()


def test_sqlite_a_write_that_fails_lets_every_lock_go(tmp_path: Path) -> None:
    """The write turn (an object, not a generator) gives back the connection's lock,
    the flock and this process's write lock when the write inside it raises."""
    catalog = SqliteCatalog(tmp_path / "c.sqlite")
    with pytest.raises(sqlite3.OperationalError), catalog._writing:
        catalog._db.execute("INSERT INTO no_such_table VALUES (1)")
    assert catalog._write_lock.acquire(blocking=False)
    catalog._write_lock.release()
    taken: list[bool] = []

    def take_connection() -> None:
        taken.append(catalog._lock.acquire(blocking=False))
        if taken[-1]:
            catalog._lock.release()

    other_thread = threading.Thread(target=take_connection)
    other_thread.start()
    other_thread.join()
    assert taken == [True]
    other = os.open(tmp_path / "c.sqlite.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process gets it at once
    os.close(other)
    put(catalog, REF, 1)  # and the next write of this process goes through
    catalog.close()


def test_sqlite_a_writer_interrupted_while_queued_does_not_keep_the_flock(
    tmp_path: Path,
) -> None:
    """Ctrl-C while waiting for this process's write lock must not leave the writer
    counted as queued: the flock would then be passed on forever, never let go."""
    catalog = SqliteCatalog(tmp_path / "c.sqlite")
    catalog._write_lock.acquire()  # another writer of this process holds the lock
    threading.Timer(
        0.2, signal.pthread_kill, (threading.main_thread().ident or 0, signal.SIGUSR1)
    ).start()
    with interrupts_on_sigusr1(), pytest.raises(Interrupted):
        put(catalog, REF, 1)
    assert catalog._queued == []
    catalog._write_lock.release()
    put(catalog, REF, 2)
    other = os.open(tmp_path / "c.sqlite.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # let go once nobody queues
    os.close(other)
    catalog.close()


def test_version_numbers_are_never_reused_once_collected(catalog: Catalog) -> None:
    # numbers restarted at 1 once gc purged a deleted key's rows: a writer holding
    # "v2" from before could then --if-match over content it never saw (ABA)
    catalog.add_subject(subject())
    put(catalog, REF, 1)
    put(catalog, REF, 2)
    catalog.mark_deleted(REF)
    for record in catalog.claim_collectable(0.0):
        catalog.purge([(record.ref, record.version)])
    assert catalog.get_version(REF) is None
    assert next_version(catalog) == 3
    with pytest.raises(Conflict, match="expected version 2, current is 0"):
        catalog.insert_committed(committed(3, 3), if_match=2)
    with pytest.raises(WriteRaced):
        catalog.insert_committed(committed(2, 4), None)  # a number already used
    assert catalog.reserve(REF, oid(5), 1.0) == 3


@pytest.mark.parametrize("write", ["statement", "transaction"])
def test_sqlite_a_write_made_while_a_flush_failed_is_never_called_durable(
    tmp_path: Path, write: str
) -> None:
    """A commit whose WAL pages a failing flush may have dropped, noted only after
    that failure was recorded, took a ticket past the failed range, and the next
    flush, which succeeded, acknowledged it."""
    catalog = SqliteCatalog(tmp_path / "c.sqlite")
    catalog.add_subject(subject())
    flush = Flushes()  # a write-back error of the catalog's disk, when told
    group = GroupSync(flush, "test")
    catalog._wal_sync = group
    other = group.note_write()  # another caller's write, whose flush will fail

    failed = []

    def during(statement: str) -> None:  # as the write is made, the other flush fails
        if not statement.startswith("SELECT") and not failed:
            failed.append(True)
            flush.fail_next = True
            with pytest.raises(StorageError):
                group.sync(other)

    version = catalog.reserve(REF, oid(1), 1.0)
    catalog._db.set_trace_callback(during)
    with pytest.raises(StorageError, match="Input/output error"):
        if write == "statement":
            catalog.commit(REF, version, b"manifest", 1, None)
        else:
            catalog.mark_deleted(REF)
    catalog._db.set_trace_callback(None)
    assert failed
    catalog.reserve(ObjectRef("intl", "alice", "later"), oid(2), 1.0)  # begun after: durable
    catalog.close()
