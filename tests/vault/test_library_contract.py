"""The Vault as a Python program uses it: what each call does with what a caller hands it.

A put interrupted from the caller's side (its source, its progress callback, Ctrl-C in
either) leaves the old version and, after gc, the nodes as a clean put leaves them; a
reader used after it (or its vault) was closed, a number or text of the wrong type, a
vault used after close, a forgotten subject each answer with one clear error; threads
sharing a vault read only whole versions, and pages hold each key once while others
change.
"""

from __future__ import annotations

import contextlib
import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import SEGMENT, files_under, frames_of, make_deployment, open_files
from governance_support import forget_approved
from shardvault.config import load
from shardvault.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    StorageError,
    SubjectForgotten,
    Unavailable,
    VaultClosed,
)
from shardvault.model import ObjectRef
from shardvault.vault import Vault
from shardvault.vault.cells import memory_catalogs


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


def _after_gc(vault: Vault, ref: ObjectRef, nodes: Path) -> set[Path]:
    """The files a clean put of b"old" leaves on the nodes once gc has run (its lock files)."""
    vault.put(ref, b"old")
    vault.gc(grace_seconds=0)
    return files_under(nodes)


def _assert_old_version_alone(vault: Vault, ref: ObjectRef, nodes: Path, before: set[Path]) -> None:
    """The put left nothing a caller can see, and gc leaves the nodes as they were."""
    assert vault.get(ref) == b"old"
    assert [info.version for info in vault.versions(ref)] == [1]
    assert [info.version for info in vault.iter_objects(ref.tenant, ref.subject)] == [1]
    assert vault.stat(ref).size == 3
    vault.gc(grace_seconds=0)
    assert files_under(nodes) == before


