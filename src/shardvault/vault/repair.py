"""Repair: rebuild lost or damaged shards from the others, on nodes that can hold them.

Reads survive any m bad shards per segment, but each loss spends redundancy;
without repair, a cell would lose data at its (m+1)th failure over its life.
Repair looks at the versions reads recorded damage for and, with ``scrub``,
at every committed version of the cell (a cursor over object ids, a batch at
a time). Every block of every shard is read and checked against the
manifest's hashes. A shard is bad if its header or any block is missing,
short or wrong, or if its node is not active (draining, down, no longer
configured, or unavailable). A version can be repaired while every segment has
k good blocks, from whichever shards they are in: damage spread over more
than m shards, none of its segments losing more than m blocks, is as
readable as it is repairable.

A bad shard is rebuilt whole, segment by segment: k good blocks are decoded
and the segment encoded again, and every rebuilt block must hash to the
manifest's, so repair never writes a block that did not verify. It goes to
another active node of the cell free of the version, else back to its own node
under a new generation of its name, else to a node holding a trace of the
version (`vault/repair_targets.py` gives the order, and why); no node is ever
given a name twice. A cell of
exactly n nodes (the demo's six for 4+2) so heals a damaged shard where it is;
a shard whose node is not active, with no other node for it, is left as it is
and named. The manifest is replaced, durably,
only if it is still the one that was read (a delete, a gc or another repair
meanwhile wins, and the rebuilt copies go); only then do the bad copies go.
Every copy that could end up named by no manifest is noted first
(`Catalog.note_leftovers`): the rebuilt ones before they are written, the old
ones before the swap. A repair killed at any step, or a node it cannot reach,
leaves notes, and gc deletes each noted copy its version's manifest does not
name, once it reaches the node. Repair holds the cell's maintenance lock
(`Cell.maintenance`) while it runs, so gc never judges a copy between steps.

After a scrub, `vault/spread.py` moves good shards off a facility holding more than
m of their stripe, in the same steps (`write_on_targets`, `swap_in_copies`).

Repair sees only ciphertext: no key is unwrapped and no plaintext exists. Like
gc, it is the operator's maintenance, not an access the policy decides.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from shardvault.catalog.port import Leftover, VersionRecord
from shardvault.codec.erasure import ErasureCode
from shardvault.codec.hashing import block_matches
from shardvault.codec.shardfile import block_offset
from shardvault.errors import IntegrityError, NotFound, ShardvaultError
from shardvault.manifest import Manifest
from shardvault.model import ObjectRef
from shardvault.nodes.port import ShardReader, ShardStore, ShardWriter, shard_name
from shardvault.nodes.unavailable import UnavailableStore
from shardvault.vault.bounded import on_node
from shardvault.vault.cells import Cell
from shardvault.vault.repair_targets import Target, active_nodes, rebuild_targets
from shardvault.vault.writer import StepHook

_SCRUB_BATCH = 500  # committed versions read from the catalog at a time
_SWAP_TRIES = 3  # rebuilds of a version whose row keeps changing under the swap
_CHANGED = f"it changed while being repaired, {_SWAP_TRIES} times; repair again"


def _no_step(step: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ShardMove:
    """A shard moved so no facility holds more than m of its stripe (vault/spread.py)."""

    tenant: str
    subject: str
    key: str
    version: int
    shard: int
    from_node: str
    from_facility: str
    to_node: str
    to_facility: str


@dataclass(frozen=True, slots=True)
class RepairReport:
    versions: int = 0  # versions checked
    rebuilt: int = 0  # shards rebuilt on another node
    problems: tuple[str, ...] = ()  # versions left as they were, and why
    hung_nodes: tuple[str, ...] = ()  # past the deadline: their shards were taken for bad
    unavailable_nodes: tuple[str, ...] = ()  # could not be opened: their shards taken for bad
    moved: int = 0  # good shards moved off a facility holding more than m of their stripe
    moves: tuple[ShardMove, ...] = ()  # each of them
    concentrated: tuple[str, ...] = ()  # versions over m to a facility the cell cannot spread
    dry_run: bool = False  # nothing was written: rebuilt, moved and moves say what would be

    def __add__(self, other: RepairReport) -> RepairReport:
        return RepairReport(
            self.versions + other.versions,
            self.rebuilt + other.rebuilt,
            self.problems + other.problems,
            self.hung_nodes + other.hung_nodes,
            # a run's repair and spread of a cell both name them: once
            tuple(dict.fromkeys(self.unavailable_nodes + other.unavailable_nodes)),
            self.moved + other.moved,
            self.moves + other.moves,
            self.concentrated + other.concentrated,
            self.dry_run or other.dry_run,
        )


@dataclass
class DryRun:
    """A repair that writes nothing, and what its rebuilds would leave of each manifest:
    the spread after it plans its moves from those (`vault/spread.py`)."""

    planned: dict[tuple[ObjectRef, int], Manifest] = field(default_factory=dict)


def repair_cell(
    cell: Cell,
    code: ErasureCode,
    scrub: bool,
    on_step: StepHook = _no_step,
    dry_run: DryRun | None = None,
) -> RepairReport:
    """Check the cell's damaged versions (every committed one with ``scrub``); rebuild
    (with ``dry_run``, only say what would be). ``on_step`` is told each step of a
    rebuild done (tests kill the process there)."""
    report = RepairReport()
    with cell.maintenance(wait=True):  # gc then leaves the stale copies check to later
        for record in _candidates(cell, scrub, dry_run is None):
            report = report + _repaired(cell, code, record, on_step, dry_run)
    # those that could not be opened, and those that failed meanwhile (`_lost`)
    return replace(report, unavailable_nodes=tuple(cell.unavailable_nodes()))


class VersionChanged(Exception):
    """The version's row changed between its read and the swap: its copies are undone."""


