"""The copy-and-swap steps repair's rebuild and the spread's moves share.

New copies are noted (`Catalog.note_leftovers`), written and synced where the
caller's choice says (`write_on_targets`), the copies they replace noted too, the
manifest swapped only if its row is still the one read, durably, and the new
copies' notes dropped (`swap_in_copies`). The old copies stay noted, with the
swap's time: gets that loaded the manifest before the swap may still read them, so
gc deletes them only after its grace period. A run killed at any step,
or a node it cannot reach, leaves notes, and gc deletes each noted copy its
version's manifest does not name, once it reaches the node. A swap that found the
row changed deletes its new copies, and drops their notes, in its turn with the
cell's collectors (`undo_copies`), and raises `VersionChanged`; `until_unchanged`
begins the version again from the row as it is now, a few times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace

from shardvault.catalog.port import Leftover, VersionRecord
from shardvault.errors import IntegrityError, ShardvaultError
from shardvault.manifest import Manifest
from shardvault.nodes.port import ShardWriter, shard_name
from shardvault.vault.cells import Cell
from shardvault.vault.repair_report import RepairReport, left_as_is
from shardvault.vault.repair_targets import Target
from shardvault.vault.shard_check import node_lost
from shardvault.vault.writer import StepHook

_SWAP_TRIES = 3  # rebuilds of a version whose row keeps changing under the swap
_CHANGED = f"it changed while being repaired, {_SWAP_TRIES} times; repair again"

Placed = tuple[dict[int, Target], dict[int, str | None]]
"""Copies written and synced: each shard's target, and the location its node gave it."""


class VersionChanged(Exception):
    """The version's row changed between its read and the swap: its copies are undone."""


def until_unchanged(attempt: Callable[[], RepairReport], record: VersionRecord) -> RepairReport:
    """ATTEMPT, again while it raises `VersionChanged`, up to `_SWAP_TRIES` times; then
    the version is named for another run."""
    for _ in range(_SWAP_TRIES):
        with contextlib.suppress(VersionChanged):
            return attempt()
    return left_as_is(f"{record.ref} v{record.version}", _CHANGED)


def write_on_targets(
    cell: Cell,
    manifest: Manifest,
    choose: Callable[[set[str]], dict[int, Target] | None],
    write: Callable[[dict[int, Target]], dict[int, str | None]],
    on_step: StepHook,
    step: str,
) -> Placed | None:
    """Write copies where CHOOSE says, on none of the nodes tried: (the targets, the
    locations), or None if there are too few. Nodes whose write failed (a disk full,
    read-only or gone) are passed over for the next ones: such a failure leaves no
    trace on them, so every repair chose them again and none used the spare after.
    The first failure is raised once no node is left; an integrity failure (the good
    blocks do not make the shard) at once, as other nodes would not help."""
    tried: set[str] = set()
    failure: ShardvaultError | OSError | None = None
    while (targets := choose(tried)) is not None:
        # noted before they are written: a repair killed now leaves them to gc
        cell.catalog.note_leftovers(
            [leftover(manifest, i, t.node.id, None, t.generation) for i, t in targets.items()]
        )
        on_step(f"{step}-noted")
        try:
            return targets, write(targets)
        except IntegrityError:
            raise
        except (ShardvaultError, OSError) as exc:
            failure = failure or exc
            tried.update(target.node.id for target in targets.values())
            for target in targets.values():  # a disk gone is no target for later versions
                node_lost(cell, target.node.id)
    if failure is not None:
        raise failure
    return None


def swap_in_copies(
    cell: Cell,
    record: VersionRecord,
    manifest: Manifest,
    placed: Placed,
    on_step: StepHook,
    step: str,
    clock: Callable[[], float],
) -> bool:
    """Name the copies written (PLACED) in the version's manifest: whether it was done,
    False if the version is no longer committed. Raises `VersionChanged` if its row
    changed meanwhile: the new copies are deleted. Every copy either manifest may leave
    unnamed is noted first, for gc. The copies replaced are not deleted here: a get
    that loaded the manifest before the swap reads them, and more than m of them gone
    under it failed the get part-way. They stay noted, with the swap's time, and gc
    deletes them after its grace period (`gc._resolve_leftovers`), by the vault's CLOCK,
    as gc's cutoff is. ``on_step`` is told STEP-written, -swapped and -cleared (tests
    kill the process there)."""
    targets, locations = placed
    on_step(f"{step}-written")
    written = [
        leftover(manifest, i, t.node.id, locations[i], t.generation) for i, t in targets.items()
    ]
    replaced_at = clock()
    old = [_current_copy(manifest, i, replaced_at) for i in targets]
    cell.catalog.note_leftovers([*written, *old])  # and the copies the swap will replace
    updated = with_copies(manifest, targets, locations)
    if not cell.catalog.replace_manifests([(record, updated.to_bytes())], durable=True):
        undo_copies(cell, written, old)
        if moved_on(cell, record):
            return False
        raise VersionChanged(f"{manifest.ref} v{manifest.version}")
    on_step(f"{step}-swapped")
    cell.catalog.drop_leftovers(written)  # named now; the old copies stay noted for gc
    on_step(f"{step}-cleared")
    return True


