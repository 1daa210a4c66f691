"""The Vault as a Python program uses it: what each call does with what a caller hands it.

A put interrupted from the caller's side (its source, its progress callback, Ctrl-C in
either) leaves the old version and, after gc, the nodes as they were; a reader used
after it was closed, a page size that is no whole number, a vault used after close all
answer with one clear error.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SEGMENT, files_under
from shardvault.config import load
from shardvault.errors import InvalidInput, ShardvaultError
from shardvault.model import ObjectRef
from shardvault.vault import Vault


class _Stop(Exception):
    """What the caller's callback raises: any exception of the caller's own."""


class _InterruptedSource(io.RawIOBase):
    """A stream whose read raises `error` once `after` bytes have been read."""

    def __init__(self, after: int, error: BaseException) -> None:
        self._left = after
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            raise self._error
        n = min(len(buffer), self._left)
        buffer[:n] = b"n" * n
        self._left -= n
        return n


def _raises(error: BaseException) -> Callable[[int], None]:
    def progress(done: int) -> None:
        raise error

    return progress


def _assert_old_version_alone(vault: Vault, ref: ObjectRef, nodes: Path, before: set[Path]) -> None:
    """The put left nothing a caller can see, and gc leaves the nodes as they were."""
    assert vault.get(ref) == b"old"
    assert [info.version for info in vault.versions(ref)] == [1]
    assert [info.version for info in vault.iter_objects(ref.tenant, ref.subject)] == [1]
    assert vault.stat(ref).size == 3
    vault.gc(grace_seconds=0)
    assert files_under(nodes) == before


@pytest.mark.parametrize("error", [_Stop("caller"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
@pytest.mark.parametrize(
    "data",
    [b"small", io.BytesIO(b"small"), b"x" * (3 * SEGMENT + 1)],
    ids=["small-bytes", "small-stream", "large-bytes"],
)
def test_a_progress_callback_that_raises_stores_nothing(
    vault: Vault, alice: ObjectRef, config_path: Path, error: BaseException, data: object
) -> None:
    # a one-segment put in memory reported its progress after its commit: the put
    # raised, yet its version was stored and listed, where a large put's was not
    vault.put(alice, b"old")
    nodes = config_path.parent / "nodes"
    before = files_under(nodes)
    with pytest.raises(type(error)):
        vault.put(alice, data, progress=_raises(error))  # type: ignore[arg-type]
    _assert_old_version_alone(vault, alice, nodes, before)


def test_ctrl_c_inside_a_sources_read_stores_nothing(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    vault.put(alice, b"old")
    nodes = config_path.parent / "nodes"
    before = files_under(nodes)
    source = _InterruptedSource(2 * SEGMENT + 7, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        vault.put(alice, source)  # type: ignore[arg-type]
    _assert_old_version_alone(vault, alice, nodes, before)


@pytest.mark.parametrize("read_first", [0, 1], ids=["unread", "read-one-segment"])
def test_a_reader_read_after_close_says_so_and_records_no_damage(
    vault: Vault, alice: ObjectRef, read_first: int
) -> None:
    # its closed shards read as "reader closed" damage: an IntegrityError that asked to
    # bring four nodes back or restore from a backup, and records queued for repair
    vault.put(alice, b"d" * (3 * SEGMENT))
    reader = vault.open_read(alice)
    chunks = iter(reader)
    for _ in range(read_first):
        next(chunks)
    reader.close()
    with pytest.raises(RuntimeError, match="was closed: open another"):
        next(chunks)
    assert reader.damage == []
    assert vault.get(alice) == b"d" * (3 * SEGMENT)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda v, ref: v.list(ref.tenant, ref.subject, limit=2.5), "limit must be a whole"),
        (lambda v, ref: v.list(ref.tenant, ref.subject, limit="5"), "limit must be a whole"),
        (lambda v, ref: v.list(ref.tenant, ref.subject, start_after=None), "start-after key"),
        (lambda v, ref: v.list(ref.tenant, ref.subject, prefix=b"a"), "prefix must be text"),
        (lambda v, ref: v.get(ref, 1.5), "version 1.5 is not a whole number"),
        (lambda v, ref: v.get(ref, "1"), "version '1' is not a whole number"),
        (lambda v, ref: v.stat(ref, 1.0), "version 1.0 is not a whole number"),
        (lambda v, ref: v.get(ref, True), "version True is not a whole number"),
        (lambda v, ref: v.delete(ref, 1.5), "version 1.5 is not a whole number"),
        (lambda v, ref: v.where(ref, 1.5), "version 1.5 is not a whole number"),
        (lambda v, ref: v.put(ref, b"x", if_match=1.5), "version 1.5 is out of range"),
        (lambda v, ref: v.put(ref, b"x", if_match="1"), "version '1' is out of range"),
        (lambda v, ref: v.gc("0"), "gc grace must be zero or more seconds"),
        (
            lambda v, ref: ObjectRef(ref.tenant, ref.subject, b"k"),
            "must be text \\(str\\), not bytes",
        ),
    ],
    ids=[
        "limit-float",
        "limit-str",
        "start-after-none",
        "prefix-bytes",
        "get-float",
        "get-str",
        "stat-float-whole",
        "get-bool",
        "delete-float",
        "where-float",
        "if-match-float",
        "if-match-str",
        "gc-str",
        "key-bytes",
    ],
)
def test_a_number_or_text_of_the_wrong_type_is_invalid_input_naming_it(
    vault: Vault, alice: ObjectRef, call: Callable[[Vault, ObjectRef], object], named: str
) -> None:
    # a float page size failed as a StorageError ("datatype mismatch"), a string one or
    # version as a TypeError, version 1.5 was looked up and "not found", an if-match of
    # 1.5 was a Conflict, and a bytes key "must not be empty"
    vault.put(alice, b"kept")
    with pytest.raises(InvalidInput, match=named):
        call(vault, alice)
    assert [info.version for info in vault.versions(alice)] == [1]
    assert vault.get(alice) == b"kept"


CALLS_AFTER_CLOSE: list[Callable[[Vault, ObjectRef], object]] = [
    lambda v, ref: v.get(ref),
    lambda v, ref: v.stat(ref),
    lambda v, ref: v.versions(ref),
    lambda v, ref: v.where(ref),
    lambda v, ref: v.delete(ref),
    lambda v, ref: v.put(ref, b"new"),
    lambda v, ref: v.put(ref, io.BytesIO(b"n" * (2 * SEGMENT))),
    lambda v, ref: v.list(ref.tenant, ref.subject),
    lambda v, ref: v.register_subject(ref.tenant, "carol", "US"),
    lambda v, ref: v.gc(),
]


@pytest.mark.parametrize("subject", ["alice", "bob"], ids=["used", "unused"])
def test_every_call_after_close_says_the_vault_was_closed(config_path: Path, subject: str) -> None:
    # each said "Cannot operate on a closed database" of a catalog or the subject
    # directory, which a caller could take for a failing disk
    with pytest.raises(_Stop), Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "bob", "US")
        vault.put(ObjectRef("intl", "alice", "k"), b"kept")
        raise _Stop("the block ends in an error: the vault is closed all the same")
    vault.close()  # a second close does nothing
    ref = ObjectRef("intl", subject, "k")
    for call in CALLS_AFTER_CLOSE:
        with pytest.raises(ShardvaultError, match=r"vault (that opened it )?(is|was) closed"):
            call(vault, ref)
    with Vault.open(load(config_path)) as again:
        assert again.get(ObjectRef("intl", "alice", "k")) == b"kept"
        assert [i.ref.key for i in again.iter_objects("intl", "bob")] == []