def _repaired(
    cell: Cell, code: ErasureCode, record: VersionRecord, on_step: StepHook, dry: DryRun | None
) -> RepairReport:
    """`_repair_version`, begun again from the row as it is now when the swap found it
    changed: another process's gc gives a version new locations whenever it compacts
    a pack, and each such race made repair say "repair again" (a stress run)."""
    return until_unchanged(lambda: _repair_version(cell, code, record, on_step, dry), record)


def until_unchanged(attempt: Callable[[], RepairReport], record: VersionRecord) -> RepairReport:
    """ATTEMPT, again while it raises `VersionChanged`, up to `_SWAP_TRIES` times; then
    the version is named for another run."""
    for _ in range(_SWAP_TRIES):
        with contextlib.suppress(VersionChanged):
            return attempt()
    return _left(f"{record.ref} v{record.version}", _CHANGED)


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
    on_step: StepHook = _no_step,
    dry: DryRun | None = None,
) -> RepairReport:
    record = _reread(cell, stale)
    if record is None:  # deleted or forgotten since the scrub read its batch: no damage
        return RepairReport(1)
    assert record.manifest is not None
    manifest = Manifest.from_bytes(record.manifest)
    what = f"{manifest.ref} v{manifest.version}"
    bad = _bad_shards(cell, manifest)
    if not bad:
        if dry is None:
            cell.catalog.clear_damage(manifest.ref, manifest.version)
        return RepairReport(1)
    good = _fewest_good(manifest, bad)
    if good < manifest.k:
        if _moved_on(cell, record):  # deleted or forgotten meanwhile: its shards went
            return RepairReport(1)
        return _left(what, f"only {good} of {manifest.n} shards are good")
    if dry is not None:
        return _planned(cell, manifest, bad, dry)
    try:
        code = code.matching(manifest.k, manifest.m, manifest.backend)
        placed = _rebuild_on_targets(cell, code, manifest, bad, on_step)
    except (ShardvaultError, OSError) as exc:
        if _moved_on(cell, record):
            return RepairReport(1)
        return _left(what, f"rebuild failed: {exc}")
    if placed is None:
        return _left(what, _nowhere(cell, bad))
    if not swap_in_copies(cell, record, manifest, placed, on_step, "repair"):
        return RepairReport(1)
    cell.catalog.clear_damage(manifest.ref, manifest.version)
    return RepairReport(1, len(placed[0]))


def _planned(cell: Cell, manifest: Manifest, bad: BadShards, dry: DryRun) -> RepairReport:
    """A dry run's rebuild: where it would go (the manifest it would leave, in ``dry``)."""
    targets = rebuild_targets(cell, manifest, sorted(bad), set())
    if targets is None:
        return _left(f"{manifest.ref} v{manifest.version}", _nowhere(cell, bad))
    nowhere: dict[int, str | None] = dict.fromkeys(targets)
    dry.planned[manifest.ref, manifest.version] = _with_copies(manifest, targets, nowhere)
    return RepairReport(1, len(targets))


def _nowhere(cell: Cell, bad: BadShards) -> str:
    return (
        f"{len(bad)} bad shard(s) and no active node in {cell.jurisdiction} to rebuild "
        "them on (theirs not active, every other holding a shard of the version): add "
        "a node, then repair again"
    )


