"""The partner's record of seen audit positions: written out in batches, on time, on
close; its file's format; and a record that cannot be kept refusing key uses."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from pathlib import Path

import pytest
from tests.cli.test_cli import Cli
from tests.governance.test_seen_positions import (
    gets,
    holding_a_note,
    log_dir,
    log_entries,
    rewrite_log,
)

from shardvault.config import load
from shardvault.errors import IntegrityError, KeyUnavailable, NewerFormat
from shardvault.governance.seen import SeenFile, SeenRecorder, pack_position
from shardvault.model import AuditPosition, ObjectRef
from shardvault.vault import Vault

LEAF = bytes(range(32))


@pytest.fixture
def cli(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    return holding_a_note(tmp_path, capsysbinary)


def position(index: int, cell: str = "US") -> AuditPosition:
    return AuditPosition(cell, index, LEAF)


def test_a_full_batch_is_written_out_at_once_and_nothing_before(tmp_path: Path) -> None:
    recorder = SeenRecorder(tmp_path / "seen", batch=3, interval=3600)
    try:
        recorder.record(position(0))
        recorder.record(position(1, "SG"))
        assert recorder.file.read("US").positions == {}  # waits for the batch (or an hour)
        recorder.record(position(2))
        assert recorder.wait_written(1, timeout=30)
        assert recorder.file.read("US").positions == {0: LEAF, 2: LEAF}
        assert recorder.file.read("SG").positions == {1: LEAF}
    finally:
        recorder.close()


def test_a_lone_position_is_written_out_within_the_interval(tmp_path: Path) -> None:
    recorder = SeenRecorder(tmp_path / "seen", batch=1000, interval=0.05)
    try:
        recorder.record(position(7))
        assert recorder.wait_written(1, timeout=30)
        assert recorder.file.read("US").positions == {7: LEAF}
    finally:
        recorder.close()


def test_close_writes_out_what_waits(tmp_path: Path) -> None:
    recorder = SeenRecorder(tmp_path / "seen", batch=1000, interval=3600)
    recorder.record(position(1))
    recorder.record(position(2))
    recorder.close()
    assert SeenFile(tmp_path / "seen").read("US").positions == {1: LEAF, 2: LEAF}
    path = tmp_path / "seen" / "US.seen"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == (
        b"SVSEEN\x00\x01" + pack_position(1, LEAF) + pack_position(2, LEAF)
    )  # the format of docs/formats.md


def test_a_record_cut_short_is_ignored_then_cut_by_the_next_append(tmp_path: Path) -> None:
    file = SeenFile(tmp_path)
    file.append("US", pack_position(1, LEAF))
    with file.path("US").open("ab") as out:
        out.write(pack_position(2, LEAF)[:20])  # a writer killed mid-append
    assert file.read("US").positions == {1: LEAF}
    file.append("US", pack_position(3, LEAF))
    assert file.read("US").positions == {1: LEAF, 3: LEAF}


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), IntegrityError, "damaged at record 1"),
        (lambda data: b"NOTSEEN" + data[7:], IntegrityError, "no header"),
        (lambda data: data[:6] + b"\x00\x02" + data[8:], NewerFormat, "upgrade shardvault"),
        (
            lambda data: data + pack_position(1, bytes(32)),
            IntegrityError,
            "two leaf hashes for entry 1",
        ),
    ],
    ids=["crc", "magic", "newer", "two leaves"],
)
def test_a_damaged_record_refuses_rather_than_reading_less(
    tmp_path: Path, damage: object, error: type[Exception], match: str
) -> None:
    file = SeenFile(tmp_path)
    file.append("US", pack_position(1, LEAF) + pack_position(2, LEAF))
    path = file.path("US")
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(error, match=match):
        file.read("US")


def test_the_witness_refuses_a_head_while_the_record_is_damaged(cli: Cli) -> None:
    gets(cli, 1)
    path = cli.config.parent / "partner" / "seen" / "US.seen"
    data = bytearray(path.read_bytes())
    data[8 + 3] ^= 1  # a bit of the first record's index
    path.write_bytes(bytes(data))
    error = cli.fails(1, "audit", "head", "--cell", "US")
    assert "damaged at record 0" in error


def test_key_uses_are_refused_while_positions_cannot_be_written_out(cli: Cli) -> None:
    seen = cli.config.parent / "partner" / "seen"
    shutil.rmtree(seen, ignore_errors=True)
    seen.write_bytes(b"")  # not a directory: nothing can be written there
    ref = ObjectRef("intl", "alice", "note")
    vault = Vault.open(load(cli.config))
    recorder = vault.governance.partner.seen
    recorder.interval = 3600
    try:
        assert vault.get(ref) == b"hello"  # shown, held in memory
        with pytest.raises(KeyUnavailable, match="cannot keep the audit positions"):
            recorder.write_out()
        with pytest.raises(KeyUnavailable, match="grants no key use until it can"):
            vault.get(ref)  # fail closed
        seen.unlink()
        recorder.write_out()  # the one held is written now
        assert vault.get(ref) == b"hello"
    finally:
        vault.close()
    assert len(SeenFile(seen).read("US").positions) == 2


def test_a_process_that_cannot_write_out_its_positions_exits_1_in_one_line(cli: Cli) -> None:
    seen = cli.config.parent / "partner" / "seen"
    shutil.rmtree(seen, ignore_errors=True)
    seen.write_bytes(b"")
    error = cli.fails(1, "get", "intl", "alice", "note")
    assert "cannot keep the audit positions" in error


def test_the_witness_reads_the_positions_of_other_cells_apart(cli: Cli) -> None:
    cli.ok("subject", "add", "intl", "sook", "-j", "SG")
    source = cli.config.parent / "sg.txt"
    source.write_bytes(b"sg")
    cli.ok("put", "intl", "sook", "k", str(source))
    assert cli.ok("get", "intl", "sook", "k") == b"sg"
    files = SeenFile(cli.config.parent / "partner" / "seen")
    assert files.read("SG").positions  # SG's log's positions, under SG
    cli.ok("audit", "head", "--cell", "US")
    assert files.read("SG").positions  # not dropped by a head of US
    entries = log_entries(log_dir(cli, "SG"))
    rewrite_log(log_dir(cli, "SG"), entries[: min(files.read("SG").positions)])
    cli.fails(1, "audit", "head", "--cell", "SG")


def test_a_child_forked_during_a_write_out_does_not_keep_the_file_locked(tmp_path: Path) -> None:
    """A child forked while the recorder's thread held the file's flock inherits that
    descriptor; closing the parent's copy did not release the lock, so every later
    write-out and head of the parent waited for the child to exit."""
    file = SeenFile(tmp_path)
    release, hold = os.pipe()
    with file._flocked("US"):  # as the recorder's thread, when another thread forks
        child = os.fork()
        if child == 0:  # pragma: no cover - the child holds its copies until told
            os.close(hold)
            os.read(release, 1)
            os._exit(0)
    os.close(release)
    try:
        fd = os.open(tmp_path / "US.lock", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
        finally:
            os.close(fd)
        file.append("US", pack_position(1, LEAF))
        assert file.read("US").positions == {1: LEAF}
    finally:
        os.close(hold)
        os.waitpid(child, 0)


class _CountedFile(SeenFile):
    """The real file, telling a test of each append tried (the third, here)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.tries = 0
        self.third = threading.Event()

    def append(self, cell: str, records: bytes) -> None:
        self.tries += 1
        if self.tries == 3:
            self.third.set()
        super().append(cell, records)


def test_a_failed_write_out_of_a_full_batch_is_tried_again_after_the_interval(
    tmp_path: Path,
) -> None:
    """A batch that could not be written out went back to wait, still a batch: the
    thread took that for a batch to write at once, and tried again without end."""
    blocked = tmp_path / "seen"
    blocked.write_bytes(b"")  # a file where the directory should be: every append fails
    recorder = SeenRecorder(blocked, batch=2, interval=3600)
    counted = recorder.file = _CountedFile(blocked)
    recorder.record(position(1))
    recorder.record(position(2))  # a full batch: written out at once, and failing
    try:
        assert not counted.third.wait(1.0), f"tried {counted.tries} times at once"
    finally:
        blocked.unlink()
        recorder.close()
    assert SeenFile(blocked).read("US").positions == {1: LEAF, 2: LEAF}
