"""The custodian decides every key operation (wrap, unwrap, destroy), not only unwraps.

A registration wraps a subject key and a forget destroys one: the partner's
custodian policy sees both, may refuse both, and a refusal is audited like a
refused read and leaves nothing behind.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from tests.cli.test_cli import Cli
from tests.governance.helpers import SERVICE, US_COURT, as_, entries_of, register

from conftest import files_under, make_deployment
from governance_support import approve
from shardvault.config import Config, load
from shardvault.custodian_policy import (
    APPROVAL_REQUIRED,
    DEFAULT_DENY,
    CustodianPolicy,
    KeyScope,
    decide_key_use,
    load_custodian_policy,
    parse_custodian_policy,
)
from shardvault.demo import DEMO_CUSTODIAN_POLICY
from shardvault.errors import (
    AccessDenied,
    ApprovalRequired,
    ConfigError,
    NotFound,
    SubjectForgotten,
)
from shardvault.governance.approvals import ApprovalBook
from shardvault.governance.custodian_gate import custodian_gate
from shardvault.keys import KeyOperation
from shardvault.keys import port as keys
from shardvault.keys.key_subjects import key_subjects_path
from shardvault.keys.keyring import KeyringCustodian
from shardvault.keys.tombstones import tombstones_path
from shardvault.model import Justification, ObjectRef, RequestContext, local_context, new_request_id
from shardvault.vault import Vault

WRAP, UNWRAP, DESTROY = KeyOperation.WRAP, KeyOperation.UNWRAP, KeyOperation.DESTROY
REF = ObjectRef("intl", "alice", "notes/today.txt")


@pytest.fixture
def story(vault: Vault) -> Vault:
    register(vault, SERVICE, US_COURT)
    vault.register_subject("intl", "alice", "US")
    vault.put(REF, b"alice's note")
    return vault


def keyring_bytes(config: Config) -> bytes:
    """The keyring's roots and its tombstones: a refusal changes neither."""
    return config.keyring_path.read_bytes() + tombstones_path(config.keyring_path).read_bytes()


def custodian_entry(vault: Vault, ctx: RequestContext, rule: str) -> None:
    """The request's entries: the policy's allow, then the custodian's refusal."""
    policy, custodian = entries_of(vault, ctx)
    assert (policy.decision, policy.details["stage"]) == ("allow", "policy")
    assert (custodian.decision, custodian.rule, custodian.result) == ("deny", rule, "refused")
    assert custodian.details["stage"] == "custodian"


# the policy, pure -----------------------------------------------------------------

POLICY = parse_custodian_policy(
    """
version = 1
approval_purposes = ["erase"]

[[grant]]
id = "reads-only"
purposes = ["serve-user"]
operations = ["unwrap"]

[[grant]]
id = "signups"
purposes = ["signup"]
operations = ["wrap"]

[[grant]]
id = "erasures"
purposes = ["erase"]
operations = ["destroy"]

[[grant]]
id = "anything"
purposes = ["legacy"]
"""
)
US_KEY = KeyScope("intl", "US")


def why(purpose: str, approval: str | None = None) -> Justification:
    return Justification("svc-api", purpose, "req-1", "US", approval)


@pytest.mark.parametrize(
    ("operation", "justification", "allowed", "rule"),
    [
        (UNWRAP, why("serve-user"), True, "reads-only"),
        (WRAP, why("serve-user"), False, DEFAULT_DENY),
        (DESTROY, why("serve-user"), False, DEFAULT_DENY),
        (WRAP, why("signup"), True, "signups"),
        (UNWRAP, why("signup"), False, DEFAULT_DENY),
        (DESTROY, why("erase"), False, APPROVAL_REQUIRED),
        (DESTROY, why("erase", "apr-us-0123456789abcdef"), True, "erasures"),
        (UNWRAP, why("erase", "apr-us-0123456789abcdef"), False, DEFAULT_DENY),
        (WRAP, why("no-such-purpose"), False, DEFAULT_DENY),
        *[(op, why("legacy"), True, "anything") for op in KeyOperation],  # absent = all three
    ],
)
def test_each_operation_is_decided_on_its_own(
    operation: KeyOperation, justification: Justification, allowed: bool, rule: str
) -> None:
    decision = decide_key_use(POLICY, operation, justification, US_KEY)
    assert (decision.allowed, decision.rule, decision.operation) == (allowed, rule, operation)
    if not allowed:
        assert str(decision.refusal()).startswith(f"key custodian refused the {operation} ({rule})")
        assert decision.refusal().rule == rule


