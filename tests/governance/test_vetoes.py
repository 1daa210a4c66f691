"""A signed denial binds the request it refuses, not only its approval.

Until this was built a veto refused its own approval id and nothing else: the
requester asked a new approval for the very same request and, with a quorum below
the number of approvers, the others' signatures met it (docs/trust-model.md).
These deployments need one signature of the two approvers, the operator's and the
partner's alike, so that one veto is all that stands in the way.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.governance.helpers import US_COURT, as_, entries_of, register

from conftest import files_under, make_deployment
from governance_support import ensure_approvers, signing_key
from shardvault.catalog.port import SubjectRecord
from shardvault.config import Config, load
from shardvault.errors import (
    AccessDenied,
    ApprovalRequired,
    IntegrityError,
    InvalidInput,
    Unavailable,
)
from shardvault.governance.approval_signatures import sign_verdict, sign_withdrawal
from shardvault.governance.partner_verdicts import PartnerVerdicts, Withdrawal
from shardvault.governance.vetoed_request import VetoedRequest
from shardvault.keys.port import KeyScope
from shardvault.model import Justification, ObjectRef, RequestContext, new_request_id
from shardvault.policy import Principal, PrincipalKind
from shardvault.vault import Vault

REF = ObjectRef("intl", "alice", "notes/today.txt")
DAY = 86400.0
SCOPE = KeyScope("intl", "US")
PRIVACY = Principal("pat", "intl", PrincipalKind.EMPLOYEE, "US", frozenset({"privacy"}))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def one_of_two(text: str) -> str:
    return text.replace("approval_quorum = 2", "approval_quorum = 1")


def partner_policy(config: Config) -> Path:
    return config.base_dir / "partner" / "custodian-policy.toml"


def partner_record(config: Config) -> Path:
    return config.base_dir / "partner" / "verdicts.sqlite"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The operator's config and the partner's policy each ask one signature of two."""
    config = load(make_deployment(tmp_path / "deploy", edit=one_of_two))
    policy = partner_policy(config)
    policy.write_text(one_of_two(policy.read_text()))
    return load(config.path)


@pytest.fixture
def vault(config: Config, clock: Clock) -> Iterator[Vault]:
    with Vault.open(config, clock=clock) as vault:
        register(vault, US_COURT, PRIVACY)
        ensure_approvers(vault.governance)
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"alice's note")
        vault.register_subject("intl", "bob", "US")
        yield vault


def sign(vault: Vault, approval: str, who: str, verdict: str = "approve") -> None:
    ctx = RequestContext(who, "approval", new_request_id())
    vault.governance.sign_approval(approval, ctx, verdict, signing_key(vault.governance, who))


def forget_ctx(approval: str | None = None) -> RequestContext:
    return RequestContext("local-admin", "forget-subject", new_request_id(), approval_id=approval)


def asked_forget(vault: Vault, subject: str = "alice") -> str:
    with pytest.raises(ApprovalRequired) as pending:
        vault.forget("intl", subject, forget_ctx())
    assert pending.value.approval_id is not None
    return pending.value.approval_id


def vetoed_forget(vault: Vault, subject: str = "alice") -> str:
    """A forget of SUBJECT asked, and denied by the partner's officer, signed."""
    approval = asked_forget(vault, subject)
    sign(vault, approval, "partner-officer", "deny")
    return approval


def vetoed_read(vault: Vault) -> str:
    """The court's lawful read of alice's note asked, and denied by the partner's officer."""
    with pytest.raises(ApprovalRequired) as pending:
        vault.get(REF, ctx=as_(US_COURT, "lawful-request"))
    approval = pending.value.approval_id
    assert approval is not None
    sign(vault, approval, "partner-officer", "deny")
    return approval


