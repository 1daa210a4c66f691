"""The error of a segment with fewer than k intact shards, its advice fitted to what was seen.

A shard a node could not give (the node unavailable, hung, or its disk failing) may
come back with the node; one found missing or damaged will not. The message says
which nodes to bring back if any failed so, and otherwise that the shards were lost,
so nobody waits for nodes that are all up. It stays one line, naming the object,
version and segment, and saying it "cannot be read" (docs/cli.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from shardvault.catalog.port import DamageRecord
from shardvault.errors import IntegrityError

_NODE_TROUBLE = ("unreadable:", "read failed:")  # the node's, not the shard's


def unreadable_segment(
    segment_name: str, intact: int, needed: int, failures: Iterable[DamageRecord]
) -> IntegrityError:
    """``segment_name`` (e.g. ``intl/alice/k v1 segment 0``) cannot be read: only
    ``intact`` of the ``needed`` shards were, each of ``failures`` why another was not."""
    failures = list(failures)
    trouble = [f for f in failures if f.reason.startswith(_NODE_TROUBLE)]
    lost = Counter(f.reason for f in failures if not f.reason.startswith(_NODE_TROUBLE))
    seen = ", ".join(
        [f"{len(trouble)} on a node that could not be read"] * bool(trouble)
        + [f"{count} {reason}" for reason, count in sorted(lost.items())]
    )
    nodes = sorted({f.node for f in trouble})
    start = (
        f"{segment_name}: only {intact} of the {needed} shards needed are intact ({seen}); "
        "the object cannot be read: "
    )
    if nodes:
        return IntegrityError(
            start + f"bring node(s) {', '.join(nodes)} back ('shardvault nodes' says why "
            "each is unavailable), or restore it from a backup"
        )
    return IntegrityError(
        start + "its shards were deleted or damaged, on nodes that answer; restore it from "
        "a backup ('shardvault repair --scrub' finds any other version so damaged)"
    )
