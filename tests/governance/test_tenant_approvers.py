"""Approvers of each tenant: an approval is signed only by approvers of its own tenant, so
the demo names two per tenant, and a request is told only of those who could sign it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.cli.test_cli import Cli
from tests.governance import test_signed_approvals as signed

from governance_support import ensure_approvers, signing_key
from shardvault.config import load
from shardvault.errors import AccessDenied
from shardvault.governance import Governance
from shardvault.governance.approval_signatures import sign_verdict
from shardvault.policy import Principal, PrincipalKind
from shardvault.vault import Vault

OFFICERS = {
    "intl": {"dpo": "employee", "partner-officer": "partner-auditor"},
    "domestic": {"domestic-dpo": "employee", "domestic-officer": "partner-auditor"},
}


def deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[bytes], edit: Callable[[str], str] | None = None
) -> Cli:
    """A demo deployment with a user of each tenant, each with an object."""
    from conftest import make_deployment

    cli = Cli(make_deployment(tmp_path / "deploy", edit=edit), capsys)
    note = tmp_path / "note.txt"
    note.write_bytes(b"hello")
    for tenant, subject, cell in (("intl", "alice", "US"), ("domestic", "bob", "EU")):
        cli.ok("subject", "add", tenant, subject, "-j", cell)
        cli.ok("put", tenant, subject, "note", str(note))
    return cli


def with_cfo(text: str) -> str:
    """The config's approvers, and cfo: the partner's policy holds no key for cfo (unless
    `partner_holds_a_key_for_cfo`)."""
    return text.replace('"domestic-officer"]', '"domestic-officer", "cfo"]', 1)


def partner_holds_a_key_for_cfo(cli: Cli) -> None:
    """cfo makes a key pair, and the partner's policy holds its public key, bound to no
    tenant: an approver whose signature the custodian counts, as the demo's are."""
    key = cli.config.parent / "approvers" / "cfo.skey"
    public = cli.ok("approval", "keygen", str(key)).decode().strip()
    partner_policy = cli.config.parent / "partner" / "custodian-policy.toml"
    text = partner_policy.read_text()
    partner_policy.write_text(text.replace("[approvers]\n", f'[approvers]\ncfo = "{public}"\n', 1))


def officer(cli: Cli, ident: str, tenant: str, kind: str) -> str:
    """Register IDENT as a principal of TENANT, as the walkthrough does; its token."""
    added = cli.ok(
        "principal", "add", ident, "--tenant", tenant, "--kind", kind, "--location", "US"
    )
    return added.decode().strip()


def officers(cli: Cli, *tenants: str) -> dict[str, str]:
    return {
        ident: officer(cli, ident, tenant, kind)
        for tenant in tenants
        for ident, kind in OFFICERS[tenant].items()
    }


def approve(cli: Cli, token: str, ident: str, approval: str) -> tuple[int, bytes, str]:
    key = cli.config.parent / "approvers" / f"{ident}.skey"
    return cli("--token", token, "approval", "approve", approval, "--signing-key", str(key))


def pending_forget(cli: Cli, tenant: str, subject: str) -> tuple[str, str]:
    """The refusal of a forget with no approval, and the id of the approval it booked."""
    said = cli.fails(1, "forget", tenant, subject)
    return said, said.rsplit("--approval ", 1)[1]


