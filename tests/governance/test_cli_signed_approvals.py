"""Approvers sign through the CLI with their own key (`--signing-key`), and make one
(`approval keygen`): what the partner's custodian will count is settled at sign time."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import re
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.cli.test_cli import Cli
from tests.governance.test_cli_governance import add, key_of
from tests.governance.test_signed_approvals import APPROVAL, book_of_schema_1, user_version

from conftest import make_deployment
from shardvault.config import load
from shardvault.custodian_policy import load_custodian_policy
from shardvault.demo import DEMO_APPROVERS
from shardvault.governance import Governance
from shardvault.governance.approval_signatures import load_signing_key, verifies

OFFICERS = {"dpo": "employee", "partner-officer": "partner-auditor"}


@pytest.fixture
def cli(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    """A demo deployment whose config names a third approver, `cfo`, the partner holds
    no key for; alice is registered, and the officers have tokens."""

    def three_approvers(text: str) -> str:
        return text.replace('approvers = ["dpo", "partner-officer"', 'approvers = ["dpo", '
                            '"partner-officer", "cfo"')  # fmt: skip

    cli = Cli(make_deployment(tmp_path / "deploy", edit=three_approvers), capsysbinary)
    cli.ok("subject", "add", "intl", "alice", "-j", "US")
    return cli


def tokens(cli: Cli, *idents: str) -> dict[str, str]:
    kinds = {**OFFICERS, "cfo": "employee"}
    return {ident: add(cli, ident, "--kind", kinds[ident], "--location", "US") for ident in idents}


def pending_forget(cli: Cli) -> str:
    return cli.fails(1, "forget", "intl", "alice").rsplit("--approval ", 1)[1]


def pending_listing(cli: Cli, court: str) -> str:
    """The approval a court's `ls` of alice (a lawful request) is sent for."""
    said = cli.fails(1, "--token", court, "--purpose", "lawful-request", "ls", "intl", "alice")
    return said.rsplit("--approval ", 1)[1]


def verdicts(cli: Cli, approval: str) -> list[dict[str, object]]:
    (shown,) = [a for a in cli.json("approval", "ls", "--all") if a["id"] == approval]
    return list(shown["signatures"])


def audited_rules(cli: Cli, approval: str) -> list[str]:
    governance = Governance.open(load(cli.config))
    try:
        entries = governance.entries("US", governance.cell("US").log.size)
    finally:
        governance.close()
    return [e.rule for e in entries if e.details.get("approval_id") == approval]


def test_a_verdict_is_signed_with_the_approvers_key_and_verifies(cli: Cli) -> None:
    token = tokens(cli, "dpo")["dpo"]
    approval = pending_forget(cli)
    code, _, said = cli("--token", token, "approval", "approve", approval, "--signing-key",
                        key_of(cli, "dpo"))  # fmt: skip
    assert code == 0 and f"{approval}: approve recorded, signed; 1 of 2, now pending" in said
    (verdict,) = verdicts(cli, approval)
    assert (verdict["approver"], verdict["verdict"], verdict["signed"]) == ("dpo", "approve", True)
    policy = load_custodian_policy(load(cli.config).base_dir / "partner" / "custodian-policy.toml")
    governance = Governance.open(load(cli.config))
    try:
        stored = governance.approvals.get(approval)
    finally:
        governance.close()
    signature = stored.signature_of("dpo")
    assert signature is not None
    assert verifies(policy.approvers["dpo"], stored, "dpo", "approve", signature)


