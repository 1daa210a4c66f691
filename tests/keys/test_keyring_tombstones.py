"""The keyring's tombstones in SQLite (format version 2): seen at once by every
process, migrated from version 1 without losing one, and failing closed."""

from __future__ import annotations

import base64
import gc
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from shardvault.errors import (
    AccessDenied,
    IntegrityError,
    KeyUnavailable,
    NewerFormat,
    SubjectForgotten,
)
from shardvault.keys import hierarchy
from shardvault.keys.keyring import KeyringCustodian
from shardvault.keys.live_answers import Identity, LiveAnswers
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.keys.rootkey import seal_key
from shardvault.keys.tombstones import Tombstones, tombstones_path
from shardvault.model import Justification

US = KeyScope("intl", "US")
SG = KeyScope("intl", "SG")
WHY = Justification("svc-feed", "serve-feed", "req-1", "US")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keyring.json"


def rows(path: Path) -> set[tuple[str, str]]:
    """The tombstones as committed, read by a connection of its own."""
    with sqlite3.connect(tombstones_path(path)) as db:
        return set(db.execute("SELECT scope, key_id FROM destroyed"))


def file_state(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_size


# across processes -------------------------------------------------------------------

DESTROY = """
import sys
from pathlib import Path
from shardvault.keys.keyring import KeyringCustodian
from shardvault.keys.port import KeyScope
from shardvault.model import Justification
KeyringCustodian(Path(sys.argv[1])).destroy(
    KeyScope("intl", "US"), sys.argv[2], Justification("dpo", "forget-subject", "r", "US")
)
"""


def test_a_destroy_in_another_process_refuses_the_next_unwrap_here(path: Path) -> None:
    key = hierarchy.new_key()
    server = KeyringCustodian(path)
    blob = server.wrap(US, "kid", key, WHY, subject="alice")
    other = KeyringCustodian(path)  # opened before the destroy too, never used yet
    assert server.unwrap(US, "kid", blob, WHY) == key  # its connection is open
    subprocess.run([sys.executable, "-c", DESTROY, str(path), "kid"], check=True)
    with pytest.raises(SubjectForgotten, match="kid of intl/US was destroyed"):
        server.unwrap(US, "kid", blob, WHY)
    with pytest.raises(SubjectForgotten):
        other.unwrap(US, "kid", blob, WHY)


def forked_destroy(custodian: KeyringCustodian, blob: bytes, key: bytes) -> None:
    """In a forked child: the parent's custodian, its connection inherited, still works,
    through a connection of the child's own."""
    assert custodian.unwrap(US, "kid-kept", blob, WHY) == key
    custodian.destroy(US, "kid", WHY)
    assert custodian._tombstones._handle().pid == os.getpid()


def test_a_forked_child_opens_its_own_connection(path: Path) -> None:
    key = hierarchy.new_key()
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "kid", key, WHY, subject="alice")
    kept = custodian.wrap(US, "kid-kept", key, WHY, subject="alice")
    assert custodian.unwrap(US, "kid", blob, WHY) == key
    parent = custodian._tombstones._handle()
    child = multiprocessing.get_context("fork").Process(
        target=forked_destroy, args=(custodian, kept, key)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid", blob, WHY)
    assert custodian.unwrap(US, "kid-kept", kept, WHY) == key
    assert custodian._tombstones._handle() is parent  # the parent's own, still usable


def test_a_fork_waits_for_a_running_query(path: Path) -> None:
    """A child forked mid-query would inherit SQLite's record of a lock it does not hold."""
    custodian = KeyringCustodian(path)
    custodian.wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    handle = custodian._tombstones._handle()
    events: list[str] = []

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        events.append("forked")
        os.waitpid(pid, 0)

    with handle.lock:  # as `holds` does around its query
        forker = threading.Thread(target=fork)
        forker.start()
        forker.join(0.3)
        events.append("query done")
    forker.join(10)
    assert events == ["query done", "forked"]


def test_threads_each_see_a_destroy_at_once(path: Path) -> None:
    key = hierarchy.new_key()
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "kid", key, WHY, subject="alice")
    opened, destroyed = threading.Barrier(9), threading.Event()
    answers: list[str] = []

    def reader() -> None:
        assert custodian.unwrap(US, "kid", blob, WHY) == key  # each opens its connection
        opened.wait(10)
        destroyed.wait(10)
        try:
            custodian.unwrap(US, "kid", blob, WHY)
            answers.append("unwrapped")
        except SubjectForgotten:
            answers.append("refused")

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    opened.wait(10)
    KeyringCustodian(path).destroy(US, "kid", WHY)
    destroyed.set()
    for thread in threads:
        thread.join()
    assert answers == ["refused"] * 8


