"""Approvals the approvers sign: the statement, the keys, and the book that keeps them.

The partner's custodian counts only signatures that verify under the public keys
its own policy holds (docs/trust-model.md), never the book's word for who signed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.governance.helpers import SERVICE, US_COURT, as_, entries_of, register

from conftest import files_under, make_deployment
from governance_support import approve, ensure_approvers, signing_key
from shardvault.audit.entry import canonical_json
from shardvault.config import Config, load
from shardvault.custodian_policy import public_key_text
from shardvault.errors import (
    AccessDenied,
    ApprovalRequired,
    IntegrityError,
    InvalidInput,
    NewerFormat,
    Unavailable,
)
from shardvault.governance.approval_record import Approval
from shardvault.governance.approval_signatures import (
    counted_verdicts,
    load_signing_key,
    sign_verdict,
    sign_withdrawal,
    signing_key_pem,
    statement,
    statement_v1,
    verifies,
    withdrawal_statement,
    withdrawal_verifies,
    write_signing_key,
)
from shardvault.governance.approvals import ApprovalBook
from shardvault.governance.custodian_gate import custodian_gate
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.model import Justification, ObjectRef, RequestContext, new_request_id
from shardvault.policy import Principal, PrincipalKind
from shardvault.vault import Vault

SEED = bytes(range(32))
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))
APPROVAL = Approval(
    id="apr-us-0123456789abcdef", jurisdiction="US", requester="us-doj", action="read",
    tenant="intl", subject="alice", key=None, purpose="lawful-request", request_id="req-1",
    created_at=1_800_000_000.0, expires_at=1_800_086_400.25, quorum=2,
    approvers=("dpo", "partner-officer"),
)  # fmt: skip


# the statement ------------------------------------------------------------------------


def test_the_statement_and_its_signature_are_pinned() -> None:
    """A known-answer vector: the bytes an approver signs, and Ed25519's (deterministic)
    signature of them with a fixed seed. Changing either is a new statement version."""
    assert statement(APPROVAL, "dpo", "approve") == (
        b"shardvault-approval/v2\n"
        b'{"action":"read","approval":"apr-us-0123456789abcdef","approver":"dpo",'
        b'"expires_at":"2027-01-16T08:00:00.250000Z","jurisdiction":"US","key":null,'
        b'"purpose":"lawful-request","request_id":"req-1","requester":"us-doj",'
        b'"subject":"alice","tenant":"intl","verdict":"approve"}'
    )
    assert sign_verdict(KEY, APPROVAL, "dpo", "approve").hex() == (
        "3c3445d51682d33ef56f37eb8ecfafbff4b2a6a632d986fcd0b7928e1131818a"
        "2897c06718c75f1e953d59931b15dbbb347368f5317a56f801e2531361ee1d0c"
    )
    assert public_key_text(KEY.public_key()) == "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="


DENIAL = bytes(range(64))
"""A denial's signature, as the partner holds it, for the withdrawal vectors."""


def test_the_withdrawal_statement_and_its_signature_are_pinned() -> None:
    """A known-answer vector: what a denier signs to withdraw their veto. Changing either
    is a new statement version."""
    assert withdrawal_statement(APPROVAL.id, "partner-officer", DENIAL) == (
        b"shardvault-withdrawal/v1\n"
        b'{"approval":"apr-us-0123456789abcdef","approver":"partner-officer",'
        b'"denial":"fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108"}'
    )
    assert sign_withdrawal(KEY, APPROVAL.id, "partner-officer", DENIAL).hex() == (
        "eb0a901b4cb84e9cb86914577a1cf5e29d50e9bf1e3a023bf9c010ab0a6e9de5"
        "ec159599ee88adb0e94a46e77fe7e7c3c18e17afc3cffbf29575159e37b9400a"
    )


def test_a_denial_and_a_withdrawal_never_verify_as_each_other() -> None:
    """Each has a tag of its own: the partner can be handed a denial's signature as a
    withdrawal of it, or the reverse, and neither counts."""
    public = KEY.public_key().public_bytes_raw()
    deny = sign_verdict(KEY, APPROVAL, "partner-officer", "deny")
    withdrawn = sign_withdrawal(KEY, APPROVAL.id, "partner-officer", deny)
    assert withdrawal_verifies(public, APPROVAL.id, "partner-officer", deny, withdrawn)
    assert not withdrawal_verifies(public, APPROVAL.id, "partner-officer", deny, deny)
    for verdict in ("deny", "approve"):
        assert not verifies(public, APPROVAL, "partner-officer", verdict, withdrawn)
    others = [
        ("apr-us-fedcba9876543210", "partner-officer", deny),
        (APPROVAL.id, "dpo", deny),
        (APPROVAL.id, "partner-officer", DENIAL),  # another denial of it
    ]
    for approval_id, approver, denial in others:
        assert not withdrawal_verifies(public, approval_id, approver, denial, withdrawn)
    other_key = OTHER_KEY.public_key().public_bytes_raw()
    assert not withdrawal_verifies(other_key, APPROVAL.id, "partner-officer", deny, withdrawn)


