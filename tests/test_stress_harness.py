"""The kill -9 stress harness (scripts/stress.py): its checker, and a short run of it.

The checker decides which states of a key are acceptable from a worker's journal;
a checker that accepted too much would hide the defects the harness is for, so it
is tested on fabricated journals. The short run keeps the harness from rotting.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).parents[1] / "scripts"


def _checker_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stress_check", SCRIPTS / "stress_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stress_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


stress_check = _checker_module()

A, B, C = "a" * 64, "b" * 64, "c" * 64


def _checked(*records: dict[str, object]) -> list[str]:
    checker = stress_check.Checker()
    checker.subject("user-us", "live")
    for record in records:
        checker.feed("worker-0", record)
    return checker.problems


def _put(ident: int, sha: str) -> dict[str, object]:
    return {"t": "put", "id": ident, "subject": "user-us", "key": "k", "sha": sha}


def _get(sha: str | None) -> dict[str, object]:
    return {"t": "get", "subject": "user-us", "key": "k", "sha": sha}


def _ack(ident: int) -> dict[str, object]:
    return {"t": "ack", "id": ident}


def test_the_checker_flags_bytes_no_put_of_the_key_left() -> None:
    problems = _checked(_put(1, A), _ack(1), _get(B))
    assert len(problems) == 1 and "wrong bytes" in problems[0], problems


def test_the_checker_flags_an_acknowledged_put_gone() -> None:
    problems = _checked(_put(1, A), _ack(1), _get(None))
    assert len(problems) == 1 and "lost acknowledged put" in problems[0], problems


def test_the_checker_flags_an_overwritten_version_read_back() -> None:
    problems = _checked(_put(1, A), _ack(1), _put(2, B), _ack(2), _get(A))
    assert len(problems) == 1 and "wrong bytes" in problems[0], problems


def test_a_killed_put_leaves_either_state_until_a_later_one_is_acknowledged() -> None:
    killed = [_put(1, A), _ack(1), _put(2, B), {"t": "start", "incarnation": 1}]
    assert _checked(*killed, _get(A), _get(B)) == []
    assert len(_checked(*killed, _put(3, C), _ack(3), _get(B))) == 1


def test_a_removal_or_forget_in_flight_explains_an_absence_an_acknowledged_one_demands() -> None:
    rm = {"t": "rm", "id": 2, "subject": "user-us", "key": "k"}
    forget = {"t": "forget", "id": 2, "subject": "user-us"}
    for removal in (rm, forget):
        assert _checked(_put(1, A), _ack(1), removal, _get(None), _get(A)) == []
        assert len(_checked(_put(1, A), _ack(1), removal, _ack(2), _get(A))) == 1


def test_a_failed_put_stays_possible_but_never_replaces_the_acknowledged_one() -> None:
    failed = [_put(1, A), _ack(1), _put(2, B), {"t": "fail", "id": 2, "error": "Conflict: x"}]
    assert _checked(*failed, _get(A), _get(B)) == []
    assert len(_checked(*failed, _get(None))) == 1


def _lines(*records: dict[str, object]) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def test_a_peek_may_see_what_the_owner_had_between_its_two_offsets_and_nothing_older() -> None:
    owner = _lines(_put(1, A), _ack(1), _put(2, B))
    settled, in_flight = len(_lines(_put(1, A), _ack(1))), len(owner)
    owner_after = owner + _lines(_ack(2), _put(3, C), _ack(3))

    def peeked(seen: str, start: int, end: int) -> list[str]:
        checker = stress_check.Checker()
        checker.subject("user-us", "live")
        peek = {"t": "peek", "owner": "worker-0", "subject": "user-us", "key": "k"}
        checker.feed_bytes("worker-1", _lines({**peek, "sha": seen, "from": start, "to": end}))
        checker.feed_bytes("worker-0", owner_after)
        return checker.problems

    assert peeked(A, settled, settled) == []  # A acknowledged, nothing since
    assert peeked(A, settled, in_flight) == []  # A acknowledged, B in flight
    assert peeked(B, settled, in_flight) == []
    assert peeked(C, in_flight, len(owner_after)) == []  # C put within the window
    assert len(peeked(C, settled, in_flight)) == 1  # not yet intended then
    assert len(peeked(A, len(owner_after), len(owner_after))) == 1  # overwritten twice since


def test_the_summary_says_how_many_peeks_went_unchecked_and_why() -> None:
    checker = stress_check.Checker()
    checker.subject("user-us", "live")
    history = [record for i in range(stress_check.HISTORY) for record in (_put(i, A), _ack(i))]
    checker.feed_bytes("worker-0", _lines(*history))
    peek = {"t": "peek", "owner": "worker-0", "subject": "user-us", "key": "k", "sha": A}
    end = len(_lines(*history))
    old, fresh, unread = (
        {"from": 0, "to": 0},
        {"from": end, "to": end},
        {"from": end, "to": end + 9},
    )
    torn = json.dumps({**peek, **fresh}, sort_keys=True).encode()[:30] + b"\n"
    checker.feed_bytes("worker-1", _lines(*({**peek, **at} for at in (old, fresh, unread))) + torn)
    assert checker.peeks_line() == (
        "peeks checked: 1, unchecked: 3 (older than the key's kept states 1, "
        "owner's journal not read that far 1, record torn by a kill 1)"
    )


def test_a_torn_record_is_skipped_and_the_next_one_read() -> None:
    checker = stress_check.Checker()
    checker.subject("user-us", "live")
    whole = _lines(_put(1, A), _ack(1))
    checker.feed_bytes("worker-0", whole + b'{"t": "put", "id": 2\n' + _lines(_get(B)))
    assert checker.torn_records == 1
    assert len(checker.problems) == 1 and "wrong bytes" in checker.problems[0]


def _gc_skip(node: str, pack: str) -> dict[str, object]:
    return {"t": "problem", "what": f"gc skipped ('{node}',): pack {pack}...",
            "lost_packs": [[node, pack]]}  # fmt: skip


def _deleted(node: str, pack: str) -> dict[str, object]:
    return {"t": "damage", "node": node, "file": f"packs/{pack}", "how": "delete"}


@pytest.mark.parametrize("chaos_first", [True, False], ids=["deleted-then-skip", "read-later"])
def test_a_gc_skipping_a_node_whose_pack_the_damage_deleted_is_a_note(chaos_first: bool) -> None:
    # the chaos process deleted the pack a gc was writing into: the gc was right to skip
    # the node; the deletion's record may be read after the skip it caused
    checker = stress_check.Checker()
    feeds = [
        ("chaos-0", _deleted("us-n4", "p1.pack")),
        ("maintenance-0", _gc_skip("us-n4", "p1.pack")),
    ]
    for journal, record in feeds if chaos_first else feeds[::-1]:
        checker.feed(journal, record)
    checker.settle()
    assert checker.problems == []
    assert len(checker.notes) == 1 and "a pack the damage deleted" in checker.notes[0]


@pytest.mark.parametrize(
    "damage",
    [
        _deleted("us-n4", "p2.pack"),  # another pack
        _deleted("us-n5", "p1.pack"),  # the same name on another node
        {**_deleted("us-n4", "p1.pack"), "how": "truncate"},  # not removed
    ],
    ids=["other-pack", "other-node", "truncated"],
)
def test_a_gc_skipping_a_node_for_a_pack_the_damage_did_not_delete_is_a_problem(
    damage: dict[str, object],
) -> None:
    checker = stress_check.Checker()
    checker.feed("chaos-0", damage)
    checker.feed("maintenance-0", _gc_skip("us-n4", "p1.pack"))
    checker.settle()
    assert len(checker.problems) == 1 and "gc skipped" in checker.problems[0]


@pytest.mark.slow
def test_a_short_stress_run_kills_processes_and_finds_no_problem(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPTS / "stress.py"), "--seed", "7", "--minutes", "0.2"]
    command += ["--workers", "2", "--maints", "1", "--damage", "--dir", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert "PROBLEMS: 0" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    kills = re.search(r"kills: worker (\d+), maintenance (\d+)", done.stdout)
    assert kills is not None and int(kills[1]) + int(kills[2]) > 0, done.stdout
    acked = re.search(r"acked: .*put (\d+)", done.stdout)
    assert acked is not None and int(acked[1]) > 0, done.stdout
    damaged = re.search(r"acked: damage (\d+)", done.stdout)  # files damaged, reads still exact
    assert damaged is not None and int(damaged[1]) > 0, done.stdout


@pytest.mark.slow
def test_the_watchdog_reports_a_hung_worker_and_a_hung_final_step_with_their_stacks(
    tmp_path: Path,
) -> None:
    command = [sys.executable, str(SCRIPTS / "stress.py"), "--seed", "7", "--minutes", "0.15"]
    command += ["--workers", "1", "--maints", "1", "--dir", str(tmp_path / "run")]
    command += ["--hang-seconds", "2", "--final-step-seconds", "3"]
    command += ["--plant-hang", "worker-0", "--plant-hang", "final"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    hung = re.search(
        r"worker-0 made no progress for \d+ s \(hung\); its last record: \{", done.stdout
    )
    assert hung is not None, done.stdout
    assert "in planted_hang" in done.stdout, done.stdout  # the stack dump, printed
    assert "final read of every key made no progress in 3 s (hung)" in done.stdout, done.stdout
    assert "in planted_hang" in (tmp_path / "run" / "final" / "final.stacks").read_text()
