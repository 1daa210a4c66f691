"""A one-segment put from memory commits without a reservation, and loses races safely.

Its shards are on the nodes before the catalog knows them, so another writer
of the key may take its version, and a gc sweep may take its shards for a dead
put's: either way it must write again, never commit a version it lost or a
manifest whose shards are gone. A step hook runs the rival at the exact moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import SEGMENT
from governance_support import forget_approved
from shardvault.config import load
from shardvault.errors import Conflict, InvalidInput, SubjectForgotten
from shardvault.model import ObjectRef, local_context
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault

REF = ObjectRef("intl", "alice", "notes/today.txt")


class Steps:
    """The put's steps, and a rival run at each of its "shards-committed" (attempt 1, 2...).

    A rival's own steps are neither recorded nor given rivals.
    """

    def __init__(self) -> None:
        self.rival: Callable[[int], object] = lambda attempt: None
        self.reset()

    def reset(self) -> None:
        self.seen: list[str] = []
        self._attempts = 0
        self._in_rival = False

    def __call__(self, step: str) -> None:
        if self._in_rival:
            return
        self.seen.append(step)
        if step == "shards-committed":
            self._attempts += 1
            self._in_rival = True
            try:
                self.rival(self._attempts)
            finally:
                self._in_rival = False


@pytest.fixture
def steps() -> Steps:
    return Steps()


@pytest.fixture
def hooked(config_path: Path, steps: Steps) -> Iterator[Vault]:
    with Vault.open(load(config_path), on_step=steps) as vault:
        vault.register_subject("intl", "alice", "US")
        yield vault


def shard_names(vault: Vault) -> set[str]:
    return {
        name for cell in vault.cells.values() for s in cell.stores.values() for name in s.names()
    }


def live_shard_names(vault: Vault) -> set[str]:
    found = set()
    for info in vault.versions(REF):
        record = vault.cells["US"].catalog.get_version(REF, info.version)
        assert record is not None
        found |= {shard_name(record.object_id, record.version, i) for i in range(vault.code.n)}
    return found


def test_a_one_segment_put_from_memory_takes_no_reservation(hooked: Vault, steps: Steps) -> None:
    hooked.put(REF, b"x" * SEGMENT)  # exactly one segment
    assert steps.seen == ["segment-written", "shards-written", "shards-committed", "committed"]
    steps.reset()
    hooked.put(REF, b"x" * (SEGMENT + 1))
    assert steps.seen[0] == "reserved"
    assert [info.version for info in hooked.versions(REF)] == [2, 1]


def test_a_put_written_again_asks_the_custodian_for_its_key_once(
    hooked: Vault, steps: Steps, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []
    unwrap = hooked.custodian.unwrap
    monkeypatch.setattr(
        hooked.custodian, "unwrap", lambda *args: asked.append(args[3].request_id) or unwrap(*args)
    )
    steps.rival = lambda attempt: hooked.put(REF, b"rival") if attempt < 3 else None
    assert hooked.put(REF, b"third time", ctx=local_context("write", "the-put")).version == 3
    assert steps.seen.count("shards-committed") == 3  # two races lost, then written
    assert asked.count("the-put") == 1 and len(asked) == 3  # and once by each rival
    assert hooked.get(REF) == b"third time"


def test_a_gc_sweep_taking_its_shards_makes_it_write_again(hooked: Vault, steps: Steps) -> None:
    swept = []
    steps.rival = lambda attempt: swept.append(hooked.gc(grace_seconds=0)) if attempt == 1 else None
    info = hooked.put(REF, b"survives the sweep")
    assert swept[0].orphans == hooked.code.n  # the first attempt's shards really went
    assert steps.seen.count("shards-committed") == 2
    assert info.version == 1
    assert hooked.get(REF) == b"survives the sweep"
    assert shard_names(hooked) == live_shard_names(hooked)


def test_a_gc_sweep_with_grace_leaves_a_put_in_flight_alone(hooked: Vault, steps: Steps) -> None:
    swept = []
    steps.rival = lambda attempt: swept.append(hooked.gc(grace_seconds=3600))
    hooked.put(REF, b"young shards are not orphans")
    assert swept[0].orphans == 0
    assert steps.seen.count("shards-committed") == 1
    assert hooked.get(REF) == b"young shards are not orphans"


def test_a_rival_writer_taking_its_version_makes_it_write_again(
    hooked: Vault, steps: Steps
) -> None:
    steps.rival = lambda attempt: hooked.put(REF, b"rival") if attempt == 1 else None
    info = hooked.put(REF, b"mine")
    assert info.version == 2  # the rival committed version 1 while this one was writing
    assert [v.version for v in hooked.versions(REF)] == [2, 1]
    assert hooked.get(REF, 1) == b"rival"
    assert hooked.get(REF) == b"mine"
    hooked.gc(grace_seconds=0)
    assert shard_names(hooked) == live_shard_names(hooked)  # the lost attempt left nothing


def test_a_put_that_keeps_losing_races_takes_a_reservation(hooked: Vault, steps: Steps) -> None:
    rivals = [b"rival %d" % n for n in range(1, 4)]
    steps.rival = lambda attempt: hooked.put(REF, rivals[attempt - 1]) if attempt <= 3 else None
    info = hooked.put(REF, b"mine")
    assert steps.seen.count("reserved") == 1  # the fourth write reserved its version
    assert info.version == 4 and hooked.get(REF) == b"mine"
    assert [hooked.get(REF, n) for n in (1, 2, 3)] == rivals
    hooked.gc(grace_seconds=0)
    assert shard_names(hooked) == live_shard_names(hooked)  # the lost attempts left nothing


def test_a_put_gc_keeps_sweeping_ends_in_a_conflict_and_loses_nothing(
    hooked: Vault, steps: Steps
) -> None:
    hooked.put(REF, b"old")
    steps.reset()
    steps.rival = lambda attempt: hooked.gc(grace_seconds=0)
    with pytest.raises(Conflict, match="was it collected"):
        hooked.put(REF, b"never lands")  # even its reservation was collected
    assert steps.seen.count("shards-committed") == 4 and steps.seen.count("reserved") == 1
    steps.rival = lambda attempt: None
    assert hooked.get(REF) == b"old"
    assert [v.version for v in hooked.versions(REF)] == [1]
    hooked.gc(grace_seconds=0)
    assert shard_names(hooked) == live_shard_names(hooked)


def test_a_subject_forgotten_during_the_put_gets_nothing_committed(
    hooked: Vault, steps: Steps
) -> None:
    """Forgotten after the put's key was unwrapped (a second attempt reuses it):
    the catalog refuses the row, so no version outlives the forget."""
    steps.rival = lambda attempt: (
        hooked.put(REF, b"rival") if attempt == 1 else forget_approved(hooked, "intl", "alice")
    )
    with pytest.raises(SubjectForgotten, match="forgotten during the write"):
        hooked.put(REF, b"too late")
    assert steps.seen.count("shards-committed") == 2
    catalog = hooked.cells["US"].catalog
    assert catalog.list_versions(REF) == []  # the rival's version was deleted by the forget
    hooked.gc(grace_seconds=0)
    assert shard_names(hooked) == set()


def test_gc_leaves_alone_a_put_whose_clock_runs_days_ahead(
    config_path: Path, hooked: Vault, steps: Steps
) -> None:
    """A minted time far ahead is still a minted time (the id is marked as one)."""
    swept = []

    def sweep(step: str) -> None:
        if step == "shards-committed":
            swept.append(hooked.gc(grace_seconds=0))

    def days_ahead() -> float:
        return time.time() + 3 * 86_400

    with Vault.open(load(config_path), clock=days_ahead, on_step=sweep) as ahead:
        ahead.put(REF, b"from the future")
        assert swept[0].orphans == 0
        assert ahead.get(REF) == b"from the future"


def test_gc_refuses_a_negative_grace(hooked: Vault) -> None:
    with pytest.raises(InvalidInput, match="zero or more"):
        hooked.gc(grace_seconds=-1)
