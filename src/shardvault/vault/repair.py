"""Repair: rebuild lost or damaged shards from the others, on nodes that can hold them.

Reads survive any m bad shards per segment, but each loss spends redundancy;
without repair, a cell would lose data at its (m+1)th failure over its life.
Repair looks at the versions reads recorded damage for and, with ``scrub``,
at every committed version of the cell (a cursor over object ids, a batch at
a time). Every block of every shard is read and checked against the
manifest's hashes (`vault/shard_check.py`). A shard is bad if its header or any
block is missing, short or wrong, or if its node is not active (draining, down,
no longer configured, or unavailable). A version can be repaired while every segment has
k good blocks, from whichever shards they are in: damage spread over more
than m shards, none of its segments losing more than m blocks, is as
readable as it is repairable.

A bad shard is rebuilt whole, segment by segment: k good blocks are decoded
and the segment encoded again, and every rebuilt block must hash to the
manifest's, so repair never writes a block that did not verify (`vault/rebuild.py`). It goes to
another active node of the cell free of the version, else back to its own node
under a new generation of its name, else to a node holding a trace of the
version (`vault/repair_targets.py` gives the order, and why); no node is ever
given a name twice. A cell of
exactly n nodes (the demo's six for 4+2) so heals a damaged shard where it is;
a shard whose node is not active, with no other node for it, is left as it is
and named. The manifest is replaced, durably,
only if it is still the one that was read (a delete, a gc or another repair
meanwhile wins, and the rebuilt copies go). The bad copies stay, noted with the
swap's time: gets that loaded the manifest before it read them, so gc deletes
them after its grace period.
Every copy that could end up named by no manifest is noted first
(`Catalog.note_leftovers`): the rebuilt ones before they are written, the old
ones before the swap. A repair killed at any step, or a node it cannot reach,
leaves notes, and gc deletes each noted copy its version's manifest does not
name, once it reaches the node. Repair holds the cell's maintenance lock
(`Cell.maintenance`) while it runs, so gc never judges a copy between steps.
These copy-and-swap steps are `vault/copy_swap.py`'s.

After the rebuilds, scrub or not, `vault/spread.py` moves good shards off a facility
holding more than m of their stripe, found from the manifests alone, in the same
steps (`write_on_targets`, `swap_in_copies`).

Repair sees only ciphertext: no key is unwrapped and no plaintext exists. Like
gc, it is the operator's maintenance, not an access the policy decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial

from shardvault.catalog.port import VersionRecord
from shardvault.codec.erasure import ErasureCode
from shardvault.errors import IntegrityError, NewerFormat, ShardvaultError
from shardvault.manifest import Manifest
from shardvault.vault.cells import Cell
from shardvault.vault.copy_swap import (
    Placed,
    moved_on,
    swap_in_copies,
    until_unchanged,
    with_copies,
    write_on_targets,
)
from shardvault.vault.rebuild import rebuild_shards
from shardvault.vault.repair_report import (
    DryRun,
    RepairReport,
    ShardMove,
    left_as_is,
    unreadable_manifest,
)
from shardvault.vault.repair_targets import rebuild_targets
from shardvault.vault.shard_check import BadShards, bad_shards, fewest_good
from shardvault.vault.writer import StepHook, no_step

__all__ = ["DryRun", "RepairReport", "ShardMove", "repair_cell"]

_SCRUB_BATCH = 500  # committed versions read from the catalog at a time


def repair_cell(
    cell: Cell,
    code: ErasureCode,
    scrub: bool,
    on_step: StepHook = no_step,
    dry_run: DryRun | None = None,
    clock: Callable[[], float] = time.time,
) -> RepairReport:
    """Check the cell's damaged versions (every committed one with ``scrub``); rebuild
    (with ``dry_run``, only say what would be). ``on_step`` is told each step of a
    rebuild done (tests kill the process there); CLOCK stamps the copies it replaces."""
    report = RepairReport()
    with cell.maintenance(wait=True):  # gc then leaves the stale copies check to later
        for record in _candidates(cell, scrub, dry_run is None):
            report = report + _repaired(cell, code, record, on_step, dry_run, clock)
    # those that could not be opened, and those that failed meanwhile (`node_lost`)
    return replace(report, unavailable_nodes=tuple(cell.unavailable_nodes()))


def _repaired(
    cell: Cell,
    code: ErasureCode,
    record: VersionRecord,
    on_step: StepHook,
    dry: DryRun | None,
    clock: Callable[[], float],
) -> RepairReport:
    """`_repair_version`, begun again from the row as it is now when the swap found it
    changed: another process's gc gives a version new locations whenever it compacts
    a pack, and each such race made repair say "repair again" (a stress run)."""
    attempt = partial(_repair_version, cell, code, record, on_step, dry, clock)
    return until_unchanged(attempt, record)


def _candidates(cell: Cell, scrub: bool, writes: bool = True) -> Iterator[VersionRecord]:
    """The versions with recorded damage, then (``scrub``) every committed one."""
    damaged = {(d.ref, d.version) for d in cell.catalog.damage()}
    for ref, version in sorted(damaged, key=lambda rv: (str(rv[0]), rv[1])):
        record = cell.catalog.get_version(ref, version)
        if record is None:  # deleted or collected since: nothing to repair
            if writes:
                cell.catalog.clear_damage(ref, version)
        elif not scrub:
            yield record
    cursor = b""
    while scrub and (batch := cell.catalog.committed_after(cursor, _SCRUB_BATCH)):
        yield from batch
        cursor = batch[-1].object_id


def _repair_version(
    cell: Cell,
    code: ErasureCode,
    stale: VersionRecord,
    on_step: StepHook = no_step,
    dry: DryRun | None = None,
    clock: Callable[[], float] = time.time,
) -> RepairReport:
    record = _reread(cell, stale)
    if record is None:  # deleted or forgotten since the scrub read its batch: no damage
        return RepairReport(1)
    assert record.manifest is not None
    what = f"{record.ref} v{record.version}"
    try:
        manifest = Manifest.from_bytes(record.manifest)
    except (IntegrityError, NewerFormat) as exc:  # one damaged row ended a scrub
        return left_as_is(what, unreadable_manifest(exc))
    bad = bad_shards(cell, manifest)
    if not bad:
        if dry is None:
            cell.catalog.clear_damage(manifest.ref, manifest.version)
        return RepairReport(1)
    good = fewest_good(manifest, bad)
    if good < manifest.k:
        if moved_on(cell, record):  # deleted or forgotten meanwhile: its shards went
            return RepairReport(1)
        return left_as_is(what, f"only {good} of {manifest.n} shards are good")
    if dry is not None:
        return _planned(cell, manifest, bad, dry)
    try:
        code = code.matching(manifest.k, manifest.m, manifest.backend)
        placed = _rebuild_on_targets(cell, code, manifest, bad, on_step)
    except (ShardvaultError, OSError) as exc:
        if moved_on(cell, record):
            return RepairReport(1)
        return left_as_is(what, f"rebuild failed: {exc}")
    if placed is None:
        return left_as_is(what, _nowhere(cell, bad))
    if not swap_in_copies(cell, record, manifest, placed, on_step, "repair", clock):
        return RepairReport(1)
    cell.catalog.clear_damage(manifest.ref, manifest.version)
    return RepairReport(1, len(placed[0]))


def _planned(cell: Cell, manifest: Manifest, bad: BadShards, dry: DryRun) -> RepairReport:
    """A dry run's rebuild: where it would go (the manifest it would leave, in ``dry``)."""
    targets = rebuild_targets(cell, manifest, sorted(bad), set())
    if targets is None:
        return left_as_is(f"{manifest.ref} v{manifest.version}", _nowhere(cell, bad))
    nowhere: dict[int, str | None] = dict.fromkeys(targets)
    dry.planned[manifest.ref, manifest.version] = with_copies(manifest, targets, nowhere)
    return RepairReport(1, len(targets))


def _nowhere(cell: Cell, bad: BadShards) -> str:
    return (
        f"{len(bad)} bad shard(s) and no active node in {cell.jurisdiction} to rebuild "
        "them on (theirs not active, every other holding a shard of the version): add "
        "a node, then repair again"
    )


def _reread(cell: Cell, record: VersionRecord) -> VersionRecord | None:
    """The version's row as it is now, if still committed. A scrub reads its versions
    a batch at a time, and another process's gc may give one new locations before
    its turn: the swap, made only if the row still holds the manifest read, failed
    on the old one ("repair again", exit 1) where a fresh one would have held."""
    return cell.catalog.get_version(record.ref, record.version)


def _rebuild_on_targets(
    cell: Cell, code: ErasureCode, manifest: Manifest, bad: BadShards, on_step: StepHook
) -> Placed | None:
    """Rebuild the bad shards where `rebuild_targets` says: (the targets, the locations), or
    None if there are too few (`write_on_targets`)."""
    return write_on_targets(
        cell,
        manifest,
        lambda tried: rebuild_targets(cell, manifest, sorted(bad), tried),
        lambda targets: rebuild_shards(cell, code, manifest, bad, targets),
        on_step,
        "repair",
    )