def asked_behind_the_guard(
    vault: Vault, denied: str, now: float | None = None, **other: str | None
) -> str:
    """Operator code of its own writing a new approval for the denied one's request (or
    for one with the ``other`` fields) into its book, as the guard would not ask it, then
    dpo's genuine signature on it, booked as the guard would not take it either."""
    book = vault.governance.approvals
    was = book.get(denied)
    now = was.created_at if now is None else now
    again = replace(
        was, id=book.new_id("US"), request_id=new_request_id(), created_at=now,
        expires_at=now + DAY, signatures=(), signed=(), **other,
    )  # fmt: skip
    book.create(again)
    dpo = vault.governance.registry.get("dpo").principal
    signature = sign_verdict(signing_key(vault.governance, "dpo"), again, "dpo", "approve")
    book.sign(again.id, dpo, "approve", signature)
    assert book.get(again.id).status == "approved"  # met, by the operator's rule and signed
    return again.id


def refused_forget(vault: Vault, approval: str) -> str:
    """The forget with APPROVAL refused by the partner's custodian, audited as its refusal."""
    retry = forget_ctx(approval)
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:approval\)") as no:
        vault.forget("intl", "alice", retry)
    assert entries_of(vault, retry)[-1].rule == "custodian:approval"
    return str(no.value)


def alice_record(vault: Vault) -> SubjectRecord:
    record = vault.cells["US"].catalog.get_subject("intl", "alice")
    assert record is not None
    return record


def destroy_refused(
    vault: Vault, approval: str, principal: str = "local-admin", purpose: str = "forget-subject"
) -> str:
    """Operator code that skips the guard asking the custodian itself to destroy alice's
    key under APPROVAL: refused, and the key still unwraps."""
    why = Justification(principal, purpose, new_request_id(), "US", approval)
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:approval\)") as no:
        vault.custodian.destroy(SCOPE, alice_record(vault).key_id, why)
    assert vault.get(REF) == b"alice's note"
    return str(no.value)


def unwrap_refused(vault: Vault, approval: str) -> str:
    """The court's unwrap of alice's key under APPROVAL, asked of the custodian itself."""
    record = alice_record(vault)
    assert record.wrapped_key is not None
    why = Justification("us-doj", "lawful-request", new_request_id(), "US", approval)
    with pytest.raises(AccessDenied, match=r"refused the unwrap \(custodian:approval\)") as no:
        vault.custodian.unwrap(SCOPE, record.key_id, record.wrapped_key, why)
    return str(no.value)


# the custodian ---------------------------------------------------------------------------


def test_a_new_approval_for_a_vetoed_forget_destroys_no_key(config: Config, vault: Vault) -> None:
    """The gap: the veto of approval A did not stop approval B for the same forget, met
    by the other approver's signature: the custodian destroyed alice's key."""
    denied = vetoed_forget(vault)
    again = asked_behind_the_guard(vault, denied)
    shards = files_under(config.base_dir / "nodes")
    said = destroy_refused(vault, again)
    assert f"approval {denied} for the same request was denied by partner-officer" in said
    assert vault.subject("intl", "alice").forgotten_at is None
    assert files_under(config.base_dir / "nodes") == shards


def test_a_forgets_veto_binds_whoever_asks_it_and_why(vault: Vault) -> None:
    """A forget destroys the same key whoever asks: the privacy team's own ask, under
    another purpose, is refused as the administrator's is."""
    denied = vetoed_forget(vault)
    again = asked_behind_the_guard(vault, denied, requester="pat", purpose="user-request")
    said = destroy_refused(vault, again, "pat", "user-request")
    assert f"approval {denied} for the same request" in said


def test_a_new_approval_for_a_vetoed_lawful_read_unwraps_no_key(vault: Vault) -> None:
    denied = vetoed_read(vault)
    again = asked_behind_the_guard(vault, denied)
    assert f"approval {denied} for the same request was denied" in unwrap_refused(vault, again)


def test_the_veto_stands_on_the_partners_record_not_the_book(config: Config, vault: Vault) -> None:
    """The denied approval and its verdicts deleted from the operator's book: the veto
    the partner keeps still refuses the request asked again."""
    denied = vetoed_forget(vault)
    again = asked_behind_the_guard(vault, denied)
    book = config.state_dir / "cells" / "US" / "approvals.sqlite"
    with closing(sqlite3.connect(book)) as db, db:
        db.execute("DELETE FROM signatures WHERE approval = ?", (denied,))
        db.execute("DELETE FROM approvals WHERE id = ?", (denied,))
    assert f"approval {denied} for the same request" in destroy_refused(vault, again)
    assert b"alice" not in partner_record(config).read_bytes()  # tags, not the request


