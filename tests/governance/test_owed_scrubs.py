"""A forget or a registration that cannot reach another cell's approvals completes at home,
and leaves the scrub owed, recorded in the directory, for that cell's next opener or gc.

Real files and processes: a cell's approvals made unreadable by a newer schema stamp
(as a newer shardvault would leave them), child processes killed with SIGKILL.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from tests.governance.helpers import SERVICE, SUPPORT, US_COURT, as_, register

from governance_support import approve, ensure_approvers, forget_approved
from shardvault.config import load
from shardvault.errors import ApprovalRequired, NewerFormat, SubjectForgotten, VaultClosed
from shardvault.governance import Governance
from shardvault.governance.approval_record import HOMED_ELSEWHERE
from shardvault.governance.approval_schema import SCHEMA_VERSION
from shardvault.model import ObjectRef, local_context
from shardvault.sqlite_schema import stamp_schema
from shardvault.vault import Vault

ZED, KEY = "zed-4f2a9c", "chat/zed-private-71d3.log"


@pytest.fixture
def booked(config_path: Path) -> str:
    """An approval booked in US for ZED while ZED was registered nowhere (its id)."""
    with Vault.open(load(config_path)) as vault:
        register(vault, SERVICE, SUPPORT, US_COURT)
        ensure_approvers(vault.governance)
        with pytest.raises(ApprovalRequired) as caught:
            vault.get(ObjectRef("intl", ZED, KEY), ctx=as_(US_COURT, "lawful-request"))
    assert caught.value.approval_id is not None
    return caught.value.approval_id


def state(config_path: Path) -> Path:
    return config_path.parent / "state"


def stamp(config_path: Path, cell: str, version: int) -> None:
    """Stamp the cell's approvals with VERSION: above ours, no process of ours opens them."""
    with closing(sqlite3.connect(state(config_path) / "cells" / cell / "approvals.sqlite")) as db:
        db.execute(f"PRAGMA user_version={version}")


def registered_while_us_fails(config_path: Path) -> None:
    """ZED registered in EU while US's approvals could not be opened (stamped newer), so
    US owes the scrub; then US's files are back, untouched."""
    stamp(config_path, "US", 99)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", ZED, "EU")
        assert vault.subject("intl", ZED).jurisdiction == "EU"
        assert vault.directory.still_owed("intl", ZED) == ["US"]
    stamp(config_path, "US", SCHEMA_VERSION)


def approvals_bytes(config_path: Path, cell: str) -> bytes:
    files = (state(config_path) / "cells" / cell).glob("approvals.sqlite*")
    return b"".join(path.read_bytes() for path in sorted(files))


def directory_bytes(config_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(state(config_path).glob("directory.sqlite*")))


def owed(config_path: Path, subject: str = ZED) -> list[str]:
    with Vault.open(load(config_path)) as vault:
        return vault.directory.still_owed("intl", subject)


def assert_scrubbed(vault: Vault, config_path: Path, approval: str) -> None:
    left = vault.governance.approvals.get(approval)
    hasher = vault.governance.cell("US").hasher
    assert (left.subject, left.key) == (
        hasher.pseudonym("subject", ZED),
        hasher.pseudonym("key", KEY),
    )
    assert left.status == HOMED_ELSEWHERE
    raw = approvals_bytes(config_path, "US")
    assert ZED.encode() not in raw and KEY.encode() not in raw


def test_a_registration_completes_while_another_cells_approvals_fail_and_their_next_opener_scrubs(
    config_path: Path, booked: str
) -> None:
    # a registration took the id out of every other cell's approvals first: one cell whose
    # approvals could not be opened refused it, nothing registered
    registered_while_us_fails(config_path)
    assert ZED.encode() in approvals_bytes(config_path, "US")  # still to do
    assert ZED.encode() not in directory_bytes(config_path)  # the record names nobody
    with Vault.open(load(config_path)) as vault:
        assert_scrubbed(vault, config_path, booked)  # before the approval was read
    assert owed(config_path) == []


def test_a_forget_completes_while_another_cells_approvals_fail_and_gc_scrubs(
    config_path: Path, booked: str
) -> None:
    with Vault.open(load(config_path)) as vault:
        # a verdict signed, so the partner holds its record: while it holds none, every
        # cell's approvals are read to tell it missing from never made (not changed here)
        approve(vault.governance, booked)
    stamp(config_path, "US", 99)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", ZED, "EU")
        vault.put(ObjectRef("intl", ZED, "k"), b"zed")
        done = forget_approved(vault, "intl", ZED)
        assert (done.jurisdiction, done.versions_deleted, done.receipt != "") == ("EU", 1, True)
        assert done.unscrubbed_cells == ("US",)
        with pytest.raises(SubjectForgotten):
            vault.get(ObjectRef("intl", ZED, "k"))
        stamp(config_path, "US", SCHEMA_VERSION)
        assert ZED.encode() in approvals_bytes(config_path, "US")
        vault.gc(0)  # works off what a forget left owed
        assert vault.directory.still_owed("intl", ZED) == []
        assert_scrubbed(vault, config_path, booked)


