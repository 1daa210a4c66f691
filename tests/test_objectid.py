"""Object ids carry their minted time, so gc can tell a put in flight from a dead one."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from shardvault.objectid import MARKER, minted_after, minted_at, new_object_id

NOW = 1_796_000_000.0  # late 2026


@given(st.floats(min_value=0, max_value=1.7e10, allow_nan=False))  # to the year 2508
def test_minted_time_is_kept_to_the_millisecond(now: float) -> None:
    object_id = new_object_id(now)
    assert len(object_id) == 16 and object_id[6:8] == MARKER
    # the millisecond itself: near 2**33 s a float's step is 2 µs, so "now - 0.001 <" would
    # compare rounding, not the id
    assert round(minted_at(object_id) * 1000) == int(now * 1000)


def test_ids_minted_together_differ() -> None:
    assert len({new_object_id(NOW) for _ in range(1000)}) == 1000


def test_minted_after_a_cutoff_is_a_put_that_may_be_in_flight() -> None:
    object_id = new_object_id(NOW)
    assert minted_after(object_id, NOW - 1)
    assert not minted_after(object_id, NOW)  # minted at the cutoff: collectable
    assert minted_after(new_object_id(NOW + 30 * 86_400), NOW)  # a clock far ahead too


def test_legacy_random_ids_read_as_old() -> None:
    """Ids from before the minted time were 16 random bytes: without the marker
    they have no time, and gc treats them as it always did."""
    legacy = [os.urandom(16) for _ in range(2000)]
    unmarked = [object_id for object_id in legacy if object_id[6:8] != MARKER]
    assert not any(minted_after(object_id, NOW) for object_id in unmarked)
    assert not minted_after(os.urandom(6) + b"sv" + os.urandom(8), 0)