PUBLIC = KEY.public_key().public_bytes_raw()
CHANGED = {
    "another approval": replace(APPROVAL, id="apr-us-fedcba9876543210"),
    "another subject": replace(APPROVAL, subject="bob"),
    "a key instead of none": replace(APPROVAL, key="notes/today.txt"),
    "another requester": replace(APPROVAL, requester="svc-api"),
    "another action": replace(APPROVAL, action="forget"),
    "a registration": replace(APPROVAL, action="register"),
    "another tenant": replace(APPROVAL, tenant="domestic"),
    "another cell": replace(APPROVAL, jurisdiction="SG", id="apr-sg-0123456789abcdef"),
    "another purpose": replace(APPROVAL, purpose="serve-user"),
    "another request": replace(APPROVAL, request_id="req-2"),
    "a later expiry": replace(APPROVAL, expires_at=APPROVAL.expires_at + 1e-6),
}


@pytest.mark.parametrize("changed", CHANGED.values(), ids=CHANGED.keys())
def test_a_signature_verifies_for_its_own_approval_only(changed: Approval) -> None:
    signature = sign_verdict(KEY, APPROVAL, "dpo", "approve")
    assert verifies(PUBLIC, APPROVAL, "dpo", "approve", signature)
    assert not verifies(PUBLIC, changed, "dpo", "approve", signature)


def test_a_signature_verifies_for_its_own_verdict_approver_and_key_only() -> None:
    approve = sign_verdict(KEY, APPROVAL, "dpo", "approve")
    deny = sign_verdict(KEY, APPROVAL, "dpo", "deny")
    assert verifies(PUBLIC, APPROVAL, "dpo", "deny", deny)
    assert not verifies(PUBLIC, APPROVAL, "dpo", "approve", deny)  # deny → approve
    assert not verifies(PUBLIC, APPROVAL, "dpo", "deny", approve)
    assert not verifies(PUBLIC, APPROVAL, "partner-officer", "approve", approve)
    other = OTHER_KEY.public_key().public_bytes_raw()
    assert not verifies(other, APPROVAL, "dpo", "approve", approve)
    assert not verifies(PUBLIC, APPROVAL, "dpo", "approve", None)
    assert not verifies(PUBLIC, APPROVAL, "dpo", "approve", approve[:-1])
    assert not verifies(PUBLIC, APPROVAL, "dpo", "approve", b"")


V1_SIGNATURE = bytes.fromhex(
    "40a6b76175233b8a56cb1b918cf0a0aae64234b73c9676855b69355e6dedcb7c"
    "71e16487bb2f856a3a660b55ddda1d3916b04018dba3c94eb108fbe219e3440c"
)
"""dpo's approval of APPROVAL as a shardvault before statement version 2 signed it."""


def test_a_signature_of_version_1_still_verifies_for_its_own_approval() -> None:
    assert statement_v1(APPROVAL, "dpo", "approve") == (
        b"shardvault-approval/v1\n"
        b'{"action":"read","approval":"apr-us-0123456789abcdef","approver":"dpo",'
        b'"expires_at":"2027-01-16T08:00:00.250000Z","jurisdiction":"US","key":null,'
        b'"purpose":"lawful-request","request_id":"req-1","requester":"us-doj",'
        b'"subject":"alice","tenant":"intl","verdict":"approve"}'
    )
    assert verifies(PUBLIC, APPROVAL, "dpo", "approve", V1_SIGNATURE)
    assert not verifies(PUBLIC, APPROVAL, "dpo", "deny", V1_SIGNATURE)
    for changed in CHANGED.values():
        assert not verifies(PUBLIC, changed, "dpo", "approve", V1_SIGNATURE)


REGISTRATION = replace(APPROVAL, requester="svc-api", action="register", purpose="serve-user")


def v1_statement(approval: Approval, action: str) -> bytes:
    """What a shardvault before statement version 2 had dpo sign to approve APPROVAL,
    written out here rather than by the code under test."""
    body = {
        "approval": approval.id, "approver": "dpo", "verdict": "approve",
        "requester": approval.requester, "action": action, "tenant": approval.tenant,
        "jurisdiction": approval.jurisdiction, "subject": approval.subject,
        "key": approval.key, "purpose": approval.purpose, "request_id": approval.request_id,
        "expires_at": "2027-01-16T08:00:00.250000Z",
    }  # fmt: skip
    return b"shardvault-approval/v1\n" + canonical_json(body)


def test_a_registration_is_stated_apart_from_every_write() -> None:
    # version 1 stated a registration as a write with a null key, read as "any key of the
    # subject": the approvers' signature of a registration read as one of every put
    assert statement(REGISTRATION, "dpo", "approve") == (
        b"shardvault-approval/v2\n"
        b'{"action":"register","approval":"apr-us-0123456789abcdef","approver":"dpo",'
        b'"expires_at":"2027-01-16T08:00:00.250000Z","jurisdiction":"US","key":null,'
        b'"purpose":"serve-user","request_id":"req-1","requester":"svc-api",'
        b'"subject":"alice","tenant":"intl","verdict":"approve"}'
    )
    signature = sign_verdict(KEY, REGISTRATION, "dpo", "approve")
    assert not verifies(PUBLIC, replace(REGISTRATION, action="write"), "dpo", "approve", signature)
    # a registration signed in version 1 counts for that registration, and for no write
    old = KEY.sign(v1_statement(REGISTRATION, "write"))
    assert verifies(PUBLIC, REGISTRATION, "dpo", "approve", old)
    keyed_write = replace(REGISTRATION, action="write", key="notes/today.txt")
    assert not verifies(PUBLIC, keyed_write, "dpo", "approve", old)
    # a keyed write signed in version 1 is no registration once its row is relabelled
    old_write = KEY.sign(v1_statement(keyed_write, "write"))
    assert verifies(PUBLIC, keyed_write, "dpo", "approve", old_write)
    for relabelled in (replace(keyed_write, action="register"), replace(keyed_write, key=None)):
        assert not verifies(PUBLIC, relabelled, "dpo", "approve", old_write)


