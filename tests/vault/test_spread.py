"""Spreading: a scrub moves shards so no facility holds more than m of a stripe.

A version written while a facility was out (its nodes down, or their directories
missing) has more than m shards in the others: placement could do no better then.
Once the facility is back, `repair --scrub` moves the fewest shards that bring every
facility to m, and what the node directories hold says so.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import (
    KILLED_REPAIR,
    SEGMENT,
    SPARES,
    add_nodes,
    files_under,
    manifest_of,
    named_copies,
    shard_paths,
    with_nodes,
)
from shardvault.config import load
from shardvault.manifest import Manifest, _parse_small
from shardvault.model import ObjectRef
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault

K, M = 4, 2
OUT = ("us-n3", "us-n6")  # the demo's us-fac-3
ONE_BACK = ("us-n3",)  # us-fac-3 with one node of two: 2 + 2 + 1 < 6, one shard over m
REFS = [ObjectRef("intl", "alice", f"k{i}") for i in range(4)]
SIZES = [100, SEGMENT // 2, 2 * SEGMENT + 5, 3 * SEGMENT]  # packed or not, one segment or more


def deployment(tmp_path: Path, pack_limit: int = 0) -> Path:
    """The demo with a third node in us-fac-1 and us-fac-2: 3 + 3 + 2 nodes in the US."""
    return with_nodes(tmp_path / "deploy", pack_limit=pack_limit)


def take_out(config: Path, how: str, nodes: tuple[str, ...] = OUT) -> None:
    """Take nodes out: marked down in the config, or their directories gone."""
    for node in nodes:
        if how == "down":
            entry = f'id = "{node}"\n'
            config.write_text(config.read_text().replace(entry, entry + 'state = "down"\n'))
        else:
            (config.parent / "nodes" / "US" / node).rename(config.parent / f"aside-{node}")


def bring_back(config: Path, how: str, nodes: tuple[str, ...] = OUT) -> None:
    for node in nodes:
        if how == "down":
            entry = f'id = "{node}"\n'
            config.write_text(config.read_text().replace(entry + 'state = "down"\n', entry))
        else:
            (config.parent / f"aside-{node}").rename(config.parent / "nodes" / "US" / node)


def filled(config: Path) -> dict[ObjectRef, bytes]:
    payloads = {ref: os.urandom(size) for ref, size in zip(REFS, SIZES, strict=True)}
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "alice", "US")
        for ref, data in payloads.items():
            vault.put(ref, data)
    return payloads


def manifests(config: Path) -> dict[ObjectRef, Manifest]:
    with Vault.open(load(config)) as vault:
        return {ref: manifest_of(vault, ref) for ref in REFS}


def on_disk(config: Path, object_id: bytes) -> dict[str, set[str]]:
    """The version's shard names each node's directory holds (nodes holding none left
    out), every node of every cell, read from the directories by stores opened afresh."""
    held = {}
    for node in load(config).nodes:
        if not Path(node.location).is_dir():  # taken out: holds none
            continue
        store = LocalDirShardStore(node.id, Path(node.location), node.pack_limit)
        try:
            names = {name for name in store.names() if name.startswith(object_id.hex())}
        finally:
            store.close()
        if names:
            held[node.id] = names
    return held


def facilities(config: Path, held: dict[str, set[str]]) -> dict[str, int]:
    """How many of the held copies each facility of the US cell holds (none elsewhere)."""
    facility = {node.id: node.facility for node in load(config).nodes_in("US")}
    assert set(held) <= set(facility)  # never out of its cell
    counts = Counter(facility[node] for node, names in held.items() for _ in names)
    return {name: counts[name] for name in set(facility.values())}


def reads_back_whole(config: Path, payloads: dict[ObjectRef, bytes]) -> None:
    with Vault.open(load(config)) as vault:
        for ref, data in payloads.items():
            with vault.open_read(ref) as reader:
                assert reader.read_all() == data
                assert reader.damage == []


def crowded(
    config: Path, how: str = "down", pack_limit: int = 0, back: tuple[str, ...] = OUT
) -> dict[ObjectRef, bytes]:
    """Objects put while us-fac-3 was out, then its nodes BACK back: each 3 + 3 on disk."""
    take_out(config, how)
    payloads = filled(config)
    bring_back(config, how, back)
    for manifest in manifests(config).values():
        counts = facilities(config, on_disk(config, manifest.object_id))
        assert sorted(counts.values()) == [0, 3, 3]  # as placement had to leave them
    return payloads


@pytest.mark.parametrize("pack_limit", [0, 64 << 10])
@pytest.mark.parametrize("how", ["down", "missing"])
def test_versions_written_while_a_facility_was_out_are_spread_once_it_is_back(
    tmp_path: Path, how: str, pack_limit: int
) -> None:
    # a stripe put while a facility was out kept 3 shards in each of two facilities for
    # ever: repair --scrub neither reported nor moved them, so losing either facility
    # still lost the object once the third was back
    config = deployment(tmp_path, pack_limit)
    payloads = crowded(config, how, pack_limit)
    with Vault.open(load(config)) as vault:
        report = vault.repair(scrub=True)
        noted = vault.cells["US"].catalog.leftovers()  # the copies moved from, for gets
        assert len(noted) == report.moved and all(x.replaced_at for x in noted)
        assert vault.gc().stale == 0  # under way: kept for gc's grace period
        assert vault.gc(grace_seconds=0).stale == report.moved
    for ref, manifest in manifests(config).items():
        held = on_disk(config, manifest.object_id)
        assert max(facilities(config, held).values()) <= M, ref  # from the directories
        assert held == named_copies(manifest) and len(held) == K + M  # one copy each, n nodes
    assert report.problems == () and report.concentrated == ()
    assert report.moved == 2 * len(REFS)  # the fewest: one out of each facility of 3
    assert {(move.from_facility, move.to_facility) for move in report.moves} == {
        ("us-fac-1", "us-fac-3"),
        ("us-fac-2", "us-fac-3"),
    }
    reads_back_whole(config, payloads)
    with Vault.open(load(config)) as vault:
        again = vault.repair(scrub=True)
    assert (again.moved, again.rebuilt, again.problems) == (0, 0, ())


@pytest.mark.parametrize("how", ["down", "missing"])
def test_a_cell_that_cannot_spread_them_fully_spreads_them_part_of_the_way(
    tmp_path: Path, how: str
) -> None:
    # with one node of us-fac-3 back, 3 + 3 was left as it was, so losing either of two
    # facilities lost the version, though 3 + 2 + 1 leaves one facility whose loss does
    config = deployment(tmp_path)
    payloads = crowded(config, how, back=ONE_BACK)
    with Vault.open(load(config)) as vault:
        dry = vault.repair(dry_run=True)
        assert vault.cells["US"].catalog.leftovers() == []  # the dry run wrote nothing
        report = vault.repair()
        vault.gc(grace_seconds=0)  # the copies moved from
    assert (report.crowded, report.moved, report.partly_spread) == (4, len(REFS), len(REFS))
    assert report.problems == ()
    assert {(move.from_facility, move.to_node) for move in report.moves} <= {
        ("us-fac-1", "us-n3"),
        ("us-fac-2", "us-n3"),
    }
    assert (dry.dry_run, dry.moves, dry.concentrated) == (True, report.moves, report.concentrated)
    assert dry.partly_spread == len(REFS)
    for manifest in manifests(config).values():
        held = on_disk(config, manifest.object_id)
        assert held == named_copies(manifest)
        assert sorted(facilities(config, held).values()) == [1, 2, 3]  # one facility over m
    said = " ".join(report.concentrated)
    assert len(report.concentrated) == len(REFS) and "(1 shard(s) over)" in said
    assert "intl/alice/k0 v1: spread part of the way, 1 shard(s) moved: 3 shards in us-fac-" in said
    reads_back_whole(config, payloads)
    with Vault.open(load(config)) as vault:
        again = vault.repair(scrub=True)  # as spread as the cell allows: nothing moves back
    assert (again.moved, again.partly_spread, again.problems) == (0, 0, ())
    assert len(again.concentrated) == len(REFS)
    assert "nor spread this one further: left as it is" in again.concentrated[0]


def test_a_version_no_move_would_spread_further_is_left_as_it_is(tmp_path: Path) -> None:
    config = deployment(tmp_path)
    take_out(config, "down")
    payloads = filled(config)  # 3 + 3, us-fac-3 still down: 2 + 2 + 0 < 6, and no better
    before = manifests(config)
    with Vault.open(load(config)) as vault:
        report = vault.repair(scrub=True)
    assert (report.moved, report.moves, report.problems, report.partly_spread) == (0, (), (), 0)
    assert len(report.concentrated) == len(REFS)
    assert "intl/alice/k0 v1: 3 shards in us-fac-1" in " ".join(report.concentrated)
    assert "(2 shard(s) over) nor spread this one further" in report.concentrated[0]
    assert manifests(config) == before  # left as they are
    for manifest in before.values():
        assert on_disk(config, manifest.object_id) == named_copies(manifest)
    reads_back_whole(config, payloads)


def test_a_facility_takes_a_shard_past_m_only_where_fewer_facilities_are_left_over_m(
    tmp_path: Path,
) -> None:
    # us-fac-3 gone for good and a fourth node in us-fac-1: 3 + 3 becomes 4 + 2, which
    # only us-fac-1's loss loses, as placement puts a new stripe in that cell
    config = deployment(tmp_path)
    take_out(config, "down")
    payloads = filled(config)
    add_nodes(config, {"us-n9": "us-fac-1"})
    with Vault.open(load(config)) as vault:
        report = vault.repair()
        vault.gc(grace_seconds=0)
    assert (report.moved, report.partly_spread, report.problems) == (len(REFS), len(REFS), ())
    assert {(move.from_facility, move.to_node) for move in report.moves} == {("us-fac-2", "us-n9")}
    for manifest in manifests(config).values():
        held = on_disk(config, manifest.object_id)
        assert held == named_copies(manifest)
        assert facilities(config, held) == {"us-fac-1": 4, "us-fac-2": 2, "us-fac-3": 0}
    assert all("4 shards in us-fac-1 (more than m=2)" in c for c in report.concentrated)
    reads_back_whole(config, payloads)


def test_a_copy_that_does_not_verify_is_not_moved_and_is_queued_for_repair(
    tmp_path: Path,
) -> None:
    # the copy is checked against the manifest's hash, block by block, before it is
    # written: a shard damaged since the scrub read it must not be moved as it is
    config = deployment(tmp_path)
    payloads = crowded(config)
    flipped: list[tuple[ObjectRef, int]] = []

    def damage_the_source(step: str) -> None:
        if step != "spread-noted" or flipped:
            return
        noted = min((x.object_id, x.shard) for x in cell.catalog.leftovers())
        ref = next(r for r, m in before.items() if m.object_id == noted[0])
        manifest = before[ref]
        name = shard_name(manifest.object_id, 1, noted[1])
        path = cell.store(manifest.nodes[noted[1]]).shard_path(name)  # type: ignore[attr-defined]
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 1
        path.write_bytes(bytes(raw))
        flipped.append((ref, noted[1]))

    before = manifests(config)
    with Vault.open(load(config), on_step=damage_the_source) as vault:
        cell = vault.cells["US"]
        report = vault.repair(scrub=True)
        assert flipped
        ((ref, index),) = flipped
        assert manifest_of(vault, ref) == before[ref]  # not moved
        assert [f"{ref} v1" in problem for problem in report.problems] == [True]
        assert "does not match" in report.problems[0]
        assert {(d.ref, d.index) for d in cell.catalog.damage()} == {(ref, index)}
        vault.gc(grace_seconds=0)  # the copy's note: nothing committed, nothing left
        assert cell.catalog.leftovers() == []
        assert on_disk(config, before[ref].object_id) == named_copies(before[ref])
        assert vault.get(ref) == payloads[ref]  # read around the damage
        healed = vault.repair()  # the queue: rebuilt, where it keeps facilities to m
        assert (healed.rebuilt, healed.problems) == (1, ())
        assert vault.repair(scrub=True).problems == ()
        vault.gc(grace_seconds=0)  # the copies moved from
    for manifest in manifests(config).values():
        held = on_disk(config, manifest.object_id)
        assert held == named_copies(manifest) and max(facilities(config, held).values()) <= M
    reads_back_whole(config, payloads)


SPREAD_STEPS = ["spread-noted", "spread-written", "spread-swapped", "spread-cleared"]


@pytest.mark.parametrize("pack_limit", [0, 64 << 10])
@pytest.mark.parametrize("step", SPREAD_STEPS)
@pytest.mark.parametrize("back", [OUT, ONE_BACK], ids=["whole", "part-of-the-way"])
def test_a_spread_killed_at_each_step_leaves_every_object_readable_and_gc_resolves_it(
    tmp_path: Path, step: str, pack_limit: int, back: tuple[str, ...]
) -> None:
    config = deployment(tmp_path, pack_limit)
    payloads = crowded(config, pack_limit=pack_limit, back=back)
    child = subprocess.run(
        [sys.executable, "-c", KILLED_REPAIR, str(config), step], capture_output=True, text=True
    )
    assert child.returncode == -signal.SIGKILL, (child.stdout, child.stderr)
    with Vault.open(load(config)) as vault:
        for ref, data in payloads.items():
            assert vault.get(ref) == data  # whatever the step
        catalog = vault.cells["US"].catalog
        assert catalog.leftovers()  # noted before each step
        vault.gc(grace_seconds=0)
        assert catalog.leftovers() == []
    for manifest in manifests(config).values():  # nothing but what a manifest names
        assert on_disk(config, manifest.object_id) == named_copies(manifest)
    per_version = 2 if back == OUT else 1  # moves: to 2 + 2 + 2, or to 3 + 2 + 1
    with Vault.open(load(config)) as vault:
        report = vault.repair(scrub=True)
        swapped = step in ("spread-swapped", "spread-cleared")  # the first version's moves
        left = len(REFS) - (1 if swapped else 0)
        assert (report.moved, report.problems) == (per_version * left, ())
        vault.gc(grace_seconds=0)  # the copies moved from
        assert vault.cells["US"].catalog.leftovers() == []
    for manifest in manifests(config).values():
        held = on_disk(config, manifest.object_id)
        assert held == named_copies(manifest)
        spread = sorted(facilities(config, held).values())
        assert spread == ([2, 2, 2] if back == OUT else [1, 2, 3])
    reads_back_whole(config, payloads)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "shardvault.cli.app", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True)


def test_the_cli_says_what_it_moved_and_what_it_had_to_leave(tmp_path: Path) -> None:
    config = deployment(tmp_path / "a")
    crowded(config)
    done = cli(config, "repair", "--scrub")
    assert done.returncode == 0, done.stderr
    assert f"moved {2 * len(REFS)} shard(s)" in done.stderr
    assert "moved shard " in done.stderr and " (us-fac-3)" in done.stderr
    again = cli(config, "repair", "--scrub", "--json")
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["moved"], json.loads(again.stdout)["moves"]) == (0, [])

    small = deployment(tmp_path / "b")
    take_out(small, "down")
    filled(small)
    bring_back(small, "down", ONE_BACK)
    dry = cli(small, "repair", "--scrub", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would move {len(REFS)} shard(s) of {len(REFS)} crowded version(s)" in dry.stderr
    assert f"facilities, {len(REFS)} of them part of the way; nothing was written" in dry.stderr
    assert "would stay crowded: intl/alice/k0 v1: spread part of the way" in dry.stderr
    left = cli(small, "repair", "--scrub", "--json")
    assert left.returncode == 0, left.stderr  # as `nodes` warns, exit 0: add nodes
    report = json.loads(left.stdout)
    assert (report["moved"], report["partly_spread"]) == (len(REFS), len(REFS))
    assert len(report["concentrated"]) == len(REFS)
    assert "still crowded: intl/alice/k0 v1: spread part of the way, 1 shard(s) moved" in (
        left.stderr
    )
    again = cli(small, "repair")  # nothing more to move: named, left as it is
    assert again.returncode == 0, again.stderr
    assert "still crowded: intl/alice/k0 v1: 3 shards in us-fac-" in again.stderr
    assert "nor spread this one further: left as it is" in again.stderr
    assert "Traceback" not in dry.stderr + left.stderr + again.stderr


def test_a_dry_run_says_what_a_scrub_would_rebuild_and_move_and_writes_nothing(
    tmp_path: Path,
) -> None:
    config = deployment(tmp_path)
    payloads = crowded(config)
    with Vault.open(load(config)) as vault:
        flipped = shard_paths(vault, REFS[0])[0]  # a rebuild, then moves, for this one
    raw = bytearray(flipped.read_bytes())
    raw[-1] ^= 1
    flipped.write_bytes(bytes(raw))
    with Vault.open(load(config)) as vault:
        assert vault.get(REFS[0]) == payloads[REFS[0]]  # read around, queued for repair
        queued = vault.cells["US"].catalog.damage()
    assert queued
    before = manifests(config)
    held = {ref: on_disk(config, m.object_id) for ref, m in before.items()}
    dry = cli(config, "repair", "--scrub", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert manifests(config) == before  # nothing moved, nothing rebuilt
    assert {ref: on_disk(config, m.object_id) for ref, m in before.items()} == held
    text = cli(config, "repair", "--scrub", "--dry-run")
    assert "would rebuild 1 shard(s), would move" in text.stderr
    assert "would move shard " in text.stderr and "nothing was written" in text.stderr
    with Vault.open(load(config)) as vault:
        assert vault.cells["US"].catalog.leftovers() == []  # not even a note
        assert vault.cells["US"].catalog.damage() == queued  # still queued

    done = cli(config, "repair", "--scrub", "--json")  # what the dry run said, done
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert planned["dry_run"] is True and report["dry_run"] is False
    for field in ("versions", "rebuilt", "moved", "moves", "problems", "concentrated"):
        assert planned[field] == report[field], field
    assert report["rebuilt"] == 1
    with Vault.open(load(config)) as vault:
        vault.gc(grace_seconds=0)  # the copies rebuilt and moved from
    for manifest in manifests(config).values():
        held = on_disk(config, manifest.object_id)
        assert held == named_copies(manifest) and max(facilities(config, held).values()) <= M
    reads_back_whole(config, payloads)


def test_repair_says_what_becomes_of_an_unavailable_nodes_shards(tmp_path: Path) -> None:
    # the warning was the real scrub's, in the past tense ("were taken for bad and
    # rebuilt elsewhere"), in a dry run that writes nothing; and a plain repair, which
    # checks no version it was not told of, said their shards were rebuilt elsewhere
    config = deployment(tmp_path)
    filled(config)
    take_out(config, "gone", ("us-n1",))
    before = manifests(config)
    said = {}
    for args in (("--dry-run",), ("--scrub", "--dry-run"), (), ("--scrub",)):
        done = cli(config, "repair", *args)
        assert done.returncode == 1, done.stderr  # an active node unavailable: the exit rule
        assert "us-n1" in done.stderr and "Traceback" not in done.stderr, done.stderr
        said[args] = done.stderr
        if args != ("--scrub",):
            assert manifests(config) == before, args
    assert "by 'shardvault repair --scrub'" in said[("--dry-run",)]
    assert "by 'shardvault repair --scrub'" in said[()]
    assert "would be rebuilt elsewhere" in said[("--scrub", "--dry-run")]
    assert "were taken for bad" not in said[("--scrub", "--dry-run")]
    assert "were taken for bad and rebuilt elsewhere" in said[("--scrub",)]


def node_files(config: Path) -> dict[Path, bytes]:
    """Every file under the deployment's node directories, with its bytes."""
    return {path: path.read_bytes() for path in files_under(config.parent / "nodes")}


