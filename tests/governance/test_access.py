"""The vault under governance: policy, invariants, the custodian's own say, and the log."""

from __future__ import annotations

import pytest
from tests.governance.helpers import (
    CN_POLICE,
    OTHER_TENANT,
    SERVICE,
    SG_SUPPORT,
    SUPPORT,
    as_,
    entries,
    entries_of,
    register,
)

from governance_support import forget_approved
from shardvault.errors import AccessDenied, InvalidInput, NotFound, SubjectForgotten
from shardvault.model import LOCAL_ADMIN, ObjectRef, RequestContext
from shardvault.vault import Vault

REF = ObjectRef("intl", "alice", "notes/today.txt")


@pytest.fixture
def story(vault: Vault) -> Vault:
    register(vault)
    vault.register_subject("intl", "alice", "US")
    vault.put(REF, b"alice's note")
    return vault


def test_policy_allows_and_the_custodian_refuses_and_both_are_audited(story: Vault) -> None:
    ctx = as_(SUPPORT, "support-ticket")
    with pytest.raises(AccessDenied, match=r"custodian:default-deny") as refused:
        story.get(REF, ctx=ctx)
    assert refused.value.rule == "custodian:default-deny"
    policy, custodian = entries_of(story, ctx)
    assert (policy.decision, policy.rule, policy.details["stage"]) == (
        "allow", "support-reads-with-ticket", "policy",
    )  # fmt: skip
    assert (custodian.decision, custodian.rule, custodian.details["stage"]) == (
        "deny", "custodian:default-deny", "custodian",
    )  # fmt: skip
    # the same principal may see metadata (no key is unwrapped for it)
    assert story.stat(REF, ctx=as_(SUPPORT, "support-ticket")).size == len(b"alice's note")
    # and the service the partner does grant reads the data
    assert story.get(REF, ctx=as_(SERVICE, "serve-user")) == b"alice's note"


def test_foreign_government_request_is_refused_by_rule_and_logged(story: Vault) -> None:
    ctx = as_(CN_POLICE, "lawful-request")
    with pytest.raises(AccessDenied, match=r"invariant:foreign-government"):
        story.get(REF, ctx=ctx)
    (entry,) = entries_of(story, ctx)
    assert (entry.decision, entry.rule, entry.result) == (
        "deny", "invariant:foreign-government", "refused",
    )  # fmt: skip
    assert entry.details["kind"] == "external-requester"
    assert entry.details["authority_country"] == "CN"
    assert entry.details["data_class"] == "protected"
    assert "alice" not in entry.to_bytes().decode()  # subject and key are pseudonyms


@pytest.mark.parametrize(
    ("principal", "purpose", "rule"),
    [
        (CN_POLICE, "lawful-request", "invariant:foreign-government"),
        (OTHER_TENANT, "serve-user", "invariant:cross-tenant"),
    ],
)
def test_who_is_not_registered_is_told_only_to_whom_may_know(
    story: Vault, principal: object, purpose: str, rule: str
) -> None:
    # "no subject bob" was answered before any decision: another tenant, or a foreign
    # authority, learned unaudited which ids are registered
    ctx = as_(principal, purpose)  # type: ignore[arg-type]
    nobody = ObjectRef("intl", "bob", "x")
    for call in (
        lambda: story.get(nobody, ctx=ctx),
        lambda: story.put(nobody, b"x", ctx=ctx),
        lambda: story.list("intl", "bob", ctx=ctx),
    ):
        with pytest.raises(AccessDenied, match=rule):
            call()
    assert [(e.decision, e.rule) for e in entries_of(story, ctx)] == [("deny", rule)] * 3
    allowed = as_(SERVICE, "serve-user")
    with pytest.raises(NotFound, match="no subject bob"):  # the tenant's own service may know
        story.get(nobody, ctx=allowed)
    [answer] = entries_of(story, allowed)  # and that answer is audited too
    assert (answer.decision, answer.result) == ("allow", "not-registered")


