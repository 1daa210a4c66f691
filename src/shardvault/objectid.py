"""Object ids: 16 bytes, the time they were minted (ms, 6 bytes big-endian), then 10 random.

A small put writes its shards before the catalog has any row for them
(docs/architecture.md, "Writes"), so gc cannot tell them from a dead put's
leftovers by the catalog alone: the id's minted time lets it leave the young
ones alone, and lets the commit refuse shards a sweep may have taken. Ids
minted before this format were all random; their "time" is almost surely far
from now, and gc treats them as old.
"""

from __future__ import annotations

import os

_TIME_BYTES = 6
_RANDOM_BYTES = 10
MAX_CLOCK_AHEAD = 86_400.0  # a minted time further ahead of gc's clock is not a time


def new_object_id(now: float) -> bytes:
    """A fresh id minted at `now` (seconds since the epoch)."""
    return int(now * 1000).to_bytes(_TIME_BYTES, "big") + os.urandom(_RANDOM_BYTES)


def minted_at(object_id: bytes) -> float:
    """When the id was minted, in seconds (to the millisecond `new_object_id` kept)."""
    return int.from_bytes(object_id[:_TIME_BYTES], "big") / 1000


def minted_during(object_id: bytes, after: float, until: float) -> bool:
    """Was the id minted in (after, until + MAX_CLOCK_AHEAD]: a write that may be in flight?"""
    return after < minted_at(object_id) <= until + MAX_CLOCK_AHEAD