@pytest.mark.parametrize("expiry", [float("nan"), float("inf"), 1e300, -1e300])
def test_a_row_whose_expiry_is_no_time_cannot_be_stated_or_counted(expiry: float) -> None:
    odd = replace(APPROVAL, expires_at=expiry)
    with pytest.raises(IntegrityError, match="no valid expiry"):
        statement(odd, "dpo", "approve")
    signature = sign_verdict(KEY, APPROVAL, "dpo", "approve")
    assert not verifies(PUBLIC, odd, "dpo", "approve", signature)


def signed(approval: Approval, *verdicts: tuple[str, str, Ed25519PrivateKey]) -> Approval:
    """APPROVAL with these verdicts, each signed by the key given."""
    return replace(
        approval,
        signatures=tuple((who, verdict, 0.0) for who, verdict, _ in verdicts),
        signed=tuple(
            (who, sign_verdict(key, approval, who, verdict)) for who, verdict, key in verdicts
        ),
    )


def test_only_signed_verdicts_under_the_partners_keys_are_counted() -> None:
    dpo, officer, requester = (Ed25519PrivateKey.generate() for _ in range(3))
    keys = {
        "dpo": dpo.public_key().public_bytes_raw(),
        "partner-officer": officer.public_key().public_bytes_raw(),
        "us-doj": requester.public_key().public_bytes_raw(),
    }
    both = signed(APPROVAL, ("dpo", "approve", dpo), ("partner-officer", "approve", officer))
    assert counted_verdicts(both, keys) == ({"dpo", "partner-officer"}, set())
    # the officer's signature made by another key (one not in the partner's table)
    forged = signed(APPROVAL, ("dpo", "approve", dpo), ("partner-officer", "approve", dpo))
    assert counted_verdicts(forged, keys) == ({"dpo"}, set())
    # an approver the partner does not name, and a row with no signature at all
    stranger = signed(APPROVAL, ("dpo", "approve", dpo), ("mallory", "approve", dpo))
    assert counted_verdicts(stranger, keys) == ({"dpo"}, set())
    unsigned = replace(both, signed=both.signed[:1])
    assert counted_verdicts(unsigned, keys) == ({"dpo"}, set())
    # a deny, signed; and the requester's own approval is no approval
    veto = signed(APPROVAL, ("dpo", "approve", dpo), ("partner-officer", "deny", officer))
    assert counted_verdicts(veto, keys) == ({"dpo"}, {"partner-officer"})
    own = signed(APPROVAL, ("us-doj", "approve", requester))
    assert counted_verdicts(own, keys) == (set(), set())
    # a deny's signature stored with an approve row counts for nothing
    flipped = replace(veto, signatures=(veto.signatures[0], ("partner-officer", "approve", 0.0)))
    assert counted_verdicts(flipped, keys) == ({"dpo"}, set())


# the approver's key file ------------------------------------------------------------------


def key_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_a_key_written_by_keygen_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "dpo.skey"
    key = write_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_signing_key(path)
    assert loaded.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    before = path.read_bytes()
    with pytest.raises(InvalidInput, match="already exists"):
        write_signing_key(path)
    assert path.read_bytes() == before
    with pytest.raises(InvalidInput, match="is not a directory"):
        write_signing_key(tmp_path / "missing" / "dpo.skey")
    assert not (tmp_path / "missing").exists()


def test_bad_signing_key_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    pem = signing_key_pem(KEY)
    ecdsa = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encrypted = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    fifo = tmp_path / "fifo.skey"
    os.mkfifo(fifo)
    cases = {
        tmp_path / "missing.skey": "cannot read signing key .*No such file",
        tmp_path: "cannot read signing key .*Is a directory",
        fifo: "named FIFO",
        key_file(tmp_path / "open.skey", pem, 0o644): r"read by others \(mode 644\)",
        key_file(tmp_path / "group.skey", pem, 0o640): r"read by others \(mode 640\)",
        key_file(tmp_path / "text.skey", b"not a key\n"): "not a PEM private key",
        key_file(tmp_path / "empty.skey", b""): "not a PEM private key",
        key_file(tmp_path / "ecdsa.skey", ecdsa): "not an Ed25519 key",
        key_file(tmp_path / "locked.skey", encrypted): "is encrypted",
        key_file(tmp_path / "huge.skey", b"x" * (65 * 1024)): "too large",
    }
    for path, message in cases.items():
        with pytest.raises(InvalidInput, match=message) as refused:
            load_signing_key(path)
        assert path.name in str(refused.value)
        assert "\n" not in str(refused.value)
    assert load_signing_key(key_file(tmp_path / "ok.skey", pem)).public_key() == KEY.public_key()


# the book ----------------------------------------------------------------------------------

DPO = Principal("dpo", "intl", PrincipalKind.EMPLOYEE, "US")
SCHEMA_1 = """
CREATE TABLE approvals (
    id TEXT PRIMARY KEY, requester TEXT NOT NULL, action TEXT NOT NULL, tenant TEXT NOT NULL,
    subject TEXT, key TEXT, purpose TEXT NOT NULL, request_id TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, quorum INTEGER NOT NULL,
    approvers TEXT NOT NULL
);
CREATE TABLE signatures (
    approval TEXT NOT NULL REFERENCES approvals(id), approver TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')), at REAL NOT NULL,
    PRIMARY KEY (approval, approver)
);
"""