def _current_copy(manifest: Manifest, index: int, replaced_at: float) -> Leftover:
    """The copy of shard index the manifest names (the one a swap replaces, at REPLACED_AT)."""
    node, location = manifest.nodes[index], manifest.location(index)
    copy = leftover(manifest, index, node, location, manifest.generation(index))
    return replace(copy, replaced_at=replaced_at)


def with_copies(
    manifest: Manifest, targets: dict[int, Target], locations: dict[int, str | None]
) -> Manifest:
    """The manifest naming the rebuilt copies: their nodes, locations and generations."""
    nodes, kept = list(manifest.nodes), list(manifest.locations or (None,) * manifest.n)
    generations = [manifest.generation(i) for i in range(manifest.n)]
    for index, target in targets.items():
        nodes[index], kept[index] = target.node.id, locations[index]
        generations[index] = target.generation
    return replace(
        manifest,
        nodes=tuple(nodes),
        locations=tuple(kept),
        generations=tuple(generations) if any(generations) else (),
    )


def write_copies(
    cell: Cell,
    manifest: Manifest,
    targets: dict[int, Target],
    fill: Callable[[dict[int, ShardWriter]], None],
) -> dict[int, str | None]:
    """A writer per target under its name's generation, filled by FILL, then committed
    and synced each; their locations. If this fails, what was written is removed (a
    committed copy deleted and its note dropped, `undo_copies`, leaving a trace the
    next repair keeps away from; one that cannot be stays noted for gc). The rebuild
    and the spread write their copies so."""
    writers: dict[int, ShardWriter] = {}
    committed: dict[int, str | None] = {}
    try:
        for index, target in targets.items():
            name = shard_name(manifest.object_id, manifest.version, index, target.generation)
            writers[index] = cell.store(target.node.id).open_writer(name)
        fill(writers)
        for index, writer in writers.items():
            writer.commit(durable=False)
            committed[index] = writer.location
        for writer in writers.values():  # its own shard: see ShardWriter.sync
            writer.sync()
        return committed
    except BaseException:
        for writer in writers.values():
            writer.abort()
        undo_copies(
            cell,
            [
                leftover(manifest, i, targets[i].node.id, at, targets[i].generation)
                for i, at in committed.items()
            ],
            [],
        )
        raise


def leftover(
    manifest: Manifest, index: int, node: str, location: str | None, generation: int
) -> Leftover:
    return Leftover(manifest.object_id, manifest.version, index, node, location, generation)


def moved_on(cell: Cell, record: VersionRecord) -> bool:
    """Whether the version is no longer committed: its shards may have gone with a
    delete, a forget or a gc, which is no damage. (A manifest changed by gc's
    relocation is the same version, still to be repaired.)"""
    return cell.catalog.get_version(record.ref, record.version) is None


def undo_copies(cell: Cell, copies: list[Leftover], noted_too: list[Leftover]) -> None:
    """Delete these copies and drop their notes, and NOTED_TOO's, in the cell's collection
    turn (`Cell.collection`). A copy deleted and left noted, or a collector of the
    version between the deletes and the drop (`gc._replaced_copies`), had gc delete it
    again, and a packed copy's delete, in a process that had indexed its pack, said it
    was there: counted in its report though the repair had removed it. A collector now
    waits for one version's deletes; the repair, for a collector's batch or a node's
    orphan sweep. Those whose delete failed stay noted, for gc."""
    with cell.collection():
        cell.catalog.drop_leftovers([*delete_copies(cell, copies), *noted_too])


def delete_copies(cell: Cell, copies: list[Leftover]) -> list[Leftover]:
    """Delete these copies where their nodes can be reached, durably; those deleted (the
    others stay noted, and gc takes them once it can: `gc._resolve_leftovers`)."""
    gone, failed = [], set()
    for copy in copies:
        try:
            name = shard_name(copy.object_id, copy.version, copy.shard, copy.generation)
            cell.store(copy.node).delete(name, copy.location)
            gone.append(copy)
        except (ShardvaultError, OSError):
            failed.add(copy.node)
    for node in {copy.node for copy in gone}:
        try:
            cell.store(node).sync()
        except (ShardvaultError, OSError):
            failed.add(node)
    for node in failed:
        node_lost(cell, node)
    return [copy for copy in gone if copy.node not in failed]