def per_facility_by_where(config: Path, ref: ObjectRef) -> Counter[str]:
    """How many shards of segment 0 each facility holds, as `where --json` says."""
    done = cli(config, "where", ref.tenant, ref.subject, ref.key, "--json")
    assert done.returncode == 0, done.stderr
    shards = json.loads(done.stdout)["shards"]
    return Counter(shard["facility"] for shard in shards if shard["segment"] == 0)


def test_a_plain_repair_spreads_the_stripes_the_manifests_show_crowded(tmp_path: Path) -> None:
    # only a scrub spread them, because it read every shard anyway; a plain repair (the
    # one cron runs) left a stripe put while a facility was out crowded for good, though
    # its manifest alone says so
    config = deployment(tmp_path)
    payloads = crowded(config)
    assert all(max(per_facility_by_where(config, ref).values()) == 3 for ref in REFS)
    before, files = manifests(config), node_files(config)

    dry = cli(config, "repair", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert (planned["crowded"], planned["moved"], planned["dry_run"]) == (4, 2 * len(REFS), True)
    assert node_files(config) == files and manifests(config) == before  # nothing written
    with Vault.open(load(config)) as vault:
        assert vault.cells["US"].catalog.leftovers() == []  # not even a note for gc
    text = cli(config, "repair", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert f"would move {2 * len(REFS)} shard(s) of {len(REFS)} crowded version(s)" in text.stderr

    done = cli(config, "repair", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["versions"], report["rebuilt"], report["crowded"]) == (0, 0, len(REFS))
    assert report["moves"] == planned["moves"] and report["moved"] == 2 * len(REFS)
    assert report["problems"] == [] and report["concentrated"] == []
    for ref in REFS:
        assert max(per_facility_by_where(config, ref).values()) <= M, ref
    with Vault.open(load(config)) as vault:
        vault.gc(grace_seconds=0)  # the copies moved from
    for manifest in manifests(config).values():
        held = on_disk(config, manifest.object_id)
        assert held == named_copies(manifest) and max(facilities(config, held).values()) <= M
    reads_back_whole(config, payloads)
    again = cli(config, "repair", "--json")
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["crowded"], json.loads(again.stdout)["moved"]) == (0, 0)


def test_a_plain_repair_reports_what_the_cell_cannot_spread_yet_and_exits_0(
    tmp_path: Path,
) -> None:
    config = deployment(tmp_path)
    take_out(config, "down")
    payloads = filled(config)  # us-fac-3 still down: 2 + 2 + 0 < 6, and no move helps
    before, files = manifests(config), node_files(config)
    left = cli(config, "repair", "--json")
    assert left.returncode == 0, left.stderr  # the cell's shape, as `nodes` warns: exit 0
    report = json.loads(left.stdout)
    assert (report["crowded"], report["moved"], report["problems"]) == (len(REFS), 0, [])
    assert (len(report["concentrated"]), report["partly_spread"]) == (len(REFS), 0)
    assert "still crowded: intl/alice/k0 v1: 3 shards in us-fac-1, 3 shards in us-fac-2" in (
        left.stderr
    )
    assert "(2 shard(s) over)" in left.stderr and "Traceback" not in left.stderr
    assert manifests(config) == before and node_files(config) == files
    reads_back_whole(config, payloads)


def test_a_plain_repair_leaves_a_stripe_with_a_shard_on_a_node_not_active_to_a_scrub(
    tmp_path: Path,
) -> None:
    # a plain repair reads no shard, so one on a node taken out of service is rebuilt
    # only by a scrub; its stripe is named rather than half spread, and a scrub then
    # rebuilds the shard and spreads what is left
    config = deployment(tmp_path)
    payloads = crowded(config)
    take_out(config, "down", ("us-n7",))  # one of us-fac-1's, holding a shard of each
    before = manifests(config)
    left = cli(config, "repair", "--json")
    assert left.returncode == 0, left.stderr  # a node marked down: no alarm
    report = json.loads(left.stdout)
    assert (report["crowded"], report["moved"], report["problems"]) == (len(REFS), 0, [])
    assert len(report["concentrated"]) == len(REFS)
    assert "us-n7 not active" in left.stderr and "repair --scrub" in left.stderr
    assert manifests(config) == before
    scrub = cli(config, "repair", "--scrub", "--json")
    assert scrub.returncode == 0, scrub.stderr
    assert json.loads(scrub.stdout)["concentrated"] == []
    for ref in REFS:
        assert max(per_facility_by_where(config, ref).values()) <= M, ref
    reads_back_whole(config, payloads)


def test_the_look_for_crowded_stripes_leaves_the_gets_manifest_cache_alone(
    tmp_path: Path,
) -> None:
    # every repair reads every manifest now: through the cache gets use, a cron repair
    # in a long-lived process pushed every hot manifest out of it
    config = deployment(tmp_path)
    payloads = filled(config)
    with Vault.open(load(config)) as vault:
        _parse_small.cache_clear()
        assert vault.repair().crowded == 0
        assert [cell.versions for cell in vault.crowding()] == [len(REFS), 0, 0]  # nodes'
        assert _parse_small.cache_info().currsize == 0
        assert vault.get(REFS[0]) == payloads[REFS[0]]
        assert _parse_small.cache_info().currsize == 1  # what the cache is for


def test_nodes_counts_each_cells_crowded_versions_from_the_manifests(tmp_path: Path) -> None:
    # nothing said which versions a facility's loss would lose until a scrub had read
    # every shard; the manifests and the config say it
    config = deployment(tmp_path)
    crowded(config)
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "bo", "SG")
        vault.put(ObjectRef("intl", "bo", "k"), b"spread as placement leaves it")
        # a node `nodes` found unreachable cannot take a shard: us-fac-3 holds one node then
        us = vault.crowding({"us-n6"})[0]
        assert (us.jurisdiction, us.crowded, us.spreadable) == ("US", 4, 0)

    def cells(*args: str) -> tuple[dict[str, dict[str, object]], str]:
        done = cli(config, "nodes", "--json", *args)
        assert done.returncode == 0, done.stderr  # crowded is a warning, as a small cell is
        shown = json.loads(done.stdout)
        assert len(shown["nodes"]) == 20 and "Traceback" not in done.stderr
        return {cell["jurisdiction"]: cell for cell in shown["cells"]}, done.stderr

    found, said = cells()
    fine = {"unreadable": 0, "unreadable_first": "", "partly_spreadable": 0}
    assert (
        found["US"] == {"jurisdiction": "US", "versions": 4, "crowded": 4, "spreadable": 4} | fine
    )
    assert (
        found["SG"] == {"jurisdiction": "SG", "versions": 1, "crowded": 0, "spreadable": 0} | fine
    )
    assert found["EU"]["versions"] == 0
    assert (
        "warning: cell US has 4 version(s) with more than m shards in one facility "
        "(losing it loses them): 4 can be spread now, by 'shardvault repair'"
    ) in said
    assert "cell SG has" not in said
    text = cli(config, "nodes")
    assert text.returncode == 0, text.stderr
    rows = [
        [cell.strip() for cell in line.strip("│ ").split("│")] for line in text.stdout.splitlines()
    ]
    assert [row for row in rows if row[0] == "US" and len(row) == 5] == [["US", "4", "4", "4", "0"]]

    take_out(config, "down", ("us-n6",))  # us-fac-3 down to one node: 2 + 2 + 1 < 6
    found, said = cells()
    # but repair would take 3 + 3 + 0 to 3 + 2 + 1: `nodes` said they all waited
    assert (found["US"]["crowded"], found["US"]["spreadable"]) == (4, 0)
    assert found["US"]["partly_spreadable"] == 4
    assert (
        "0 can be spread now, by 'shardvault repair', and 4 part of the way (one facility's "
        "loss would still lose them); 4 wait for active nodes in more facilities"
    ) in said
    bring_back(config, "down", ("us-n6",))
    assert cli(config, "repair").returncode == 0
    found, said = cells()
    assert (found["US"]["crowded"], found["US"]["spreadable"]) == (0, 0)
    assert "cell US has" not in said