def test_a_shardvault_from_before_owed_scrubs_refuses_to_list_or_sign_once_one_is_owed(
    config_path: Path, booked: str
) -> None:
    # `approval ls` and `approval sign` of a shardvault from before owed scrubs open no
    # directory, so they listed and signed an approval whose scrub a newer one owes, its
    # subject's id in clear. Both open the principal registry first (`Governance.open`),
    # which that shardvault (principals.SCHEMA_VERSION = 1, at 6650113^) checks with the
    # `stamp_schema` of today: `if found > version: raise NewerFormat(...)`. Its own
    # approvals book cannot be the gate: it is the file the scrub could not reach.
    registry = state(config_path) / "governance.sqlite"
    with closing(sqlite3.connect(registry)) as db:
        db.execute("PRAGMA user_version=1")  # as that shardvault left it
    registered_while_us_fails(config_path)  # US owes ZED's scrub, its book untouched
    assert ZED.encode() in approvals_bytes(config_path, "US")
    with (
        closing(sqlite3.connect(registry)) as db,
        pytest.raises(NewerFormat, match=r"has schema version 2; .* up to 1: upgrade"),
    ):
        stamp_schema(db, 1, "principal registry")  # the check that shardvault runs


def test_an_opener_that_cannot_read_the_record_uses_no_approval(
    config_path: Path, booked: str
) -> None:
    stamp(config_path, "US", 99)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", ZED, "EU")
    stamp(config_path, "US", SCHEMA_VERSION)
    with closing(sqlite3.connect(state(config_path) / "directory.sqlite")) as db:
        db.execute("PRAGMA user_version=99")  # a directory this shardvault cannot read
    governance = Governance.open(load(config_path))
    try:
        with pytest.raises(NewerFormat, match="subject directory"):
            governance.approvals.get(booked)
    finally:
        governance.close()
    assert ZED.encode() in approvals_bytes(config_path, "US")


CHILD = r"""
import os, signal, sys
from pathlib import Path
from shardvault.config import load
from shardvault.model import local_context
from shardvault.vault import Vault

config, action, subject, step, approval = sys.argv[1:6]
vault = Vault.open(load(Path(config)))
owner = {"destroy": vault.custodian}.get(step, vault.governance)  # whose call is the step

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, step, killed)  # SIGKILLed as that call begins
if action == "register":
    vault.register_subject("intl", subject, "EU")
else:
    vault.forget("intl", subject, local_context("forget-subject", approval_id=approval))
print("not killed", flush=True)
"""


def killed_at(config_path: Path, step: str, action: str, subject: str, approval: str = "") -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(config_path), action, subject, step, approval],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr


def cli(config_path: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shardvault.cli.app", "--config", str(config_path), *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_registration_killed_after_its_record_is_scrubbed_by_two_openers_at_once(
    config_path: Path, booked: str
) -> None:
    killed_at(config_path, "subject_homed", "register", ZED)  # recorded, not tried
    assert ZED.encode() in approvals_bytes(config_path, "US")
    assert owed(config_path) == ["SG", "US"]
    listing = [cli(config_path, "approval", "ls", "--all") for _ in range(2)]
    for process in listing:
        shown, said = process.communicate(timeout=120)
        assert process.returncode == 0, said
        assert booked in shown and ZED not in shown
    assert owed(config_path) == ["SG"]  # SG has no approvals: gc's to drop
    with Vault.open(load(config_path)) as vault:
        assert_scrubbed(vault, config_path, booked)
        vault.gc(0)
        assert vault.directory.still_owed("intl", ZED) == []


def test_a_forget_killed_after_its_record_leaves_it_for_the_run_again(
    config_path: Path,
) -> None:
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        with pytest.raises(ApprovalRequired) as caught:
            vault.forget("intl", "alice")
        assert caught.value.approval_id is not None
        approve(vault.governance, caught.value.approval_id)
    # just before the custodian's destroy (recorded), and once the home cell is done
    for step in ("destroy", "forget_subject"):
        killed_at(config_path, step, "forget", "alice", caught.value.approval_id)
        assert owed(config_path, "alice") == ["EU", "SG"]
    with Vault.open(load(config_path)) as vault:  # the forget, run again, finishes it
        done = forget_approved(vault, "intl", "alice")
        assert done.unscrubbed_cells == ()
        assert vault.directory.still_owed("intl", "alice") == []


