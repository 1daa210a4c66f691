"""A model-based test of the vault: random sequences of calls against a plain model.

Hypothesis drives a real `Vault` on the demo deployment (local-directory nodes, 4 KiB
segments so a few KiB span several) in both layouts a node keeps shards in: each a
file of its own (``pack_limit = 0``), and packed (the default ``pack_limit``, under
which every shard here is a pack record). Steps: registrations in both tenants and
every cell, puts (bytes and streams, conditional or not), gets, stats, paged
listings, deletes, forgets, damage to shards on disk (a file or a pack record), the
loss of a whole node, gc, a compaction of the packs a closed vault wrote, repair and
reopening; after each step every object must read as the model says, or fail as
documented, never with wrong bytes. A failing sequence is shrunk to a short one.
SHARDVAULT_MODEL_EXAMPLES and SHARDVAULT_MODEL_STEPS (per layout) run it longer to hunt.
"""

from __future__ import annotations

import fcntl
import io
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conftest import make_deployment, manifest_of
from governance_support import forget_approved
from shard_spots import Spot, held_shards, spot
from shardvault.config import load
from shardvault.errors import Conflict, IntegrityError, NotFound, SubjectForgotten
from shardvault.model import ObjectRef
from shardvault.nodes.localdir import DEFAULT_PACK_LIMIT
from shardvault.vault import GcReport, Vault

SEGMENT = 4096
K, M = 4, 2
N = K + M
HEADER = 40  # a shard's header, before its blocks (docs/formats.md)
TENANTS = ("intl", "domestic")
SUBJECTS = ("alice", "bob")
JURISDICTIONS = ("US", "SG", "EU")
KEYS = ("a", "ab", "d/x", "d/y")
SIZES = (0, 1, 1000, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 5, 10_000)
EXAMPLES = int(os.environ.get("SHARDVAULT_MODEL_EXAMPLES", "10"))  # per layout
STEPS = int(os.environ.get("SHARDVAULT_MODEL_STEPS", "30"))