def test_a_manifest_that_cannot_be_read_is_named_and_the_others_still_counted(
    tmp_path: Path,
) -> None:
    # every repair and `nodes` read every manifest now: one damaged row in the catalog
    # ended both with "error: manifest body is not valid JSON", naming no version and
    # reporting nothing of the others
    config = deployment(tmp_path)
    crowded(config)
    broken = manifests(config)[REFS[0]]
    with sqlite3.connect(config.parent / "state" / "cells" / "US" / "catalog.sqlite") as db:
        db.execute(
            "UPDATE versions SET manifest = ? WHERE object_id = ?",
            (b"SVMF\x02\x00\x00\x00\x05{bad}", broken.object_id),
        )
    db.close()
    shown = cli(config, "nodes", "--json")
    assert shown.returncode == 1, shown.stderr  # integrity: restore the catalog
    us = json.loads(shown.stdout)["cells"][0]
    assert (us["versions"], us["crowded"], us["unreadable"]) == (4, 3, 1)
    assert (
        "warning: cell US has 1 version(s) whose manifest cannot be read (intl/alice/k0 v1: "
        "manifest body is not valid JSON)"
    ) in shown.stderr
    done = cli(config, "repair", "--json")
    assert done.returncode == 1, done.stderr  # a version it could not repair
    report = json.loads(done.stdout)
    assert (report["crowded"], report["moved"]) == (3, 2 * 3)  # the others spread
    named = [
        "intl/alice/k0 v1: its manifest cannot be read (manifest body is not valid JSON): "
        "restore the cell's catalog from a backup"
    ]
    assert report["problems"] == named
    scrub = cli(config, "repair", "--scrub", "--json")  # the rebuild names it, once
    assert scrub.returncode == 1, scrub.stderr
    assert (json.loads(scrub.stdout)["versions"], json.loads(scrub.stdout)["problems"]) == (
        len(REFS),
        named,
    )
    assert "Traceback" not in shown.stderr + done.stderr + scrub.stderr