Placed = tuple[dict[int, Target], dict[int, str | None]]
"""Copies written and synced: each shard's target, and the location its node gave it."""


def swap_in_copies(
    cell: Cell,
    record: VersionRecord,
    manifest: Manifest,
    placed: Placed,
    on_step: StepHook,
    step: str,
) -> bool:
    """Name the copies written (PLACED) in the version's manifest, then delete the ones
    they replace: whether it was done, False if the version is no longer committed.
    Raises `VersionChanged` if its row changed meanwhile: the new copies are deleted.
    Every copy either manifest may leave unnamed is noted first, for gc; ``on_step`` is
    told STEP-written, -swapped and -cleared (tests kill the process there)."""
    targets, locations = placed
    on_step(f"{step}-written")
    written = [
        _leftover(manifest, i, t.node.id, locations[i], t.generation) for i, t in targets.items()
    ]
    old = [_current_copy(manifest, i) for i in targets]
    cell.catalog.note_leftovers([*written, *old])  # and the copies the swap will replace
    updated = _with_copies(manifest, targets, locations)
    if not cell.catalog.replace_manifests([(record, updated.to_bytes())], durable=True):
        cell.catalog.drop_leftovers([*delete_copies(cell, written), *old])
        if _moved_on(cell, record):
            return False
        raise VersionChanged(f"{manifest.ref} v{manifest.version}")
    on_step(f"{step}-swapped")
    deleted = delete_copies(cell, old)
    on_step(f"{step}-cleared")
    cell.catalog.drop_leftovers([*written, *deleted])  # those left, gc takes
    return True


def _current_copy(manifest: Manifest, index: int) -> Leftover:
    """The copy of shard index the manifest names (the bad one a rebuild replaces)."""
    node, location = manifest.nodes[index], manifest.location(index)
    return _leftover(manifest, index, node, location, manifest.generation(index))


def _with_copies(
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
        lambda targets: _rebuild(cell, code, manifest, bad, targets),
        on_step,
        "repair",
    )


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
            [_leftover(manifest, i, t.node.id, None, t.generation) for i, t in targets.items()]
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
                _lost(cell, target.node.id)
    if failure is not None:
        raise failure
    return None


def _leftover(
    manifest: Manifest, index: int, node: str, location: str | None, generation: int
) -> Leftover:
    return Leftover(manifest.object_id, manifest.version, index, node, location, generation)


def _moved_on(cell: Cell, record: VersionRecord) -> bool:
    """Whether the version is no longer committed: its shards may have gone with a
    delete, a forget or a gc, which is no damage. (A manifest changed by gc's
    relocation is the same version, still to be repaired.)"""
    return cell.catalog.get_version(record.ref, record.version) is None


def _left(what: str, why: str) -> RepairReport:
    return RepairReport(1, 0, (f"{what}: {why}",))


BadShards = dict[int, frozenset[int] | None]
"""Each bad shard's index: the segments whose blocks are bad, or None if none of it can
be used (its node not active, the shard or its header missing or wrong)."""


def _bad_shards(cell: Cell, manifest: Manifest) -> BadShards:
    """The shards on a node that is not active, or not whole and verified (see BadShards)."""
    active = active_nodes(cell)
    bad: BadShards = {}
    for index, node in enumerate(manifest.nodes):
        found = _bad_segments(cell, node, manifest, index) if node in active else None
        if found is None or found:
            bad[index] = found
    return bad


def _lost(cell: Cell, node: str) -> None:
    """After a call to the node failed (not for a shard missing or wrong): if the node
    itself fails, its directory gone, its disk unmounted or failing (it does not answer
    a probe), it is unavailable for the rest of the run, as one that could not be
    opened: its shards are bad, no rebuild goes to it, its old copies stay noted for
    gc, and the report names it. `cell` is the run's own view (`BoundedStores.cell`)."""
    store = cell.store(node)
    if isinstance(store, UnavailableStore):
        return
    try:
        store.probe()
    except (ShardvaultError, OSError) as exc:
        why = str(exc).removeprefix(f"node {node}: ")
        cell.replace_store(UnavailableStore(node, f"failed during the repair: {why}"))


def _fewest_good(manifest: Manifest, bad: BadShards) -> int:
    """The good blocks of the segment with fewest: a shard bad in one segment still
    serves the others (without a segment, the usable shards)."""
    unusable = sum(segments is None for segments in bad.values())
    lost = Counter(s for segments in bad.values() if segments is not None for s in segments)
    return manifest.n - unusable - max(lost.values(), default=0)


