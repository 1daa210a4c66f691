"""Object ids carry their minted time, so gc can tell a put in flight from a dead one."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from shardvault.objectid import MAX_CLOCK_AHEAD, minted_at, minted_during, new_object_id

NOW = 1_796_000_000.0  # late 2026


@given(st.floats(min_value=0, max_value=1.7e10, allow_nan=False))  # to the year 2508
def test_minted_time_is_kept_to_the_millisecond(now: float) -> None:
    object_id = new_object_id(now)
    assert len(object_id) == 16
    assert now - 0.001 < minted_at(object_id) <= now


def test_ids_minted_together_differ() -> None:
    assert len({new_object_id(NOW) for _ in range(1000)}) == 1000


def test_minted_during_is_the_window_after_a_cutoff() -> None:
    object_id = new_object_id(NOW)
    assert minted_during(object_id, NOW - 1, NOW)
    assert not minted_during(object_id, NOW, NOW)  # minted at the cutoff: collectable
    assert minted_during(object_id, NOW - 3600, NOW - MAX_CLOCK_AHEAD)
    assert not minted_during(object_id, NOW - 3600, NOW - MAX_CLOCK_AHEAD - 1)


def test_legacy_random_ids_read_as_old() -> None:
    """Ids from before the minted time were 16 random bytes: almost all read as
    far from now, so gc treats them as it always did."""
    legacy = [os.urandom(16) for _ in range(2000)]
    assert not any(minted_during(object_id, NOW - 3600, NOW) for object_id in legacy)
