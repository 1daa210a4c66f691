"""A get reads segments ahead of the one its caller holds: each segment's blocks are
fetched once, in order, `READ_AHEAD` segments ahead at most."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest

from conftest import SEGMENT
from shardvault.errors import VaultClosed
from shardvault.model import ObjectRef
from shardvault.vault import Vault
from shardvault.vault.reader import READ_AHEAD

K = 4
SEGMENTS = READ_AHEAD + 3


def fetches_asked(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The segment of every block fetch the vault's readers hand to its I/O threads."""
    asked: list[int] = []
    pool = vault._pool
    submit = pool.submit

    def counted(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") == "_fetch":
            asked.append(args[0])
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(pool, "submit", counted)
    return asked


def test_the_next_segments_are_fetched_while_the_caller_holds_one(
    vault: Vault, alice: ObjectRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(SEGMENTS * SEGMENT)
    vault.put(alice, data)
    asked = fetches_asked(vault, monkeypatch)
    with vault.open_read(alice) as reader:
        segments = iter(reader)
        held = [next(segments)]
        assert sorted(set(asked)) == list(range(READ_AHEAD + 1))
        held.append(next(segments))
        assert max(asked) == READ_AHEAD + 1  # one more started per segment taken
        held.extend(segments)
    assert b"".join(held) == data
    # each segment's k data blocks, once: none fetched twice, none left out
    assert Counter(asked) == {segment: K for segment in range(SEGMENTS)}
    assert reader.damage == []


def test_objects_about_as_long_as_the_read_ahead_are_fetched_once_each(
    vault: Vault, alice: ObjectRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    for segments in range(2, READ_AHEAD + 3):
        data = os.urandom((segments - 1) * SEGMENT + 1)
        vault.put(alice, data)
        asked = fetches_asked(vault, monkeypatch)
        assert vault.get(alice) == data
        assert Counter(asked) == {segment: K for segment in range(segments)}
        monkeypatch.undo()


def test_a_reader_closed_before_it_is_read_starts_no_fetch(
    vault: Vault, alice: ObjectRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its first read started the segments ahead, k shards' opens and reads each, and
    # only then refused: I/O on shards after close(), on a hung node a thread each
    vault.put(alice, os.urandom(SEGMENTS * SEGMENT))
    reader = vault.open_read(alice)
    reader.close()
    asked = fetches_asked(vault, monkeypatch)
    with pytest.raises(VaultClosed, match="was closed: open another"):
        next(iter(reader))
    assert asked == []
