"""What a forget does after the subject's catalog mark, and again if need be.

Its shards collected, the freed pages erased, its approvals scrubbed. Apart from
forgetting.py: a decision that finds the subject already forgotten does this
too (`access.decided`), and a forget needs that decision first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from shardvault.vault.bounded import BoundedStores
from shardvault.vault.cells import Cell
from shardvault.vault.gc import collect_claimed

if TYPE_CHECKING:
    from shardvault.vault.core import Vault


def finish_forget(vault: Vault, tenant: str, subject: str) -> None:
    """`collect_forgotten` in the subject's home cell, if it has one."""
    home = vault.directory.home(tenant, subject)
    if home is None or home not in vault.cells:
        return
    collect_forgotten(vault, vault.cells[home], tenant, subject)


def collect_forgotten(
    vault: Vault, cell: Cell, tenant: str, subject: str
) -> tuple[set[str], tuple[str, ...]]:
    """What a forget does after marking the subject forgotten, again if need be: one
    killed there (its key destroyed, its catalog row marked) left shards, freed
    pages and approvals naming the subject. Each step is idempotent; the shards
    each batch removes are added to the forget's count in the catalog. Returns the
    nodes it could not remove shards from (unavailable, hung or failing), and the
    cells whose approvals it could not reach (left owing the scrub: `owed_scrubs`)."""

    def counted(shards: int) -> None:
        cell.catalog.note_forget_progress(tenant, subject, shards_removed=shards)

    with BoundedStores(vault.deadline) as bounded:  # a hung node's shards become orphans
        _, _, skipped = collect_claimed(
            bounded.cell(cell), vault.code.n, 0.0, math.inf, (tenant, subject), counted
        )
    cell.catalog.erase_freed()
    unscrubbed = vault.governance.forget_subject(cell.jurisdiction, tenant, subject)
    return skipped, unscrubbed
