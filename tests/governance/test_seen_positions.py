"""The partner's witness refuses a head that does not hold the audit entries its custodian
saw durable: a log cut or rewritten since the last cosigned head (docs/trust-model.md)."""

from __future__ import annotations

import dataclasses
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli.test_cli import Cli

from conftest import make_deployment
from shardvault.audit import AuditEntry, AuditLog, Checkpoint, sign_checkpoint
from shardvault.audit.merkle import leaf_hash
from shardvault.config import load
from shardvault.governance.seen import SeenFile
from shardvault.model import ObjectRef
from shardvault.vault import Vault


def holding_a_note(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    """The CLI on a deployment where intl/alice (US) holds key ``note`` = b"hello"."""
    cli = Cli(make_deployment(tmp_path / "deploy"), capsysbinary)
    cli.ok("subject", "add", "intl", "alice", "-j", "US")
    note = tmp_path / "note.txt"
    note.write_bytes(b"hello")
    cli.ok("put", "intl", "alice", "note", str(note))
    return cli


@pytest.fixture
def cli(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    return holding_a_note(tmp_path, capsysbinary)


def log_dir(cli: Cli, cell: str = "US") -> Path:
    return cli.config.parent / "state" / "cells" / cell / "audit" / "log"


def log_entries(directory: Path) -> list[bytes]:
    with AuditLog.open(directory) as log:
        return list(log.iter_entry_bytes())


def rewrite_log(directory: Path, entries: list[bytes]) -> None:
    """What an operator holding the log's files can do unnoticed by the log itself: write
    them again holding ENTRIES, with the heads stored so far (whose entries it keeps)."""
    fresh = directory.with_name("rewritten")
    with AuditLog.open(fresh) as log:
        log.append_many([AuditEntry.from_bytes(raw) for raw in entries])
    shutil.copytree(directory / "heads", fresh / "heads", dirs_exist_ok=True)
    shutil.rmtree(directory)
    fresh.rename(directory)


def other_entry(raw: bytes, n: int) -> bytes:
    """An entry the operator could write in place of RAW: the same request, another result."""
    entry = AuditEntry.from_bytes(raw)
    return dataclasses.replace(entry, request_id=f"forged-{n}", result="refused").to_bytes()


def gets(cli: Cli, count: int) -> list[int]:
    """COUNT gets, each a process's whole run (the vault opened and closed); the indexes of
    the entries they wrote."""
    before = len(log_entries(log_dir(cli)))
    for _ in range(count):
        assert cli.ok("get", "intl", "alice", "note") == b"hello"
    return list(range(before, len(log_entries(log_dir(cli)))))


def test_a_log_cut_after_the_last_cosigned_head_is_refused(cli: Cli) -> None:
    # the gap: the witness checked only that a head extends its last one, so entries
    # written since could be cut, and the shorter log's head was cosigned
    cli.ok("audit", "head", "--cell", "US")
    written = gets(cli, 3)
    entries = log_entries(log_dir(cli))
    rewrite_log(log_dir(cli), entries[: written[0]])  # the three reads' entries cut
    error = cli.fails(1, "audit", "head", "--cell", "US")
    assert f"entry {written[0]} " in error and "missing" in error


def test_an_entry_rewritten_in_the_middle_is_refused(cli: Cli) -> None:
    cli.ok("audit", "head", "--cell", "US")
    written = gets(cli, 3)
    entries = log_entries(log_dir(cli))
    # the decision of the middle read, written again: the size stays, its root changes
    changed = written[1]
    middle = next(i for i in range(changed, len(entries)) if b'"decision":"allow"' in entries[i])
    entries[middle] = other_entry(entries[middle], 0)
    rewrite_log(log_dir(cli), entries)
    error = cli.fails(1, "audit", "head", "--cell", "US")
    assert f"entry {middle} " in error and "not the one" in error


def test_a_log_cut_and_grown_again_to_the_same_size_is_refused(cli: Cli) -> None:
    cli.ok("audit", "head", "--cell", "US")
    written = gets(cli, 3)
    entries = log_entries(log_dir(cli))
    cut = written[0]
    regrown = entries[:cut] + [other_entry(raw, n) for n, raw in enumerate(entries[cut:])]
    rewrite_log(log_dir(cli), regrown)
    assert len(log_entries(log_dir(cli))) == len(entries)
    error = cli.fails(1, "audit", "head", "--cell", "US")
    assert f"entry {cut} " in error


def seen_positions(cli: Cli, cell: str = "US") -> dict[int, bytes]:
    """What the partner holds, read as its witness does."""
    return SeenFile(cli.config.parent / "partner" / "seen").read(cell).positions


def test_a_head_over_the_reads_cosigns_and_the_partner_forgets_what_it_covered(
    cli: Cli,
) -> None:
    written = gets(cli, 3)
    entries = log_entries(log_dir(cli))
    held = seen_positions(cli)
    # each read's unwrap showed the custodian its decision entry: index and leaf hash
    reads = [i for i in written if b'"action":"read","decision":"allow"' in entries[i]]
    assert len(reads) == 3 and set(reads) <= set(held)
    assert all(held[i] == leaf_hash(entries[i]) for i in held)
    cli.ok("audit", "head", "--cell", "US")
    assert seen_positions(cli) == {}


READER = """
import os, signal, sys
from pathlib import Path
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.vault import Vault

vault = Vault.open(load(Path(sys.argv[1])))
seen = vault.governance.partner.seen
seen.interval = 3600  # written out only on close (or as asked below)
for _ in range(int(sys.argv[2])):
    vault.get(ObjectRef("intl", "alice", "note"))
print(len(seen.file.read("US").positions), flush=True)  # none written out yet
if sys.argv[3] == "kill":
    seen.write_out()
    os.kill(os.getpid(), signal.SIGKILL)
vault.close()
"""


def read_in_process(cli: Cli, count: int, end: str = "close") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", READER, str(cli.config), str(count), end],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_positions_are_written_out_on_close_and_outlive_the_process(cli: Cli) -> None:
    cli.ok("audit", "head", "--cell", "US")
    before = len(log_entries(log_dir(cli)))
    reader = read_in_process(cli, 4)
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err.decode()[-2000:]
    assert out == b"0\n"  # held in memory while it ran
    assert len([i for i in seen_positions(cli) if i >= before]) == 4  # its close wrote them
    rewrite_log(log_dir(cli), log_entries(log_dir(cli))[:before])
    error = cli.fails(1, "audit", "head", "--cell", "US")
    assert f"entry {before} " in error


def test_several_processes_reading_at_once_are_all_held_to_the_log(cli: Cli) -> None:
    cli.ok("audit", "head", "--cell", "US")
    before = len(log_entries(log_dir(cli)))
    readers = [read_in_process(cli, 15) for _ in range(3)]
    for reader in readers:
        _, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err.decode()[-2000:]
    entries = log_entries(log_dir(cli))
    held = seen_positions(cli)
    assert len(held) == 45 and min(held) >= before  # the head dropped what it covered
    assert all(held[i] == leaf_hash(entries[i]) for i in held)
    last = max(held)
    entries[last] = other_entry(entries[last], 0)  # one process's last read, rewritten
    rewrite_log(log_dir(cli), entries)
    error = cli.fails(1, "audit", "head", "--cell", "US")
    assert f"entry {last} " in error


def test_positions_written_out_before_a_kill_9_survive_it(cli: Cli) -> None:
    cli.ok("audit", "head", "--cell", "US")
    before = len(log_entries(log_dir(cli)))
    reader = read_in_process(cli, 3, "kill")
    reader.communicate(timeout=120)
    assert reader.returncode == -signal.SIGKILL
    assert len([i for i in seen_positions(cli) if i >= before]) == 3
    rewrite_log(log_dir(cli), log_entries(log_dir(cli))[:before])
    error = cli.fails(1, "audit", "head", "--cell", "US")
    assert f"entry {before} " in error


def test_a_head_taken_before_a_read_is_cosigned_and_the_read_waits_for_the_next(
    cli: Cli,
) -> None:
    # a position written out after the head was taken may be past it: not a cut
    with Vault.open(load(cli.config)) as vault:
        governance = vault.governance
        cell, partner = governance.cell("US"), governance.partner
        with partner.turn("US") as seen:
            note = sign_checkpoint(cell.log.checkpoint(cell.origin), cell.signer)
            vault.get(ObjectRef("intl", "alice", "note"))
            partner.seen.write_out()
            partner.cosign(cell, note, 1, seen)
        size = Checkpoint.parse(note.text).size
        pending = partner.seen.file.read("US").positions
        assert pending and min(pending) >= size  # kept for the next head
    entries = log_entries(log_dir(cli))
    read = min(pending)
    entries[read] = other_entry(entries[read], 0)
    rewrite_log(log_dir(cli), entries)
    error = cli.fails(1, "audit", "head", "--cell", "US")
    assert f"entry {read} " in error


def test_a_position_written_out_after_a_head_covered_it_is_still_checked(cli: Cli) -> None:
    # a process whose positions were not yet written out when a head was cosigned (the
    # window a kill -9 leaves open): once they are, the next head must still hold them
    vault = Vault.open(load(cli.config))
    try:
        vault.governance.partner.seen.interval = 3600
        vault.get(ObjectRef("intl", "alice", "note"))
        vault.governance.release_logs()
        entries = log_entries(log_dir(cli))
        read = max(i for i, raw in enumerate(entries) if b'"action":"read"' in raw)
        entries[read] = other_entry(entries[read], 0)
        rewrite_log(log_dir(cli), entries)
        cli.ok("audit", "head", "--cell", "US")  # the partner held no position of it yet
    finally:
        vault.close()  # writes it out
    assert read in seen_positions(cli)
    error = cli.fails(1, "audit", "head", "--cell", "US")
    assert f"entry {read} " in error and "not the one" in error


def test_a_head_first_writes_out_the_positions_its_process_holds(cli: Cli) -> None:
    # a forget's receipt takes a head in the process that just destroyed the key: its
    # position must be checked by that head, not left in memory for a later one
    cli.ok("audit", "head", "--cell", "US")
    with Vault.open(load(cli.config)) as vault:
        vault.governance.partner.seen.interval = 3600
        vault.get(ObjectRef("intl", "alice", "note"))
        assert seen_positions(cli) == {}  # held in memory
        vault.governance.publish_head("US")
        assert seen_positions(cli) == {}  # written out, checked and forgotten by the head
        assert vault.governance.partner.seen.written_out == 1
    assert seen_positions(cli) == {}  # nothing left for close to write