def test_the_fixed_rules_hold_for_every_operation() -> None:
    for operation in KeyOperation:
        assert decide_key_use(CustodianPolicy(), operation, why("legacy"), US_KEY).rule == (
            DEFAULT_DENY
        )
        abroad = replace(why("legacy"), requester_jurisdiction="SG")
        assert not decide_key_use(POLICY, operation, abroad, US_KEY).allowed
        nameless = replace(why("legacy"), request_id="")
        assert decide_key_use(POLICY, operation, nameless, US_KEY).rule == (
            "custodian:justification"
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["erase"]', r"grant #1\.operations: 'erase' is not one of: wrap, unwrap, destroy"),
        ('["*"]', r"grant #1\.operations: '\*' is not one of"),
        ('["Wrap"]', r"grant #1\.operations: 'Wrap' is not one of"),
        ("[]", r"grant #1\.operations must be a non-empty list"),
        ('"wrap"', r"grant #1\.operations must be a non-empty list"),
        ("[1]", r"grant #1\.operations must be a non-empty list"),
    ],
)
def test_bad_operations_are_refused_at_load(value: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "custodian-policy.toml"
    path.write_text(f'version = 1\n[[grant]]\nid = "g"\npurposes = ["p"]\noperations = {value}\n')
    with pytest.raises(ConfigError, match=message):
        parse_custodian_policy(path.read_text())
    with pytest.raises(ConfigError, match=f"{path}.*{message}"):
        load_custodian_policy(path)


def test_the_demo_grants_each_purpose_only_the_operations_it_needs() -> None:
    demo = parse_custodian_policy(DEMO_CUSTODIAN_POLICY)
    admin = Justification("local-admin", "register-subject", "r", "US")
    assert decide_key_use(demo, WRAP, admin, US_KEY).rule == "register-subjects"
    assert not decide_key_use(demo, UNWRAP, admin, US_KEY).allowed
    forget = replace(admin, purpose="forget-subject")
    assert decide_key_use(demo, DESTROY, forget, US_KEY).rule == APPROVAL_REQUIRED
    approved = replace(forget, approval_id="apr-us-0123456789abcdef")
    assert decide_key_use(demo, DESTROY, approved, US_KEY).rule == "forget-subjects"
    assert not decide_key_use(demo, UNWRAP, approved, US_KEY).allowed
    assert not decide_key_use(demo, DESTROY, replace(admin, purpose="read"), US_KEY).allowed


# wrap: registration -------------------------------------------------------------------


def assert_not_registered(vault: Vault, subject: str, cell: str = "US") -> None:
    assert vault.directory.home("intl", subject) is None
    assert vault.cells[cell].catalog.get_subject("intl", subject) is None
    with pytest.raises(NotFound):
        vault.subject("intl", subject)


@pytest.mark.parametrize("purpose", ["no-such-purpose", "read"], ids=["ungranted", "unwrap-only"])
def test_a_refused_wrap_registers_nothing_and_is_audited(
    deployment: tuple[Config, Vault], story: Vault, purpose: str
) -> None:
    config, vault = deployment
    before = keyring_bytes(config)
    ctx = local_context(purpose)
    with pytest.raises(AccessDenied, match=r"refused the wrap \(custodian:default-deny\)") as no:
        vault.register_subject("intl", "carol", "US", ctx)
    assert no.value.rule == DEFAULT_DENY
    custodian_entry(vault, ctx, DEFAULT_DENY)
    assert_not_registered(vault, "carol")
    assert keyring_bytes(config) == before
    vault.register_subject("intl", "carol", "US")  # the granted purpose still registers her


def test_a_refused_wrap_makes_no_root_key_for_a_new_scope(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    config, vault = deployment
    before = keyring_bytes(config)
    with pytest.raises(AccessDenied, match="custodian:default-deny"):
        vault.register_subject("domestic", "dana", "EU", local_context("no-such-purpose"))
    assert keyring_bytes(config) == before  # no domestic/EU root
    assert_not_registered(vault, "dana", "EU")


def test_a_service_registers_its_users_under_the_serve_users_grant(story: Vault) -> None:
    story.register_subject("intl", "bob", "US", as_(SERVICE, "serve-user"))
    assert story.subject("intl", "bob").wrapped_key is not None


def test_the_cli_cannot_register_for_a_purpose_the_custodian_does_not_grant(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    cli = Cli(make_deployment(tmp_path / "deploy"), capsysbinary)
    refused = cli.fails(
        1, "--purpose", "no-such-purpose", "subject", "add", "intl", "carol", "--jurisdiction", "US"
    )
    assert "key custodian refused the wrap (custodian:default-deny)" in refused
    assert "no subject carol" in cli.fails(1, "ls", "intl", "carol")
    cli.ok("subject", "add", "intl", "carol", "--jurisdiction", "US")


# destroy: forget ----------------------------------------------------------------------


def approved_forget(vault: Vault, ctx: RequestContext) -> RequestContext:
    """The forget's retry with a met approval (the operator's invariant asks for one)."""
    with pytest.raises(ApprovalRequired) as pending:
        vault.forget("intl", "alice", ctx)
    assert pending.value.approval_id is not None
    approve(vault.governance, pending.value.approval_id)
    return replace(ctx, request_id=new_request_id(), approval_id=pending.value.approval_id)


def assert_untouched(vault: Vault, config: Config, keyring: bytes, shards: set[Path]) -> None:
    record = vault.subject("intl", "alice")
    assert record.forgotten_at is None and record.wrapped_key is not None
    assert vault.get(REF) == b"alice's note"  # the key still unwraps
    assert keyring_bytes(config) == keyring
    assert files_under(config.base_dir / "nodes") == shards


def test_a_destroy_for_an_ungranted_purpose_is_refused_and_audited(
    deployment: tuple[Config, Vault], story: Vault
) -> None:
    config, vault = deployment
    retry = approved_forget(vault, local_context("tidy-up"))
    keyring, shards = keyring_bytes(config), files_under(config.base_dir / "nodes")
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:default-deny\)"):
        vault.forget("intl", "alice", retry)
    custodian_entry(vault, retry, DEFAULT_DENY)
    assert_untouched(vault, config, keyring, shards)


class LateClock:
    """The partner's clock, read after the approval has expired."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture
def late_partner(config_path: Path) -> Iterator[tuple[Config, Vault]]:
    """A vault whose custodian checks approvals itself, by a clock past their expiry."""
    config = load(config_path)
    with Vault.open(config) as first:
        register(first, SERVICE)
        first.register_subject("intl", "alice", "US")
        first.put(REF, b"alice's note")
        ttl = first.governance.spec.approval_ttl
        policy = first.governance.custodian_policy
        verdicts = first.governance.partner_verdicts
    book = ApprovalBook(config.state_dir, list(config.jurisdictions), LateClock(ttl + 60))
    custodian = KeyringCustodian(config.keyring_path, custodian_gate(policy, book, verdicts))
    try:
        with Vault.open(config, custodian=custodian) as vault:
            yield config, vault
    finally:
        book.close()


def test_a_destroy_without_a_met_approval_is_refused_and_audited(
    late_partner: tuple[Config, Vault],
) -> None:
    config, vault = late_partner
    retry = approved_forget(vault, local_context("forget-subject"))  # met for the operator
    keyring, shards = keyring_bytes(config), files_under(config.base_dir / "nodes")
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:approval\).*expired"):
        vault.forget("intl", "alice", retry)
    custodian_entry(vault, retry, APPROVAL_REQUIRED)
    assert_untouched(vault, config, keyring, shards)


def test_the_gate_wants_a_met_forget_approval_for_every_destroy(story: Vault) -> None:
    gate = story.governance.custodian_gate()
    scope = keys.KeyScope("intl", "US")
    forget = Justification("local-admin", "forget-subject", "r1", "US")
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:approval\)"):
        gate(DESTROY, scope, "kid", forget)  # no approval id
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:approval\)"):
        gate(DESTROY, scope, "kid", replace(forget, approval_id="apr-us-0123456789abcdef"))
    with pytest.raises(ApprovalRequired) as pending:
        story.forget("intl", "alice")
    approval = pending.value.approval_id
    assert approval is not None
    with pytest.raises(AccessDenied, match="has 0 of the 2 signatures the partner requires"):
        gate(DESTROY, scope, "kid", replace(forget, approval_id=approval))  # pending
    approve(story.governance, approval)
    gate(DESTROY, scope, "kid", replace(forget, approval_id=approval))
    for other in (
        replace(forget, approval_id=approval, principal="svc-api"),
        replace(forget, approval_id=approval, requester_jurisdiction="SG"),
    ):
        with pytest.raises(AccessDenied, match="refused the destroy"):
            gate(DESTROY, scope, "kid", other)
    with pytest.raises(AccessDenied, match="refused the destroy"):
        gate(DESTROY, keys.KeyScope("domestic", "US"), "kid", replace(forget, approval_id=approval))


def test_a_met_forget_approval_destroys_its_own_subjects_key_and_no_other(story: Vault) -> None:
    """Found in review (docs/trust-model.md, known limits): the custodian checked a
    destroy's approval for its requester, purpose, tenant, cell and action, not for the
    key, so code of the operator's own holding a met approval to forget alice had the
    custodian destroy bob's key, through the custodian's own API."""
    bob_ref = ObjectRef("intl", "bob", "notes/b.txt")
    bob = story.register_subject("intl", "bob", "US")
    story.put(bob_ref, b"bob's note")
    alice = story.cells["US"].catalog.get_subject("intl", "alice")
    assert alice is not None
    with pytest.raises(ApprovalRequired) as pending:
        story.forget("intl", "alice")
    approval = pending.value.approval_id
    assert approval is not None
    approve(story.governance, approval)
    scope = keys.KeyScope("intl", "US")
    forget = Justification("local-admin", "forget-subject", new_request_id(), "US", approval)
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:key-subject\)"):
        story.custodian.destroy(scope, bob.key_id, forget)
    assert story.get(bob_ref) == b"bob's note"
    story.custodian.destroy(scope, alice.key_id, forget)  # the key the approval is for
    with pytest.raises(SubjectForgotten):
        story.get(REF)


def test_a_met_approval_unwraps_its_own_subjects_key_and_no_other(story: Vault) -> None:
    """Found in review: the custodian checked an unwrap's approval for its requester,
    purpose, tenant, cell and action, not for whose key it was, so code of the operator's
    own holding a court's met approval to read alice's note had the custodian (the real
    keyring) unwrap bob's key, in the same tenant and cell, through its own API."""
    assert isinstance(story.custodian, KeyringCustodian)
    bob_ref = ObjectRef("intl", "bob", "notes/b.txt")
    bob = story.register_subject("intl", "bob", "US")
    story.put(bob_ref, b"bob's note")
    with pytest.raises(ApprovalRequired) as pending:
        story.get(REF, ctx=as_(US_COURT, "lawful-request"))
    approval = pending.value.approval_id
    assert approval is not None
    approve(story.governance, approval)
    scope, alice = keys.KeyScope("intl", "US"), story.subject("intl", "alice")
    court = Justification("us-doj", "lawful-request", new_request_id(), "US", approval)
    assert bob.wrapped_key is not None and alice.wrapped_key is not None
    with pytest.raises(AccessDenied, match=r"refused the unwrap \(custodian:key-subject\)") as no:
        story.custodian.unwrap(scope, bob.key_id, bob.wrapped_key, court)
    assert no.value.rule == "custodian:key-subject"
    assert "its approval is for another subject" in str(no.value)
    story.custodian.unwrap(scope, alice.key_id, alice.wrapped_key, court)  # the approval's own
    assert story.get(REF, ctx=as_(US_COURT, "lawful-request", approval)) == b"alice's note"
    assert story.get(bob_ref, ctx=as_(SERVICE, "serve-user")) == b"bob's note"  # no approval


def test_a_keyring_from_before_learns_its_keys_subjects_once_and_old_approvals_hold(
    config_path: Path,
) -> None:
    """A keyring from before the custodian recorded whose key is whose (tombstones at
    version 1, no key subjects): the first open names its keys' subjects from the
    catalogs, and an approval asked and met before then destroys its own subject's key,
    through a forget, and no other."""
    config = load(config_path)
    bob_ref = ObjectRef("intl", "bob", "notes/b.txt")
    with Vault.open(config) as vault:
        vault.register_subject("intl", "alice", "US")
        bob = vault.register_subject("intl", "bob", "US")
        vault.put(bob_ref, b"bob's note")
        with pytest.raises(ApprovalRequired) as pending:
            vault.forget("intl", "alice")
        approval = pending.value.approval_id
        assert approval is not None
        approve(vault.governance, approval)
    key_subjects_path(config.keyring_path).unlink()
    with closing(sqlite3.connect(tombstones_path(config.keyring_path))) as db:
        db.execute("PRAGMA user_version=1")
    assert KeyringCustodian(config.keyring_path).needs_subjects()
    with Vault.open(config) as vault:
        assert not vault.custodian.needs_subjects()
        forget = Justification("local-admin", "forget-subject", new_request_id(), "US", approval)
        with pytest.raises(AccessDenied, match=r"\(custodian:key-subject\).*another subject"):
            vault.custodian.destroy(keys.KeyScope("intl", "US"), bob.key_id, forget)
        retry = RequestContext(
            "local-admin", "forget-subject", new_request_id(), approval_id=approval
        )
        assert vault.forget("intl", "alice", retry).subject == "alice"
        assert vault.get(bob_ref) == b"bob's note"


def test_a_met_approval_of_a_read_does_not_destroy_a_key(story: Vault) -> None:
    """The partner destroys a key only on an approval of a forget, whatever its grants say."""
    lenient = replace(
        story.governance.custodian_policy,  # its [approvers], and:
        grants=parse_custodian_policy(
            'version = 1\n[[grant]]\nid = "court"\npurposes = ["lawful-request"]\n'
            "requires_approval = true\n"
        ).grants,
    )
    gate = custodian_gate(lenient, story.governance.approvals, story.governance.partner_verdicts)
    with pytest.raises(ApprovalRequired) as pending:
        story.get(REF, ctx=as_(US_COURT, "lawful-request"))
    approval = pending.value.approval_id
    assert approval is not None
    approve(story.governance, approval)
    court = Justification("us-doj", "lawful-request", "r2", "US", approval)
    gate(UNWRAP, keys.KeyScope("intl", "US"), "kid", court)
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:approval\)"):
        gate(DESTROY, keys.KeyScope("intl", "US"), "kid", court)


def approval_for(vault: Vault, ask: Callable[[RequestContext], object], ctx: RequestContext) -> str:
    """The id of the approval ``ask`` is sent for, met by both approvers."""
    with pytest.raises(ApprovalRequired) as pending:
        ask(ctx)
    approval = pending.value.approval_id
    assert approval is not None
    approve(vault.governance, approval)
    return approval


@pytest.mark.parametrize("asked", ["forget", "list"])
def test_a_met_approval_unwraps_a_key_only_if_it_was_for_a_read_or_write(
    deployment: tuple[Config, Vault], story: Vault, asked: str
) -> None:
    """Found in review: for an unwrap the custodian took an approval of any action but a
    registration. Under a grant without `operations` covering the forget's purpose, a
    met approval to forget alice had the (real) keyring unwrap her key to the same
    principal, and under the demo's own custodian policy a domestic court's met
    approval to list her objects did: the approvers let neither read her data."""
    config, _ = deployment
    if asked == "forget":
        legacy = parse_custodian_policy(
            'version = 1\n[[grant]]\nid = "forgets"\npurposes = ["forget-subject"]\n'
            "requires_approval = true\n"
        )
        policy = replace(story.governance.custodian_policy, grants=legacy.grants)
        ctx = local_context("forget-subject")
        approval = approval_for(story, lambda c: story.forget("intl", "alice", c), ctx)
    else:
        policy = story.governance.custodian_policy  # the demo's: lawful requests unwrap
        ctx = as_(US_COURT, "lawful-request")
        approval = approval_for(story, lambda c: story.list("intl", "alice", ctx=c), ctx)
        assert story.list("intl", "alice", ctx=replace(ctx, approval_id=approval))
    gate = custodian_gate(policy, story.governance.approvals, story.governance.partner_verdicts)
    custodian = KeyringCustodian(config.keyring_path, gate)
    alice = story.subject("intl", "alice")
    assert alice.wrapped_key is not None
    why = Justification(ctx.principal, ctx.purpose, new_request_id(), "US", approval)
    with pytest.raises(AccessDenied, match=r"refused the unwrap \(custodian:approval\)") as no:
        custodian.unwrap(keys.KeyScope("intl", "US"), alice.key_id, alice.wrapped_key, why)
    assert "is for another request" in str(no.value)
    assert no.value.rule == APPROVAL_REQUIRED
    if asked == "forget":  # what it was for still goes ahead
        custodian.destroy(keys.KeyScope("intl", "US"), alice.key_id, why)
        with pytest.raises(SubjectForgotten):
            story.get(REF)


def test_a_grant_covering_every_operation_destroys_no_key_without_an_approval(
    story: Vault,
) -> None:
    """A grant written before `operations` existed covers destroy too: the partner still
    destroys a key only on a met approval of a forget, never on a purpose alone."""
    legacy = parse_custodian_policy(
        'version = 1\n[[grant]]\nid = "serve-users"\npurposes = ["serve-user"]\n'
    )
    gate = custodian_gate(legacy, story.governance.approvals, story.governance.partner_verdicts)
    serve = Justification("svc-api", "serve-user", "r1", "US")
    gate(UNWRAP, keys.KeyScope("intl", "US"), "kid", serve)
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:approval\)"):
        gate(DESTROY, keys.KeyScope("intl", "US"), "kid", serve)
