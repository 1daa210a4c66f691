"""A one-segment put from memory commits without a reservation, and loses races safely.

Its shards are on the nodes before the catalog knows them, so another writer
of the key may take its version, and a gc sweep may take its shards for a dead
put's: either way it must write again, never commit a version it lost or a
manifest whose shards are gone. A step hook runs the rival at the exact moment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import SEGMENT
from shardvault.config import load
from shardvault.errors import Conflict, WriteRaced
from shardvault.model import ObjectRef
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault

REF = ObjectRef("intl", "alice", "notes/today.txt")


class Steps:
    """The put steps seen, and what to do at the n-th "shards-committed"."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.rival: Callable[[int], None] = lambda attempt: None

    def __call__(self, step: str) -> None:
        self.seen.append(step)
        if step == "shards-committed":
            self.rival(self.seen.count(step))


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
    steps.seen.clear()
    hooked.put(REF, b"x" * (SEGMENT + 1))
    assert steps.seen[0] == "reserved"
    assert [info.version for info in hooked.versions(REF)] == [2, 1]


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


def test_losing_every_race_gives_up_with_a_conflict_and_loses_nothing(
    hooked: Vault, steps: Steps
) -> None:
    hooked.put(REF, b"old")
    steps.seen.clear()
    steps.rival = lambda attempt: hooked.gc(grace_seconds=0)
    with pytest.raises(WriteRaced, match="gc sweep began meanwhile") as raised:
        hooked.put(REF, b"never lands")
    assert isinstance(raised.value, Conflict) and raised.value.exit_code == 1
    assert steps.seen.count("shards-committed") == 8
    steps.rival = lambda attempt: None
    assert hooked.get(REF) == b"old"
    assert [v.version for v in hooked.versions(REF)] == [1]
    hooked.gc(grace_seconds=0)
    assert shard_names(hooked) == live_shard_names(hooked)