US_FBI = Principal(
    "us-fbi", "intl", PrincipalKind.EXTERNAL_REQUESTER, "US",
    authority="us-fbi", authority_country="US",
)  # fmt: skip


def test_a_veto_binds_only_its_own_request(vault: Vault) -> None:
    """Another subject, action or requester is another request: a veto does not touch it."""
    register(vault, US_FBI)
    vetoed_forget(vault, "alice")
    vetoed_read(vault)
    bob = asked_forget(vault, "bob")
    sign(vault, bob, "dpo")
    assert vault.forget("intl", "bob", forget_ctx(bob)).subject == "bob"
    with pytest.raises(ApprovalRequired) as fbi:
        vault.get(REF, ctx=as_(US_FBI, "lawful-request"))
    assert fbi.value.approval_id is not None
    sign(vault, fbi.value.approval_id, "dpo")
    assert vault.get(REF, ctx=as_(US_FBI, "lawful-request", fbi.value.approval_id)) == (
        b"alice's note"
    )
    with pytest.raises(ApprovalRequired) as listing:
        vault.list("intl", "alice", ctx=as_(US_COURT, "lawful-request"))
    assert listing.value.approval_id is not None
    sign(vault, listing.value.approval_id, "dpo")
    court = as_(US_COURT, "lawful-request", listing.value.approval_id)
    assert [o.ref for o in vault.list("intl", "alice", ctx=court).items] == [REF]


def test_who_and_what_a_veto_binds() -> None:
    """A forget's request ignores who asks and why; another action's does not; the
    object key is tagged apart, and the tags are keyed."""
    read = VetoedRequest.of("us-doj", "read", "intl", "alice", "notes/a", "lawful-request")
    assert VetoedRequest.of("x", "forget", "intl", "alice", "k", "p") == VetoedRequest(
        "forget", "intl", "alice"
    )
    key = bytes(32)
    assert read.tags(key)[0] == replace(read, key=None).tags(key)[0]
    assert replace(read, key=None).tags(key)[1] is None
    for other in (
        replace(read, purpose="another"), replace(read, requester="us-fbi"),
        replace(read, action="list"), replace(read, subject="bob"), replace(read, tenant="dom"),
    ):  # fmt: skip
        assert other.tags(key)[0] != read.tags(key)[0]
    assert read.tags(key) != read.tags(bytes(31) + b"\x01")


def test_a_veto_of_one_object_key_binds_any_key_and_not_another(vault: Vault) -> None:
    denied = vetoed_read(vault)
    verdicts = vault.governance.partner_verdicts
    read = VetoedRequest.of_approval(vault.governance.approvals.get(denied))
    assert read.key == REF.key
    for ask, bound in (
        (read, True), (replace(read, key=None), True), (replace(read, key="notes/other"), False),
        (replace(read, action="list", key=None), False),
    ):  # fmt: skip
        assert (verdicts.standing_veto(ask, DAY) is not None) is bound, ask
    any_key = asked_behind_the_guard(vault, denied, key=None)  # any key of alice's: vetoed
    assert f"approval {denied} for the same request" in unwrap_refused(vault, any_key)


# lapsing ------------------------------------------------------------------------------------


def with_veto_days(config: Config, days: int) -> Config:
    path = partner_policy(config)
    quorum = "approval_quorum = 1"
    path.write_text(path.read_text().replace(quorum, f"{quorum}\nveto_days = {days}"))
    return load(config.path)


