"""The deployment's notes of nodes found hung (nodes/hints.py): format, races, damage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardvault.nodes.hints import FILE, Hint, HungHints

NOW = 1_796_594_986.5


def hints_at(state: Path, now: float = NOW) -> HungHints:
    return HungHints(state, clock=lambda: now)


def test_a_node_marked_is_noted_in_the_documented_format(tmp_path: Path) -> None:
    hints_at(tmp_path).mark("us-n1")
    pid = os.getpid()
    assert (tmp_path / FILE).read_bytes() == (
        b'{"format":"shardvault-hung-nodes","nodes":{"us-n1":{"found":1796594986.5,'
        b'"pid":%d,"tested":1796594986.5}},"version":1}' % pid
    )
    assert hints_at(tmp_path).read() == {"us-n1": Hint(NOW, pid, NOW)}
    assert Hint(NOW, pid, NOW).when() == "2026-12-06T22:09:46Z"


def test_a_note_is_trusted_for_a_deadline_then_claimed_by_one_tester(tmp_path: Path) -> None:
    hints_at(tmp_path).mark("us-n1")
    note = hints_at(tmp_path).read()["us-n1"]
    assert note.trusted_for(NOW + 1, 30) == 29
    assert note.trusted_for(NOW + 30, 30) == 0
    assert note.trusted_for(NOW - 1, 30) == 0  # dated in the future: the clock went back
    assert hints_at(tmp_path, NOW + 10).claim_test("us-n1", 30) == note  # still trusted
    assert hints_at(tmp_path, NOW + 31).claim_test("us-n1", 30) is None  # this one tests
    tested = hints_at(tmp_path).read()["us-n1"]
    assert (tested.found, tested.tested) == (NOW, NOW + 31)
    assert hints_at(tmp_path, NOW + 32).claim_test("us-n1", 30) == tested  # the others wait


def test_an_answer_drops_a_note_only_if_the_node_was_not_found_hung_after_it(
    tmp_path: Path,
) -> None:
    hints_at(tmp_path, NOW).mark("us-n1")
    hints_at(tmp_path, NOW).mark("us-n2")
    hints_at(tmp_path).clear("us-n1", NOW - 5)  # an answer from before it was found hung
    assert set(hints_at(tmp_path).read()) == {"us-n1", "us-n2"}
    hints_at(tmp_path).clear("us-n1", NOW + 1)
    assert set(hints_at(tmp_path).read()) == {"us-n2"}
    hints_at(tmp_path).clear("us-n2", NOW + 1)
    assert not (tmp_path / FILE).exists()  # nothing left behind


@pytest.mark.parametrize(
    "content",
    [b"garbage", b"{}", b'{"format":"shardvault-hung-nodes","version":1,"nodes":{"n":{}}}'],
)
def test_a_damaged_file_is_ignored_saying_so_and_replaced_by_the_next_note(
    tmp_path: Path, content: bytes
) -> None:
    # a note only spares a deadline: a damaged one must cost no more than that, and
    # must not stop the commands that read it
    (tmp_path / FILE).write_bytes(content)
    hints = hints_at(tmp_path)
    assert hints.read() == {}
    [notice] = hints.notices()
    assert notice.startswith(f"{tmp_path / FILE}: is damaged (") and notice.endswith(": ignored")
    hints.mark("us-n1")
    assert set(hints_at(tmp_path).read()) == {"us-n1"}


def test_a_file_of_a_newer_version_is_ignored_and_never_written_over(tmp_path: Path) -> None:
    newer = b'{"format":"shardvault-hung-nodes","nodes":{},"version":2}'
    (tmp_path / FILE).write_bytes(newer)
    hints = hints_at(tmp_path)
    assert hints.read() == {}
    hints.mark("us-n1")
    assert (tmp_path / FILE).read_bytes() == newer
    assert hints.notices() == [
        f"{tmp_path / FILE}: is of version 2; this shardvault reads version 1: ignored",
        f"{tmp_path / FILE}: is of version 2; this shardvault reads version 1: not written",
    ]


def test_a_state_disk_that_cannot_take_the_note_costs_a_notice_only(tmp_path: Path) -> None:
    (tmp_path / FILE).mkdir()  # what is there cannot be replaced by a file
    hints = hints_at(tmp_path)
    hints.mark("us-n1")
    assert hints.read() == {}
    assert any("cannot be written" in notice for notice in hints.notices())


_MARKER = """
import sys
from pathlib import Path
from shardvault.nodes.hints import HungHints
hints = HungHints(Path(sys.argv[1]))
for i in range(25):
    hints.mark(f"{sys.argv[2]}-{i}")
"""


def test_processes_noting_nodes_at_once_lose_none_of_them(tmp_path: Path) -> None:
    # each writer reads, changes and replaces the whole file: without the writers'
    # lock, two at once would each drop the other's note
    writers = [
        subprocess.Popen([sys.executable, "-c", _MARKER, str(tmp_path), f"w{w}"]) for w in range(4)
    ]
    assert [writer.wait(120) for writer in writers] == [0] * 4
    noted = json.loads((tmp_path / FILE).read_bytes())["nodes"]
    assert sorted(noted) == sorted(f"w{w}-{i}" for w in range(4) for i in range(25))


def test_a_temporary_a_killed_writer_left_is_removed_by_the_next(tmp_path: Path) -> None:
    leftover = tmp_path / f".{FILE}.0123456789ab.tmp"
    leftover.write_bytes(b'{"format":')  # killed mid-write, before its rename
    hints_at(tmp_path).mark("us-n1")
    assert not leftover.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [FILE, "hung-nodes.lock"]