def book_of_schema_1(state: Path, stamp: int = 1) -> Path:
    """A cell's approval book as a shardvault before signatures wrote it: one approval,
    one verdict (no signature column); with ``stamp`` 2, as one before approvals could
    be homed elsewhere wrote it (a signature column, no ``homed_elsewhere_at``)."""
    path = state / "cells" / "US" / "approvals.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(SCHEMA_1)
        if stamp == 2:
            db.execute("ALTER TABLE signatures ADD COLUMN signature BLOB")
        db.execute(f"PRAGMA user_version={stamp}")
        db.execute(
            "INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (APPROVAL.id, "us-doj", "read", "intl", "alice", None, "lawful-request", "req-1",
             now, now + 3600, 2, '["dpo", "partner-officer"]'),
        )  # fmt: skip
        db.execute(
            "INSERT INTO signatures (approval, approver, verdict, at)"
            " VALUES (?, 'partner-officer', 'approve', ?)",
            (APPROVAL.id, now),
        )
    return path


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


@pytest.mark.parametrize("stamp", [0, 1, 2], ids=["before-stamps", "schema-1", "schema-2"])
def test_a_book_from_before_signatures_opens_and_takes_signed_verdicts(
    tmp_path: Path, stamp: int
) -> None:
    path = book_of_schema_1(tmp_path, stamp)
    book = ApprovalBook(tmp_path, ["US"])
    try:
        old = book.get(APPROVAL.id)
        assert (old.status, old.approvals, old.signed) == ("pending", 1, ())
        assert old.signatures[0][:2] == ("partner-officer", "approve")
        assert old.signature_of("partner-officer") is None
        signature = sign_verdict(KEY, old, "dpo", "approve")
        now = book.sign(APPROVAL.id, DPO, "approve", signature)
        assert now.status == "approved" and now.signature_of("dpo") == signature
        assert now.homed_elsewhere_at is None
    finally:
        book.close()
    assert user_version(path) == 3
    again = ApprovalBook(tmp_path, ["US"])  # migrated once: opened again as it is
    try:
        assert again.get(APPROVAL.id).signed == (("dpo", signature),)
    finally:
        again.close()


def test_a_book_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    book_of_schema_1(tmp_path, stamp=4)
    book = ApprovalBook(tmp_path, ["US"])
    try:
        with pytest.raises(NewerFormat, match=r"schema version 4; .*upgrade shardvault"):
            book.get(APPROVAL.id)
    finally:
        book.close()


# the partner's custodian counts signatures, not rows --------------------------------------

REF = ObjectRef("intl", "alice", "notes/today.txt")


@pytest.fixture
def story(vault: Vault) -> Vault:
    register(vault, SERVICE, US_COURT)
    ensure_approvers(vault.governance)
    vault.register_subject("intl", "alice", "US")
    vault.put(REF, b"alice's note")
    return vault


def book(config: Config, cell: str = "US") -> Path:
    return config.state_dir / "cells" / cell / "approvals.sqlite"


def write_rows(config: Config, approval: str, *rows: tuple[str, str]) -> None:
    """Verdict rows written straight into the cell's SQLite book, as operator code of
    its own could: no approver signed anything."""
    with closing(sqlite3.connect(book(config))) as db, db:
        for approver, verdict in rows:
            db.execute(
                "INSERT INTO signatures (approval, approver, verdict, at) VALUES (?, ?, ?, ?)",
                (approval, approver, verdict, time.time()),
            )


def pending_forget(vault: Vault) -> str:
    with pytest.raises(ApprovalRequired) as pending:
        vault.forget("intl", "alice")
    assert pending.value.approval_id is not None
    return pending.value.approval_id


def forget_with(vault: Vault, approval: str) -> RequestContext:
    return RequestContext("local-admin", "forget-subject", new_request_id(), approval_id=approval)


def assert_refused_and_untouched(
    config: Config, vault: Vault, approval: str, message: str = "custodian:approval"
) -> None:
    """The forget with APPROVAL passes the operator's policy, and the partner's custodian
    refuses the destroy: audited, the key, catalog and shards as they were."""
    assert vault.governance.approvals.get(approval).status == "approved"  # the operator's view
    shards = files_under(config.base_dir / "nodes")
    retry = forget_with(vault, approval)
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:approval\)") as no:
        vault.forget("intl", "alice", retry)
    assert message in str(no.value)
    policy, custodian = entries_of(vault, retry)
    assert (policy.result, custodian.rule, custodian.details["stage"]) == (
        "allowed", "custodian:approval", "custodian",
    )  # fmt: skip
    assert vault.get(REF) == b"alice's note"  # the key still unwraps
    assert vault.subject("intl", "alice").forgotten_at is None
    assert files_under(config.base_dir / "nodes") == shards