@pytest.mark.parametrize(("days", "stands"), [(None, 30 * DAY), (2, 2 * DAY), (0, DAY)])
def test_the_veto_lapses_after_the_partners_period_or_the_approvals_expiry(
    config: Config, clock: Clock, days: int | None, stands: float
) -> None:
    """``veto_days`` from the partner's policy (30 absent), counted from the denial; never
    before the denied approval's own expiry (the config's 1 day)."""
    if days is not None:
        config = with_veto_days(config, days)
    with Vault.open(config, clock=clock) as vault:
        register(vault, US_COURT, PRIVACY)
        ensure_approvers(vault.governance)
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"alice's note")
        denied_at = clock.now
        denied = vetoed_forget(vault)
        clock.now = denied_at + stands - 1
        standing = asked_behind_the_guard(vault, denied, clock.now)
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(denied_at + stands))
        assert f"a veto that stands until {until}" in destroy_refused(vault, standing)
        clock.now = denied_at + stands
        lapsed = asked_behind_the_guard(vault, denied, clock.now)
        assert vault.forget("intl", "alice", forget_ctx(lapsed)).subject == "alice"


# the partner's record ------------------------------------------------------------------------


def record_of_schema_1(path: Path, denied: str) -> None:
    """A record as a shardvault from before vetoes left it: one signed denial."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE verdicts (approval TEXT NOT NULL, approver TEXT NOT NULL, verdict "
            "TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')), signature BLOB NOT NULL, "
            "PRIMARY KEY (approval, approver, verdict)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO verdicts VALUES (?, 'partner-officer', 'deny', ?)",
                   (denied, bytes(64)))  # fmt: skip
        db.execute("PRAGMA user_version=1")
    path.chmod(0o600)


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_record_from_before_vetoes_is_read_and_migrated_by_the_next_verdict(
    config: Config, vault: Vault
) -> None:
    """Its denials still refuse their approval; they bind no request (their statements
    were not kept, so the partner cannot say what they refused); the next verdict gives
    it the veto tables, and denials from then on bind their request."""
    old = asked_forget(vault)
    path = partner_record(config)
    record_of_schema_1(path, old)
    sign(vault, old, "dpo")  # the book knows nothing of the partner's denial
    assert "denied by partner-officer" in refused_forget(vault, old)
    assert user_version(path) == 3
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM vetoes").fetchone() == (0,)
        assert len(db.execute("SELECT key FROM veto_key").fetchone()[0]) == 32
    denied = vetoed_forget(vault)
    again = asked_behind_the_guard(vault, denied)
    assert f"approval {denied} for the same" in destroy_refused(vault, again)


# the guard ----------------------------------------------------------------------------------


def book_ids(vault: Vault) -> set[str]:
    return {a.id for a in vault.governance.approvals.all()}


def refused_ask(vault: Vault, ctx: RequestContext, call: Callable[[], object]) -> str:
    """CALL, which needs an approval, refused by the guard for a standing veto: audited
    naming the denial, and no approval opened."""
    before = book_ids(vault)
    with pytest.raises(AccessDenied, match=r"refused \(approval:vetoed\): approval ") as no:
        call()
    assert book_ids(vault) == before
    (entry,) = entries_of(vault, ctx)
    assert (entry.decision, entry.rule, entry.result) == ("deny", "approval:vetoed", "refused")
    return str(no.value)


def test_the_guard_opens_no_approval_for_a_vetoed_request(vault: Vault, clock: Clock) -> None:
    denied_at = clock.now
    denied = vetoed_forget(vault)
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(denied_at + 30 * DAY))
    again = forget_ctx()
    said = refused_ask(vault, again, lambda: vault.forget("intl", "alice", again))
    assert said == (
        f"forget refused (approval:vetoed): approval {denied} for the same request was denied "
        f"by partner-officer (a signed denial the partner holds), a veto that stands until "
        f"{until}"
    )
    assert entries_of(vault, again)[0].details["vetoed_by"] == denied
    privacy = RequestContext("pat", "user-request", new_request_id())
    refused_ask(vault, privacy, lambda: vault.forget("intl", "alice", privacy))
    read = vetoed_read(vault)
    court = as_(US_COURT, "lawful-request")
    assert f"approval {read} for the same" in refused_ask(
        vault, court, lambda: vault.get(REF, ctx=court)
    )
    clock.now = denied_at + 30 * DAY  # lapsed: asked, and met, as any other request
    assert vault.forget("intl", "alice", forget_ctx(asked_and_met(vault))).subject == "alice"


def asked_and_met(vault: Vault) -> str:
    approval = asked_forget(vault)
    sign(vault, approval, "dpo")
    return approval


def test_the_guard_refuses_an_approval_met_before_the_veto(vault: Vault) -> None:
    """A list needs no key, so no custodian sees it: the guard is what refuses the court's
    approval met before the same request was asked again and vetoed."""
    listing = as_(US_COURT, "lawful-request")
    with pytest.raises(ApprovalRequired) as first:
        vault.list("intl", "alice", ctx=listing)
    met = first.value.approval_id
    assert met is not None
    sign(vault, met, "dpo")
    with pytest.raises(ApprovalRequired) as second:
        vault.list("intl", "alice", ctx=as_(US_COURT, "lawful-request"))
    assert second.value.approval_id is not None
    sign(vault, second.value.approval_id, "partner-officer", "deny")
    court = as_(US_COURT, "lawful-request", met)
    with pytest.raises(AccessDenied, match=r"list refused \(approval:vetoed\)"):
        vault.list("intl", "alice", ctx=court)
    (entry,) = entries_of(vault, court)
    assert (entry.rule, entry.details["approval_id"]) == ("approval:vetoed", met)
    assert entry.details["vetoed_by"] == second.value.approval_id


def test_a_lost_record_opens_no_approval(config: Config, vault: Vault) -> None:
    """Fail closed: the lost record may have held a veto of this very request. Refused as
    a verdict is then, naming the file; and once it is restored, asked as before."""
    vetoed_forget(vault, "bob")
    path = partner_record(config)
    kept = path.read_bytes()
    path.unlink()
    ask = forget_ctx()
    before = book_ids(vault)
    with pytest.raises(IntegrityError, match=r"record of signed verdicts .* is missing"):
        vault.forget("intl", "alice", ask)
    assert book_ids(vault) == before
    path.write_bytes(kept)
    path.chmod(0o600)
    asked_forget(vault)


# signing an approval a veto binds -------------------------------------------------------------


def lapse_text(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def test_an_approval_a_veto_binds_takes_no_approve_and_shows_as_vetoed(
    vault: Vault, clock: Clock
) -> None:
    """The gap: an approval for the same request opened before the denial still took
    dpo's signed approve, which the custodian would never count. Refused before anything
    is signed or booked, audited as the guard's refusal is; a deny of it is still taken."""
    opened_before = asked_forget(vault)
    denied_at = clock.now
    denied = vetoed_forget(vault)
    governance = vault.governance
    dpo = RequestContext("dpo", "approval", new_request_id())
    with pytest.raises(AccessDenied) as no:
        governance.sign_approval(opened_before, dpo, "approve", signing_key(governance, "dpo"))
    assert str(no.value) == (
        f"verdict on {opened_before} refused (approval:vetoed): approval {denied} for the same "
        "request was denied by partner-officer (a signed denial the partner holds), a veto that "
        f"stands until {lapse_text(denied_at + 30 * DAY)}"
    )
    assert governance.approvals.get(opened_before).signatures == ()
    assert governance.partner_verdicts.denials(opened_before) == frozenset()
    (entry,) = entries_of(vault, dpo)
    assert (entry.decision, entry.rule, entry.result) == ("deny", "approval:vetoed", "refused")
    assert (entry.details["approval_id"], entry.details["vetoed_by"]) == (opened_before, denied)
    veto = governance.standing_veto_of(governance.approvals.get(opened_before))
    assert veto is not None and (veto.approval, veto.approver) == (denied, "partner-officer")
    assert governance.standing_veto_of(governance.approvals.get(denied)) is None  # denied itself
    sign(vault, opened_before, "dpo", "deny")
    assert governance.approvals.get(opened_before).status == "denied"
    assert governance.standing_veto_of(governance.approvals.get(opened_before)) is None