def packs_no_writer_holds(node: Path) -> list[str]:
    """The node's packs whose flock is free: no live writer appends to them."""
    free = []
    for pack in sorted(node.glob("packs/*.pack")):
        fd = os.open(pack, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            free.append(pack.name)
        finally:
            os.close(fd)  # lets the flock go with it
    return free


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass(eq=False)  # one object per version: told apart by identity, and hashed so
class Version:
    """One version as the model holds it: its bytes, and what befell its shards."""

    number: int
    data: bytes
    object_id: str  # from its shards' names, read off the node directories
    deleted: bool = False
    bad: set[int] = field(default_factory=set)  # shard indices damaged, in any segment
    lost: bool = False  # more than m shards of one segment damaged


@dataclass
class Subject:
    jurisdiction: str
    forgotten: bool = False


class VaultModel(RuleBasedStateMachine):
    """The vault against dicts of what each (tenant, subject, key) should hold; its nodes
    keep each shard as a file of its own."""

    pack_limit = 0

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="vault-model-"))
        self.config_path = make_deployment(
            self.root, segment_size=SEGMENT, pack_limit=self.pack_limit
        )
        self.vault = Vault.open(load(self.config_path))
        self.subjects: dict[tuple[str, str], Subject] = {}
        self.objects: dict[ObjectRef, list[Version]] = {}
        self.highest: Counter[ObjectRef] = Counter()  # the highest version ever committed

    def teardown(self) -> None:
        self.vault.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # the model ------------------------------------------------------------------

    def live(self, tenant: str, subject: str) -> bool:
        found = self.subjects.get((tenant, subject))
        return found is not None and not found.forgotten

    def committed(self, ref: ObjectRef) -> list[Version]:
        return [v for v in self.objects.get(ref, []) if not v.deleted]

    def current(self, ref: ObjectRef) -> int:
        return max((v.number for v in self.committed(ref)), default=0)

    def live_versions(self) -> list[tuple[ObjectRef, Version]]:
        return [
            (ref, version)
            for ref in sorted(self.objects, key=str)
            if self.live(ref.tenant, ref.subject)
            for version in self.committed(ref)
        ]

    def cell_dir(self, jurisdiction: str) -> Path:
        return self.root / "nodes" / jurisdiction

    def held(self, jurisdiction: str) -> set[str]:
        """The names of the shards the cell's node directories hold, files or records."""
        return {n for node in self.cell_dir(jurisdiction).iterdir() for n in held_shards(node)}

    def spot(self, ref: ObjectRef, version: Version, index: int) -> Spot:
        """Where shard INDEX is (asserted there): the node `where` names for it, under the
        name (a repaired shard's has a generation) and location its manifest keeps."""
        node = next(s.node for s in self.vault.where(ref, version.number) if s.index == index)
        found = spot(self.vault, ref, version.number, index)
        assert found.store.node_id == node, (ref, version.number, index, node)
        return found

    def expect_missing(self, ref: ObjectRef) -> type[Exception] | None:
        """The error any call on REF's subject gets before looking at the object, if any."""
        found = self.subjects.get((ref.tenant, ref.subject))
        if found is None:
            return NotFound
        return SubjectForgotten if found.forgotten else None

    def check_read(self, ref: ObjectRef, number: int | None, stream: bool = False) -> None:
        """Read REF (version NUMBER, or the latest) as the model says it reads."""
        refused = self.expect_missing(ref)
        versions = {v.number: v for v in self.committed(ref)}
        wanted = versions.get(number if number is not None else self.current(ref))
        if refused is not None or wanted is None:
            with pytest.raises(refused or NotFound):
                self.vault.get(ref, number)
            return
        if wanted.lost:
            read = self.read_until_lost(ref, wanted.number, f"{ref} v{wanted.number} segment")
            assert wanted.data.startswith(read), "wrong bytes before the integrity error"
            return
        if stream:
            with self.vault.open_read(ref, number) as reader:
                got = b"".join(iter(lambda: reader.read(1500), b""))
        else:
            got = self.vault.get(ref, number)
        assert got == wanted.data, f"{ref} v{wanted.number}: wrong bytes"

    def read_until_lost(self, ref: ObjectRef, number: int, named: str) -> bytes:
        """What a streamed read of a version beyond repair gives before its IntegrityError,
        which must name what NAMED does (the object, version and segment)."""
        read = bytearray()
        with (
            pytest.raises(IntegrityError, match=named),
            self.vault.open_read(ref, number) as reader,
        ):
            for segment in reader:
                read += segment
        return bytes(read)

    # subjects -------------------------------------------------------------------

    @initialize(homes=st.lists(st.sampled_from(JURISDICTIONS), min_size=2, max_size=2))
    def register_alices(self, homes: list[str]) -> None:
        """Alice in both tenants from the start, so most steps have data to work on."""
        for tenant, home in zip(TENANTS, homes, strict=True):
            self.register(tenant, "alice", home)

    @rule(
        tenant=st.sampled_from(TENANTS),
        subject=st.sampled_from(SUBJECTS),
        jurisdiction=st.sampled_from(JURISDICTIONS),
    )
    def register(self, tenant: str, subject: str, jurisdiction: str) -> None:
        found = self.subjects.get((tenant, subject))
        if found is None:
            record = self.vault.register_subject(tenant, subject, jurisdiction)
            assert record.jurisdiction == jurisdiction
            self.subjects[tenant, subject] = Subject(jurisdiction)
            return
        match = "cannot be registered again" if found.forgotten else "already registered"
        with pytest.raises(Conflict, match=match):
            self.vault.register_subject(tenant, subject, jurisdiction)

    @rule(subject=st.sampled_from(SUBJECTS))
    def forget(self, subject: str) -> None:
        """Forgotten: no shard of theirs left, and every later call says so. Tenant intl's
        only: the demo's approvers are principals of one tenant, which signs for its own."""
        tenant = TENANTS[0]
        found = self.subjects.get((tenant, subject))
        if found is None:
            with pytest.raises(NotFound):
                forget_approved(self.vault, tenant, subject)
            return
        result = forget_approved(self.vault, tenant, subject)
        assert result.jurisdiction == found.jurisdiction
        found.forgotten = True
        theirs = {
            v.object_id
            for ref, versions in self.objects.items()
            if (ref.tenant, ref.subject) == (tenant, subject)
            for v in versions
        }
        left = [n for n in self.held(found.jurisdiction) if n.split(".")[0] in theirs]
        assert not left, f"a forget left shards: {left}"

    # writes ---------------------------------------------------------------------

    @rule(
        tenant=st.sampled_from(TENANTS),
        subject=st.sampled_from(SUBJECTS),
        key=st.sampled_from(KEYS),
        size=st.sampled_from(SIZES),
        seed=st.integers(0, 2**32),
        streamed=st.booleans(),
        condition=st.sampled_from(("none", "current", "new", "stale")),
    )
    def put(
        self,
        tenant: str,
        subject: str,
        key: str,
        size: int,
        seed: int,
        streamed: bool,
        condition: str,
    ) -> None:
        self.write(ObjectRef(tenant, subject, key), size, seed, streamed, condition)

    @rule(data=st.data(), size=st.sampled_from(SIZES), seed=st.integers(0, 2**32))
    def overwrite(self, data: st.DataObject, size: int, seed: int) -> None:
        """A new version of a key already written (puts are then half the steps)."""
        refs = sorted(self.objects, key=str) or [ObjectRef(TENANTS[0], "alice", KEYS[0])]
        ref = data.draw(st.sampled_from(refs))
        condition = data.draw(st.sampled_from(("none", "current", "new", "stale")))
        self.write(ref, size, seed, data.draw(st.booleans()), condition)

    def write(self, ref: ObjectRef, size: int, seed: int, streamed: bool, condition: str) -> None:
        """Put SIZE bytes drawn from SEED as the model says it goes: with a condition
        (if-match the current version, 0, or a stale one) unless "none"."""
        tenant, subject = ref.tenant, ref.subject
        data = payload(seed, size)
        current = self.current(ref)
        if_match = {"none": None, "current": current, "new": 0, "stale": current + 1}[condition]
        source = io.BytesIO(data) if streamed else data
        refused = self.expect_missing(ref)
        if refused is not None:
            with pytest.raises(refused):
                self.vault.put(ref, source, if_match=if_match)
            return
        home = self.subjects[tenant, subject].jurisdiction
        before = self.held(home)
        if if_match is not None and if_match != current:
            with pytest.raises(Conflict):
                self.vault.put(ref, source, if_match=if_match)
            assert self.held(home) - before == set(), "a refused put left shards"
            return
        info = self.vault.put(ref, source, if_match=if_match)
        assert info.size == size and info.version > self.highest[ref], "a version number reused"
        self.highest[ref] = info.version
        new = self.held(home) - before
        assert sorted(n.split(".s")[1] for n in new) == [str(i) for i in range(N)], new
        (oid,) = {n.split(".")[0] for n in new}
        self.objects.setdefault(ref, []).append(Version(info.version, data, oid))

    @rule(
        tenant=st.sampled_from(TENANTS),
        subject=st.sampled_from(SUBJECTS),
        key=st.sampled_from(KEYS),
        which=st.sampled_from(("all", "one", "if-current", "if-stale")),
        data=st.data(),
    )
    def delete(self, tenant: str, subject: str, key: str, which: str, data: st.DataObject) -> None:
        ref = ObjectRef(tenant, subject, key)
        refused = self.expect_missing(ref)
        committed = self.committed(ref)
        current = self.current(ref)
        version = None
        if which == "one":
            known = [v.number for v in self.objects.get(ref, [])]
            version = data.draw(st.sampled_from([*known, current + 1]))
        if_match = {"if-current": current or 1, "if-stale": current + 1}.get(which)
        if refused is not None:
            with pytest.raises(refused):
                self.vault.delete(ref, version, if_match=if_match)
            return
        if if_match is not None and if_match != current:
            with pytest.raises(Conflict):
                self.vault.delete(ref, version, if_match=if_match)
            return
        targets = [v for v in committed if version is None or v.number == version]
        if not targets:
            with pytest.raises(NotFound):
                self.vault.delete(ref, version, if_match=if_match)
            return
        assert self.vault.delete(ref, version, if_match=if_match) == len(targets)
        for target in targets:
            target.deleted = True

    # reads ----------------------------------------------------------------------

    @rule(
        tenant=st.sampled_from(TENANTS),
        subject=st.sampled_from(SUBJECTS),
        key=st.sampled_from(KEYS),
        data=st.data(),
    )
    def get(self, tenant: str, subject: str, key: str, data: st.DataObject) -> None:
        ref = ObjectRef(tenant, subject, key)
        known = [v.number for v in self.objects.get(ref, [])]
        number = data.draw(st.sampled_from([None, *known, len(known) + 1]))
        self.check_read(ref, number, stream=data.draw(st.booleans()))

    @rule(tenant=st.sampled_from(TENANTS), subject=st.sampled_from(SUBJECTS))
    def stat_and_versions(self, tenant: str, subject: str) -> None:
        for key in KEYS:
            ref = ObjectRef(tenant, subject, key)
            refused = self.expect_missing(ref)
            committed = self.committed(ref)
            if refused is not None or not committed:
                with pytest.raises(refused or NotFound):
                    self.vault.stat(ref)
                with pytest.raises(refused or NotFound):
                    self.vault.versions(ref)
                continue
            latest = max(committed, key=lambda v: v.number)
            info = self.vault.stat(ref)
            assert (info.version, info.size) == (latest.number, len(latest.data))
            listed = [(i.version, i.size) for i in self.vault.versions(ref)]
            model = sorted(((v.number, len(v.data)) for v in committed), reverse=True)
            assert listed == model, (ref, listed, model)

    @rule(
        tenant=st.sampled_from(TENANTS),
        subject=st.sampled_from(SUBJECTS),
        limit=st.integers(1, 3),
        prefix=st.sampled_from(("", "a", "d/", "z")),
    )
    def list_pages(self, tenant: str, subject: str, limit: int, prefix: str) -> None:
        refused = self.expect_missing(ObjectRef(tenant, subject, "a"))
        if refused is not None:
            with pytest.raises(refused):
                self.vault.list(tenant, subject, prefix=prefix, limit=limit)
            return
        model = sorted(
            (ref.key, self.current(ref))
            for ref in self.objects
            if (ref.tenant, ref.subject) == (tenant, subject)
            and ref.key.startswith(prefix)
            and self.current(ref)
        )
        joined: list[tuple[str, int]] = []
        after = ""
        while True:
            page = self.vault.list(tenant, subject, prefix=prefix, start_after=after, limit=limit)
            assert len(page.items) <= limit
            joined += [(info.ref.key, info.version) for info in page.items]
            if page.next_after is None:
                break
            assert page.items and page.next_after == page.items[-1].ref.key
            after = page.next_after
        assert joined == model

    # damage ---------------------------------------------------------------------

    def damageable(self) -> list[tuple[ObjectRef, Version]]:
        return [(ref, v) for ref, v in self.live_versions() if not v.lost and len(v.bad) < M]

    @precondition(lambda self: bool(self.damageable()))
    @rule(data=st.data())
    def damage_within_m(self, data: st.DataObject) -> None:
        """Up to m shards of a version deleted, a bit flipped, cut short or swapped for
        another object's: it still reads exactly.

        A pack cut inside a record loses the records after it too, whose order a
        compaction left as the packs' random names sorted: what the cut reached is
        read, then scrubbed away, so that no later draw hangs on that order (Hypothesis
        replays an example's draws)."""
        ref, version = data.draw(st.sampled_from(self.damageable()))
        room = M - len(version.bad)
        good = [i for i in range(N) if i not in version.bad]
        indices = data.draw(st.lists(st.sampled_from(good), min_size=1, max_size=room, unique=True))
        others = [
            (r, v, i)
            for r, v in self.live_versions()
            if v.object_id != version.object_id
            for i in range(N)
            if i not in v.bad
        ]
        packs_cut = False
        for index in indices:
            packs_cut |= self.damage_one(ref, version, index, set(indices), others, data)
        self.check_read(ref, version.number)
        if packs_cut:
            for other_ref, other in self.live_versions():
                self.check_read(other_ref, other.number)
            self.repair(scrub=True)

    def damage_one(
        self,
        ref: ObjectRef,
        version: Version,
        index: int,
        chosen: set[int],
        others: list[tuple[ObjectRef, Version, int]],
        data: st.DataObject,
    ) -> bool:
        """Damage shard INDEX (one of CHOSEN) of the version; whether a pack was to be
        cut. Packed, a delete zeroes its record and tombstones it, a flip or a cut hits
        anywhere in its record (framing and CRC too), and a swap puts in as many of the
        other shard's bytes as the record holds, its CRC made to match. A pack is cut
        only if that leaves no version with more than m bad shards: if not, the shard
        is deleted instead."""
        target = self.spot(ref, version, index)
        ops = ["delete", "flip", "truncate", "position", *(["swap"] if others else [])]
        op = data.draw(st.sampled_from(ops))
        event(f"damage: {op}, {'packed' if target.packed else 'a file'}")
        pack_cut = target.packed and op == "truncate"
        if op == "flip":
            at = target.record + data.draw(st.integers(0, target.end - target.record - 1))
            target.flip(at, data.draw(st.integers(0, 7)))
        elif op == "truncate":
            cut = target.record + data.draw(st.integers(0, target.end - target.record - 1))
            after = self.by_version(self.records_after(target, cut))
            if all(
                len(v.bad | hit | (chosen if v is version else set())) <= M
                for v, hit in after.items()
                if not v.lost
            ):
                os.truncate(target.path, cut)
                for other, hit in after.items():
                    other.bad |= hit
            else:
                op = "delete"
        elif op == "swap":
            other_ref, other, other_index = data.draw(st.sampled_from(others))
            if other_index in other.bad:  # cut off by this step's cut of a pack
                op = "position"
            else:
                source = self.spot(other_ref, other, other_index).data()
                if target.packed:  # as many bytes as the record holds
                    source = (source * (target.length // len(source) + 1))[: target.length]
                target.replace(source)
        if op == "position":  # another shard of the version, good still, in its place
            spare = [i for i in range(N) if i not in version.bad and i not in chosen]
            target.replace(self.spot(ref, version, spare[0]).data())
        if op == "delete":
            if target.packed:
                assert target.store.delete(target.name, target.location)
            else:
                target.path.unlink()
        version.bad.add(index)
        return pack_cut

    def records_after(self, target: Spot, cut: int) -> list[tuple[Version, int, Spot]]:
        """The good shards of live versions whose records TARGET's pack cut at CUT loses
        (those after it in the pack); none for a file of its own."""
        if not target.packed:
            return []
        found = []
        for ref, version in self.live_versions():
            for index in set(range(N)) - version.bad:
                where = self.spot(ref, version, index)
                if where.path == target.path and where.start > target.start and where.end > cut:
                    found.append((version, index, where))
        return found

    @staticmethod
    def by_version(shards: Iterable[tuple[Version, int, Spot]]) -> dict[Version, set[int]]:
        grouped: dict[Version, set[int]] = {}
        for version, index, _ in shards:
            grouped.setdefault(version, set()).add(index)
        return grouped

    @precondition(lambda self: bool(self.damageable()))
    @rule(data=st.data())
    def damage_beyond_m(self, data: st.DataObject) -> None:
        """A bit flipped in one segment's block of m+1 shards: that segment is lost, named
        in an IntegrityError; the segments before it read exactly."""
        ref, version = data.draw(st.sampled_from(self.damageable()))
        manifest = manifest_of(self.vault, ref, version.number)  # the blocks' layout only
        segment = data.draw(st.integers(0, max(manifest.segments - 1, 0)))
        if manifest.segments == 0 or manifest.block_length(segment) == 0:
            return
        good = [i for i in range(N) if i not in version.bad]
        indices = data.draw(
            st.lists(st.sampled_from(good), min_size=M + 1, max_size=M + 1, unique=True)
        )
        for index in indices:
            target = self.spot(ref, version, index)
            start = target.start + HEADER + segment * manifest.block_size
            at = start + data.draw(st.integers(0, manifest.block_length(segment) - 1))
            target.flip(at, data.draw(st.integers(0, 7)))
        named = f"{ref} v{version.number} segment {segment}:"
        assert self.read_until_lost(ref, version.number, named) == version.data[: segment * SEGMENT]
        version.lost = True

    @rule(jurisdiction=st.sampled_from(JURISDICTIONS), number=st.integers(1, N))
    def lose_node(self, jurisdiction: str, number: int) -> None:
        """A node's disk replaced by an empty one (its record removed, as docs/ say to take
        an empty replacement), the vault reopened; only if no version then has more than
        m bad shards."""
        node = f"{jurisdiction.lower()}-n{number}"
        hit: list[tuple[Version, int]] = []
        for ref, version in self.live_versions():
            if self.subjects[ref.tenant, ref.subject].jurisdiction != jurisdiction:
                continue
            for where in self.vault.where(ref, version.number):
                if where.node == node and where.segment == 0:
                    hit.append((version, where.index))
        if any(len(v.bad | {i}) > M for v, i in hit if not v.lost):
            return
        self.vault.close()
        shutil.rmtree(self.cell_dir(jurisdiction) / node)
        (self.cell_dir(jurisdiction) / node).mkdir()
        (self.root / "state" / "nodes" / node).unlink(missing_ok=True)
        self.vault = Vault.open(load(self.config_path))
        for version, index in hit:
            version.bad.add(index)

    # operations -----------------------------------------------------------------

    @rule()
    def gc(self) -> None:
        self.collect()

    def collect(self) -> GcReport:
        """Deleted versions are collected: no shard of theirs is left on any node."""
        report = self.vault.gc(grace_seconds=0)
        for ref, versions in self.objects.items():
            home = self.subjects[ref.tenant, ref.subject].jurisdiction
            gone = {v.object_id for v in versions if v.deleted}
            left = [n for n in self.held(home) if n.split(".")[0] in gone]
            assert not left, f"gc left shards of deleted versions: {left}"
            self.objects[ref] = [v for v in versions if not v.deleted]
        return report

    @rule()
    def compact(self) -> None:
        """A maintainer's gc once the vault that wrote the packs is closed (no live writer
        holds them then): it folds each node's small packs into one, moving the live
        shards, and the manifests follow them (the invariants read every shard where
        its manifest says). Only the reopened vault's own pack (its gc's tombstones,
        the copies) may stand beside the one left."""
        self.reopen()
        report = self.collect()
        event("compaction moved shards" if report.moved else "compaction moved none")
        nodes = [node for j in JURISDICTIONS for node in self.cell_dir(j).iterdir()]
        unheld = {node.name: packs_no_writer_holds(node) for node in nodes}
        assert all(len(packs) <= 1 for packs in unheld.values()), f"left unfolded: {unheld}"

    @rule(scrub=st.booleans())
    def repair(self, scrub: bool) -> None:
        """A scrub rebuilds every damaged shard but those of versions beyond repair, which
        it names; a repair of what reads reported rebuilds some, and breaks none."""
        report = self.vault.repair(scrub=scrub)
        lost = sorted(f"{ref} v{v.number}" for ref, v in self.live_versions() if v.lost)
        named = sorted(problem.split(":")[0] for problem in report.problems)
        assert set(named) <= set(lost), report.problems
        if not scrub:
            return
        assert named == lost, report.problems
        for ref, version in self.live_versions():
            if version.lost:
                continue
            version.bad.clear()
            with self.vault.open_read(ref, version.number) as reader:
                assert reader.read() == version.data
            assert reader.damage == [], (ref, version.number, reader.damage)

    @rule()
    def reopen(self) -> None:
        self.vault.close()
        self.vault = Vault.open(load(self.config_path))

    # invariants -----------------------------------------------------------------

    @invariant()
    def every_object_reads_as_the_model_says(self) -> None:
        """Every version of every (tenant, subject, key), the other tenant's same names
        included: exactly its bytes, or the documented error; never wrong bytes."""
        for tenant in TENANTS:
            for subject in SUBJECTS:
                for key in KEYS:
                    ref = ObjectRef(tenant, subject, key)
                    self.check_read(ref, None)
                    for version in self.committed(ref):
                        self.check_read(ref, version.number)

    @invariant()
    def listings_join_to_the_model(self) -> None:
        """Each subject's listing, a key a page and two, is the model's latest versions."""
        for tenant in TENANTS:
            for subject in SUBJECTS:
                for limit in (1, 2):
                    self.list_pages(tenant, subject, limit, "")

    @invariant()
    def shards_stay_home_and_spread(self) -> None:
        """`where` names only nodes of the subject's home, no facility holding more than
        m shards of a stripe, and each node named holds that shard (a file or record)."""
        for ref, version in self.live_versions():
            home = self.subjects[ref.tenant, ref.subject].jurisdiction
            places = self.vault.where(ref, version.number)
            assert {p.jurisdiction for p in places} <= {home}, places
            assert all(p.node.startswith(home.lower() + "-") for p in places), places
            for index in set(range(N)) - version.bad:  # there, under its name
                self.spot(ref, version, index)
            for segment in {p.segment for p in places}:
                facilities = Counter(p.facility for p in places if p.segment == segment)
                assert max(facilities.values()) <= M, (ref, version.number, facilities)


class PackedVaultModel(VaultModel):
    """The same, its nodes keeping shards as the product does by default: in packs."""

    pack_limit = DEFAULT_PACK_LIMIT


@pytest.mark.parametrize("machine", [VaultModel, PackedVaultModel], ids=["files", "packed"])
def test_vault_against_its_model(machine: type[VaultModel]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