def assert_custodian_refuses(config: Config, vault: Vault, approval: str, message: str) -> str:
    """As `assert_refused_and_untouched`, where the operator's guard refuses first (a
    denial the partner holds binds the request; its record is lost): the custodian,
    asked itself by code of the operator's own that skips the guard, refuses too."""
    alice = vault.cells["US"].catalog.get_subject("intl", "alice")
    assert alice is not None
    shards = files_under(config.base_dir / "nodes")
    why = Justification("local-admin", "forget-subject", new_request_id(), "US", approval)
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:approval\)") as no:
        vault.custodian.destroy(KeyScope("intl", "US"), alice.key_id, why)
    assert message in str(no.value)
    assert vault.get(REF) == b"alice's note"
    assert files_under(config.base_dir / "nodes") == shards
    return str(no.value)


def assert_guard_refuses(vault: Vault, approval: str, rule: str) -> None:
    retry = forget_with(vault, approval)
    with pytest.raises(AccessDenied, match=rf"forget refused \({rule}\)"):
        vault.forget("intl", "alice", retry)
    assert entries_of(vault, retry)[-1].rule == rule


def test_a_met_approval_written_into_the_book_destroys_no_key(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    """The gap (docs/trust-model.md, known limits until now): the custodian took the
    book's rows for who signed, so the operator's own code could write a met approval
    there and have the partner's custodian destroy a subject's key."""
    config, vault = deployment
    approval = pending_forget(vault)
    write_rows(config, approval, ("dpo", "approve"), ("partner-officer", "approve"))
    assert_refused_and_untouched(config, vault, approval, "0 of the 2 signatures")


def test_a_lawful_request_met_in_the_book_unwraps_no_key(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    config, vault = deployment
    with pytest.raises(ApprovalRequired) as pending:
        vault.get(REF, ctx=as_(US_COURT, "lawful-request"))
    approval = pending.value.approval_id
    assert approval is not None
    write_rows(config, approval, ("dpo", "approve"), ("partner-officer", "approve"))
    court = as_(US_COURT, "lawful-request", approval)
    with pytest.raises(AccessDenied, match=r"refused the unwrap \(custodian:approval\)"):
        vault.get(REF, ctx=court)
    assert entries_of(vault, court)[-1].rule == "custodian:approval"


def signatures_of(config: Config, approval: str) -> dict[str, bytes]:
    with closing(sqlite3.connect(book(config))) as db:
        rows = db.execute(
            "SELECT approver, signature FROM signatures WHERE approval = ?", (approval,)
        ).fetchall()
    return {who: sig for who, sig in rows}


def test_signatures_copied_from_another_approval_do_not_count(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    config, vault = deployment
    with pytest.raises(ApprovalRequired) as court:
        vault.get(REF, ctx=as_(US_COURT, "lawful-request"))
    other = court.value.approval_id
    assert other is not None
    approve(vault.governance, other)  # genuinely signed, for the court's read
    approval = pending_forget(vault)
    with closing(sqlite3.connect(book(config))) as db, db:
        for who, signature in signatures_of(config, other).items():
            db.execute(
                "INSERT INTO signatures VALUES (?, ?, 'approve', ?, ?)",
                (approval, who, time.time(), signature),
            )
    assert_refused_and_untouched(config, vault, approval, "0 of the 2 signatures")


def test_a_signed_denial_turned_into_an_approval_does_not_count(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    config, vault = deployment
    approval = pending_forget(vault)
    governance = vault.governance
    for who, verdict in (("dpo", "approve"), ("partner-officer", "deny")):
        ctx = RequestContext(who, "approval", new_request_id())
        governance.sign_approval(approval, ctx, verdict, signing_key(governance, who))
    with closing(sqlite3.connect(book(config))) as db, db:
        db.execute("UPDATE signatures SET verdict = 'approve' WHERE approver = 'partner-officer'")
    assert vault.governance.approvals.get(approval).status == "approved"  # the operator's view
    assert_guard_refuses(vault, approval, "approval:vetoed")  # the partner's record: a veto
    assert_custodian_refuses(config, vault, approval, "1 of the 2 signatures")


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE approvals SET expires_at = expires_at + 86400",
        "UPDATE approvals SET request_id = 'another-request'",
    ],
    ids=["a-later-expiry", "another-request"],
)
def test_a_signed_approval_edited_in_the_book_does_not_count(
    deployment: tuple[Config, Vault], story: Vault, edit: str
) -> None:
    config, vault = deployment
    approval = pending_forget(vault)
    approve(vault.governance, approval)
    with closing(sqlite3.connect(book(config))) as db, db:
        db.execute(edit)
    assert_refused_and_untouched(config, vault, approval, "0 of the 2 signatures")


def partner_policy(config: Config) -> Path:
    return config.base_dir / "partner" / "custodian-policy.toml"


def reopened(config: Config, edit_policy: Callable[[str], str]) -> Vault:
    """The deployment opened again with the partner's policy edited (the partner's file:
    the operator's config is not what changes)."""
    path = partner_policy(config)
    path.write_text(edit_policy(path.read_text()))
    return Vault.open(load(config.path))


def quorum_of_one(text: str) -> str:
    return text.replace("approval_quorum = 2", "approval_quorum = 1")


def test_the_quorum_is_the_partners_not_the_operators(tmp_path: Path) -> None:
    """The operator's config asks one approval; the partner's policy asks two, and
    decides: a destroy with one signature is refused until the partner asks one too,
    though operator code of its own lowered the booked approval's quorum to one."""
    config = load(make_deployment(tmp_path / "deploy", edit=quorum_of_one))
    with Vault.open(config) as vault:
        ensure_approvers(vault.governance)
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"alice's note")
        approval = pending_forget(vault)
        with closing(sqlite3.connect(book(config))) as db, db:  # booked needing the partner's 2
            db.execute("UPDATE approvals SET quorum = 1")
        sign_as(vault, approval, "dpo")
        assert vault.governance.approvals.get(approval).status == "approved"  # for the operator
        assert_refused_and_untouched(config, vault, approval, "1 of the 2 signatures")
    with reopened(config, quorum_of_one) as vault:  # now the partner's quorum is 1
        assert vault.governance.custodian_policy.approval_quorum == 1
        assert vault.forget("intl", "alice", forget_with(vault, approval)).subject == "alice"


def test_a_key_uses_approval_needs_the_partners_quorum_where_it_is_the_larger(
    tmp_path: Path,
) -> None:
    """The operator's config asks one signature, the partner's policy two: a forget's
    approval was booked needing one, shown met with dpo's alone, and the custodian then
    refused the destroy, a dead end. It needs two now, and says why; a listing's, which
    the custodian never counts, still the config's one."""
    config = load(make_deployment(tmp_path / "deploy", edit=quorum_of_one))
    with Vault.open(config) as vault:
        register(vault, US_COURT)
        ensure_approvers(vault.governance)
        vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "bob", "US")
        vault.put(REF, b"alice's note")
        with pytest.raises(ApprovalRequired) as pending:
            vault.forget("intl", "alice")
        assert (
            "; 2 of [dpo, partner-officer] (the partner's approval_quorum, by which the "
            "custodian counts it; the config's is 1) must run" in str(pending.value)
        )
        approval = pending.value.approval_id
        assert approval is not None
        assert vault.governance.approvals.get(approval).quorum == 2
        sign_as(vault, approval, "dpo")
        assert vault.governance.approvals.get(approval).status == "pending"
        assert_guard_refuses(vault, approval, "approval:pending")
        sign_as(vault, approval, "partner-officer")
        assert vault.forget("intl", "alice", forget_with(vault, approval)).subject == "alice"
        with pytest.raises(ApprovalRequired) as listing:
            vault.list("intl", "bob", ctx=as_(US_COURT, "lawful-request"))
        assert "; 1 of [dpo, partner-officer] must run" in str(listing.value)
        assert listing.value.approval_id is not None
        assert vault.governance.approvals.get(listing.value.approval_id).quorum == 1
        vault.governance.registry.revoke("partner-officer")
        with pytest.raises(AccessDenied, match=r"forget refused \(approval:no-approvers\)") as no:
            vault.forget("intl", "bob")
        assert (
            "its approval needs 2 signatures (the partner's approval_quorum, by which the "
            "custodian counts it; the config's is 1) by approvers of tenant intl, and only dpo "
            "of the config's governance.approvers could sign it (partner-officer is revoked; "
            in str(no.value)
        )