def _open(store: ShardStore, manifest: Manifest, index: int) -> ShardReader | None:
    name = shard_name(manifest.object_id, manifest.version, index, manifest.generation(index))
    try:
        return store.open_reader(name, manifest.location(index))
    except (NotFound, ShardvaultError, OSError):
        return None


def _bad_segments(cell: Cell, node: str, manifest: Manifest, index: int) -> frozenset[int] | None:
    """The segments whose block of the shard is missing or does not match the manifest;
    None if the shard, or its header, is missing or wrong, or cannot be read (then the
    node is asked whether it answers at all: `_lost`). All of it on the node's thread at
    once: a hand-off per read made a scrub several times slower."""
    try:
        return on_node(cell.store(node), _bad_segments_of, manifest, index)
    except (ShardvaultError, OSError):
        _lost(cell, node)
        return None


def _bad_segments_of(store: ShardStore, manifest: Manifest, index: int) -> frozenset[int] | None:
    """As `_bad_segments`; raises what opening or reading the shard raised, but NotFound."""
    name = shard_name(manifest.object_id, manifest.version, index, manifest.generation(index))
    try:
        reader = store.open_reader(name, manifest.location(index))
    except NotFound:
        return None
    try:
        expected = manifest.stripe_header().to_bytes(index)
        if reader.read_at(0, len(expected)) != expected:
            return None
        return frozenset(
            segment
            for segment in range(manifest.segments)
            if verified_block(reader, manifest, segment, index) is None
        )
    finally:
        reader.close()


def verified_block(
    reader: ShardReader, manifest: Manifest, segment: int, index: int
) -> bytes | None:
    """The shard's block of `segment`, if it hashes to the manifest's."""
    length = manifest.block_length(segment)
    block = reader.read_at(block_offset(segment, manifest.block_size), length)
    if len(block) != length or not block_matches(block, manifest.block_hash(segment, index)):
        return None
    return block


def _rebuild(
    cell: Cell,
    code: ErasureCode,
    manifest: Manifest,
    bad: BadShards,
    targets: dict[int, Target],
) -> dict[int, str | None]:
    """Write every bad shard anew on its target; their locations. If this fails, what
    was written is removed (a committed copy is deleted, leaving a trace that the
    next repair keeps away from; one that cannot be stays noted for gc). A bad shard
    whose other blocks are good is read too: another may be bad where it is not."""
    readers = {
        i: reader
        for i in range(manifest.n)
        if bad.get(i, frozenset()) is not None
        and (reader := _open(cell.store(manifest.nodes[i]), manifest, i))
    }
    writers: dict[int, ShardWriter] = {}
    committed: dict[int, str | None] = {}
    try:
        for index, target in targets.items():
            name = shard_name(manifest.object_id, manifest.version, index, target.generation)
            writers[index] = cell.store(target.node.id).open_writer(name)
            writers[index].write(manifest.stripe_header().to_bytes(index))
        for segment in range(manifest.segments):
            blocks = _rebuilt_blocks(code, manifest, segment, readers, bad)
            for index, writer in writers.items():
                writer.write(blocks[index])
        for index, writer in writers.items():
            writer.commit(durable=False)
            committed[index] = writer.location
        for writer in writers.values():  # its own shard: see ShardWriter.sync
            writer.sync()
        return committed
    except BaseException:
        for writer in writers.values():
            writer.abort()
        delete_copies(
            cell,
            [
                _leftover(manifest, i, targets[i].node.id, at, targets[i].generation)
                for i, at in committed.items()
            ],
        )
        raise
    finally:
        for reader in readers.values():
            reader.close()


def _rebuilt_blocks(
    code: ErasureCode,
    manifest: Manifest,
    segment: int,
    readers: dict[int, ShardReader],
    bad: BadShards,
) -> list[bytes]:
    """The segment's n blocks, from k good ones; each rebuilt one checked against its hash."""
    good = []
    for index, reader in readers.items():
        if segment in (bad.get(index) or ()):
            continue  # found bad already: not read again
        block = verified_block(reader, manifest, segment, index)
        if block is not None:
            good.append(block)
            if len(good) == manifest.k:
                break
    if len(good) < manifest.k:
        raise IntegrityError(f"segment {segment}: only {len(good)} good blocks of {manifest.k}")
    blocks = code.encode(code.decode(good))
    for index in bad:
        if not block_matches(blocks[index], manifest.block_hash(segment, index)):
            raise IntegrityError(f"segment {segment}: rebuilt shard {index} does not match")
    return blocks


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
        _lost(cell, node)
    return [copy for copy in gone if copy.node not in failed]