def test_a_book_row_for_a_vetoed_request_takes_no_approve(vault: Vault) -> None:
    """Operator code that writes an approval for the vetoed request into its book gets no
    approver's signature on it through the guard either."""
    denied = vetoed_read(vault)
    book = vault.governance.approvals
    was = book.get(denied)
    row = replace(was, id=book.new_id("US"), request_id=new_request_id(), signatures=(), signed=())
    book.create(row)
    with pytest.raises(AccessDenied, match=rf"refused \(approval:vetoed\): approval {denied} "):
        sign(vault, row.id, "dpo")
    assert book.get(row.id).status == "pending" and book.get(row.id).signatures == ()


# the denier's withdrawal ----------------------------------------------------------------------


def withdraw(vault: Vault, approval: str, who: str, key_of: str | None = None) -> Withdrawal:
    """WHO's signed withdrawal of their denial of APPROVAL (signed with KEY_OF's key)."""
    ctx = RequestContext(who, "approval", new_request_id())
    key = signing_key(vault.governance, key_of or who)
    return vault.governance.withdraw_denial(approval, ctx, key)


def record_rows(config: Config, query: str, *args: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(partner_record(config))) as db:
        return list(db.execute(query, args).fetchall())


def test_the_denier_withdraws_their_veto_and_the_request_is_asked_again(
    config: Config, vault: Vault, clock: Clock
) -> None:
    """The limit: a denier who changed their mind waited for the lapse (30 days). Their
    own signed withdrawal lifts the veto from the partner's record, which keeps who
    withdrew it and when; the denied approval itself stays denied."""
    opened_before = asked_forget(vault)
    denied = vetoed_forget(vault)
    clock.now += 3600
    ctx = RequestContext("partner-officer", "approval", new_request_id())
    key = signing_key(vault.governance, "partner-officer")
    withdrawn = vault.governance.withdraw_denial(denied, ctx, key)
    assert withdrawn == Withdrawal(denied, "partner-officer", clock.now)
    (entry,) = entries_of(vault, ctx)
    assert (entry.decision, entry.rule, entry.result) == ("allow", "approval:withdraw", "withdrawn")
    assert entry.details["approval_id"] == denied
    assert record_rows(config, "SELECT * FROM vetoes WHERE approval = ?", denied) == []
    ((approval, approver, at, signature),) = record_rows(config, "SELECT * FROM withdrawals")
    assert (approval, approver, at) == (denied, "partner-officer", clock.now)
    assert isinstance(signature, bytes) and len(signature) == 64
    assert vault.governance.approvals.get(denied).status == "denied"  # it stays denied
    assert "is denied" in destroy_refused(vault, denied)
    assert vault.governance.partner_verdicts.denials(denied) == {"partner-officer"}  # kept
    assert vault.governance.standing_veto_of(vault.governance.approvals.get(opened_before)) is None
    sign(vault, opened_before, "dpo")  # the approval asked before: signed, and it counts
    assert vault.forget("intl", "alice", forget_ctx(opened_before)).subject == "alice"


