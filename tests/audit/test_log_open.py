"""Opening a log starts from the frontier the last process left, when it still agrees."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from tests.audit.conftest import make_entry, naive_root, publish_head

from shardvault.audit import merkle
from shardvault.audit.log import AuditLog
from shardvault.errors import IntegrityError

REC = 44  # index record: u64 end offset, 32-byte leaf hash, u32 CRC-32


def filled(path: Path, n: int) -> AuditLog:
    log = AuditLog.open(path)
    log.append_many([make_entry(i) for i in range(log.size, log.size + n)])
    return log


def leaves_taken_on_open(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, AuditLog]:
    """How many leaves opening the log folded into its Merkle state, and the open log."""
    count = 0
    real_append = merkle.Frontier.append

    def counting(frontier: merkle.Frontier, leaf: bytes) -> None:
        nonlocal count
        count += 1
        real_append(frontier, leaf)

    with monkeypatch.context() as patch:
        patch.setattr(merkle.Frontier, "append", counting)
        log = AuditLog.open(path)
    return count, log


def frontier_file(size: int, end: int, last: bytes, stack: list[bytes]) -> bytes:
    """The frontier format (docs/formats.md), built here independently of the log."""
    data = struct.pack(">6sHQQ32sB", b"SVAUDF", 1, size, end, last, len(stack)) + b"".join(stack)
    return data + struct.pack(">I", zlib.crc32(data))


def test_an_open_takes_in_only_what_was_appended_since_the_last_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every open rebuilt the Merkle state from every index record: at a million
    # entries 1.5 s of every CLI command (a scale probe)
    path = tmp_path / "log"
    filled(path, 50).close()
    count, log = leaves_taken_on_open(path, monkeypatch)
    assert count == 0 and log.size == 50 and log.root() == naive_root(log)
    still_open = filled(path, 0)
    still_open.append_many([make_entry(i) for i in range(50, 53)])  # not closed: not saved
    count, again = leaves_taken_on_open(path, monkeypatch)
    assert count == 3 and again.size == 53 and again.root() == naive_root(again)
    for opened in (log, still_open, again):
        opened.close()


@pytest.mark.parametrize(
    "damage",
    ["truncated", "bit flipped", "other version", "disagrees with the index", "too few roots"],
)
def test_a_frontier_that_cannot_be_trusted_costs_a_full_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path = tmp_path / "log"
    log = filled(path, 12)
    root = log.root()
    log.close()
    saved = (path / "frontier").read_bytes()
    index = (path / "index.log").read_bytes()
    end, last, _ = struct.unpack(">Q32sI", index[8 + 11 * REC : 8 + 12 * REC])
    stack = [saved[57 + 32 * i : 57 + 32 * (i + 1)] for i in range(saved[56])]
    assert frontier_file(12, end, last, stack) == saved  # the format as documented
    broken = {
        "truncated": saved[:40],
        "bit flipped": saved[:60] + bytes([saved[60] ^ 1]) + saved[61:],
        "other version": saved[:6] + b"\x00\x02" + saved[8:],
        "disagrees with the index": frontier_file(12, end, b"\x07" * 32, stack),
        "too few roots": frontier_file(12, end, last, stack[:1]),
    }[damage]
    (path / "frontier").write_bytes(broken)
    count, again = leaves_taken_on_open(path, monkeypatch)
    assert count == 12 and again.root() == root
    again.close()
    assert (path / "frontier").read_bytes() == saved  # made again


def test_a_frontier_the_index_no_longer_reaches_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log"
    log = filled(path, 12)
    root = log.root()
    log.close()
    with open(path / "index.log", "r+b") as index:
        index.truncate(8 + 8 * REC)  # entries 8..11 unindexed: opening indexes them again
    count, again = leaves_taken_on_open(path, monkeypatch)
    assert count == 12 and again.size == 12 and again.root() == root
    again.close()


def test_a_frontier_is_checked_against_the_signed_head_at_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a forged frontier that agrees with the index's last record but not with the
    # stored head is ignored, and the rebuild checks every head as before
    path = tmp_path / "log"
    log = filled(path, 6)
    publish_head(log, None)
    root = log.root()
    log.close()
    index = (path / "index.log").read_bytes()
    end, last, _ = struct.unpack(">Q32sI", index[8 + 5 * REC : 8 + 6 * REC])
    (path / "frontier").write_bytes(frontier_file(6, end, last, [b"\x01" * 32, b"\x02" * 32]))
    count, again = leaves_taken_on_open(path, monkeypatch)
    assert count == 6 and again.root() == root
    again.close()


def test_the_last_entry_a_frontier_covers_is_still_checked_whole(tmp_path: Path) -> None:
    path = tmp_path / "log"
    filled(path, 10).close()
    data = bytearray((path / "entries.log").read_bytes())
    data[-5] ^= 0x01  # inside the last acknowledged entry
    (path / "entries.log").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="acknowledged entry 9 is damaged"):
        AuditLog.open(path)


def test_a_head_file_named_with_other_digits_is_a_damaged_head_not_a_crash(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log"
    filled(path, 3).close()
    (path / "heads" / "1\u00b2.note").write_bytes(b"not a note")  # isdigit(), not int()
    with pytest.raises(IntegrityError, match="damaged"):
        AuditLog.open(path)


def test_a_log_rolled_back_below_a_signed_head_is_refused_with_a_frontier_too(
    tmp_path: Path,
) -> None:
    # the frontier agreed with the cut files, nothing had been appended since it, so
    # the check that every stored head is covered was never reached (found in review)
    path = tmp_path / "log"
    filled(path, 10).close()  # the frontier is saved at 10
    cut = {name: (path / name).stat().st_size for name in ("entries.log", "index.log")}
    log = filled(path, 40)
    publish_head(log, None)  # a signed head of 50; then the process dies (no close)
    log.abandon_after_fork()
    for name, size in cut.items():
        with open(path / name, "r+b") as file:
            file.truncate(size)  # a restore from an old backup, or tampering
    with pytest.raises(IntegrityError, match="acknowledged entries are missing"):
        AuditLog.open(path)


def test_an_index_record_damaged_below_the_frontier_is_rebuilt_from_its_entry(
    tmp_path: Path,
) -> None:
    # records an open took on trust were never read: a bad one made every proof and
    # every later head wrong (store_head refused them all); and removing the frontier
    # did not help while any process kept the log open (found in two reviews)
    path = tmp_path / "log"
    log = filled(path, 12)
    root = log.root()
    log.close()
    intact = (path / "index.log").read_bytes()
    data = bytearray(intact)
    data[8 + 3 * REC + 10] ^= 0x01  # the leaf hash of entry 3: its CRC fails
    (path / "index.log").write_bytes(bytes(data))
    with AuditLog.open(path) as trusting, AuditLog.open(path) as other:
        assert trusting.root_at(12) == root == naive_root(trusting)
        assert (path / "index.log").read_bytes() == intact  # written again, under the flock
        assert other.root_at(12) == root
        publish_head(other, None)


def test_a_damaged_index_record_whose_entry_is_damaged_too_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "log"
    filled(path, 12).close()
    index = bytearray((path / "index.log").read_bytes())
    index[8 + 3 * REC + 10] ^= 0x01
    (path / "index.log").write_bytes(bytes(index))
    end_of_2 = struct.unpack(">Q", index[8 + 2 * REC : 8 + 2 * REC + 8])[0]
    entries = bytearray((path / "entries.log").read_bytes())
    entries[end_of_2 + 20] ^= 0x01  # inside entry 3
    (path / "entries.log").write_bytes(bytes(entries))
    with (
        AuditLog.open(path) as log,
        pytest.raises(IntegrityError, match="index record 3 is damaged, and its entry"),
    ):
        log.root_at(12)


def test_a_frontier_larger_than_the_index_is_ignored_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log"
    filled(path, 3).close()
    (path / "frontier").write_bytes(frontier_file(2**62, 0, b"\0" * 32, [b"\1" * 32]))
    count, log = leaves_taken_on_open(path, monkeypatch)
    assert count == 3 and log.size == 3
    log.close()


def test_opening_removes_the_frontier_temporary_a_killed_process_left(tmp_path: Path) -> None:
    """A process killed between writing its frontier's temporary and renaming it left the
    file for ever; one of a live process (saving as this one opens) stays."""
    path = tmp_path / "log"
    filled(path, 3).close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    left = path / f"frontier.{int(dead.stdout)}.140000.tmp"
    live = path / "frontier.1.140000.tmp"  # pid 1 is always running
    for temporary in (left, live):
        temporary.write_bytes(b"half a frontier")
    AuditLog.open(path).close()
    assert not left.exists()
    assert live.read_bytes() == b"half a frontier"
