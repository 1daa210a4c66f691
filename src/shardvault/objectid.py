"""Object ids: 16 bytes, the time they were minted (ms, 6 bytes big-endian), the
marker ``SV``, then 8 random bytes.

A small put writes its shards before the catalog has any row for them
(docs/architecture.md, "Atomic writes"), so gc cannot tell them from a dead
put's leftovers by the catalog alone: the id's minted time lets it leave the
young ones alone, and lets the commit refuse shards a sweep may have taken. Ids
minted before this format were 16 random bytes; without the marker (all but
one in 65,536 of them) an id has no time, and gc treats it as old.
"""

from __future__ import annotations

import os

_TIME_BYTES = 6
MARKER = b"SV"
_RANDOM_BYTES = 16 - _TIME_BYTES - len(MARKER)


def new_object_id(now: float) -> bytes:
    """A fresh id minted at `now` (seconds since the epoch)."""
    return int(now * 1000).to_bytes(_TIME_BYTES, "big") + MARKER + os.urandom(_RANDOM_BYTES)


def minted_at(object_id: bytes) -> float:
    """When the id was minted, in seconds (to the millisecond `new_object_id` kept)."""
    return int.from_bytes(object_id[:_TIME_BYTES], "big") / 1000


def minted_after(object_id: bytes, cutoff: float) -> bool:
    """Is this a time-minted id from after `cutoff`: shards a put may still be writing?"""
    marked = object_id[_TIME_BYTES : _TIME_BYTES + len(MARKER)] == MARKER
    return marked and minted_at(object_id) > cutoff