def test_a_registration_completes_while_another_cells_pseudonym_key_is_lost(
    config_path: Path, booked: str
) -> None:
    key = state(config_path) / "cells" / "US" / "audit" / "hmac.key"
    kept = key.read_bytes()
    key.write_bytes(kept[:8])  # damaged: no pseudonym can be made with it
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", ZED, "EU")
        assert vault.directory.still_owed("intl", ZED) == ["US"]
    assert ZED.encode() in approvals_bytes(config_path, "US")
    key.write_bytes(kept)  # restored from a backup
    with Vault.open(load(config_path)) as vault:
        assert_scrubbed(vault, config_path, booked)
        assert vault.directory.still_owed("intl", ZED) == []


def test_a_process_that_opened_the_approvals_before_the_record_works_it_off_before_use(
    config_path: Path, booked: str
) -> None:
    # a long-lived process (a library user's vault) opened US's approvals before a
    # registration elsewhere recorded that they owe a scrub it could not make
    with Vault.open(load(config_path)) as early:
        assert early.governance.approvals.get(booked).subject == ZED
        registered_while_us_fails(config_path)
        listed = early.governance.approvals.all("US")
        assert [a.subject for a in listed] == [
            early.governance.cell("US").hasher.pseudonym("subject", ZED)
        ]
        assert_scrubbed(early, config_path, booked)
    assert owed(config_path) == []


def test_gc_works_off_every_cell_it_can_reach_though_one_cells_approvals_fail(
    config_path: Path, booked: str
) -> None:
    # gc worked the cells off in turn and stopped at the first that failed: EU's damaged
    # approvals kept US's owed scrub, and the subject's id in clear there, until EU's repair
    stamp(config_path, "EU", 99)
    stamp(config_path, "US", 99)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", ZED, "SG")
        assert vault.directory.still_owed("intl", ZED) == ["EU", "US"]
    stamp(config_path, "US", SCHEMA_VERSION)  # US's files back, EU's not
    assert ZED.encode() in approvals_bytes(config_path, "US")
    governance = Governance.open(load(config_path))
    try:
        with pytest.raises(NewerFormat, match="approvals of cell EU"):
            governance.settle_owed_scrubs()  # gc's: fails naming EU, after the others
    finally:
        governance.close()
    assert ZED.encode() not in approvals_bytes(config_path, "US")
    assert owed(config_path) == ["EU"]


