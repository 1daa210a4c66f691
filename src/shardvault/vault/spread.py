"""Spreading: moving shards so no facility holds more than m of a stripe, or as few do as
the cell's active nodes allow.

Placement keeps a stripe to m shards per facility whenever the cell's active nodes
allow it, so losing a whole facility loses no object. A version put while a
facility was out (its nodes down or unavailable, or too few of them) has more than
m in the others, and kept them there once it was back: a scrub neither said so nor
moved them, so losing one facility could still lose the object. After the rebuilds
of every repair (a scrub or not: a manifest names each shard's node, so finding
them reads no shard), `spread_cell` reads every committed version's manifest (no
shard, unless one moves), and for each with more than m shards in a facility
(`crowding.crowded_stripe`, counted in `RepairReport.crowded`) moves the fewest
that leave every facility m or fewer (`repair_targets.spread_targets`: which, and
where), if the cell's active nodes can hold the stripe so at all
(`placement.facility_shortfall`, as placement and `shardvault nodes` count). In a
cell that cannot, it moves the fewest that leave the fewest facilities over m,
then the smallest excess in any (`crowding.spread_plan`: 3 + 3 + 0 to 3 + 2 + 1
with one node of the third facility active), and names the version with what stays
(`RepairReport.concentrated`, counted in `partly_spread`); one no move would spread
further is left as it is and named so. So is one with a shard on a node that is
not active, after a repair that did not read its shards (no scrub, no damage
recorded): that shard is a scrub's to rebuild first.

A move writes the shard's own blocks, each read from its node and checked against
the manifest's hash first, to an active node of the same cell in a facility below
its limit in the plan (fewer than m, unless fewer facilities over m need more),
holding no shard of the version, under a name it never had. So a shard never
leaves its jurisdiction, no node holds two shards of a stripe, and no facility
gains a shard past m unless that leaves fewer facilities over m, or a smaller
excess (`crowding.py`). Then repair's steps (vault/copy_swap.py): the new copies
noted, written and synced, the old ones noted, the manifest swapped only if it is
still the one read, durably, the new copies' notes dropped, the old ones left
noted for gc's grace period (gets under way read them). A kill at
any step leaves the version readable (its manifest names every old copy or every
new one) and gc deletes the noted copy no manifest names. A copy whose block does
not match is not made: the shard is queued for repair (`Catalog.record_damage`) and
the version named. Runs under the cell's maintenance lock, as repair does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from shardvault.catalog.port import DamageRecord, VersionRecord
from shardvault.crowding import CellNodes, CrowdedStripe, crowded_stripe, over_m, spread_plan
from shardvault.errors import IntegrityError, NewerFormat, ShardvaultError
from shardvault.manifest import Manifest
from shardvault.nodes.port import ShardWriter, shard_name
from shardvault.vault.cells import Cell
from shardvault.vault.copy_swap import (
    swap_in_copies,
    until_unchanged,
    with_copies,
    write_copies,
    write_on_targets,
)
from shardvault.vault.repair_report import DryRun, RepairReport, ShardMove, unreadable_manifest
from shardvault.vault.repair_targets import Target, spread_targets
from shardvault.vault.shard_check import verified_block
from shardvault.vault.writer import StepHook, no_step

_BATCH = 500  # committed versions read from the catalog at a time
_MORE_FACILITIES = "add nodes in other facilities, or bring them back, then repair again"


def spread_cell(
    cell: Cell,
    scrubbed: bool,
    on_step: StepHook = no_step,
    dry_run: DryRun | None = None,
    clock: Callable[[], float] = time.time,
) -> RepairReport:
    """Move shards of the cell's committed versions so that none has more than m in a
    facility, or as few as the cell allows; with ``dry_run``, only say which would move,
    from the manifests its rebuilds would leave. SCRUBBED: the rebuild before looked at
    every version, so a shard on a node not active is its to name. ``on_step`` is told
    each step of a move; CLOCK stamps the copies moved away from."""
    report = RepairReport()
    facility = {node.id: node.facility for node in cell.nodes}
    with cell.maintenance(wait=True):  # gc then leaves the notes of copies to later
        rebuilt = None if scrubbed else {(d.ref, d.version) for d in cell.catalog.damage()}
        cursor = b""
        while batch := cell.catalog.committed_after(cursor, _BATCH):
            for record in batch:
                named = rebuilt is None or (record.ref, record.version) in rebuilt
                looked = _looked_at(cell, record, facility, named, on_step, dry_run, clock)
                report = report + looked
            cursor = batch[-1].object_id
    return replace(report, unavailable_nodes=tuple(cell.unavailable_nodes()))


def _looked_at(
    cell: Cell,
    record: VersionRecord,
    facility: dict[str, str],
    named: bool,
    on_step: StepHook,
    dry: DryRun | None,
    clock: Callable[[], float],
) -> RepairReport:
    """One committed version: spread, and counted, if its manifest shows it crowded
    (no I/O to find out); named if that manifest cannot be read and the rebuild before
    did not look at it (NAMED)."""
    try:
        manifest = _as_planned(record, dry)
    except (IntegrityError, NewerFormat) as exc:  # one damaged row ended every repair
        if named:
            return RepairReport()
        return _named(f"{record.ref} v{record.version}", unreadable_manifest(exc))
    if manifest is None or not over_m(manifest, facility):
        return RepairReport()
    spread = _spread(cell, record, manifest, facility, named, on_step, dry, clock)
    return replace(spread, crowded=1)


def _as_planned(record: VersionRecord, dry: DryRun | None) -> Manifest | None:
    """The version's manifest, or the one a dry run's rebuild would leave."""
    planned = None if dry is None else dry.planned.get((record.ref, record.version))
    if planned is not None or record.manifest is None:
        return planned
    return Manifest.parse(record.manifest)


def _spread(
    cell: Cell,
    record: VersionRecord,
    manifest: Manifest,
    facility: dict[str, str],
    named: bool,
    on_step: StepHook,
    dry: DryRun | None,
    clock: Callable[[], float],
) -> RepairReport:
    """Spread one crowded version; a dry run plans from MANIFEST and swaps nothing."""
    if dry is not None:
        return _spread_version(cell, record, facility, named, no_step, time.time, manifest)
    attempt = partial(_spread_version, cell, record, facility, named, on_step, clock)
    return replace(until_unchanged(attempt, record), versions=0)


def _spread_version(
    cell: Cell,
    stale: VersionRecord,
    facility: dict[str, str],
    named: bool,
    on_step: StepHook,
    clock: Callable[[], float],
    planned: Manifest | None = None,
) -> RepairReport:
    """Spread one version; a dry run passes the manifest it plans from (PLANNED). NAMED:
    the rebuild before looked at it, and named it if it left a shard on a node not active."""
    record = cell.catalog.get_version(stale.ref, stale.version)  # as it is now
    if record is None or record.manifest is None:  # deleted or collected meanwhile
        return RepairReport()
    manifest = planned or Manifest.from_bytes(record.manifest)
    what = f"{manifest.ref} v{manifest.version}"
    nodes = CellNodes.of(cell.placeable_nodes(), cell.jurisdiction)
    stripe = crowded_stripe(manifest, nodes)
    if stripe is None or (stripe.inactive and named):
        return RepairReport()  # spread already, or a bad shard's: the rebuild named it
    if stripe.inactive:  # a plain repair reads no shard: such a one is the scrub's
        return RepairReport(concentrated=(_not_active(what, stripe),))
    if not spread_plan(manifest, nodes).moves:  # no move would spread it further
        return RepairReport(concentrated=(_concentrated(what, stripe),))
    if planned is not None:
        targets = spread_targets(cell, manifest, set())
        if targets is None:
            return _named(what, _nowhere(cell, stripe))
        return replace(_moved(facility, manifest, stripe, targets), dry_run=True)
    return _moved_copies(cell, record, manifest, stripe, facility, on_step, clock)


def _moved_copies(
    cell: Cell,
    record: VersionRecord,
    manifest: Manifest,
    stripe: CrowdedStripe,
    facility: dict[str, str],
    on_step: StepHook,
    clock: Callable[[], float],
) -> RepairReport:
    """Copy the shards `spread_targets` chooses, each block checked, and swap them in
    (vault/copy_swap.py); a failure names the version, as a rebuild's does."""
    what = f"{manifest.ref} v{manifest.version}"
    try:
        placed = write_on_targets(
            cell,
            manifest,
            lambda tried: spread_targets(cell, manifest, tried),
            lambda targets: _copy(cell, manifest, targets),
            on_step,
            "spread",
        )
    except _Mismatch as exc:
        cell.catalog.record_damage(exc.damage)  # the rebuild's, in the next repair
        return _named(what, f"not moved: {exc}; queued for repair")
    except (ShardvaultError, OSError) as exc:
        if cell.catalog.get_version(record.ref, record.version) is None:
            return RepairReport()
        return _named(what, f"moving a shard failed: {exc}")
    if placed is None:
        return _named(what, _nowhere(cell, stripe))
    if not swap_in_copies(cell, record, manifest, placed, on_step, "spread", clock):
        return RepairReport()
    return _moved(facility, manifest, stripe, placed[0])