def test_a_refusal_does_not_say_where_the_data_lives(story: Vault) -> None:
    # "... for protected data of jurisdiction SG is refused" told a foreign authority
    # where each registered subject lives, and which ids were not registered
    story.register_subject("intl", "sook", "SG")
    messages = set()
    for subject in ("alice", "sook", "nobody"):
        with pytest.raises(AccessDenied, match="foreign-government") as refused:
            story.get(ObjectRef("intl", subject, "x"), ctx=as_(CN_POLICE, "lawful-request"))
        messages.add(str(refused.value))
    assert len(messages) == 1 and "another jurisdiction" in messages.pop()


@pytest.mark.parametrize("principal", [CN_POLICE, OTHER_TENANT])
def test_forget_is_decided_before_it_answers_forgotten(story: Vault, principal: object) -> None:
    # it used to say "forgotten" before any decision: unaudited, uncounted, to anyone
    forget_approved(story, "intl", "alice")
    ctx = as_(principal, "lawful-request")  # type: ignore[arg-type]
    with pytest.raises(AccessDenied, match=r"invariant:(foreign-government|cross-tenant)"):
        story.forget("intl", "alice", ctx)
    (entry,) = entries_of(story, ctx)
    assert (entry.action, entry.decision) == ("forget", "deny")


@pytest.mark.parametrize(
    ("principal", "purpose", "rule"),
    [
        (SG_SUPPORT, "support-ticket", "invariant:protected-read-location"),
        (OTHER_TENANT, "serve-user", "invariant:cross-tenant"),
        (SERVICE, "marketing", "default:deny"),
    ],
)
def test_invariants_and_default_deny_hold_through_the_vault(
    story: Vault, principal: object, purpose: str, rule: str
) -> None:
    ctx = as_(principal, purpose)  # type: ignore[arg-type]
    for call in (
        lambda: story.get(REF, ctx=ctx),
        lambda: story.stat(REF, ctx=ctx),
        lambda: story.list("intl", "alice", ctx=ctx),
        lambda: story.delete(REF, ctx=ctx),  # it answered what stat refuses: what exists
    ):
        with pytest.raises(AccessDenied, match=rule):
            call()
    assert {e.rule for e in entries_of(story, ctx)} == {rule}
    assert story.get(REF) == b"alice's note"


def test_unknown_and_revoked_principals_are_refused_and_logged(story: Vault) -> None:
    ghost = RequestContext("ghost", "serve-user", "req-ghost")
    with pytest.raises(AccessDenied, match="unknown principal"):
        story.get(REF, ctx=ghost)
    assert entries_of(story, ghost)[0].rule == "governance:unknown-principal"
    assert story.get(REF, ctx=as_(SERVICE, "serve-user")) == b"alice's note"
    story.governance.registry.revoke(SERVICE.id)
    revoked = as_(SERVICE, "serve-user")
    with pytest.raises(AccessDenied, match="revoked"):
        story.get(REF, ctx=revoked)
    assert entries_of(story, revoked)[0].rule == "governance:revoked-principal"


def test_every_vault_call_is_decided_and_logged_before_it_acts(story: Vault) -> None:
    before = len(entries(story))
    ctx = as_(SERVICE, "serve-user")
    story.put(ObjectRef("intl", "alice", "b"), b"x", ctx=ctx)
    story.get(ObjectRef("intl", "alice", "b"), ctx=ctx)
    story.stat(ObjectRef("intl", "alice", "b"), ctx=ctx)
    story.versions(ObjectRef("intl", "alice", "b"), ctx=ctx)
    story.where(ObjectRef("intl", "alice", "b"), ctx=ctx)
    story.list("intl", "alice", ctx=ctx)
    story.delete(ObjectRef("intl", "alice", "b"), ctx=ctx)
    logged = entries(story)[before:]
    assert [e.action for e in logged] == ["write", "read", "stat", "stat", "stat", "list", "delete"]
    assert {(e.principal, e.decision, e.rule) for e in logged} == {
        ("svc-api", "allow", "service-serves-users")
    }
    # nothing of another cell's log moved
    assert entries(story, "SG") == [] and entries(story, "EU") == []