def test_an_approver_the_partner_holds_a_key_for_must_sign_with_it(
    cli: Cli, tmp_path: Path
) -> None:
    token = tokens(cli, "dpo", "partner-officer")["dpo"]
    approval = pending_forget(cli)
    said = cli.fails(2, "--token", token, "approval", "approve", approval)
    assert "dpo must sign" in said and "--signing-key" in said
    stranger = tmp_path / "stranger.skey"
    cli.ok("approval", "keygen", str(stranger))
    for key in (stranger, Path(key_of(cli, "partner-officer"))):
        for verdict in ("approve", "deny"):
            said = cli.fails(1, "--token", token, "approval", verdict, approval,
                             "--signing-key", str(key))  # fmt: skip
            assert "not the one the partner's custodian policy holds for dpo" in said
            assert "(approval:signing-key)" in said  # the rule, as every refusal names it
    assert verdicts(cli, approval) == []  # nothing recorded
    assert audited_rules(cli, approval).count("approval:signing-key") == 4


def test_bad_key_files_are_one_line_and_exit_2_with_nothing_signed(
    cli: Cli, tmp_path: Path
) -> None:
    token = tokens(cli, "dpo")["dpo"]
    approval = pending_forget(cli)
    pem = Path(key_of(cli, "dpo")).read_bytes()
    fifo = tmp_path / "fifo.skey"
    os.mkfifo(fifo)
    readable = tmp_path / "readable.skey"
    readable.write_bytes(pem)
    readable.chmod(0o644)
    text = tmp_path / "text.skey"
    text.write_text("dpo's key\n")
    text.chmod(0o600)
    cases = {
        "": "--signing-key is empty",
        str(tmp_path / "missing.skey"): "No such file",
        str(tmp_path): "Is a directory",
        str(fifo): "named FIFO",
        str(readable): "can be read by others (mode 644)",
        str(text): "not a PEM private key",
        "/dev/null": "not a regular file",
    }
    for path, message in cases.items():
        said = cli.fails(2, "--token", token, "approval", "approve", approval,
                         "--signing-key", path)  # fmt: skip
        assert message in said, (path, said)
    assert verdicts(cli, approval) == []
    assert "approval:approve" not in audited_rules(cli, approval)


def test_an_approver_the_partner_holds_no_key_for_is_counted_by_the_operator_only(
    cli: Cli, tmp_path: Path
) -> None:
    # a court's listing, which uses no key: the custodian never counts its approval
    # (a forget's names no approver it holds no key for: test_tenant_approvers)
    cfo = tokens(cli, "cfo")["cfo"]
    court = add(cli, "us-doj", "--kind", "external-requester", "--location", "US",
                "--authority", "us-doj", "--authority-country", "US")  # fmt: skip
    first, second = pending_listing(cli, court), pending_listing(cli, court)
    assert "cfo" in cli.json("approval", "ls")[0]["approvers"]
    code, _, said = cli("--token", cfo, "approval", "approve", first)
    assert code == 0 and "approve recorded, not signed; 1 of 2" in said
    key = tmp_path / "cfo.skey"
    cli.ok("approval", "keygen", str(key))
    code, _, said = cli("--token", cfo, "approval", "deny", second, "--signing-key", str(key))
    assert code == 0 and "deny recorded, signed (the partner's custodian holds no key for " in said
    assert [v["signed"] for v in verdicts(cli, first) + verdicts(cli, second)] == [False, True]