def _moved(
    facility: dict[str, str], manifest: Manifest, stripe: CrowdedStripe, targets: dict[int, Target]
) -> RepairReport:
    """Each shard moved to its target and, if the version is left with a facility over m
    (the cell's active nodes allow no more), the version named with what stays."""
    moves = tuple(_move(facility, manifest, index, target) for index, target in targets.items())
    left = over_m(with_copies(manifest, targets, dict.fromkeys(targets)), facility)
    if not left:
        return RepairReport(moved=len(moves), moves=moves)
    what = f"{manifest.ref} v{manifest.version}"
    return RepairReport(
        moved=len(moves),
        moves=moves,
        concentrated=(_part_of_the_way(what, stripe, left, len(moves)),),
        partly_spread=1,
    )


def _copy(cell: Cell, manifest: Manifest, targets: dict[int, Target]) -> dict[int, str | None]:
    """Copy each shard to its target, every block checked against the manifest before it
    is written; their locations (`write_copies`: what a failure leaves is removed)."""

    def fill(writers: dict[int, ShardWriter]) -> None:
        for index, writer in writers.items():
            _copy_shard(cell, manifest, index, writer)

    return write_copies(cell, manifest, targets, fill)


def _copy_shard(cell: Cell, manifest: Manifest, index: int, writer: ShardWriter) -> None:
    """Write shard INDEX, as its node holds it, to WRITER: its header, then each block,
    every one checked first (`_Mismatch` if one is not what the manifest says)."""
    node = manifest.nodes[index]
    name = shard_name(manifest.object_id, manifest.version, index, manifest.generation(index))
    reader = cell.store(node).open_reader(name, manifest.location(index))
    try:
        header = manifest.stripe_header().to_bytes(index)
        if reader.read_at(0, len(header)) != header:
            raise _Mismatch(manifest, index, 0, "bad header")
        writer.write(header)
        for segment in range(manifest.segments):
            block = verified_block(reader, manifest, segment, index)
            if block is None:
                raise _Mismatch(manifest, index, segment, "hash mismatch")
            writer.write(block)
    finally:
        reader.close()