def test_a_signature_by_a_key_the_partner_does_not_hold_does_not_count(tmp_path: Path) -> None:
    """cfo is an approver in the operator's config, with a key of their own the partner's
    policy does not name: the guard names them on no forget's approval, and their
    signature, booked by operator code of its own, meets the operator's quorum, not the
    partner's."""

    def with_cfo(text: str) -> str:
        return text.replace('approvers = ["dpo", "partner-officer"', 'approvers = ["dpo", '
                            '"partner-officer", "cfo"')  # fmt: skip

    config = load(make_deployment(tmp_path / "deploy", edit=with_cfo))
    cfo_key = write_signing_key(tmp_path / "cfo.skey")
    with Vault.open(config) as vault:
        ensure_approvers(vault.governance)
        vault.governance.registry.add(
            Principal("cfo", "intl", PrincipalKind.EMPLOYEE, "US"), token_ttl=None
        )
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"alice's note")
        approval = pending_forget(vault)
        assert vault.governance.approvals.get(approval).approvers == ("dpo", "partner-officer")
        sign_as(vault, approval, "dpo")
        cfo = vault.governance.registry.get("cfo").principal
        signature = sign_verdict(cfo_key, vault.governance.approvals.get(approval), "cfo",
                                 "approve")  # fmt: skip
        vault.governance.approvals.sign(approval, cfo, "approve", signature)
        assert signatures_of(config, approval)["cfo"] is not None  # signed, and stored
        assert_refused_and_untouched(config, vault, approval, "1 of the 2 signatures")


def without_approvers(text: str) -> str:
    """The partner's policy as it was before signed approvals: no [approvers]."""
    head, _, _ = text.partition("\n# Whose signatures")
    return head.replace("approval_quorum = 2  # signatures of [approvers] an approval needs\n", "")