def refused_withdrawal(
    vault: Vault, approval: str, who: str, rule: str, key_of: str | None = None
) -> str:
    """WHO's withdrawal refused with RULE, one line, audited; nothing lifted."""
    ctx = RequestContext(who, "approval", new_request_id())
    key = signing_key(vault.governance, key_of or who)
    with pytest.raises(AccessDenied) as no:
        vault.governance.withdraw_denial(approval, ctx, key)
    assert no.value.rule == rule and f"({rule})" in str(no.value) and "\n" not in str(no.value)
    (entry,) = entries_of(vault, ctx)
    assert (entry.decision, entry.rule, entry.result) == ("deny", rule, "refused")
    assert entry.details["approval_id"] == approval
    return str(no.value)


def test_only_the_denier_withdraws_their_veto_with_their_key_and_once(vault: Vault) -> None:
    """Not the other approvers (a quorum lifting a veto would make it a vote the others
    win again), not with another key, not an approval nobody denied, not twice."""
    denied = vetoed_forget(vault)
    said = refused_withdrawal(vault, denied, "dpo", "approval:not-the-denier")
    assert f"only partner-officer, who denied {denied}, can withdraw that veto" in said
    said = refused_withdrawal(vault, denied, "partner-officer", "approval:signing-key", "dpo")
    assert "not the one the partner's custodian policy holds for partner-officer" in said
    bare = RequestContext("partner-officer", "approval", new_request_id())
    with pytest.raises(InvalidInput, match="partner-officer must sign the withdrawal"):
        vault.governance.withdraw_denial(denied, bare, None)
    assert entries_of(vault, bare) == []  # a usage error, as for a verdict
    undenied = asked_forget(vault, "bob")
    said = refused_withdrawal(vault, undenied, "partner-officer", "approval:not-denied")
    assert f"the partner holds no signed denial of {undenied}" in said
    veto = VetoedRequest.of_approval(vault.governance.approvals.get(denied))
    assert vault.governance.partner_verdicts.standing_veto(veto, DAY) is not None  # all refused
    withdraw(vault, denied, "partner-officer")
    said = refused_withdrawal(vault, denied, "partner-officer", "approval:withdrawn")
    assert f"partner-officer's denial of {denied} was withdrawn at " in said
    assert vault.governance.partner_verdicts.standing_veto(veto, DAY) is None


