"""What the deployment commands warn about nodes and cells, on stderr beside their output.

A node the operator marked down is expected to be gone: it is never an alarm (no
warning, no exit 1), though --json still names it. The rest of the rules are the
cells' shape as placement sees it: too few active nodes for a stripe, too few
facilities to keep m shards per facility, versions held crowded, and the nodes a
command skipped or that did not answer in time.
"""

from __future__ import annotations

from collections.abc import Iterable

from shardvault.cli.output import shell_quoted, warn
from shardvault.cli.state import CliState
from shardvault.config import Config
from shardvault.model import NodeState
from shardvault.placement import facility_shortfall
from shardvault.vault import CellCrowding
from shardvault.vault.views import NodeUsage


def down_nodes(config: Config) -> set[str]:
    """The nodes the operator marked down: expected to be gone, so never an alarm (no
    warning, no exit 1) when one cannot be reached; --json still names them."""
    return {node.id for node in config.nodes if node.state is NodeState.DOWN}


def not_down(cli: CliState, nodes: Iterable[str]) -> list[str]:
    """These nodes, but those marked down: the ones skipped that someone must look at."""
    down = down_nodes(cli.config())
    return sorted({node for node in nodes if node not in down})


def warn_if_any_hung(cli: CliState, skipped: Iterable[str]) -> None:
    """Name the nodes (not marked down) that did not answer within storage.node_timeout
    during the command (a hung disk) and that it SKIPPED: what it had to do there is
    not done. One given up on at its open that answered before the command came to
    it was used: saying it was skipped would be false."""
    hung = cli.vault().deadline.hung
    hung_skipped = not_down(cli, (node for node in skipped if node in hung))
    if hung_skipped:
        warn(
            f"node(s) {', '.join(hung_skipped)} did not answer within "
            f"{cli.config().node_timeout:g} s (storage.node_timeout): skipped; "
            "run again once they answer"
        )


def warn_about_cells(config: Config, unavailable: set[str]) -> None:
    """Warn about each cell whose puts are refused, or put more than m shards of a stripe
    in a facility, counting as placement does: a node that cannot be opened is down."""
    n = config.k + config.m
    reachable = [node for node in config.nodes if node.id not in unavailable]
    for jurisdiction in sorted(config.jurisdictions):
        configured = [
            node for node in config.nodes_in(jurisdiction) if node.state is NodeState.ACTIVE
        ]
        active = [node for node in configured if node.id not in unavailable]
        lost = len(configured) - len(active)
        if len(active) < n:
            besides = f" (and {lost} unavailable)" if lost else ""
            warn(
                f"cell {jurisdiction} has {len(active)} active node(s){besides}, a stripe "
                f"needs {n}: its puts are refused; add nodes or bring them back"
            )
            continue
        short = facility_shortfall(reachable, jurisdiction, config.k, config.m)
        if short:
            facilities = len({node.facility for node in active})
            besides = f"; and {lost} unavailable" if lost else ""
            warn(
                f"cell {jurisdiction} cannot keep a {config.k}+{config.m} stripe to "
                f"{config.m} shards per facility ({len(active)} active nodes in {facilities} "
                f"facilities, {short} shard(s) over{besides}): losing a facility can lose "
                "objects; add active nodes in other facilities"
            )


def warn_about_crowding(cells: list[CellCrowding]) -> None:
    """Warn about each cell holding versions that one facility's loss would lose: the
    cell's shape, not a failure, so no exit 1 (as for a cell too small to spread); and
    about versions whose manifest cannot be read, which the counts leave out."""
    for cell in cells:
        if cell.unreadable:  # integrity, exit 1: the figures leave them out
            more = ", ..." if cell.unreadable > 1 else ""
            warn(
                f"cell {cell.jurisdiction} has {cell.unreadable} version(s) whose manifest "
                f"cannot be read ({cell.unreadable_first}{more}): not counted; restore the "
                "cell's catalog from a backup"
            )
        if not cell.crowded:
            continue
        waiting = cell.crowded - cell.spreadable
        partly = cell.partly_spreadable
        warn(
            f"cell {cell.jurisdiction} has {cell.crowded} version(s) with more than m shards "
            f"in one facility (losing it loses them): {cell.spreadable} can be spread now, "
            "by 'shardvault repair'"
            + (
                f", and {partly} part of the way (one facility's loss would still lose them)"
                if partly
                else ""
            )
            + (
                f"; {waiting} wait for active nodes in more facilities, or for "
                "'shardvault repair --scrub' to rebuild their shards on nodes not active"
                if waiting
                else ""
            )
        )


def alarming(usage: NodeUsage) -> bool:
    """A node the operator marked down is expected to be gone: no alarm for it."""
    return bool(usage.unavailable) and usage.node.state is not NodeState.DOWN


_STRAYS_NAMED = 10  # warning lines about strays in one run; the rest are counted


def warn_about_strays(strays: tuple[str, ...]) -> None:
    """Name each thing gc left alone where a node keeps shards: it is not one (not a
    file), so neither gc's to remove nor a reason to skip the node; a person should."""
    for path in strays[:_STRAYS_NAMED]:
        warn(
            f"left alone {shell_quoted(path)}: not a file, so not a shard gc wrote; "
            "move it out of the node's directory"
        )
    if len(strays) > _STRAYS_NAMED:
        warn(f"and {len(strays) - _STRAYS_NAMED} more such (see 'strays' in gc --json)")
