"""What a repair or spread run reports, and a dry run's plan: shared by `vault/repair.py`,
`vault/spread.py` and the copy-and-swap steps both take (`vault/copy_swap.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shardvault.manifest import Manifest
from shardvault.model import ObjectRef


@dataclass(frozen=True, slots=True)
class ShardMove:
    """A shard moved off a facility holding more than m of its stripe, so that none does,
    or as few as the cell's active nodes allow (vault/spread.py)."""

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
    concentrated: tuple[str, ...] = ()  # versions left over m in a facility after the run, and why
    dry_run: bool = False  # nothing was written: rebuilt, moved and moves say what would be
    crowded: int = 0  # versions found with more than m shards in a facility, spread or not
    partly_spread: int = 0  # of those, moved part of the way: in `concentrated` too

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
            self.crowded + other.crowded,
            self.partly_spread + other.partly_spread,
        )


def unreadable_manifest(exc: Exception) -> str:
    """Why a version whose manifest cannot be parsed (a damaged catalog row, a newer
    format) is left as it is."""
    return f"its manifest cannot be read ({exc}): restore the cell's catalog from a backup"


def left_as_is(what: str, why: str) -> RepairReport:
    """One version checked and left as it was, and why (a problem the report names)."""
    return RepairReport(1, 0, (f"{what}: {why}",))


@dataclass
class DryRun:
    """A repair that writes nothing, and what its rebuilds would leave of each manifest:
    the spread after it plans its moves from those (`vault/spread.py`)."""

    planned: dict[tuple[ObjectRef, int], Manifest] = field(default_factory=dict)