def _unwrapping(
    path: Path, blobs: list[bytes], returned: Any, stop: Any, late: Any, seed: int
) -> None:
    """A reader process: three threads unwrap at random; an unwrap of a key whose destroy
    had returned before the unwrap began, and that succeeds, is counted in `late`."""

    def loop(rng: random.Random) -> None:
        custodian = KeyringCustodian(path)
        while not stop.is_set():
            n = rng.randrange(len(blobs))
            destroyed = returned[n]
            try:
                custodian.unwrap(US, f"k{n}", blobs[n], WHY)
            except SubjectForgotten:
                continue
            if destroyed:
                with late.get_lock():
                    late.value += 1

    threads = [threading.Thread(target=loop, args=(random.Random(seed + t),)) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _destroying(path: Path, first: int, count: int, returned: Any) -> None:
    custodian = KeyringCustodian(path)
    for n in range(first, count):
        custodian.destroy(US, f"k{n}", WHY)
        returned[n] = 1
        time.sleep(random.random() * 0.02)


def test_no_unwrap_after_a_returned_destroy_while_destroyers_are_killed(path: Path) -> None:
    # a destroyer killed at random leaves hot journals that readers roll back, while
    # readers in other processes answer from what they remember
    count, fork = 40, multiprocessing.get_context("fork")
    key = hierarchy.new_key()
    blobs = [
        KeyringCustodian(path).wrap(US, f"k{n}", key, WHY, subject="alice") for n in range(count)
    ]
    returned, stop, late = fork.Array("b", count, lock=False), fork.Event(), fork.Value("i", 0)
    readers = [
        fork.Process(target=_unwrapping, args=(path, blobs, returned, stop, late, seed))
        for seed in (100, 200)
    ]
    for reader in readers:
        reader.start()
    rng, kills, hot, stalled = random.Random(7), 0, 0, 0
    journal = tombstones_path(path).with_name(tombstones_path(path).name + "-journal")
    while not all(returned):
        first = next(n for n in range(count) if not returned[n])
        destroyer = fork.Process(target=_destroying, args=(path, first, count, returned))
        destroyer.start()
        # a destroyer killed before its first destroy returns gets longer next time: on a
        # loaded machine a fixed 50 ms could kill every one before it made progress
        destroyer.join(rng.random() * 0.05 * 2 ** min(stalled, 8))
        if destroyer.is_alive():
            os.kill(destroyer.pid, signal.SIGKILL)
            destroyer.join()
            kills, hot = kills + 1, hot + journal.exists()
        stalled = 0 if returned[first] else stalled + 1
    stop.set()
    for reader in readers:
        reader.join(30)
        assert reader.exitcode == 0
    assert late.value == 0
    assert kills > 0 and hot > 0  # the crash it is about happened


# answers remembered until the database changes -----------------------------------------


def answered(path: Path) -> tuple[KeyringCustodian, bytes, bytes]:
    """A custodian that unwrapped "kid" once (found not destroyed), the key and its blob."""
    key = hierarchy.new_key()
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "kid", key, WHY, subject="alice")
    assert custodian.unwrap(US, "kid", blob, WHY) == key
    return custodian, key, blob


def test_a_key_found_live_is_answered_again_without_a_query(path: Path) -> None:
    custodian, key, blob = answered(path)
    asked: list[str] = []
    custodian._tombstones._handle().db.set_trace_callback(asked.append)
    assert custodian.unwrap(US, "kid", blob, WHY) == key
    assert asked == []  # one pread of the header, no read transaction
    KeyringCustodian(path).destroy(US, "kid", WHY)  # another process's, as far as this knows
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid", blob, WHY)
    assert any("SELECT" in statement for statement in asked)


def hot_journal(db: Path, before: bytes) -> None:
    """Leave `db` as a commit killed before deleting its journal does: the new pages (and
    raised change counter) in the file, and a journal that rolls them back to `before`
    (sqlite.org/fileformat2.html, "The Rollback Journal"; checksum nonce 0)."""
    (page,) = struct.unpack_from(">H", before, 16)
    page = 65536 if page == 1 else page
    pages = len(before) // page
    magic = bytes.fromhex("d9d505f920a163d7")
    journal = bytearray(
        struct.pack(">8sIIIII", magic, pages, 0, pages, 512, page).ljust(512, b"\0")
    )
    for number in range(1, pages + 1):
        image = before[(number - 1) * page : number * page]
        checksum = sum(image[page - 200 :: -200]) & 0xFFFFFFFF
        journal += struct.pack(">I", number) + image + struct.pack(">I", checksum)
    db.with_name(db.name + "-journal").write_bytes(bytes(journal))