def test_a_forgotten_subject_is_still_decided_and_logged(story: Vault) -> None:
    from governance_support import forget_approved

    forget_approved(story, "intl", "alice")
    ctx = as_(SERVICE, "serve-user")
    with pytest.raises(SubjectForgotten):
        story.get(REF, ctx=ctx)
    assert [e.decision for e in entries_of(story, ctx)] == ["allow"]


def test_local_admin_can_be_switched_off(config_path) -> None:  # type: ignore[no-untyped-def]
    from shardvault.config import load

    text = config_path.read_text().replace("local_admin = true", "local_admin = false")
    config_path.write_text(text)
    with (
        Vault.open(load(config_path)) as vault,
        pytest.raises(AccessDenied, match="local administrator is disabled"),
    ):
        vault.register_subject("intl", "alice", "US")


def test_the_local_admin_once_known_is_switched_off_all_the_same(config_path) -> None:  # type: ignore[no-untyped-def]
    # the administrator's principal is made once per tenant and location (requesters.py
    # `_local_admin`); whether it may act is asked on every request
    from shardvault.config import load

    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"alice's note")
        assert vault.get(REF) == b"alice's note"
    config_path.write_text(
        config_path.read_text().replace("local_admin = true", "local_admin = false")
    )
    with Vault.open(load(config_path)) as vault, pytest.raises(AccessDenied, match="disabled"):
        vault.get(REF)


def test_the_local_admin_acts_from_where_each_request_says(story: Vault) -> None:
    # a principal remembered for one location is never the one of another
    for _ in range(2):
        assert story.get(REF, ctx=RequestContext(LOCAL_ADMIN, "read", "r1", "US"))
        with pytest.raises(AccessDenied, match="invariant:protected-read-location"):
            story.get(REF, ctx=RequestContext(LOCAL_ADMIN, "read", "r2", "SG"))
    (entry,) = [e for e in entries(story) if e.request_id == "r2"][-1:]
    assert entry.details["location"] == "SG"


class _Posing(str):
    """A location that claims to equal any other: what it spells is what counts."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("US")


def test_a_bad_local_admin_location_is_refused_every_time(story: Vault) -> None:
    assert story.get(REF, ctx=RequestContext(LOCAL_ADMIN, "read", "r1", "US"))
    for location in ("us", "us", _Posing("not a code"), ["US"]):
        with pytest.raises(InvalidInput, match="invalid jurisdiction"):
            story.get(REF, ctx=RequestContext(LOCAL_ADMIN, "read", "r3", location))  # type: ignore[arg-type]


def test_a_home_the_directory_holds_misspelt_is_refused_as_before(
    config_path,  # type: ignore[no-untyped-def]
) -> None:
    # a get or put makes its resource from its ObjectRef without checking its names
    # again (Resource.of_object); the home, read from the directory, is still refused
    import sqlite3

    from shardvault.config import load

    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"alice's note")
        state = vault.directory.location
    with sqlite3.connect(state) as db:
        db.execute("UPDATE homes SET jurisdiction = 'us'")
    db.close()
    with Vault.open(load(config_path)) as vault:
        for call in (lambda: vault.get(REF), lambda: vault.put(REF, b"x")):
            with pytest.raises(InvalidInput, match=r"^invalid jurisdiction 'us': use an upper"):
                call()


def test_malformed_request_context_is_bad_input_and_not_logged(story: Vault) -> None:
    before = len(entries(story))
    for ctx in (
        RequestContext("", "serve-user", "r1"),
        RequestContext("svc-api", "has space", "r1"),
        RequestContext("svc-api", "serve-user", "r1", approval_id="not-an-approval"),
    ):
        with pytest.raises(InvalidInput):
            story.get(REF, ctx=ctx)
    assert len(entries(story)) == before