def test_without_approvers_the_partner_counts_no_approval(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    """A partner's policy from before signed approvals: a met approval, even one its
    approvers signed, destroys no key and unwraps none (fail closed); key uses that need
    no approval go on."""
    config, vault = deployment
    approval = pending_forget(vault)
    approve(vault.governance, approval)
    with pytest.raises(ApprovalRequired) as court:
        vault.get(REF, ctx=as_(US_COURT, "lawful-request"))
    lawful = court.value.approval_id
    assert lawful is not None
    approve(vault.governance, lawful)
    vault.close()
    with reopened(config, without_approvers) as old:
        assert old.governance.custodian_policy.approvers == {}
        assert_refused_and_untouched(config, old, approval, "names no [approvers]")
        with pytest.raises(AccessDenied, match=r"unwrap \(custodian:approval\).*no \[approvers\]"):
            old.get(REF, ctx=as_(US_COURT, "lawful-request", lawful))
        assert old.get(REF, ctx=as_(SERVICE, "serve-user")) == b"alice's note"
        old.register_subject("intl", "bob", "US", as_(SERVICE, "serve-user"))


def test_a_denial_refuses_whatever_the_quorum(story: Vault) -> None:
    """Through the gate itself, as operator code holding the approval would call it: a
    partner needing one signature, which dpo's gives, still refuses an approval its
    officer denied."""
    governance = story.governance
    approval = pending_forget(story)
    for who, verdict in (("dpo", "approve"), ("partner-officer", "deny")):
        ctx = RequestContext(who, "approval", new_request_id())
        governance.sign_approval(approval, ctx, verdict, signing_key(governance, who))
    one = replace(governance.custodian_policy, approval_quorum=1)
    gate = custodian_gate(one, governance.approvals, governance.partner_verdicts)
    alice = story.cells["US"].catalog.get_subject("intl", "alice")
    assert alice is not None
    why = Justification("local-admin", "forget-subject", new_request_id(), "US", approval)
    with pytest.raises(AccessDenied, match=r"\(custodian:approval\).* is denied"):
        gate(KeyOperation.DESTROY, KeyScope("intl", "US"), alice.key_id, why)
    with closing(sqlite3.connect(book(load(story.config.path)))) as db, db:
        db.execute("DELETE FROM signatures WHERE verdict = 'deny'")
    # the partner keeps the signed denial it was delivered
    with pytest.raises(AccessDenied, match=r"denied by partner-officer \(a signed denial"):
        gate(KeyOperation.DESTROY, KeyScope("intl", "US"), alice.key_id, why)


def both_quorums_of_one(config: Config) -> Config:
    """The operator's config and the partner's policy each ask one approval of the two
    approvers: a quorum below their number, so that one veto is all that stops it."""
    path = partner_policy(config)
    path.write_text(quorum_of_one(path.read_text()))
    return load(config.path)


def test_a_denial_deleted_from_the_book_still_refuses_the_destroy(tmp_path: Path) -> None:
    """Found in review (a known limit until now): the custodian honoured a denial only
    while the operator's book kept it, so with a quorum below the number of approvers the
    operator could delete one approver's signed veto and destroy the key on the others'."""
    config = both_quorums_of_one(load(make_deployment(tmp_path / "deploy", edit=quorum_of_one)))
    with Vault.open(config) as vault:
        ensure_approvers(vault.governance)
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"alice's note")
        approval = pending_forget(vault)
        governance = vault.governance
        ctx = RequestContext("partner-officer", "approval", new_request_id())
        governance.sign_approval(approval, ctx, "deny", signing_key(governance, "partner-officer"))
        with closing(sqlite3.connect(book(config))) as db, db:  # the veto's row gone
            db.execute("DELETE FROM signatures WHERE verdict = 'deny'")
        key = signing_key(governance, "dpo")
        asked = RequestContext("dpo", "approval", new_request_id())
        with pytest.raises(AccessDenied, match=r"\(approval:vetoed\)"):  # the partner's record
            governance.sign_approval(approval, asked, "approve", key)
        pending = governance.approvals.get(approval)  # so the operator's own code books it
        signed = sign_verdict(key, pending, "dpo", "approve")
        governance.approvals.sign(approval, governance.registry.get("dpo").principal, "approve",
                                  signed)  # fmt: skip
        assert governance.approvals.get(approval).status == "approved"  # the operator's view
        assert_guard_refuses(vault, approval, "approval:vetoed")
        assert_custodian_refuses(config, vault, approval, "denied by partner-officer")


# the partner's own record of signed verdicts ------------------------------------------------


def partner_record(config: Config) -> Path:
    return config.base_dir / "partner" / "verdicts.sqlite"


def sign_as(vault: Vault, approval: str, who: str, verdict: str = "approve") -> None:
    ctx = RequestContext(who, "approval", new_request_id())
    vault.governance.sign_approval(approval, ctx, verdict, signing_key(vault.governance, who))