def test_the_partner_checks_the_withdrawal_itself(config: Config, vault: Vault) -> None:
    """Operator code that skips the guard hands the partner a withdrawal: one the denier
    did not sign, or the denial's own signature replayed as one, lifts nothing."""
    denied = vetoed_forget(vault)
    verdicts = vault.governance.partner_verdicts
    (denial,) = record_rows(config, "SELECT signature FROM verdicts WHERE approval = ?", denied)
    forged = sign_withdrawal(signing_key(vault.governance, "dpo"), denied, "partner-officer",
                             bytes(denial[0]))  # fmt: skip
    for signature in (forged, bytes(denial[0])):
        with pytest.raises(AccessDenied, match=r"\(approval:signing-key\): it does not verify"):
            verdicts.withdraw(denied, "partner-officer", signature)
    with pytest.raises(AccessDenied, match=r"\(approval:not-the-denier\)"):
        verdicts.withdraw(denied, "dpo", forged)
    assert len(record_rows(config, "SELECT * FROM vetoes WHERE approval = ?", denied)) == 1
    assert record_rows(config, "SELECT * FROM withdrawals") == []
    genuine = sign_withdrawal(signing_key(vault.governance, "partner-officer"), denied,
                              "partner-officer", bytes(denial[0]))  # fmt: skip
    verdicts.withdraw(denied, "partner-officer", genuine)
    with pytest.raises(AccessDenied, match=r"\(approval:withdrawn\)"):  # replayed: once only
        verdicts.withdraw(denied, "partner-officer", genuine)
    assert len(record_rows(config, "SELECT * FROM withdrawals")) == 1


def test_operator_code_cannot_lift_a_veto_with_a_key_of_its_own(
    config: Config, vault: Vault
) -> None:
    """The partner verified a withdrawal under whatever key its caller handed it, so
    operator code that skips the guard signed one with a key of its own, handed the
    partner that key's public half, and lifted the veto without the denier. The partner
    takes the key from its own [approvers], as its custodian's gate does."""
    denied = vetoed_forget(vault)
    (denial,) = record_rows(config, "SELECT signature FROM verdicts WHERE approval = ?", denied)
    own = Ed25519PrivateKey.generate()
    forged = sign_withdrawal(own, denied, "partner-officer", bytes(denial[0]))
    with pytest.raises(AccessDenied, match=r"\(approval:signing-key\): it does not verify"):
        vault.governance.partner_verdicts.withdraw(denied, "partner-officer", forged)
    assert len(record_rows(config, "SELECT * FROM vetoes WHERE approval = ?", denied)) == 1
    assert record_rows(config, "SELECT * FROM withdrawals") == []


def test_a_withdrawn_denial_delivered_again_binds_nothing(config: Config, vault: Vault) -> None:
    """The denial's signature is in the operator's book: delivered again after its
    withdrawal, it bound the request anew, for a fresh veto_days from then, and its
    denier, refused as having withdrawn already, could not lift it again."""
    denied = vetoed_forget(vault)
    withdraw(vault, denied, "partner-officer")
    approval = vault.governance.approvals.get(denied)
    signature = dict(approval.signed)["partner-officer"]
    verdicts = vault.governance.partner_verdicts
    verdicts.deliver(approval, "partner-officer", "deny", signature, first=lambda: False)
    assert record_rows(config, "SELECT * FROM vetoes WHERE approval = ?", denied) == []
    assert verdicts.standing_veto(VetoedRequest.of_approval(approval), DAY) is None
    assert verdicts.denials(denied) == {"partner-officer"}  # its approval stays denied
    assert asked_forget(vault) != denied  # asked again: a new approval, not vetoed