def test_a_destroy_killed_at_its_commit_then_made_again_is_refused(path: Path) -> None:
    # a reverted first version read the counter before its query: the killed commit's
    # value labelled the rolled-back state, and the real commit, taking the same value
    # later, was answered "not destroyed" from memory
    custodian, key, blob = answered(path)
    database = tombstones_path(path)
    before = database.read_bytes()
    KeyringCustodian(path).destroy(US, "kid", WHY)
    hot_journal(database, before)  # ... killed before its journal went: not committed
    assert custodian.unwrap(US, "kid", blob, WHY) == key  # rolled back by this query
    assert not database.with_name(database.name + "-journal").exists()
    assert database.read_bytes()[24:28] == before[24:28]
    KeyringCustodian(path).destroy(US, "kid", WHY)  # the forget, retried: the same counter
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid", blob, WHY)


def copy_destroying(database: Path, key_id: str | None) -> Path:
    """A copy of the tombstones beside them (a backup to restore), with `key_id` destroyed."""
    copy = database.with_name(f"copy-{key_id}.sqlite")
    copy.write_bytes(database.read_bytes())
    os.chmod(copy, 0o600)
    if key_id is not None:
        with closing(sqlite3.connect(copy, isolation_level=None)) as db:
            db.execute("INSERT INTO destroyed VALUES ('intl/US', ?)", (key_id,))
    return copy


def test_a_tombstone_file_replaced_under_a_process_is_followed(path: Path) -> None:
    # a restore renames another file into place: remembered answers and open connections
    # were of the file that went
    custodian, _, blob = answered(path)
    database = tombstones_path(path)
    os.replace(copy_destroying(database, "kid"), database)
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid", blob, WHY)
    database.unlink()
    with pytest.raises(KeyUnavailable, match="do not exist"):
        custodian.unwrap(US, "kid-other", blob, WHY)


TRY_EXCLUSIVE = (
    "import sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1], 0, isolation_level=None)\n"
    "try:\n"
    "    db.execute('BEGIN EXCLUSIVE'); db.execute('ROLLBACK'); print('granted')\n"
    "except sqlite3.OperationalError:\n"
    "    print('refused')\n"
)


def _try_exclusive(database: Path) -> str:
    """Whether another process may take the database's write lock right now."""
    return _python(TRY_EXCLUSIVE, str(database))


def _lock_mid_lookup(
    path: Path, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None] = lambda: None
) -> list[str]:
    """Whether another process could take the write lock as a lookup labelled its answer."""
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    seen: list[str] = []
    labelled = LiveAnswers.remember

    def remember(self: LiveAnswers, key: tuple[str, str], identity: Identity) -> None:
        meanwhile()
        seen.append(_try_exclusive(tombstones_path(path)))
        labelled(self, key, identity)

    monkeypatch.setattr(LiveAnswers, "remember", remember)
    custodian.unwrap(US, "kid", blob, WHY)
    return seen