class _Mismatch(IntegrityError):
    """A block (or the header) of a shard to be moved is not what the manifest says."""

    def __init__(self, manifest: Manifest, index: int, segment: int, reason: str) -> None:
        node = manifest.nodes[index]
        super().__init__(f"shard {index} on {node}, segment {segment}, does not match")
        self.damage = DamageRecord(
            manifest.ref, manifest.version, segment, index, node, reason, time.time()
        )


def _move(facility: dict[str, str], manifest: Manifest, index: int, target: Target) -> ShardMove:
    """Shard INDEX moved to TARGET, each node named with its facility (FACILITY: the cell's
    nodes', read once per run)."""
    ref, node = manifest.ref, manifest.nodes[index]
    return ShardMove(
        ref.tenant, ref.subject, ref.key, manifest.version, index,
        node, facility[node], target.node.id, target.node.facility,
    )  # fmt: skip


def _nowhere(cell: Cell, stripe: CrowdedStripe) -> str:
    return (
        f"{stripe.described()} and no active node in {cell.jurisdiction} to move one "
        "to: add a node, then repair again"
    )


def _concentrated(what: str, stripe: CrowdedStripe) -> str:
    return (
        f"{what}: {stripe.described()} (more than m={stripe.m}), and {_short_of(stripe)} "
        f"nor spread this one further: left as it is; {_MORE_FACILITIES}"
    )


def _part_of_the_way(what: str, stripe: CrowdedStripe, left: dict[str, int], moved: int) -> str:
    still = ", ".join(f"{count} shards in {name}" for name, count in sorted(left.items()))
    return (
        f"{what}: spread part of the way, {moved} shard(s) moved: {still} (more than "
        f"m={stripe.m}), from {stripe.described()}; {_short_of(stripe)}: {_MORE_FACILITIES}"
    )


def _short_of(stripe: CrowdedStripe) -> str:
    """Why a stripe stays crowded, said once for every message that says it: the cell's
    facilities are too few for its active nodes to keep any stripe to m in each."""
    return (
        "the cell's active nodes cannot hold a stripe to m per facility "
        f"({stripe.shortfall} shard(s) over)"
    )


def _not_active(what: str, stripe: CrowdedStripe) -> str:
    return (
        f"{what}: {stripe.described()} (more than m={stripe.m}), and a shard on "
        f"{', '.join(stripe.inactive)} not active: left as it is; 'shardvault repair "
        "--scrub' rebuilds it elsewhere, then spreads the stripe"
    )


def _named(what: str, why: str) -> RepairReport:
    return RepairReport(problems=(f"{what}: {why}",))
