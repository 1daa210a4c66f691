"""Random damage to at most m shards per segment reads back exactly and is reported; more
than m is an integrity error naming the segment, never wrong bytes; repair restores all.

Both shard kinds (packed records and files of their own), objects of one segment and of
several. Each example writes fresh objects, damages the target's shards on disk (delete,
a flipped bit in the header, a block, a pack record's framing or its CRC, a cut, another
object's or version's or position's shard in its place, a pack record duplicated), reads,
repairs, then deletes and collects them, so the examples share two deployments.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import SEGMENT, make_deployment, manifest_of
from shard_spots import Spot, spots
from shardvault.config import Config, load
from shardvault.errors import IntegrityError
from shardvault.manifest import Manifest
from shardvault.model import ObjectRef
from shardvault.nodes.pack_records import CRC, RECORD, RECORD_MAGIC
from shardvault.vault import Vault

K, M = 4, 2
N = K + M
HEADER = 40
SIZES = {1: 3000, 3: 2 * SEGMENT + 777}  # segments: bytes (shards packed under 64 KiB)
WHOLE = ("delete", "header", "framing", "cut", "other-object", "older-version", "position")
OPS = (*WHOLE, "block", "duplicate", "crc")


@dataclass(frozen=True)
class Damage:
    index: int
    op: str
    at: float  # where in the part the op hits, as a fraction
    segment: int  # the block an op on one block hits
    other: int  # the position an op swapping in another position's shard takes


def damages(segments: int) -> st.SearchStrategy[list[Damage]]:
    one = st.builds(
        Damage,
        index=st.integers(0, N - 1),
        op=st.sampled_from(OPS),
        at=st.floats(0, 0.999),
        segment=st.integers(0, segments - 1),
        other=st.integers(1, N - 1),
    )
    return st.lists(one, max_size=M + 2, unique_by=lambda d: d.index)


def apply(
    damage: Damage, target: list[Spot], sources: dict[str, list[bytes]], m: Manifest
) -> set[int]:
    """Do the damage; the segments it leaves bad."""
    spot, every = target[damage.index], set(range(m.segments))
    op = damage.op if spot.packed or damage.op not in ("framing", "duplicate", "crc") else "delete"
    if op == "delete":
        if spot.packed:
            assert spot.store.delete(spot.name, spot.location)
        else:
            spot.path.unlink()
        return every
    if op == "header":
        spot.flip(spot.start + int(damage.at * HEADER), int(damage.at * 64) % 8)
        return every
    if op == "block":
        segment = damage.segment
        offset = HEADER + segment * m.block_size + int(damage.at * m.block_length(segment))
        spot.flip(spot.start + offset, int(damage.at * 64) % 8)
        return {segment}
    if op == "framing":  # the record's magic (half the time) or name: no record there
        magic = range(spot.record, spot.record + len(RECORD_MAGIC))
        name = range(spot.record + RECORD.size, spot.start)
        part, at = (magic, damage.at * 2) if damage.at < 0.5 else (name, damage.at * 2 - 1)
        spot.flip(part[int(at * len(part))], int(damage.at * 64) % 8)
        return every
    if op == "cut":  # a pack cut inside the shard loses the records after it too (repaired)
        first = spot.record if spot.packed else 0  # a record without its whole name is none
        cut = first + int(damage.at * (spot.start + spot.length - first))
        os.truncate(spot.path, cut)
        kept = cut - spot.start  # a read by location still has the blocks before the cut
        if kept < HEADER:
            return every
        return {s for s in every if HEADER + s * m.block_size + m.block_length(s) > kept}
    if op == "crc":  # a read by location never checks it: the blocks serve on (scrub mends)
        spot.flip(spot.start + spot.length + int(damage.at * CRC.size), int(damage.at * 64) % 8)
        return set()
    if op == "duplicate":  # a whole copy of the record appended: no damage
        raw = spot.path.read_bytes()
        with spot.path.open("ab") as handle:
            handle.write(raw[spot.record : spot.start + spot.length + CRC.size])
        return set()
    if op == "position":
        spot.replace(sources["self"][(damage.index + damage.other) % N])
    else:
        spot.replace(sources[op][damage.index])
    return every


def read_prefix(vault: Vault, ref: ObjectRef) -> Iterator[bytes]:
    with vault.open_read(ref) as reader:
        yield from reader


@pytest.fixture
def configs(tmp_path: Path) -> dict[str, Path]:
    made = {}
    for kind, limit in (("packed", 64 << 10), ("files", 0)):
        made[kind] = make_deployment(tmp_path / kind, pack_limit=limit)
        with Vault.open(load(made[kind])) as vault:
            vault.register_subject("intl", "alice", "US")
    return made


def test_random_damage_reads_back_exactly_or_fails_naming_the_segment(
    configs: dict[str, Path],
) -> None:
    rounds = iter(range(1 << 30))

    @settings(
        max_examples=15,
        deadline=None,
        # no shrinking: each example opens four vaults, and a shrink took minutes
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        kind=st.sampled_from(sorted(configs)),
        segments=st.sampled_from(sorted(SIZES)),
        data=st.data(),
    )
    def check(kind: str, segments: int, data: st.DataObject) -> None:
        config = load(configs[kind])
        round_ = next(rounds)
        ref, other = (ObjectRef("intl", "alice", f"{what}/{round_}") for what in ("t", "o"))
        # written in this order: another object's record follows the target's in each pack
        stored = {where: os.urandom(SIZES[segments]) for where in ((ref, 1), (ref, 2), (other, 1))}
        bad: dict[int, set[int]] = {s: set() for s in range(segments)}
        with Vault.open(config) as writer:  # gone before the reads: its packs can be compacted
            for (key, _), written in stored.items():
                writer.put(key, written)
            manifest = manifest_of(writer, ref, 2)
            target = spots(writer, ref, 2)
            sources = {
                "self": [s.data() for s in target],
                "other-object": [s.data() for s in spots(writer, other, 1)],
                "older-version": [s.data() for s in spots(writer, ref, 1)],
            }
            drawn = data.draw(damages(segments))
            for damage in drawn:
                for segment in apply(damage, target, sources, manifest):
                    bad[segment].add(damage.index)
        # a pack cut inside the target's record loses the other object's record after it
        # on that node: more than m cuts lose that object too (each node holds one shard)
        cuts = sum(1 for d in drawn if d.op == "cut" and target[d.index].packed)
        lost_too = [(other, 1)] if cuts > M else []
        try:
            damaged_then_read(config, ref, stored, bad, lost_too)
        finally:  # the examples share the deployments: the next scrub sees only its own
            with Vault.open(config) as collector:
                collector.delete(ref)
                collector.delete(other)
                collector.gc(grace_seconds=0)

    check()


def damaged_then_read(
    config: Config,
    ref: ObjectRef,
    stored: dict[tuple[ObjectRef, int], bytes],
    bad: dict[int, set[int]],
    lost_too: list[tuple[ObjectRef, int]],
) -> None:
    """Read the damaged version in another process, repair, gc; then every version reads
    with no damage (the target unless beyond repair, and what `lost_too` names) and a
    scrub finds nothing more."""
    with Vault.open(config) as reader:  # a process that did not write them: a command
        lost = read_back(reader, ref, stored[ref, 2], bad)
        gone = [*lost_too, (ref, 2)] if lost else lost_too
        beyond = sorted(f"{key} v{version}" for key, version in gone)
        repaired = reader.repair(scrub=True)  # a pack cut short lost the records after
        assert sorted(p.split(":")[0] for p in repaired.problems) == beyond
    with Vault.open(config) as collector:  # gc compacts the packs the writer left
        collector.gc(grace_seconds=0)
    with Vault.open(config) as collector:  # reads no pack gc removed through its old fd
        for (key, version), written in stored.items():
            if (key, version) in lost_too or ((key, version) == (ref, 2) and lost):
                continue
            with collector.open_read(key, version) as again:
                assert again.read_all() == written
            assert again.damage == [], (key, version)
        scrub = collector.repair(scrub=True, dry_run=True)  # full redundancy, or lost
        assert scrub.rebuilt == 0, scrub
        assert sorted(p.split(":")[0] for p in scrub.problems) == beyond


def read_back(vault: Vault, ref: ObjectRef, wanted: bytes, bad: dict[int, set[int]]) -> bool:
    """Read the damaged version: its bytes and its damage; whether it is beyond repair."""
    segments = len(bad)
    lost = [s for s in range(segments) if len(bad[s]) > M]
    if lost:
        read: list[bytes] = []
        with pytest.raises(IntegrityError, match=f"{ref} v2 segment {lost[0]}:"):
            read.extend(read_prefix(vault, ref))
        assert wanted.startswith(b"".join(read))  # never a wrong byte before the error
        return True
    with vault.open_read(ref) as reader:
        assert reader.read_all() == wanted
    reported = {(d.segment, d.index) for d in reader.damage}
    assert all(i in bad[s] for s, i in reported), (reported, bad)
    data_shards_bad = {i for s in bad for i in bad[s] if i < K}
    assert data_shards_bad <= {i for _, i in reported}, (reported, bad)
    assert vault.get(ref) == wanted
    return False