def test_keygen_writes_a_private_key_and_prints_its_public_key(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "new.skey"
    code, out, said = cli("approval", "keygen", str(path), config=False)
    assert code == 0 and "keep it to yourself" in said
    assert path.stat().st_mode & 0o777 == 0o600
    public = load_signing_key(path).public_key().public_bytes_raw()
    assert base64.b64decode(out.decode().strip(), validate=True) == public
    before = path.read_bytes()
    assert "already exists" in cli.fails(2, "approval", "keygen", str(path))
    assert path.read_bytes() == before
    shown = cli.json("approval", "keygen", str(tmp_path / "other.skey"))
    assert shown["private_key"] == str(tmp_path / "other.skey")
    assert base64.b64decode(shown["public_key"]) != public
    assert "is not a directory" in cli.fails(2, "approval", "keygen", str(tmp_path / "x" / "k"))
    assert "FILE is empty" in cli.fails(2, "approval", "keygen", "")


@pytest.mark.parametrize("where", [".", "/"])
def test_keygen_to_a_path_that_names_no_file_is_exit_2(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Found by the argv fuzz test: `approval keygen .` was a ValueError traceback (a
    temporary file named after a path with no name)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    said = cli.fails(2, "approval", "keygen", where)
    assert f"{where} names a directory, not a file: choose a file in it" in said
    assert list(here.iterdir()) == []  # no temporary left behind


def test_the_demo_gives_each_approver_a_key_the_partner_holds(tmp_path: Path) -> None:
    config = load(make_deployment(tmp_path / "deploy"))
    policy = load_custodian_policy(config.base_dir / "partner" / "custodian-policy.toml")
    assert config.governance is not None
    named = {ident for idents in DEMO_APPROVERS.values() for ident in idents}
    assert set(policy.approvers) == set(config.governance.approvers) == named
    assert set(OFFICERS) == set(DEMO_APPROVERS["intl"]) and len(named) == 4
    assert policy.approval_quorum == config.governance.approval_quorum == 2
    assert policy.approver_tenants == {
        ident: frozenset({tenant}) for tenant, idents in DEMO_APPROVERS.items() for ident in idents
    }
    approvers = config.base_dir / "approvers"
    assert approvers.stat().st_mode & 0o777 == 0o700
    for ident in named:
        path = approvers / f"{ident}.skey"
        assert path.stat().st_mode & 0o777 == 0o600
        public = load_signing_key(path).public_key().public_bytes_raw()
        assert policy.approvers[ident] == public
    assert not list((config.base_dir / "partner").glob("*.skey"))  # not the partner's to hold


def test_a_verdict_the_partner_cannot_keep_is_one_line_exit_1_and_recorded_nowhere(
    cli: Cli,
) -> None:
    """Its record of signed verdicts lost (the books hold one): a veto it cannot keep
    would stand only on the operator's book, so it is refused, and not audited."""
    token = tokens(cli, "dpo", "partner-officer")
    approval = pending_forget(cli)
    cli.ok("--token", token["dpo"], "approval", "approve", approval, "--signing-key",
           key_of(cli, "dpo"))  # fmt: skip
    record = load(cli.config).base_dir / "partner" / "verdicts.sqlite"
    record.unlink()
    said = cli.fails(1, "--token", token["partner-officer"], "approval", "deny", approval,
                     "--signing-key", key_of(cli, "partner-officer"))  # fmt: skip
    assert "the partner's record of signed verdicts" in said and "restore it" in said
    assert [v["approver"] for v in verdicts(cli, approval)] == ["dpo"]
    assert "approval:deny" not in audited_rules(cli, approval)
    assert not record.exists()


def test_a_request_a_veto_binds_is_one_line_exit_1_naming_the_denial_and_its_lapse(
    cli: Cli,
) -> None:
    """The guard opens no approval for a request a signed denial binds: it says which
    denial, and when it lapses (the demo partner's 30 days), so the requester knows."""
    token = tokens(cli, "partner-officer")
    denied = pending_forget(cli)
    cli.ok("--token", token["partner-officer"], "approval", "deny", denied,
           "--signing-key", key_of(cli, "partner-officer"))  # fmt: skip
    asked = {a["id"] for a in cli.json("approval", "ls", "--all")}
    said = cli.fails(1, "forget", "intl", "alice")
    assert said.startswith(
        f"error: forget refused (approval:vetoed): approval {denied} for the same request was "
        "denied by partner-officer (a signed denial the partner holds), a veto that stands until "
    )
    until = datetime.strptime(said.rsplit(" ", 1)[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    lapses_in = until.timestamp() - time.time()
    assert 30 * 86400 - 600 < lapses_in <= 30 * 86400
    assert {a["id"] for a in cli.json("approval", "ls", "--all")} == asked  # none opened
    cli.ok("subject", "add", "intl", "bob", "-j", "US")
    assert "--approval apr-us-" in cli.fails(1, "forget", "intl", "bob")  # bob's: asked


def test_an_approval_left_outside_the_subjects_home_is_shown_so_and_not_signed(
    cli: Cli,
) -> None:
    """Asked while bob was registered nowhere (in US, the first cell that needs one), left
    there with pseudonyms once bob is homed in EU: `approval ls` showed it pending, and
    `approval approve` signed it, exit 0, up to met, though it covers nothing of his."""
    token = tokens(cli, "dpo")
    left = cli.fails(1, "forget", "intl", "bob").rsplit("--approval ", 1)[1]
    assert left.startswith("apr-us-")
    cli.ok("subject", "add", "intl", "bob", "-j", "EU")
    assert left not in {a["id"] for a in cli.json("--token", token["dpo"], "approval", "ls")}
    assert left.encode() not in cli.ok("approval", "ls")
    (shown,) = [a for a in cli.json("approval", "ls", "--all") if a["id"] == left]
    assert (shown["status"], shown["signatures"]) == ("homed-elsewhere", [])
    assert str(shown["subject"]).startswith("hmac-sha256:")
    said = cli.fails(1, "--token", token["dpo"], "approval", "approve", left, "--signing-key",
                     key_of(cli, "dpo"))  # fmt: skip
    assert said.startswith(f"error: approval {left} can no longer be signed")
    assert "EU" not in said and "bob" not in said
    assert audited_rules(cli, left)[-1] == "approval:homed-elsewhere"
    assert verdicts(cli, left) == []


def test_an_approval_left_outside_the_subjects_home_used_says_to_ask_there(cli: Cli) -> None:
    """Met while bob was registered nowhere, used once he is homed in EU: one line, exit
    1, that says why and what to do, naming no cell of his."""
    token = tokens(cli, "dpo", "partner-officer")
    left = cli.fails(1, "forget", "intl", "bob").rsplit("--approval ", 1)[1]
    for who in ("dpo", "partner-officer"):
        cli.ok("--token", token[who], "approval", "approve", left, "--signing-key",
               key_of(cli, who))  # fmt: skip
    cli.ok("subject", "add", "intl", "bob", "-j", "EU")
    said = cli.fails(1, "--approval", left, "forget", "intl", "bob")
    assert said.startswith(f"error: forget refused (approval:homed-elsewhere): approval {left}")
    assert said.endswith("run the request again without --approval") and "EU" not in said
    assert "--approval apr-eu-" in cli.fails(1, "forget", "intl", "bob")  # asked there


def test_an_approval_a_veto_binds_shows_as_vetoed_and_takes_no_approve(cli: Cli) -> None:
    """The gap: the forget asked before the denial of the same forget still listed as
    pending, and took dpo's signed approve, which the custodian would never count."""
    token = tokens(cli, "dpo", "partner-officer")
    opened_before, denied = pending_forget(cli), pending_forget(cli)
    cli.ok("--token", token["partner-officer"], "approval", "deny", denied,
           "--signing-key", key_of(cli, "partner-officer"))  # fmt: skip
    (shown,) = [a for a in cli.json("approval", "ls") if a["id"] == opened_before]
    assert shown["status"] == "vetoed"
    vetoed_by = shown["vetoed_by"]
    assert (vetoed_by["approval"], vetoed_by["approver"]) == (denied, "partner-officer")
    assert [a["vetoed_by"] for a in cli.json("approval", "ls", "--all") if a["id"] == denied] == [
        None  # denied itself, and shown so
    ]
    table = cli.ok("approval", "ls").decode()
    (row,) = [line for line in table.splitlines() if opened_before in line]
    assert "vetoed" in row and "pending" not in row
    said = cli.fails(1, "--token", token["dpo"], "approval", "approve", opened_before,
                     "--signing-key", key_of(cli, "dpo"))  # fmt: skip
    assert said == (
        f"error: verdict on {opened_before} refused (approval:vetoed): approval {denied} for the "
        "same request was denied by partner-officer (a signed denial the partner holds), a veto "
        f"that stands until {vetoed_by['until']}"
    )
    assert verdicts(cli, opened_before) == []
    assert "approval:vetoed" in audited_rules(cli, opened_before)
    record = load(cli.config).base_dir / "partner" / "verdicts.sqlite"
    kept = record.rename(record.with_suffix(".kept"))  # lost: listed as the book has it,
    code, out, said = cli("approval", "ls", "--json")  # for the partner to look them over
    assert code == 0 and said.startswith("warning: the partner's record of signed verdicts")
    assert "an approval a signed denial binds shows as pending or approved" in said
    assert [a["status"] for a in json.loads(out) if a["id"] == opened_before] == ["pending"]
    kept.rename(record)
    cli.ok("--token", token["dpo"], "approval", "deny", opened_before,
           "--signing-key", key_of(cli, "dpo"))  # fmt: skip
    assert [v["verdict"] for v in verdicts(cli, opened_before)] == ["deny"]


def test_the_denier_withdraws_their_veto_through_the_cli(cli: Cli) -> None:
    """`approval withdraw`: the denier alone, with their key, once; each refusal one
    line, exit 1, audited (exit 2 without a key, as for a verdict). Then the forget is
    asked again and opens an approval; the denied one stays denied."""
    token = tokens(cli, "dpo", "partner-officer")
    dpo, officer = ("--token", token["dpo"]), ("--token", token["partner-officer"])
    officer_key = ("--signing-key", key_of(cli, "partner-officer"))
    denied = pending_forget(cli)
    cli.ok(*officer, "approval", "deny", denied, *officer_key)
    assert "(approval:vetoed)" in cli.fails(1, "forget", "intl", "alice")
    dpo_key = ("--signing-key", key_of(cli, "dpo"))
    for who, key, rule in ((dpo, dpo_key, "approval:not-the-denier"),
                           (officer, dpo_key, "approval:signing-key")):  # fmt: skip
        said = cli.fails(1, *who, "approval", "withdraw", denied, *key)
        assert said.startswith(f"error: withdrawal of {denied} refused ({rule}): "), said
    said = cli.fails(2, *officer, "approval", "withdraw", denied)
    assert "partner-officer must sign the withdrawal with their key" in said
    done = cli.json(*officer, "approval", "withdraw", denied, *officer_key)
    assert (done["approval"], done["approver"]) == (denied, "partner-officer")
    assert done["withdrawn_at"].endswith("Z")
    said = cli.fails(1, *officer, "approval", "withdraw", denied, *officer_key)
    assert f"(approval:withdrawn): partner-officer's denial of {denied} was withdrawn at " in said
    asked = pending_forget(cli)  # asked again: an approval opened, not a refusal
    assert asked != denied
    statuses = [a["status"] for a in cli.json("approval", "ls", "--all") if a["id"] == denied]
    assert statuses == ["denied"]
    rules = audited_rules(cli, denied)
    assert rules.count("approval:withdraw") == 1
    for rule in ("approval:not-the-denier", "approval:signing-key", "approval:withdrawn"):
        assert rule in rules


def test_a_withdrawal_is_said_in_one_line(cli: Cli) -> None:
    token = ("--token", tokens(cli, "partner-officer")["partner-officer"])
    denied = pending_forget(cli)
    key = ("--signing-key", key_of(cli, "partner-officer"))
    cli.ok(*token, "approval", "deny", denied, *key)
    code, out, said = cli(*token, "approval", "withdraw", denied, *key)
    assert code == 0 and out == b""
    assert said.startswith(f"{denied}: partner-officer's denial withdrawn at ")
    assert said.rstrip().endswith(
        "the veto of its request is lifted; the approval itself stays denied"
    )
    said = cli.fails(1, *token, "approval", "withdraw", pending_forget(cli), *key)
    assert "(approval:not-denied)" in said


_IN_OPEN, _IN_CLOSE = 0x20, 0x08 | 0x10  # inotify(7): opened; closed, written or not


@contextlib.contextmanager
def opens_of(path: Path) -> Iterator[Callable[[], int]]:
    """Counts the opens of the file at PATH by anyone (inotify: the kernel's count, no
    patch of the code that opens it); yields the count so far. Closes are watched too, so
    no two events in a row are alike: the kernel merges those."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    opened = [0]

    def count() -> int:
        while True:
            try:
                events = os.read(fd, 4096)
            except BlockingIOError:
                return opened[0]
            at = 0
            while at < len(events):
                _, mask, _, length = struct.unpack_from("iIII", events, at)
                opened[0] += bool(mask & _IN_OPEN)
                at += 16 + length

    try:
        watched = libc.inotify_add_watch(fd, os.fsencode(path), _IN_OPEN | _IN_CLOSE)
        assert watched >= 0, os.strerror(ctypes.get_errno())
        yield count
    finally:
        os.close(fd)


def test_approval_ls_opens_the_partners_record_once_however_many_it_lists(cli: Cli) -> None:
    # each listed approval still open asked the partner's record for a veto binding it,
    # a connection of its own each: a file open, a stat and two pragmas per row
    token = tokens(cli, "partner-officer")
    cli.ok("subject", "add", "intl", "bob", "-j", "US")
    vetoed = [pending_forget(cli) for _ in range(3)]
    denied = pending_forget(cli)
    cli.ok("--token", token["partner-officer"], "approval", "deny", denied,
           "--signing-key", key_of(cli, "partner-officer"))  # fmt: skip
    bobs = [cli.fails(1, "forget", "intl", "bob").rsplit("--approval ", 1)[1] for _ in range(2)]
    record = load(cli.config).base_dir / "partner" / "verdicts.sqlite"
    with opens_of(record) as opens:
        listed = cli.json("approval", "ls", "--all")
        assert opens() == 1
        table = cli.ok("approval", "ls").decode()
        assert opens() == 2
    status = {a["id"]: (a["status"], (a["vetoed_by"] or {}).get("approval")) for a in listed}
    assert status == {
        **{approval: ("vetoed", denied) for approval in vetoed},
        denied: ("denied", None),
        **{approval: ("pending", None) for approval in bobs},
    }
    for approval in (*vetoed, *bobs):  # the table too: pending ones only, without --all
        (row,) = [line for line in table.splitlines() if approval in line]
        assert status[approval][0] in row and ("pending" in row) == (approval in bobs)
    assert denied not in table


@pytest.mark.parametrize("stamp", [0, 1, 2], ids=["before-stamps", "schema-1", "schema-2"])
def test_approval_ls_leaves_a_book_of_an_older_schema_as_it_is(cli: Cli, stamp: int) -> None:
    # `approval ls`, a read, migrated the cell's book as it opened it (WAL, the stamp,
    # the columns added), so a shardvault of that older schema could no longer open it
    path = book_of_schema_1(cli.config.parent / "state", stamp)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    (listed,) = cli.json("approval", "ls", "--all")
    assert (listed["id"], listed["status"], listed["approvals"]) == (APPROVAL.id, "pending", 1)
    assert [s["signed"] for s in listed["signatures"]] == [False]
    assert [a["id"] for a in cli.json("approval", "ls")] == [APPROVAL.id]  # pending ones
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert [p.name for p in path.parent.glob("approvals.sqlite*")] == ["approvals.sqlite"]
    token = tokens(cli, "dpo")["dpo"]
    cli.ok("--token", token, "approval", "approve", APPROVAL.id, "--signing-key",
           key_of(cli, "dpo"))  # fmt: skip
    assert user_version(path) == 3  # the first write migrated it
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version=4")  # as a newer shardvault would leave it
    said = cli.fails(1, "approval", "ls")
    assert re.search(r"approvals of cell US has schema version 4; .*upgrade shardvault", said)