@pytest.fixture(params=[0, 64 << 10], ids=["shard-files", "packs"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Vault]:
    """A vault with alice registered, its nodes keeping shards as files or in packs (the
    demo's default)."""
    with Vault.open(load(make_deployment(tmp_path, pack_limit=request.param))) as vault:
        vault.register_subject("intl", "alice", "US")
        yield vault


@pytest.mark.parametrize("error", [_Stop("caller"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
@pytest.mark.parametrize(
    "data",
    [b"small", io.BytesIO(b"small"), b"x" * (3 * SEGMENT + 1)],
    ids=["small-bytes", "small-stream", "large-bytes"],
)
def test_a_progress_callback_that_raises_stores_nothing(
    shared: Vault, tmp_path: Path, error: BaseException, data: object
) -> None:
    # a one-segment put in memory reported its progress after its commit: the put
    # raised, yet its version was stored and listed, where a large put's was not
    vault, alice = shared, ObjectRef("intl", "alice", "k")
    nodes = tmp_path / "nodes"
    before = _after_gc(vault, alice, nodes)
    with pytest.raises(type(error)):
        vault.put(alice, data, progress=_raises(error))  # type: ignore[arg-type]
    _assert_old_version_alone(vault, alice, nodes, before)


def test_ctrl_c_inside_a_sources_read_stores_nothing(shared: Vault, tmp_path: Path) -> None:
    vault, alice = shared, ObjectRef("intl", "alice", "k")
    nodes = tmp_path / "nodes"
    before = _after_gc(vault, alice, nodes)
    source = _InterruptedSource(2 * SEGMENT + 7, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        vault.put(alice, source)  # type: ignore[arg-type]
    _assert_old_version_alone(vault, alice, nodes, before)


class _MiscountingSource(io.RawIOBase):
    """A stream whose first readinto fills nothing and says it read `says` (a buggy
    source); then it is at its end."""

    def __init__(self, says: object) -> None:
        self._says: list[object] = [says]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._says.pop() if self._says else 0  # type: ignore[return-value]


@pytest.mark.parametrize(
    "says", [-1, 1 << 30, "3", 2.5], ids=["negative", "too-many", "text", "float"]
)
def test_a_source_miscounting_what_it_read_is_refused_and_stores_nothing(
    shared: Vault, tmp_path: Path, says: object
) -> None:
    # trusted, a count below zero or past the buffer stored unfilled buffer bytes nobody
    # put, and acknowledged them (a source saying -1 each time looped for ever); a str
    # or a float was a bare TypeError
    vault, alice = shared, ObjectRef("intl", "alice", "k")
    nodes = tmp_path / "nodes"
    before = _after_gc(vault, alice, nodes)
    with pytest.raises(InvalidInput, match="readinto returned"):
        vault.put(alice, _MiscountingSource(says))  # type: ignore[arg-type]
    _assert_old_version_alone(vault, alice, nodes, before)


@pytest.mark.parametrize("read_first", [0, 1], ids=["unread", "read-one-segment"])
@pytest.mark.parametrize(
    ("closed", "said"),
    [("reader", "was closed: open another"), ("vault", "the vault was closed.*: open it again")],
)
def test_a_reader_read_after_it_or_its_vault_closed_says_so_and_records_no_damage(
    vault: Vault, alice: ObjectRef, read_first: int, closed: str, said: str
) -> None:
    # a closed reader read its closed shards as damage: an IntegrityError that asked to
    # bring four nodes back or restore from a backup, and records queued for repair;
    # once its vault closed, it said "cannot schedule new futures after shutdown"; then
    # both said so as a bare RuntimeError, which no `except ShardvaultError` caught
    vault.put(alice, b"d" * (3 * SEGMENT))
    reader = vault.open_read(alice)
    chunks = iter(reader)
    for _ in range(read_first):
        next(chunks)
    (reader if closed == "reader" else vault).close()
    with pytest.raises(VaultClosed, match=said) as raised:
        next(chunks)
    assert isinstance(raised.value, RuntimeError)  # what it was: `except RuntimeError` holds
    assert reader.damage == []


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
        (lambda v, ref: v.gc("0"), "gc grace must be zero or more seconds, not '0'"),
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
    lambda v, ref: v.open_read(ref),
    lambda v, ref: list(v.iter_objects(ref.tenant, ref.subject)),
    lambda v, ref: v.forget(ref.tenant, ref.subject),
    lambda v, ref: v.repair(),
]


@pytest.mark.parametrize("subject", ["alice", "bob"], ids=["used", "unused"])
def test_every_call_after_close_says_the_vault_was_closed(config_path: Path, subject: str) -> None:
    # each said "Cannot operate on a closed database" of a catalog or the subject
    # directory, which a caller could take for a failing disk; then it said the vault
    # was closed, but as a StorageError: an Unavailable, "retry later", which never helps
    with pytest.raises(_Stop), Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "bob", "US")
        vault.put(ObjectRef("intl", "alice", "k"), b"kept")
        raise _Stop("the block ends in an error: the vault is closed all the same")
    vault.close()  # a second close does nothing
    ref = ObjectRef("intl", subject, "k")
    for call in CALLS_AFTER_CLOSE:
        with pytest.raises(VaultClosed, match=r"vault (that opened it )?(is|was) closed") as raised:
            call(vault, ref)
        assert not isinstance(raised.value, Unavailable)
    with Vault.open(load(config_path)) as again:
        assert again.get(ObjectRef("intl", "alice", "k")) == b"kept"
        assert [i.ref.key for i in again.iter_objects("intl", "bob")] == []


def test_a_closed_vault_refuses_calls_whatever_its_catalog_does_once_closed(
    config_path: Path,
) -> None:
    # the cells kept the catalog and stores they had opened, so the vault's own refusal
    # was the catalog's: one that still answers once closed (the in-memory one) gave
    # stat, versions and list their answers after close, and a delete marked the object
    with Vault.open(load(config_path), catalogs=memory_catalogs()) as vault:
        vault.register_subject("intl", "alice", "US")
        ref = ObjectRef("intl", "alice", "k")
        vault.put(ref, b"kept")
        catalog = vault.cells["US"].catalog
    for call in CALLS_AFTER_CLOSE:
        with pytest.raises(VaultClosed, match=r"vault (that opened it )?(is|was) closed"):
            call(vault, ref)
    assert [record.version for record in catalog.list_versions(ref)] == [1]  # not deleted


def _holding_one_object(config_path: Path) -> Vault:
    """A vault opened on the deployment, alice registered and one object put: every
    part a close closes has been opened."""
    vault = Vault.open(load(config_path))
    vault.register_subject("intl", "alice", "US")
    vault.put(ObjectRef("intl", "alice", "k"), b"kept")
    return vault


def _waits_for_another_close(thread: threading.Thread) -> bool:
    """Whether THREAD, in `Vault.close`, waits (for the close under way on another)."""
    codes = {frame.f_code for frame in frames_of(thread)}
    return Vault.close.__code__ in codes and threading.Condition.wait.__code__ in codes


def _close_racing(
    close: Callable[[str], None], entered: threading.Event, release: threading.Event
) -> None:
    """close("first") on a thread until it is `entered`, then close("second") on another
    until it waits for the first; then `release` the first, and wait for both."""
    first = threading.Thread(target=close, args=("first",))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=close, args=("second",))
    second.start()
    while second.is_alive() and not _waits_for_another_close(second):
        time.sleep(0.01)
    release.set()
    first.join(10)
    second.join(10)


@pytest.mark.parametrize("fails", [False, True], ids=["closes", "fails"])
def test_a_close_racing_another_returns_once_the_vault_is_closed_or_raises_its_error(
    config_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    # the second close found each part closed, or being closed, by the first and
    # returned at once, while the first still closed the subject directory: a host that
    # then removed the deployment's files did so under open descriptors
    vault = _holding_one_object(config_path)
    entered, release, first_done = threading.Event(), threading.Event(), threading.Event()
    close_directory = vault.directory.close

    def directory_close() -> None:  # the first close's waits for `release`
        if entered.is_set():
            return close_directory()
        entered.set()
        release.wait(30)
        close_directory()
        first_done.set()
        if fails:
            raise StorageError("the directory's close failed")

    monkeypatch.setattr(vault.directory, "close", directory_close)
    outcomes: dict[str, str] = {}

    def close(name: str) -> None:
        try:
            vault.close()
        except StorageError as exc:
            outcomes[name] = f"raised {exc}"
        else:
            outcomes[name] = "returned"
        if not first_done.is_set():
            outcomes[name] += " while the first close was still closing"

    _close_racing(close, entered, release)
    said = "raised the directory's close failed" if fails else "returned"
    assert outcomes == {"first": said, "second": said}
    outcomes.clear()
    close("later")  # closes nothing again
    assert outcomes == {"later": "returned"}


def test_a_close_racing_one_stuck_gives_up_on_it_past_its_bounds_and_says_so(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the second close waited for the first without bound: one stuck on a disk that
    # hangs (its directory's, here) held it for ever, where it once returned at once
    config = replace(load(config_path), node_timeout=0.1, state_timeout=0.1)
    vault = Vault.open(config)
    vault.register_subject("intl", "alice", "US")
    entered, release = threading.Event(), threading.Event()
    close_directory = vault.directory.close

    def stuck_directory_close() -> None:  # until the test ends
        entered.set()
        release.wait(60)
        close_directory()

    monkeypatch.setattr(vault.directory, "close", stuck_directory_close)
    first = threading.Thread(target=vault.close, daemon=True)
    first.start()
    try:
        assert entered.wait(10)
        second = threading.Thread(target=vault.close, daemon=True)
        second.start()
        second.join(30)
        assert not second.is_alive(), "the second close waits for the stuck first for ever"
        assert first.is_alive()
        assert vault.deadline.hint_notices() == [
            "the vault's close under way on another thread did not end within 0.3 s (twice "
            "storage.node_timeout, plus storage.state_timeout): left to its thread, which "
            "the process's exit ends"
        ]
    finally:
        release.set()
        first.join(10)


def test_a_close_waits_for_a_stuck_io_task_a_deadline_at_most(config_path: Path) -> None:
    # a task stuck on a disk no one had seen hang yet (no node marked hung) held the
    # close for as long as the disk hung: it waited for every I/O thread without bound
    vault = Vault.open(replace(load(config_path), node_timeout=0.2))
    vault.register_subject("intl", "alice", "US")
    release = threading.Event()
    vault._pool.submit(release.wait, 60)
    closing = threading.Thread(target=vault.close, daemon=True)
    closing.start()
    try:
        closing.join(30)
        assert not closing.is_alive(), "the close waits for the stuck task for ever"
        with pytest.raises(VaultClosed):
            vault.stat(ObjectRef("intl", "alice", "k"))
    finally:
        release.set()


@pytest.mark.parametrize("waiting", [False, True], ids=["after", "waiting"])
def test_a_close_ctrl_c_stopped_is_finished_by_the_next(
    config_path: Path, monkeypatch: pytest.MonkeyPatch, waiting: bool
) -> None:
    # Ctrl-C while the close waits for the I/O threads stops it before any store or
    # catalog is closed; were that close taken for one that ended, the next (called
    # after it, or already waiting for it on another thread) would do nothing, and
    # every file of the deployment stay open
    vault = _holding_one_object(config_path)
    deploy = config_path.parent
    assert any(path.endswith(".sqlite") for path in open_files(deploy))
    shutdown, entered, release = vault._pool.shutdown, threading.Event(), threading.Event()

    def interrupted(
        wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        monkeypatch.setattr(vault._pool, "shutdown", shutdown)
        entered.set()
        release.wait(30)
        raise KeyboardInterrupt

    monkeypatch.setattr(vault._pool, "shutdown", interrupted)
    outcomes: dict[str, str] = {}

    def close(name: str) -> None:
        try:
            vault.close()
        except KeyboardInterrupt:
            outcomes[name] = "interrupted"
        else:
            outcomes[name] = "returned"

    if waiting:
        _close_racing(close, entered, release)
    else:
        release.set()
        close("first")
        close("second")
    assert outcomes == {"first": "interrupted", "second": "returned"}
    # but the directories each filesystem is synced through (`filesystem_sync`)
    assert [path for path in open_files(deploy) if not Path(path).is_dir()] == []
    with pytest.raises(VaultClosed):
        vault.get(ObjectRef("intl", "alice", "k"))


def test_a_close_called_within_the_close_returns_and_the_close_goes_on(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a host's signal handler that closes the vault (SIGTERM: close and exit) runs on the
    # thread the signal finds, maybe within that vault's close; that close waited for the
    # close under way, its own thread's, for ever
    vault = Vault.open(load(config_path))
    vault.register_subject("intl", "alice", "US")
    close_directory = vault.directory.close

    def directory_close() -> None:  # a signal handler's close, run as this one goes on
        vault.close()
        close_directory()

    monkeypatch.setattr(vault.directory, "close", directory_close)
    closing = threading.Thread(target=vault.close, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "the close waited for itself"
    assert [path for path in open_files(config_path.parent) if not Path(path).is_dir()] == []


KEYS = ["k0", "k1", "dir/k2", "\uff01", "\U0001f600"]  # U+FF01 < U+1F600, not in UTF-16
SIZES = [0, 1, 100, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 5]


def _payload(rng: random.Random, tag: str) -> bytes:
    """Bytes naming the put that wrote them, all through: a mix of two puts shows."""
    size = rng.choice(SIZES)
    return (tag.encode() * (size // len(tag) + 1))[:size]


def test_threads_sharing_a_vault_read_only_whole_versions_that_were_put(shared: Vault) -> None:
    """Eight threads put, get (whole and streamed), delete and list the same keys on one
    vault, in a seeded random schedule; every read is one put's bytes, never a mix,
    and once quiet, list, stat and get agree."""
    vault = shared
    written: dict[str, set[bytes]] = {key: set() for key in KEYS}
    guard = threading.Lock()
    problems: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for step in range(30):
            key = rng.choice(KEYS)
            ref = ObjectRef("intl", "alice", key)
            action = rng.choice(["put", "put", "get", "stream", "delete", "list"])
            try:
                if action == "put":
                    data = _payload(rng, f"<{seed}.{step}>")
                    with guard:
                        written[key].add(data)
                    vault.put(ref, data)
                elif action in ("get", "stream"):
                    if action == "get":
                        got = vault.get(ref)
                    else:
                        with vault.open_read(ref) as reader:
                            got = b"".join(reader)
                    with guard:
                        known = got in written[key]
                    if not known:
                        problems.append(f"{action} {key}: {len(got)} bytes no put wrote")
                elif action == "delete":
                    vault.delete(ref)
                else:
                    listed = [info.ref.key for info in vault.iter_objects("intl", "alice")]
                    if listed != sorted(set(listed)) or not set(listed) <= set(KEYS):
                        problems.append(f"list: {listed}")
            except NotFound:
                pass  # deleted, or not yet put
            except Exception as exc:  # any other is a problem to report
                problems.append(f"{action} {key}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    listed = {info.ref.key: info for info in vault.iter_objects("intl", "alice")}
    for key in KEYS:
        ref = ObjectRef("intl", "alice", key)
        if key not in listed:
            with pytest.raises(NotFound):
                vault.get(ref)
            continue
        got = vault.get(ref)
        assert got in written[key]
        assert vault.stat(ref) == listed[key] and listed[key].size == len(got)
    kept = {key: vault.get(ObjectRef("intl", "alice", key)) for key in listed}
    vault.gc(grace_seconds=0)  # takes what the deletes and overwrites left, nothing kept
    assert {key: vault.get(ObjectRef("intl", "alice", key)) for key in listed} == kept


def test_pages_hold_every_key_once_while_other_keys_come_and_go(
    vault: Vault, alice: ObjectRef
) -> None:
    """Keys put and deleted between pages (before and after the cursor) neither repeat
    nor hide a key that stayed; pages follow code-point order, which UTF-16 does not."""
    stayed = ["a", "b/1", "b/2", "c", "\uff01", "\U0001f600", "z"]
    for key in stayed:
        vault.put(ObjectRef("intl", "alice", key), key.encode())
    rng = random.Random(5)
    seen: list[str] = []
    after = ""
    while True:
        page = vault.list("intl", "alice", start_after=after, limit=2)
        seen += [info.ref.key for info in page.items]
        if page.next_after is None:
            break
        after = page.next_after
        for _ in range(3):  # others write meanwhile, on either side of the cursor
            churn = ObjectRef("intl", "alice", f"{rng.choice('abcz')}{rng.randrange(4)}")
            if rng.random() < 0.5:
                vault.put(churn, b"churn")
            else:
                with contextlib.suppress(NotFound):
                    vault.delete(churn)
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert [key for key in seen if key in stayed] == sorted(stayed)


def test_every_call_on_a_forgotten_subject_is_subject_forgotten(
    vault: Vault, alice: ObjectRef
) -> None:
    """What README.md promises a caller: one class from every call, whatever it asks."""
    vault.put(alice, b"gone")
    forget_approved(vault, alice.tenant, alice.subject)
    calls: list[Callable[[], object]] = [
        lambda: vault.get(alice),
        lambda: vault.open_read(alice),
        lambda: vault.stat(alice),
        lambda: vault.versions(alice),
        lambda: vault.where(alice),
        lambda: vault.delete(alice),
        lambda: vault.put(alice, b"new"),
        lambda: vault.put(alice, io.BytesIO(b"n" * (2 * SEGMENT))),
        lambda: vault.list(alice.tenant, alice.subject),
    ]
    for call in calls:
        with pytest.raises(SubjectForgotten, match="was forgotten on"):
            call()
    with pytest.raises(Conflict, match="cannot be registered again"):
        vault.register_subject(alice.tenant, alice.subject, "US")