def test_a_withdrawal_the_partner_fails_to_keep_is_audited_so(
    config: Config, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The withdrawal is audited before the partner lifts the veto; the partner's record
    then busy (another process holding its write lock past the wait) left the log saying
    ``withdrawn`` and nothing after, while the veto stood. A second entry now says it
    failed, as a refusal by the partner then is."""
    denied = vetoed_forget(vault)
    monkeypatch.setattr("shardvault.governance.verdicts_file._BUSY_SECONDS", 0.2)
    ctx = RequestContext("partner-officer", "approval", new_request_id())
    key = signing_key(vault.governance, "partner-officer")
    with closing(sqlite3.connect(partner_record(config), isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # a writer of another process: reads go on
        with pytest.raises(Unavailable, match="database is locked"):
            vault.governance.withdraw_denial(denied, ctx, key)
        other.execute("ROLLBACK")
    said = [(e.decision, e.rule, e.result) for e in entries_of(vault, ctx)]
    assert said == [
        ("allow", "approval:withdraw", "withdrawn"),
        ("deny", "approval:withdraw", "failed"),
    ]
    assert len(record_rows(config, "SELECT * FROM vetoes WHERE approval = ?", denied)) == 1
    assert withdraw(vault, denied, "partner-officer").approval == denied  # once it is free


def test_a_record_of_schema_2_takes_a_withdrawal(config: Config, vault: Vault) -> None:
    """A record from before withdrawals: read as it is, and given the table by the
    withdrawal (or the next verdict), in the same transaction."""
    denied = vetoed_forget(vault)
    path = partner_record(config)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP TABLE withdrawals")
        db.execute("PRAGMA user_version=2")
    withdraw(vault, denied, "partner-officer")
    assert user_version(path) == 3
    assert [row[:2] for row in record_rows(config, "SELECT * FROM withdrawals")] == [
        (denied, "partner-officer")
    ]


def test_a_withdrawal_the_partner_cannot_check_is_refused_and_not_audited(
    config: Config, vault: Vault
) -> None:
    """The record lost: the denial it checks against is gone, so nothing is withdrawn,
    and, as for a verdict then, the refusal names the file and is not audited."""
    denied = vetoed_forget(vault)
    path = partner_record(config)
    kept = path.read_bytes()
    path.unlink()
    ctx = RequestContext("partner-officer", "approval", new_request_id())
    key = signing_key(vault.governance, "partner-officer")
    with pytest.raises(IntegrityError, match=r"record of signed verdicts .* is missing"):
        vault.governance.withdraw_denial(denied, ctx, key)
    assert entries_of(vault, ctx) == []
    path.write_bytes(kept)
    path.chmod(0o600)
    assert vault.governance.withdraw_denial(denied, ctx, key).approver == "partner-officer"


def test_a_record_another_process_makes_meanwhile_is_not_taken_for_lost(
    tmp_path: Path,
) -> None:
    """A process that found no record, and then a book holding a signed verdict, took the
    record for lost ("restore it from the partner's backup"), though the process that
    signed that verdict had made it in between: it makes the record before it books."""
    partner = tmp_path / "partner"
    verdicts = PartnerVerdicts(partner)

    def first_signed_meanwhile() -> bool:
        PartnerVerdicts(partner).made(lambda: True)  # the other process, then its booking
        return False  # so a book now holds a signed verdict

    for read in (
        lambda: verdicts.made(first_signed_meanwhile),
        lambda: verdicts.standing_vetoes([], DAY, first_signed_meanwhile),
        lambda: verdicts.withdrawable("apr-us-0123456789abcdef", "dpo", first_signed_meanwhile),
    ):
        verdicts.path.unlink(missing_ok=True)
        try:
            read()
        except AccessDenied as exc:  # withdrawable: no veto to withdraw, in a record there
            assert "apr-us-0123456789abcdef" in str(exc)
        assert verdicts.path.exists()