def test_a_domestic_user_of_the_demo_is_forgotten_with_the_domestic_approvers_signatures(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # the demo named two approvers, both registered to intl by the walkthrough: a forget
    # of a domestic user booked an approval its message sent them to sign, and each was
    # refused as of another tenant, so no domestic user could ever be forgotten
    cli = deployment(tmp_path, capsysbinary)
    tokens = officers(cli, "intl", "domestic")
    said, approval = pending_forget(cli, "domestic", "bob")
    assert "2 of [domestic-dpo, domestic-officer] must run" in said
    for ident in OFFICERS["domestic"]:
        code, _, err = approve(cli, tokens[ident], ident, approval)
        assert code == 0, err
    assert cli.json("approval", "ls", "--all")[0]["status"] == "approved"
    out = cli.ok("--approval", approval, "forget", "domestic", "bob")
    assert b"shardvault-deletion-receipt" in out
    assert "was forgotten" in cli.fails(1, "get", "domestic", "bob", "note")
    assert cli.ok("get", "intl", "alice", "note") == b"hello"


@pytest.mark.parametrize(
    ("tenant", "subject", "other"), [("domestic", "bob", "intl"), ("intl", "alice", "domestic")]
)
def test_two_approvers_of_one_tenant_cannot_approve_the_others_request(
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    tenant: str,
    subject: str,
    other: str,
) -> None:
    # the partner counts any two signatures its [approvers] keys verify, of either
    # tenant's approvers (its quorum stayed 2 of now four): the operator's check that an
    # approver signs only its own tenant's approvals is what keeps the pairs apart
    cli = deployment(tmp_path, capsysbinary)
    tokens = officers(cli, "intl", "domestic")
    said, approval = pending_forget(cli, tenant, subject)
    assert f"2 of [{', '.join(OFFICERS[tenant])}] must run" in said
    for ident in OFFICERS[other]:
        code, _, err = approve(cli, tokens[ident], ident, approval)
        assert code == 1 and f"{ident} is not an approver of {approval}" in err
    (shown,) = cli.json("approval", "ls", "--all")
    assert (shown["status"], shown["signatures"]) == ("pending", [])
    refused = cli.fails(1, "--approval", approval, "forget", tenant, subject)
    assert "is pending (0 of 2" in refused
    assert cli.ok("get", tenant, subject, "note") == b"hello"


def audited_rules(cli: Cli, cell: str) -> list[tuple[str, str]]:
    governance = Governance.open(load(cli.config))
    try:
        entries = governance.entries(cell, governance.cell(cell).log.size)
    finally:
        governance.close()
    return [(e.rule, e.result) for e in entries if e.action == "forget"]


@pytest.mark.parametrize(
    ("registered", "could"),
    [
        ({"domestic-dpo": "intl", "domestic-officer": "intl"}, "none"),
        ({"domestic-officer": "intl"}, "only domestic-dpo"),
    ],
)
def test_an_approval_too_few_approvers_of_its_tenant_could_sign_is_not_booked(
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    registered: dict[str, str],
    could: str,
) -> None:
    # the approval was booked, and its refusal sent approvers to sign who would each be
    # refused as of another tenant: an approval that could never be met
    cli = deployment(tmp_path, capsysbinary)
    officers(cli, "intl")
    for ident, tenant in registered.items():
        officer(cli, ident, tenant, OFFICERS["domestic"][ident])
    said = cli.fails(1, "forget", "domestic", "bob")
    assert said == (
        "error: forget refused (approval:no-approvers): its approval needs 2 signatures by "
        f"approvers of tenant domestic, and {could} of the config's governance.approvers could "
        "sign it (dpo is of tenant intl; partner-officer is of tenant intl; "
        + "; ".join(f"{ident} is of tenant intl" for ident in registered)
        + "): name principals of tenant domestic there, and their keys in the partner's "
        "policy [approvers]"
    )
    assert cli.json("approval", "ls", "--all") == []
    assert audited_rules(cli, "EU") == [("approval:no-approvers", "refused")]
    assert cli.ok("get", "domestic", "bob", "note") == b"hello"


def test_an_approver_the_partner_counts_for_another_tenant_is_not_named_to_sign(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # the refusal named every approver registered to the tenant, though the partner's
    # policy bound one of them to another: an approval its signature could not meet
    cli = deployment(tmp_path, capsysbinary)
    partner_policy = cli.config.parent / "partner" / "custodian-policy.toml"
    text = partner_policy.read_text()
    assert 'domestic-dpo = ["domestic"]' in text
    partner_policy.write_text(
        text.replace('domestic-dpo = ["domestic"]', 'domestic-dpo = ["intl"]')
    )
    officers(cli, "intl", "domestic")
    said = cli.fails(1, "forget", "domestic", "bob")
    assert "and only domestic-officer of the config's governance.approvers could sign it" in said
    assert "the partner's policy counts domestic-dpo for intl only" in said
    assert cli.json("approval", "ls", "--all") == []


def test_an_approver_the_partner_holds_no_key_for_is_not_named_to_sign_a_forget(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # the refusal named cfo, whom the partner's policy holds no key for: with cfo's
    # signature the operator showed the approval met, and the custodian refused the destroy
    cli = deployment(tmp_path, capsysbinary, edit=with_cfo)
    officers(cli, "intl")
    cfo = officer(cli, "cfo", "intl", "employee")
    said, approval = pending_forget(cli, "intl", "alice")
    assert "2 of [dpo, partner-officer] must run" in said
    code, _, err = cli("--token", cfo, "approval", "approve", approval)
    assert code == 1 and f"cfo is not an approver of {approval}" in err
    cli.ok("principal", "revoke", "partner-officer")
    said = cli.fails(1, "forget", "intl", "alice")
    assert "and only dpo of the config's governance.approvers could sign it" in said
    assert "(partner-officer is revoked; " in said
    assert "; the partner's policy holds no key for cfo)" in said
    assert len(cli.json("approval", "ls", "--all")) == 1  # the first, not another


def test_a_revoked_approver_is_not_named_to_sign(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # a revoked principal signs nothing, and its id cannot be registered again
    cli = deployment(tmp_path, capsysbinary)
    officers(cli, "intl", "domestic")
    cli.ok("principal", "revoke", "domestic-officer")
    said = cli.fails(1, "forget", "domestic", "bob")
    assert "and only domestic-dpo of the config's governance.approvers could sign it" in said
    assert (
        "(dpo is of tenant intl; partner-officer is of tenant intl; domestic-officer is "
        "revoked)" in said
    )
    assert cli.json("approval", "ls", "--all") == []


def test_the_requester_is_not_named_to_sign_their_own_request(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # a forget asked by an approver told them to be one of the two of three to sign it
    cli = deployment(tmp_path, capsysbinary, edit=with_cfo)
    partner_holds_a_key_for_cfo(cli)
    dpo = cli.ok("principal", "add", "domestic-dpo", "--tenant", "domestic", "--kind",
                 "employee", "--location", "EU", "--role", "privacy").decode().strip()  # fmt: skip
    code, _, err = cli("--token", dpo, "--purpose", "user-request", "forget", "domestic", "bob")
    # nor dpo and partner-officer, whom the partner counts for intl only
    assert code == 1 and "2 of [domestic-officer, cfo] must run" in err


def test_an_approver_registered_to_another_tenant_after_the_booking_may_not_sign(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # one not registered may yet be, to the approval's tenant, so the approval names it;
    # registered to another tenant since, it is refused as of that tenant
    cli = deployment(tmp_path, capsysbinary, edit=with_cfo)
    partner_holds_a_key_for_cfo(cli)
    said, approval = pending_forget(cli, "intl", "alice")
    assert "2 of [dpo, partner-officer, cfo] must run" in said
    token = officer(cli, "cfo", "domestic", "employee")
    code, _, err = cli("--token", token, "approval", "approve", approval)
    assert code == 1 and "cfo belongs to tenant domestic, not intl" in err


def test_the_partner_counts_no_signature_of_another_tenants_approver(tmp_path: Path) -> None:
    # the operator lets an approver sign only its own tenant's approvals, but the partner
    # counted any two of its four keys: dpo and domestic-dpo, both the operator's officers,
    # met an intl forget at the custodian without the partner's officer once operator code
    # of its own booked domestic-dpo's signature, which the guard had refused
    from conftest import make_deployment

    config = load(make_deployment(tmp_path / "deploy"))
    with Vault.open(config) as vault:
        governance = vault.governance
        ensure_approvers(governance)
        theirs = Principal("domestic-dpo", "domestic", PrincipalKind.EMPLOYEE, "US")
        governance.registry.add(theirs, token_ttl=None)
        vault.register_subject("intl", "alice", "US")
        vault.put(signed.REF, b"alice's note")
        approval = signed.pending_forget(vault)
        signed.sign_as(vault, approval, "dpo")
        with pytest.raises(AccessDenied, match=r"domestic-dpo is not an approver of"):
            signed.sign_as(vault, approval, "domestic-dpo")
        key = signing_key(governance, "domestic-dpo")
        signature = sign_verdict(key, governance.approvals.get(approval), theirs.id, "approve")
        governance.approvals.sign(approval, theirs, "approve", signature)
        signed.assert_refused_and_untouched(
            config, vault, approval, "1 of the 2 signatures the partner requires that verify "
            "under its [approvers] keys of tenant intl's approvers",
        )  # fmt: skip