def test_the_partner_keeps_each_signed_verdict_privately_and_naming_no_subject(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    config, vault = deployment
    path = partner_record(config)
    approval = pending_forget(vault)
    assert not path.exists()  # made by the first signed verdict, not before
    sign_as(vault, approval, "dpo")
    sign_as(vault, approval, "partner-officer")
    assert path.stat().st_mode & 0o777 == 0o600
    assert user_version(path) == 3
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT approval, approver, verdict, signature FROM verdicts").fetchall()
    held = vault.governance.custodian_policy.approvers
    assert {(a, who, v) for a, who, v, _ in rows} == {
        (approval, "dpo", "approve"), (approval, "partner-officer", "approve"),
    }  # fmt: skip
    book_row = vault.governance.approvals.get(approval)
    assert all(verifies(held[who], book_row, who, v, sig) for _, who, v, sig in rows)
    assert b"alice" not in path.read_bytes()  # the statement is the book's, not kept here
    vault.forget("intl", "alice", forget_with(vault, approval))


def test_a_verdict_that_does_not_verify_is_not_delivered(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    """Operator code signing a denial in partner-officer's name with a key of its own:
    the partner verified it under whatever key its caller passed, so passing that key
    had it kept as partner-officer's signed denial. It takes the key from its own
    [approvers] now, so there is none to pass."""
    config, vault = deployment
    approval = vault.governance.approvals.get(pending_forget(vault))
    verdicts = vault.governance.partner_verdicts
    forged = sign_verdict(OTHER_KEY, approval, "partner-officer", "deny")
    with pytest.raises(IntegrityError, match="does not verify under the key the partner holds"):
        verdicts.deliver(approval, "partner-officer", "deny", forged, lambda: True)
    assert not partner_record(config).exists()


def test_a_lost_record_refuses_every_key_use_that_names_an_approval_until_restored(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    """Fail closed: a denial may have been in it. Made anew, empty, it would bring back
    every approval its approvers vetoed; so it is not, once the books hold a signed
    verdict, and verdicts are refused too until it is restored."""
    config, vault = deployment
    approval = pending_forget(vault)
    sign_as(vault, approval, "dpo")
    sign_as(vault, approval, "partner-officer")
    with pytest.raises(ApprovalRequired) as court:
        vault.get(REF, ctx=as_(US_COURT, "lawful-request"))
    lawful = court.value.approval_id
    assert lawful is not None
    path = partner_record(config)
    kept = path.read_bytes()
    path.unlink()
    with pytest.raises(IntegrityError, match=r"record of signed verdicts .* is missing"):
        vault.forget("intl", "alice", forget_with(vault, approval))  # the guard's refusal
    assert_custodian_refuses(config, vault, approval, "record of signed verdicts")
    assert "is missing, while approvals have signed verdicts" in str(
        pytest.raises(IntegrityError, sign_as, vault, lawful, "dpo").value
    )
    assert not path.exists()
    assert vault.get(REF, ctx=as_(SERVICE, "serve-user")) == b"alice's note"  # no approval
    path.write_bytes(kept)
    path.chmod(0o600)
    assert vault.forget("intl", "alice", forget_with(vault, approval)).subject == "alice"


def test_a_signed_verdict_the_partner_holds_no_key_for_makes_its_record(tmp_path: Path) -> None:
    """The gap: an approver the partner holds no key for (cfo) signed the deployment's
    first signed verdict with a key of their own; nothing was delivered, so no record
    was made, yet the book held a signature, which read as a record lost: every request
    that needs an approval was refused until a backup that never existed was restored.
    (cfo is named on a court's listing, which uses no key: the custodian never counts
    its approval, so cfo's verdict is the operator's to count.)"""

    def three_approvers(text: str) -> str:
        return text.replace('"domestic-officer"]', '"domestic-officer", "cfo"]', 1)

    config = load(make_deployment(tmp_path / "deploy", edit=three_approvers))
    with Vault.open(config) as vault:
        ensure_approvers(vault.governance)
        vault.governance.registry.add(Principal("cfo", "intl", PrincipalKind.EMPLOYEE, "US"),
                                      token_ttl=None)  # fmt: skip
        register(vault, US_COURT)
        vault.register_subject("intl", "alice", "US")
        vault.register_subject("intl", "bob", "US")
        with pytest.raises(ApprovalRequired) as listing:
            vault.list("intl", "alice", ctx=as_(US_COURT, "lawful-request"))
        approval = listing.value.approval_id
        assert approval is not None
        ctx = RequestContext("cfo", "approval", new_request_id())
        vault.governance.sign_approval(approval, ctx, "deny", OTHER_KEY)
        assert vault.governance.approvals.get(approval).signature_of("cfo") is not None
        with pytest.raises(ApprovalRequired):  # asked, not refused for a record "lost"
            vault.forget("intl", "bob")
        path = partner_record(config)
        assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_size == 0  # holds none
        path.unlink()  # lost now, as the book's signed verdict says it was made
        with pytest.raises(IntegrityError, match=r"record of signed verdicts .* is missing"):
            vault.forget("intl", "bob")


@pytest.mark.parametrize("damage", ["readable-by-others", "newer-schema", "not-sqlite"])
def test_a_record_that_cannot_be_used_refuses_the_key_use(
    deployment: tuple[Config, Vault], story: Vault, damage: str
) -> None:
    config, vault = deployment
    approval = pending_forget(vault)
    sign_as(vault, approval, "dpo")
    sign_as(vault, approval, "partner-officer")
    path = partner_record(config)
    message = {
        "readable-by-others": "only its owner can read",
        "newer-schema": r"schema version 4; .*upgrade shardvault",
        "not-sqlite": "not a database",
    }[damage]
    if damage == "readable-by-others":
        path.chmod(0o644)
    elif damage == "newer-schema":
        with closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA user_version=4")
    else:
        path.write_bytes(b"x" * 4096)
    assert re.search(message, assert_custodian_refuses(config, vault, approval, ""))
    with pytest.raises((Unavailable, NewerFormat), match=message):  # the guard's
        vault.forget("intl", "alice", forget_with(vault, approval))


def test_an_empty_record_is_one_with_nothing_in_it(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    """What a process killed while making it leaves, and the partner's way to start a new
    record after losing one for good: read as holding no verdict, set up by the next."""
    config, vault = deployment
    approval = pending_forget(vault)
    sign_as(vault, approval, "dpo")
    path = partner_record(config)
    path.write_bytes(b"")
    sign_as(vault, approval, "partner-officer")
    assert user_version(path) == 3
    path.write_bytes(b"")
    assert vault.forget("intl", "alice", forget_with(vault, approval)).subject == "alice"