def test_an_owed_scrub_stays_recorded_until_the_old_page_is_overwritten(
    config_path: Path, booked: str
) -> None:
    # a reader of US's approvals (another process's read) held the WAL, so the scrub's
    # checkpoint could not copy its pages into the file: the row was dropped while the
    # file still held the old page with the id, and no later run took it out
    registered_while_us_fails(config_path)
    path = state(config_path) / "cells" / "US" / "approvals.sqlite"
    with closing(sqlite3.connect(path, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM approvals").fetchone()  # its snapshot
        with Vault.open(load(config_path)) as vault:
            vault.governance.approvals.get(booked)  # works off, the checkpoint blocked
        assert ZED.encode() not in path.read_bytes() or owed(config_path) == ["US"]
        reader.execute("COMMIT")
        with Vault.open(load(config_path)) as vault:
            assert_scrubbed(vault, config_path, booked)
    assert owed(config_path) == []


def test_a_scrub_that_answers_after_the_close_opens_no_directory_and_drops_no_row(
    config_path: Path, booked: str
) -> None:
    # a scrub thread given up on (its disk hung) that answered after the vault closed
    # opened the directory again, which nothing closed then, and dropped the row through it
    stamp(config_path, "US", 99)
    vault = Vault.open(load(config_path))
    vault.register_subject("intl", ZED, "EU")
    book, hasher = vault.governance.approvals, vault.governance.cell("US").hasher
    vault.close()
    stamp(config_path, "US", SCHEMA_VERSION)  # the hung disk answers
    with pytest.raises(VaultClosed, match="the vault was closed"):
        book.scrub_apart("US", "intl", ZED, lambda: hasher.pseudonym, homed_elsewhere=True)
    assert owed(config_path) == ["US"]  # left for the next opener, who finds it done
    with Vault.open(load(config_path)) as again:
        assert_scrubbed(again, config_path, booked)
    assert owed(config_path) == []


def test_a_listing_asks_the_record_once_per_cell_not_once_per_approval(
    config_path: Path, booked: str
) -> None:
    # `approval ls` read each listed approval through the book's use, which asks the
    # directory what the cell owes: one query of `owed_scrubs` per approval listed
    governance = Governance.open(load(config_path))
    try:
        book = governance.approvals
        first = book.get(booked)
        for n in range(5):
            book.create(replace(first, id=book.new_id("US"), request_id=f"more-{n}"))
        directory = book.owed.directory()
        assert directory is not None
        asked: list[str] = []
        directory._db.set_trace_callback(asked.append)
        assert len(book.all()) == 6
        assert len([sql for sql in asked if "owed_scrubs" in sql]) <= len(governance.cells)
    finally:
        governance.close()


def schema(path: Path) -> tuple[int, bool]:
    """The file's user_version, and whether it has the table of owed scrubs."""
    with closing(sqlite3.connect(path)) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        table = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'owed_scrubs'").fetchone()
        return int(version), table is not None


def test_a_listing_leaves_a_directory_of_schema_1_as_it_is(config_path: Path, booked: str) -> None:
    # `approval ls`, a read, migrated the directory to schema 2 as it asked it what the
    # cells owe; a file of schema 1 has no such table, so it owes nothing
    path = state(config_path) / "directory.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE owed_scrubs")
        db.execute("PRAGMA user_version=1")  # as a shardvault of schema 1 left it
    listing = cli(config_path, "approval", "ls", "--all")
    shown, said = listing.communicate(timeout=120)
    assert listing.returncode == 0, said
    assert booked in shown and ZED in shown  # nothing owed: shown as booked
    assert schema(path) == (1, False)
    governance = Governance.open(load(config_path))  # a process of governance alone
    try:
        assert sorted(governance.owe_scrubs("EU", "intl", ZED)) == ["SG", "US"]  # migrates it
    finally:
        governance.close()
    assert schema(path) == (2, True)
    assert owed(config_path) == ["SG", "US"]


def test_a_forget_whose_home_approvals_a_reader_holds_leaves_their_scrub_owed(
    config_path: Path,
) -> None:
    # the home cell's own scrub ignored whether its WAL's truncation completed: another
    # process's read snapshot kept the old page, the id in it, in the file, and nothing
    # recorded that it was owed (another cell's scrub stays owed until it completes)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ObjectRef("intl", "alice", "k"), b"alice's")
    path = state(config_path) / "cells" / "US" / "approvals.sqlite"
    with closing(sqlite3.connect(path, isolation_level=None)) as reader:
        with Vault.open(load(config_path)) as vault:
            with pytest.raises(ApprovalRequired) as caught:
                vault.forget("intl", "alice")  # its approval names alice, in US
            assert caught.value.approval_id is not None
            approve(vault.governance, caught.value.approval_id)
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM approvals").fetchone()  # its snapshot
            done = forget_approved(
                vault, "intl", "alice",
                local_context("forget-subject", approval_id=caught.value.approval_id),
            )  # fmt: skip
        assert b"alice" not in approvals_bytes(config_path, "US") or (
            done.unscrubbed_cells == ("US",) and owed(config_path, "alice") == ["US"]
        )
        reader.execute("COMMIT")
    assert owed(config_path, "alice") == ["US"]
    with Vault.open(load(config_path)) as vault:
        vault.gc(0)  # works it off: the truncation completes now
    assert b"alice" not in approvals_bytes(config_path, "US")
    assert owed(config_path, "alice") == []


def test_gc_drops_no_row_recorded_after_it_looked_for_the_cells_book(
    config_path: Path, booked: str
) -> None:
    # gc looked for SG's book, found none, then read SG's rows and dropped them all: a
    # row recorded in between, for a book made in between, went with them, and the
    # approval there kept naming the subject (fails so with settle_owed of 93d9f4b^).
    # Another opener acts during the look: the one seam at which that interleaving can
    # be forced rather than waited for.
    governance, other = Governance.open(load(config_path)), Governance.open(load(config_path))
    try:
        template = governance.approvals.get(booked)
        path = governance.approvals._path("SG")

        class Meanwhile(type(path)):  # type: ignore[misc]
            def exists(self, *, follow_symlinks: bool = True) -> bool:
                found = super().exists()
                if self == path:  # then: an approval booked in SG while ZED had no home,
                    other.approvals.create(replace(template, id=other.approvals.new_id("SG"),
                                                   jurisdiction="SG"))  # fmt: skip
                    directory = other.approvals.owed.directory()
                    assert directory is not None
                    directory.add("intl", ZED, "EU")  # and ZED registered in EU since,
                    directory.owe_scrubs("intl", ZED, ["SG"])  # SG not reached
                return found

        governance.approvals._path = lambda code: Meanwhile(path.parent.parent / code / path.name)
        governance.approvals.settle_owed("SG")  # gc's, for SG
    finally:
        governance.close()
        other.close()
    assert ZED.encode() in approvals_bytes(config_path, "SG")
    assert owed(config_path) == ["SG"]  # not dropped: the book names ZED
