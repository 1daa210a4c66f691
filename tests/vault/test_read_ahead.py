"""A get reads segments ahead of the one its caller holds: each segment's blocks are
fetched once, in order, `READ_AHEAD` segments ahead at most."""

from __future__ import annotations

import gc
import os
import threading
from collections import Counter
from concurrent.futures import Future, wait
from types import FunctionType, ModuleType
from typing import Any

import pytest

from conftest import SEGMENT, shard_paths
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


def fetches_started(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> list[Future[Any]]:
    """Every task the vault's readers hand to its I/O threads, to wait for."""
    started: list[Future[Any]] = []
    pool = vault._pool
    submit = pool.submit

    def kept(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        started.append(submit(fn, *args, **kwargs))
        return started[-1]

    monkeypatch.setattr(pool, "submit", kept)
    return started


def buffers_held(root: object, given: object = None) -> list[int]:
    """The length of each buffer of a block's size or more that root holds, through
    anything but the code's types, modules and functions (which hold no read's data),
    besides the segment ``given`` to its caller last (as a stream holds it: still given
    after close)."""
    seen, todo, lengths = {id(root), id(given)}, [root], []
    while todo:
        for held in gc.get_referents(todo.pop()):
            if id(held) in seen or isinstance(held, (type, ModuleType, FunctionType)):
                continue
            seen.add(id(held))
            todo.append(held)
            if isinstance(held, (bytes, bytearray, memoryview)) and len(held) >= SEGMENT // K:
                lengths.append(len(held))
    return lengths


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


def test_a_reader_closed_part_way_holds_none_of_its_blocks(
    vault: Vault, alice: ObjectRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it held the segments fetched ahead, finished or not, and the blocks and ciphertext
    # of the segment it gave last, until the reader itself was dropped: in production
    # about 6 MiB a reader that a server or caller kept after close()
    vault.put(alice, os.urandom(SEGMENTS * SEGMENT))
    started = fetches_started(vault, monkeypatch)
    stream = vault.open_read(alice)
    first = next(stream)
    wait(started, 10)  # every fetch ahead has its block
    assert len(buffers_held(stream, first)) == READ_AHEAD * K  # the blocks ahead, no more
    stream.close()
    assert buffers_held(stream, first) == []


def test_a_fetch_that_finishes_after_close_is_not_kept(
    vault: Vault, alice: ObjectRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the segment's fetches finished into the closed reader: their futures, and each
    # shard's first block, read with its header, in the shard handles it kept
    vault.put(alice, os.urandom(SEGMENTS * SEGMENT))
    shards = tuple(str(path) for path in shard_paths(vault, alice))
    closed = threading.Event()
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}") in shards:
            assert closed.wait(10)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    started = fetches_started(vault, monkeypatch)
    stream = vault.open_read(alice)  # its first segment's fetches start, and wait
    stream.close()
    closed.set()
    wait(started, 10)
    assert len(started) == K
    assert buffers_held(stream) == []