def test_a_repair_spreads_an_init_demo_deployment_as_far_as_its_facilities_allow(
    tmp_path: Path,
) -> None:
    # the demo as `init --demo` writes it, with a third node in us-fac-1 and us-fac-2;
    # us-fac-3's disks unavailable while objects are put (3 + 3), then one of them back:
    # a repair spreads each to 3 + 2 + 1, and, once the other is back, to 2 + 2 + 2
    deploy = tmp_path / "deploy"
    made = subprocess.run(
        [sys.executable, "-m", "shardvault.cli.app", "init", "--demo", str(deploy)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    config = deploy / "shardvault.toml"
    add_nodes(config, SPARES, pack_limit=64 << 10)  # packed, as the demo's own nodes are
    take_out(config, "missing")
    payloads = filled(config)

    def spread_as(expected: list[int]) -> None:
        facility = {node.id: node.facility for node in load(config).nodes}
        with Vault.open(load(config)) as vault:
            for ref, data in payloads.items():
                manifest = manifest_of(vault, ref)
                counts = Counter(facility[node] for node in manifest.nodes)
                assert sorted(counts.values()) == expected, ref
                assert vault.get(ref) == data

    spread_as([3, 3])  # us-fac-3 holds none
    bring_back(config, "missing", ONE_BACK)  # us-n6's disk still unavailable
    part = cli(config, "repair", "--json")
    assert part.returncode == 1, part.stderr  # us-n6 unavailable and not marked down
    report = json.loads(part.stdout)
    assert (report["unavailable_nodes"], report["problems"]) == (["us-n6"], [])
    assert (report["crowded"], report["moved"], report["partly_spread"]) == (4, 4, 4)
    assert {move["to_node"] for move in report["moves"]} == {"us-n3"}
    assert len(report["concentrated"]) == len(REFS)
    assert "still crowded: intl/alice/k0 v1: spread part of the way" in part.stderr
    spread_as([1, 2, 3])

    bring_back(config, "missing", ("us-n6",))
    whole = cli(config, "repair", "--json")
    assert whole.returncode == 0, whole.stderr
    report = json.loads(whole.stdout)
    assert (report["moved"], report["partly_spread"], report["concentrated"]) == (4, 0, [])
    assert {move["to_node"] for move in report["moves"]} == {"us-n6"}
    spread_as([2, 2, 2])
    assert cli(config, "gc", "--grace", "0").returncode == 0  # the copies moved from
    for manifest in manifests(config).values():
        assert on_disk(config, manifest.object_id) == named_copies(manifest)
    assert "Traceback" not in part.stderr + whole.stderr