def test_no_commit_can_land_between_a_lookup_and_its_label(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the shared lock is held while the counter is read
    assert _lock_mid_lookup(path, monkeypatch) == ["refused"]


def test_dropping_a_custodian_keeps_the_locks_of_the_others(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # closing any descriptor of the file drops every POSIX lock the process holds on it:
    # a second custodian collected mid-read let another process commit under this one
    def another_custodian_collected() -> None:
        other = KeyringCustodian(path)
        other._tombstones._live.follow()
        del other
        gc.collect()

    assert _lock_mid_lookup(path, monkeypatch, another_custodian_collected) == ["refused"]


def test_closing_a_custodian_keeps_the_locks_of_the_others(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a custodian closed (its vault closed) gives its share of the descriptor up at once:
    # the descriptor stays while another custodian of the process holds one
    def another_custodian_closed() -> None:
        other = KeyringCustodian(path)
        other._tombstones._live.follow()
        other.close()

    assert _lock_mid_lookup(path, monkeypatch, another_custodian_closed) == ["refused"]


def held_descriptors(database: Path) -> int:
    """How many descriptors of the file this process holds."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == str(database)
        except OSError:  # the listing's own descriptor
            continue
    return found


def test_a_closed_custodian_holds_no_descriptor_of_its_tombstones(path: Path) -> None:
    # its connections (one per thread) and its descriptor were closed only when garbage
    # collection found it: a vault in a reference cycle, opened and closed again and
    # again, held one more connection to the file each time
    custodian, key, blob = answered(path)
    elsewhere = threading.Thread(target=custodian.unwrap, args=(US, "kid", blob, WHY))
    elsewhere.start()
    elsewhere.join()
    database = tombstones_path(path)
    gc.disable()  # nothing is released by a collection
    try:
        assert held_descriptors(database) >= 2
        custodian.close()
        assert held_descriptors(database) == 0
        assert custodian.unwrap(US, "kid", blob, WHY) == key  # opened again
        destroying = KeyringCustodian(path)
        destroying.destroy(US, "kid", WHY)
        destroying.close()
        with pytest.raises(SubjectForgotten):
            custodian.unwrap(US, "kid", blob, WHY)
        custodian.close()
        custodian.close()  # a second close closes nothing again
        assert held_descriptors(database) == 0
    finally:
        gc.enable()


def test_a_descriptor_no_custodian_holds_stays_open_under_a_connection_of_the_process(
    path: Path,
) -> None:
    # closing it would drop the read lock of a connection not made by a custodian (a
    # check reading the file, say): another process could commit under that read
    KeyringCustodian(path).wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    database = tombstones_path(path)
    with closing(sqlite3.connect(database, isolation_level=None)) as reading:
        reading.execute("BEGIN")
        reading.execute("SELECT count(*) FROM destroyed").fetchone()  # a shared lock
        assert _try_exclusive(database) == "refused"
        answers = LiveAnswers(database)
        answers.follow()
        answers.close()  # the last share of its descriptor given up
        assert _try_exclusive(database) == "refused"
        reading.execute("COMMIT")
    assert _try_exclusive(database) == "granted"


def test_answers_found_before_a_change_are_not_carried_past_it(path: Path) -> None:
    custodian, _, blob = answered(path)  # remembered at c
    KeyringCustodian(path).destroy(US, "kid", WHY)  # c + 1
    assert not custodian._tombstones.holds("intl/US", "other")  # a miss labels c + 1
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid", blob, WHY)


def test_a_replacing_file_showing_the_same_counter_is_asked(path: Path) -> None:
    # counters rise within one file: a copy can show the same value with other contents
    key = hierarchy.new_key()
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "kid", key, WHY, subject="alice")
    database = tombstones_path(path)
    twin = copy_destroying(database, "kid")  # one commit each: the same counter
    KeyringCustodian(path).destroy(US, "unrelated", WHY)
    assert custodian.unwrap(US, "kid", blob, WHY) == key
    os.replace(twin, database)
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid", blob, WHY)


def test_an_answer_found_as_the_file_is_replaced_is_not_labelled_with_the_new_one(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a thread that had checked its connection's file, then read the counter again through
    # whatever file was held by then, labelled an answer of the old file with the new one's
    key = hierarchy.new_key()
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "kid", key, WHY, subject="alice")
    database = tombstones_path(path)
    restored = copy_destroying(database, "kid")
    counter = LiveAnswers._counter

    def replaced_meanwhile(self: LiveAnswers, held: tuple[int, Identity]) -> int | None:
        if restored.exists():  # once, inside the first lookup's `remember`
            os.replace(restored, database)
            thread = threading.Thread(target=custodian._tombstones.holds, args=("intl/US", "x"))
            thread.start()  # another thread's miss follows the new file
            thread.join()
        return counter(self, held)

    monkeypatch.setattr(LiveAnswers, "_counter", replaced_meanwhile)
    assert custodian.unwrap(US, "kid", blob, WHY) == key  # found in the old file
    monkeypatch.undo()
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid", blob, WHY)


def beside_a_copy(path: Path) -> tuple[KeyringCustodian, bytes, Path, Path]:
    """A custodian with "kid" wrapped, its blob, the tombstones, and a copy of them."""
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    database = tombstones_path(path)
    return custodian, blob, database, copy_destroying(database, None)


def test_a_file_opened_as_it_is_replaced_is_refused_not_guessed(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    custodian, blob, database, other = beside_a_copy(path)
    prepare = Tombstones._prepare

    def replaced_meanwhile(self: Tombstones, db: sqlite3.Connection, create: bool) -> None:
        prepare(self, db, create)
        if other.exists():
            os.replace(other, database)

    monkeypatch.setattr(Tombstones, "_prepare", replaced_meanwhile)
    with pytest.raises(KeyUnavailable, match="replaced while being opened; retry"):
        KeyringCustodian(path).unwrap(US, "kid", blob, WHY)
    assert custodian.unwrap(US, "kid", blob, WHY)  # the retry: the file there now


def test_a_file_moved_away_and_back_is_asked_again(path: Path) -> None:
    # the thread's connection, closed when the file went, was handed out again when the
    # same inode came back: a spurious refusal
    custodian, key, blob = answered(path)
    database = tombstones_path(path)
    away = database.with_name("away.sqlite")
    os.rename(database, away)
    with pytest.raises(KeyUnavailable, match="do not exist"):
        custodian.unwrap(US, "kid", blob, WHY)
    os.rename(away, database)
    assert custodian.unwrap(US, "kid", blob, WHY) == key
    assert custodian._tombstones.holds("intl/US", "other") is False


def test_a_custodian_gone_gives_its_descriptors_back(tmp_path: Path) -> None:
    # descriptors of the file are kept while any custodian of the process may hold
    # locks on it: one per keyring ever opened, for good, ran a test process out
    before = len(os.listdir("/proc/self/fd"))
    for n in range(30):
        custodian, _, _ = answered(tmp_path / f"k{n}" / "keyring.json")
        del custodian
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_a_file_replaced_between_following_and_connecting_is_refused(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the connection was on a file whose descriptor this custodian held no share of: a
    # second custodian collected mid-read closed it, and the read's locks with it
    custodian, blob, database, restored = beside_a_copy(path)
    custodian._tombstones._local.handle = None  # as a thread that has not asked yet
    follow = LiveAnswers.follow

    def then_replaced(self: LiveAnswers) -> Identity | None:
        there = follow(self)
        if restored.exists():
            os.replace(restored, database)
        return there

    monkeypatch.setattr(LiveAnswers, "follow", then_replaced)
    with pytest.raises(KeyUnavailable, match="replaced while being opened; retry"):
        custodian.unwrap(US, "kid", blob, WHY)


def _python(script: str, *args: str) -> str:
    """What `script` prints, run by a new interpreter; a hang fails the test."""
    run = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, timeout=60, check=True
    )
    return run.stdout.decode().strip()


GC_UNDER_LOCK = """
import gc, os, sqlite3, sys
from contextlib import closing
from pathlib import Path
from shardvault.keys import live_answers
from shardvault.keys.tombstones import Tombstones
d = Path(sys.argv[1])
for name in ("a.sqlite", "b.sqlite"):
    with closing(sqlite3.connect(d / name)) as db:
        db.execute("CREATE TABLE t (x)")
class Owner:
    pass
box = [Tombstones(d / "a.sqlite")]
box[0]._live.follow()
gc.disable()
fstat = os.fstat
def collecting(fd):  # inside `_descriptor`'s lock: another thread dropped a custodian
    if box:          # held only by a cycle, and this allocation starts the collection
        owner = Owner(); owner.tombstones = box.pop(); owner.me = owner; del owner
        gc.collect()
    return fstat(fd)
live_answers.os.fstat = collecting
print(Tombstones(d / "b.sqlite")._live.follow() is not None, len(live_answers._descriptors))
"""


def test_a_custodian_collected_while_a_descriptor_is_taken_does_not_deadlock(
    tmp_path: Path,
) -> None:
    # the collection ran the release in the thread holding the lock it takes
    assert _python(GC_UNDER_LOCK, str(tmp_path)) == "True 0"  # and both given back


EXIT_DURING_A_READ = """
import atexit, subprocess, sys, threading, time
from pathlib import Path
from shardvault.keys.live_answers import LiveAnswers
from shardvault.keys.tombstones import Tombstones
TRY = sys.argv[2]
database = Path(sys.argv[1])
atexit.register(lambda: print(subprocess.run(
    [sys.executable, "-c", TRY, str(database)], capture_output=True).stdout.decode().strip()))
tombstones = Tombstones(database)
tombstones.create()
reading = threading.Event()
remember = LiveAnswers.remember
def slow(self, key, identity):  # inside the read transaction
    reading.set(); time.sleep(30); remember(self, key, identity)
LiveAnswers.remember = slow
threading.Thread(target=tombstones.holds, args=("s", "k"), daemon=True).start()
reading.wait()
"""


def test_exit_keeps_the_locks_of_a_read_still_running(tmp_path: Path) -> None:
    # at exit the finalizers closed every descriptor while daemon threads still read
    database = tmp_path / "t.destroyed.sqlite"
    assert _python(EXIT_DURING_A_READ, str(database), TRY_EXCLUSIVE) == "refused"


def test_a_fifo_at_the_path_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "keyring.destroyed.sqlite"
    os.mkfifo(fifo, 0o600)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from shardvault.errors import ConfigError\n"
        "from shardvault.keys.tombstones import Tombstones\n"
        "try:\n"
        "    Tombstones(Path(sys.argv[1])).holds('s', 'k')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    assert _python(script, str(fifo)).endswith("is not a file: check custodian.path")


def test_refusals_do_not_leak_descriptors(path: Path) -> None:
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    tombstones_path(path).write_bytes(b"not a database" * 100)
    before = len(os.listdir("/proc/self/fd"))
    for i in range(50):
        with pytest.raises(KeyUnavailable):
            custodian.unwrap(US, f"kid{i}", blob, WHY)
    assert len(os.listdir("/proc/self/fd")) <= before + 1


LIVE = ("intl/US", "kid")


def followed(tmp_path: Path, journal_mode: str = "DELETE") -> tuple[Path, LiveAnswers, Identity]:
    """A database of its own, and answers following it."""
    database = tmp_path / "t.sqlite"
    with closing(sqlite3.connect(database)) as db:
        db.execute(f"PRAGMA journal_mode={journal_mode}")
        db.execute("CREATE TABLE t (x)")
    answers = LiveAnswers(database)
    identity = answers.follow()
    assert identity is not None
    return database, answers, identity


@pytest.mark.parametrize(("journal_mode", "vouches"), [("DELETE", True), ("WAL", False)])
def test_only_a_rollback_journal_header_vouches_for_answers(
    tmp_path: Path, journal_mode: str, vouches: bool
) -> None:
    # in WAL mode a commit does not raise the header's counter
    _, answers, identity = followed(tmp_path, journal_mode)
    answers.remember(LIVE, identity)
    assert answers.remembers(LIVE) is vouches
    assert not answers.remembers(("intl/US", "other"))


def test_a_header_cut_short_vouches_for_nothing(tmp_path: Path) -> None:
    database, answers, identity = followed(tmp_path)
    answers.remember(LIVE, identity)
    assert answers.remembers(LIVE)
    database.write_bytes(b"SQLite format 3\0")  # in place: the descriptor held sees it
    assert not answers.remembers(LIVE)


def test_an_answer_found_in_another_file_is_not_remembered(tmp_path: Path) -> None:
    # a connection opened before the file was replaced answers for the file that went
    _, answers, identity = followed(tmp_path)
    answers.remember(LIVE, (identity[0], identity[1] + 1))
    assert not answers.remembers(LIVE)


# migration from version 1 -----------------------------------------------------------


def write_version_1(path: Path, destroyed: dict[str, Any]) -> bytes:
    """A keyring as version 1 wrote it: roots and tombstones in one file. Returns US's root."""
    root = os.urandom(32)
    doc = {
        "format": "shardvault-keyring",
        "version": 1,
        "roots": {"intl/US": base64.b64encode(root).decode()},
        "destroyed": destroyed,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    os.chmod(path, 0o600)
    return root


def test_a_version_1_keyring_is_migrated_and_keeps_every_tombstone(path: Path) -> None:
    key = hierarchy.new_key()
    root = write_version_1(path, {"intl/US": ["kid-gone"], "intl/SG": ["kid-sg"]})
    roots = json.loads(path.read_text())["roots"]
    kept = seal_key(root, US, "kid-kept", key)  # wrapped by version 1: the same recipe
    gone = seal_key(root, US, "kid-gone", key)
    custodian = KeyringCustodian(path)
    doc = json.loads(path.read_text())
    assert doc == {"format": "shardvault-keyring", "version": 2, "roots": roots}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tombstones_path(path).stat().st_mode) == 0o600
    assert rows(path) == {("intl/US", "kid-gone"), ("intl/SG", "kid-sg")}
    for opened in (custodian, KeyringCustodian(path)):
        assert opened.unwrap(US, "kid-kept", kept, WHY) == key
        with pytest.raises(SubjectForgotten, match="kid-gone of intl/US"):
            opened.unwrap(US, "kid-gone", gone, WHY)
        with pytest.raises(SubjectForgotten):
            opened.unwrap(SG, "kid-sg", b"any", WHY)


@pytest.mark.parametrize("ids", ["kid-gone", [["kid-gone"]], [7], {"kid-gone": True}, None])
def test_a_version_1_keyring_with_damaged_tombstones_is_refused_not_migrated(
    path: Path, ids: object
) -> None:
    # migrated, "kid-gone" as a string gave the tombstones k, i, d...: the key was live
    # again once the file was rewritten without it
    root = write_version_1(path, {"intl/US": ids})
    gone = seal_key(root, US, "kid-gone", hierarchy.new_key())
    original = path.read_bytes()
    with pytest.raises(IntegrityError, match=r"is damaged: .*not a list of key ids"):
        KeyringCustodian(path)
    assert path.read_bytes() == original
    with pytest.raises(IntegrityError):
        KeyringCustodian(path).unwrap(US, "kid-gone", gone, WHY)


class Crash(BaseException):
    """The process dying at that point: nothing after it runs."""


@pytest.mark.parametrize("at", ["add", "save"])
def test_a_crash_during_migration_loses_no_tombstone(
    path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    key = hierarchy.new_key()
    root = write_version_1(path, {"intl/US": ["kid-gone"]})
    gone = seal_key(root, US, "kid-gone", key)
    original = path.read_bytes()
    with monkeypatch.context() as patch:
        target = (Tombstones, "add") if at == "add" else (KeyringCustodian, "_save")

        def crash(*args: object) -> None:
            raise Crash

        patch.setattr(*target, crash)
        with pytest.raises(Crash):
            KeyringCustodian(path)
    assert path.read_bytes() == original  # still version 1, with its tombstones
    if at == "save":
        assert rows(path) == {("intl/US", "kid-gone")}  # committed before the rewrite
    custodian = KeyringCustodian(path)  # the next open completes the migration
    assert json.loads(path.read_text())["version"] == 2
    assert rows(path) == {("intl/US", "kid-gone")}
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid-gone", gone, WHY)


# failing closed ---------------------------------------------------------------------


@pytest.fixture
def wrapped(path: Path) -> tuple[bytes, bytes]:
    """A keyring with a destroyed key and a live one; returns the live one's (key, blob)."""
    key = hierarchy.new_key()
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "kid", key, WHY, subject="alice")
    custodian.wrap(US, "kid-gone", key, WHY, subject="alice")
    custodian.destroy(US, "kid-gone", WHY)
    return key, blob


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_tombstones_readable_by_others_are_refused(
    path: Path, wrapped: tuple[bytes, bytes], mode: int
) -> None:
    os.chmod(tombstones_path(path), mode)
    custodian = KeyringCustodian(path)
    with pytest.raises(KeyUnavailable, match=r"tombstones .* readable by others.*chmod 600"):
        custodian.unwrap(US, "kid", wrapped[1], WHY)
    with pytest.raises(KeyUnavailable, match="readable by others"):
        custodian.destroy(US, "kid", WHY)


@contextmanager
def replaced(file: Path, content: bytes) -> Iterator[None]:
    """The file's bytes overwritten in place (the same inode an open connection holds)."""
    saved = file.read_bytes()
    with open(file, "r+b") as out:
        out.write(content)
        out.truncate()
    yield
    file.write_bytes(saved)


@pytest.mark.parametrize(
    "content",
    [b"not a database" * 300, b""],
    ids=["garbage", "empty"],
)
def test_unreadable_tombstones_refuse_every_unwrap(
    path: Path, wrapped: tuple[bytes, bytes], content: bytes
) -> None:
    key, blob = wrapped
    running = KeyringCustodian(path)
    assert running.unwrap(US, "kid", blob, WHY) == key  # its connection is open
    with replaced(tombstones_path(path), content):
        for custodian in (running, KeyringCustodian(path)):
            with pytest.raises(KeyUnavailable, match="tombstones"):
                custodian.unwrap(US, "kid", blob, WHY)
    assert running.unwrap(US, "kid", blob, WHY) == key  # readable again: answered again


def test_lost_tombstones_refuse_and_are_not_remade(
    path: Path, wrapped: tuple[bytes, bytes]
) -> None:
    key, blob = wrapped
    tombstones_path(path).unlink()
    custodian = KeyringCustodian(path)
    with pytest.raises(KeyUnavailable, match="do not exist"):
        custodian.unwrap(US, "kid", blob, WHY)
    with pytest.raises(KeyUnavailable, match="do not exist"):
        custodian.destroy(US, "kid", WHY)
    custodian.wrap(SG, "kid-sg", key, WHY, subject="sam")  # a new root: the keyring is rewritten
    assert not tombstones_path(path).exists()  # no empty database brings kid-gone back


def test_tombstones_of_a_newer_schema_are_refused(path: Path, wrapped: tuple[bytes, bytes]) -> None:
    with sqlite3.connect(tombstones_path(path)) as db:
        db.execute("PRAGMA user_version=3")
    with pytest.raises(NewerFormat, match=r"schema version 3; .*upgrade shardvault"):
        KeyringCustodian(path).unwrap(US, "kid", wrapped[1], WHY)


def test_a_refused_destroy_writes_no_tombstone(path: Path) -> None:
    def refuse_destroy(operation: KeyOperation, *args: object) -> None:
        if operation is KeyOperation.DESTROY:
            raise AccessDenied("no destroy")

    with pytest.raises(AccessDenied):  # a new keyring: not even the database is made
        KeyringCustodian(path, refuse_destroy).destroy(US, "kid", WHY)
    assert not path.parent.exists() or not list(path.parent.iterdir())
    blob = KeyringCustodian(path).wrap(US, "kid", key := hierarchy.new_key(), WHY, subject="alice")
    with pytest.raises(AccessDenied):
        KeyringCustodian(path, refuse_destroy).destroy(US, "kid", WHY)
    assert rows(path) == set()
    assert KeyringCustodian(path).unwrap(US, "kid", blob, WHY) == key


# what does not grow -----------------------------------------------------------------

TOMBSTONES = 20_000


def io_bytes() -> tuple[int, int]:
    """Bytes this process has read and written by system calls (rchar, wchar)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def test_a_destroy_among_many_writes_a_row_not_the_keyring(path: Path) -> None:
    """At 20,000 tombstones (filled by migrating a version-1 file: 20,000 durable destroys
    would take minutes), a destroy leaves the keyring file alone and writes a few pages,
    and an open reads the roots, not the tombstones: version 1 rewrote and read them all
    (about 760 KB here)."""
    key = hierarchy.new_key()
    ids = [hierarchy.new_key_id() for _ in range(TOMBSTONES)]
    root = write_version_1(path, {"intl/US": ids})
    KeyringCustodian(path)  # migrates
    before = file_state(path)
    custodian = KeyringCustodian(path)
    for n in range(20):
        custodian.destroy(US, f"kid-{n}", WHY)
    read, written = io_bytes()
    custodian.destroy(US, "kid-last", WHY)
    assert io_bytes()[1] - written < 64 * 1024
    assert file_state(path) == before  # not rewritten, not even touched
    assert len(rows(path)) == TOMBSTONES + 21
    read, written = io_bytes()
    opened = KeyringCustodian(path)
    blob = seal_key(root, US, "kid-live", key)
    assert opened.unwrap(US, "kid-live", blob, WHY) == key
    with pytest.raises(SubjectForgotten):
        opened.unwrap(US, ids[12345], seal_key(root, US, ids[12345], key), WHY)
    with pytest.raises(SubjectForgotten):
        opened.unwrap(US, "kid-last", blob, WHY)
    assert io_bytes()[0] - read < 64 * 1024


def test_a_keyring_gone_while_its_roots_are_held_is_never_made_again(tmp_path: Path) -> None:
    # a review found a destroy, after the keys directory went away, made a new empty
    # tombstone file: every key destroyed before unwrapped again with the held roots
    path = tmp_path / "keys" / "keyring.json"
    custodian = KeyringCustodian(path)
    blob = custodian.wrap(US, "alice-key", hierarchy.new_key(), WHY, subject="alice")
    custodian.destroy(US, "alice-key", WHY)
    os.rename(tmp_path / "keys", tmp_path / "keys-lost")

    def in_a_new_thread(call: Callable[[], object]) -> BaseException | None:
        caught: list[BaseException] = []
        thread = threading.Thread(target=lambda: _catching(call, caught))
        thread.start()
        thread.join()
        return caught[0] if caught else None

    for call in (
        lambda: custodian.destroy(US, "bob-key", WHY),
        lambda: custodian.unwrap(US, "alice-key", blob, WHY),
        lambda: custodian.wrap(
            KeyScope("intl", "SG"), "sg-key", hierarchy.new_key(), WHY, subject="alice"
        ),
    ):
        assert isinstance(in_a_new_thread(call), KeyUnavailable)
    assert not path.exists() and not tombstones_path(path).exists()  # nothing made again


def _catching(call: Callable[[], object], caught: list[BaseException]) -> None:
    try:
        call()
    except BaseException as exc:  # the test asks which
        caught.append(exc)


def test_a_temporary_copy_left_by_a_killed_writer_goes_at_the_next_change(
    tmp_path: Path,
) -> None:
    # a writer killed between its fsynced temporary and the rename left the root keys
    # beside the keyring, in a file nothing ever removed
    path = tmp_path / "keys" / "keyring.json"
    custodian = KeyringCustodian(path)
    custodian.wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    stale = path.with_name(f".{path.name}.0123456789ab.tmp")
    stale.write_bytes(path.read_bytes())
    os.chmod(stale, 0o600)
    # a new root
    custodian.wrap(KeyScope("intl", "SG"), "kid2", hierarchy.new_key(), WHY, subject="sam")
    assert not stale.exists()
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
