"""The custodian's attestation of a destroy, carried in a deletion receipt of version 3.

A receipt is signed by the cell, whose key the operator holds, so the operator can
re-sign anything in it: these forgeries are what it could hand a user, each checked
by an outsider with public keys only (the installed command, no config)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tests.cli.test_cli import Cli
from tests.governance.test_cli_governance import _forgotten_both, _resigned, cli, outsider

from shardvault.audit.note import SignedNote, signer_from_skey
from shardvault.config import load
from shardvault.governance.attestations import CustodianKey
from shardvault.keys.attestation import parse_statement

__all__ = ["cli"]  # the fixture, shared with the receipts' other CLI tests


def keys(cli: Cli) -> dict[str, Any]:
    return cli.json("audit", "keys")  # type: ignore[no-any-return]


def check(cli: Cli, receipt: bytes, tmp_path: Path, *extra: str) -> tuple[int, list[str]]:
    """`receipt verify` of RECEIPT by an outsider with the cell's and partner's keys and
    EXTRA options: its exit code and the lines it wrote on stderr."""
    path = tmp_path / "receipt.note"
    path.write_bytes(receipt)
    public = keys(cli)
    done = outsider(
        "receipt", "verify", str(path), "--key", public["cells"]["US"],
        "--cosigner", public["partner"], *extra, cwd=tmp_path,
    )  # fmt: skip
    return done.returncode, done.stderr.splitlines()


def attested(cli: Cli, receipt: bytes, tmp_path: Path) -> tuple[int, list[str]]:
    """`check` with the custodian's public key."""
    return check(cli, receipt, tmp_path, "--custodian", keys(cli)["custodian"])


def attestation_of(receipt: bytes) -> str:
    body: dict[str, Any] = json.loads(SignedNote.parse(receipt).text)
    return str(body["destroy_attestation"])


def with_attestation(cli: Cli, receipt: bytes, note: str) -> bytes:
    """RECEIPT carrying NOTE as its attestation, signed again with the cell's key."""
    return _resigned(cli, receipt, lambda body: body.update(destroy_attestation=note))


def custodian_signed(cli: Cli, text: str) -> str:
    """TEXT signed with the partner custodian's real key: a statement it could have made."""
    governance = load(cli.config).governance
    assert governance is not None
    key = CustodianKey(governance.partner_dir, governance.custodian_name)
    return key.sign_statement(text).decode()


def edited_statement(note: str, edit: Callable[[dict[str, str]], object]) -> str:
    """The text of attestation NOTE with its fields changed by EDIT (canonical form)."""
    statement = parse_statement(SignedNote.parse(note.encode()).text)
    fields = {k: getattr(statement, k) for k in statement.__slots__}
    edit(fields)
    return replace(statement, **fields).text()


def test_a_genuine_receipt_is_attested_by_the_custodian(cli: Cli, tmp_path: Path) -> None:
    receipts = _forgotten_both(cli, tmp_path)
    code, lines = attested(cli, receipts["alice"], tmp_path)
    assert code == 0, lines
    valid, destroy = lines
    assert valid.startswith("valid receipt: intl/alice forgotten at ")
    when = valid.split("forgotten at ", 1)[1].split(",", 1)[0]
    assert destroy == (
        f"the key's destroy at {when} is attested by the custodian "
        "(partner.demo.shardvault.local/custodian)"
    )
    path = tmp_path / "receipt.note"
    done = outsider("receipt", "verify", str(path), "--key", keys(cli)["cells"]["US"],
                    "--custodian", keys(cli)["custodian"], "--json", cwd=tmp_path)  # fmt: skip
    body = json.loads(done.stdout)
    assert (body["v"], body["binds_subject"], body["destroy_attested"]) == (3, True, True)
    assert "destroy_attestation" not in body and "audit" not in body
    # without the custodian's key: valid, and saying what was not checked
    code, lines = check(cli, receipts["alice"], tmp_path)
    assert code == 0 and len(lines) == 2, lines
    assert lines[1] == (
        "warning: the custodian's attestation of the key's destroy was not checked: pass "
        "--custodian with the partner custodian's public key"
    )


def test_another_users_attestation_swapped_in_is_refused(cli: Cli, tmp_path: Path) -> None:
    # bob's destroy is genuinely attested, but of bob's key and commitment
    receipts = _forgotten_both(cli, tmp_path)
    swapped = with_attestation(cli, receipts["alice"], attestation_of(receipts["bob"]))
    for verify in (attested, check):  # its signature checked or not, it is not this forget's
        code, lines = verify(cli, swapped, tmp_path)
        assert code == 1 and len(lines) == 1, lines
        assert lines[0].startswith("error: the receipt's destroy attestation is not of this")


def test_an_attestation_signed_again_with_the_cell_key_is_refused(cli: Cli, tmp_path: Path) -> None:
    """The operator holds the cell's key, not the custodian's: what it signs itself, a
    statement it would like the custodian to have made, is not the custodian's."""
    receipts = _forgotten_both(cli, tmp_path)
    note = SignedNote.parse(attestation_of(receipts["alice"]).encode())
    skey = load(cli.config).state_dir / "cells" / "US" / "audit" / "cell.skey"
    cell = signer_from_skey(skey.read_text().strip())
    by_cell = SignedNote(note.text, (cell.sign(note.text),)).to_bytes().decode()
    forged = with_attestation(cli, receipts["alice"], by_cell)
    code, lines = attested(cli, forged, tmp_path)
    assert code == 1 and len(lines) == 1, lines
    assert "not the custodian's" in lines[0] and "not signed by" in lines[0]
    # without the custodian's key: not the attestation the forget's entry commits to
    code, lines = check(cli, forged, tmp_path)
    assert code == 1 and "commits to another destroy attestation" in lines[0], lines
    # and the cell's key given as the custodian's is the caller's mistake
    code, lines = check(cli, forged, tmp_path, "--custodian", keys(cli)["cells"]["US"])
    assert code == 2 and "not the custodian's" in lines[-1], lines
    code, lines = check(cli, forged, tmp_path, "--custodian", keys(cli)["partner"])
    assert code == 2 and "not an Ed25519 signing key" in lines[-1], lines


def test_an_attestation_signed_by_another_key_of_the_custodians_name_is_refused(
    cli: Cli, tmp_path: Path
) -> None:
    receipts = _forgotten_both(cli, tmp_path)
    note = SignedNote.parse(attestation_of(receipts["alice"]).encode())
    other = CustodianKey(tmp_path / "elsewhere", "partner.demo.shardvault.local/custodian")
    (tmp_path / "elsewhere").mkdir()
    forged = with_attestation(cli, receipts["alice"], other.sign_statement(note.text).decode())
    code, lines = attested(cli, forged, tmp_path)
    assert code == 1 and len(lines) == 1, lines
    assert "not signed by 'partner.demo.shardvault.local/custodian'" in lines[0]


@pytest.mark.parametrize(
    "edit",
    [
        lambda fields: fields.update(destroyed_at="2020-01-01T00:00:00Z"),
        lambda fields: fields.update(key_id="0" * 32),
        lambda fields: fields.update(jurisdiction="EU"),
    ],
    ids=["another-time", "another-key", "another-cell"],
)
def test_a_custodian_statement_of_another_destroy_is_refused(
    cli: Cli, tmp_path: Path, edit: Callable[[dict[str, str]], object]
) -> None:
    # genuinely the custodian's signature, but of another time, key or cell than the
    # receipt's forget: the receipt's time and key are the log's, so it is not this one
    receipts = _forgotten_both(cli, tmp_path)
    text = edited_statement(attestation_of(receipts["alice"]), edit)
    forged = with_attestation(cli, receipts["alice"], custodian_signed(cli, text))
    code, lines = attested(cli, forged, tmp_path)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: the receipt's destroy attestation is not of this forget")


def test_a_tampered_time_in_the_attestation_is_refused(cli: Cli, tmp_path: Path) -> None:
    receipts = _forgotten_both(cli, tmp_path)
    note = SignedNote.parse(attestation_of(receipts["alice"]).encode())
    text = edited_statement(attestation_of(receipts["alice"]), lambda f: f.update(
        destroyed_at="2020-01-01T00:00:00Z"))  # fmt: skip
    tampered = SignedNote(text, note.signatures).to_bytes().decode()  # the old signature
    forged = with_attestation(cli, receipts["alice"], tampered)
    code, lines = attested(cli, forged, tmp_path)
    assert code == 1 and "does not verify" in lines[0], lines
    code, lines = check(cli, forged, tmp_path)  # unsigned, still not this forget's time
    assert code == 1 and "destroyed at 2020-01-01T00:00:00Z" in lines[0], lines


def test_a_receipt_without_its_attestation_is_refused_when_one_is_asked_for(
    cli: Cli, tmp_path: Path
) -> None:
    """The operator, who never had the custodian destroy the key, could hand out a
    receipt of version 2, re-signed: it carries no attestation to check."""
    receipts = _forgotten_both(cli, tmp_path)

    def stripped(body: dict[str, Any]) -> None:
        del body["destroy_attestation"]
        body.update(v=2)

    forged = _resigned(cli, receipts["alice"], stripped)
    code, lines = attested(cli, forged, tmp_path)
    assert code == 1 and len(lines) == 1, lines
    assert "this version 2 receipt carries no destroy attestation by the custodian" in lines[0]
    # and without it, as the entry commits to an attestation: see the test below


def entry_of(receipt: bytes) -> dict[str, Any]:
    """The details of the forget's outcome entry RECEIPT carries."""
    body = json.loads(SignedNote.parse(receipt).text)
    return dict(json.loads(base64.b64decode(body["audit"]["entry"]))["details"])


def test_the_forgets_entry_commits_to_the_custodians_attestation(cli: Cli, tmp_path: Path) -> None:
    receipts = _forgotten_both(cli, tmp_path)
    for receipt in receipts.values():
        note = attestation_of(receipt).encode("utf-8")
        digest = "sha256:" + hashlib.sha256(note).hexdigest()
        assert entry_of(receipt)["destroy_attestation"] == digest


def test_a_receipt_stripped_of_its_attestation_is_refused_without_the_custodians_key(
    cli: Cli, tmp_path: Path
) -> None:
    """Found in review: the outcome entry did not record that the custodian attested the
    destroy, so a receipt of version 2 (the attestation dropped, signed again with the
    cell's key) verified for anyone not given the custodian's key."""
    receipts = _forgotten_both(cli, tmp_path)

    def stripped(body: dict[str, Any]) -> None:
        del body["destroy_attestation"]
        body.update(v=2)

    for verify in (check, attested):
        code, lines = verify(cli, _resigned(cli, receipts["alice"], stripped), tmp_path)
        assert code == 1 and len(lines) == 1, lines
    code, lines = check(cli, _resigned(cli, receipts["alice"], stripped), tmp_path)
    assert lines[0] == (
        "error: the audit entry in the receipt is not this forget: it commits to a destroy "
        "attestation by the custodian, which the receipt does not carry"
    )


def test_another_attestation_of_the_same_destroy_is_refused_without_the_custodians_key(
    cli: Cli, tmp_path: Path
) -> None:
    """The statement the custodian made, signed again by a key of the operator's under the
    custodian's name: of this forget in every field, but not the attestation its entry
    commits to."""
    receipts = _forgotten_both(cli, tmp_path)
    note = SignedNote.parse(attestation_of(receipts["alice"]).encode())
    (tmp_path / "elsewhere").mkdir()
    other = CustodianKey(tmp_path / "elsewhere", "partner.demo.shardvault.local/custodian")
    forged = with_attestation(cli, receipts["alice"], other.sign_statement(note.text).decode())
    code, lines = check(cli, forged, tmp_path)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0] == (
        "error: the audit entry in the receipt is not this forget: it commits to another "
        "destroy attestation by the custodian than the receipt carries"
    )


def test_a_receipt_of_a_custodian_that_signs_none_is_of_version_2(cli: Cli, tmp_path: Path) -> None:
    """A custodian without a signing key (one embedded by a program) destroys as before:
    its receipt binds the subject and says the destroy is not attested."""
    from governance_support import forget_approved
    from shardvault.governance import Governance
    from shardvault.keys.keyring import KeyringCustodian
    from shardvault.vault import Vault

    config = load(cli.config)
    cli.ok("subject", "add", "intl", "carol", "-j", "US")
    governance = Governance.open(config)
    custodian = KeyringCustodian(config.keyring_path, governance.custodian_gate())
    try:
        with Vault.open(config, custodian=custodian, governance=governance) as vault:
            receipt = forget_approved(vault, "intl", "carol").receipt.encode()
    finally:
        governance.close()
    assert json.loads(SignedNote.parse(receipt).text)["v"] == 2
    code, lines = check(cli, receipt, tmp_path)
    assert code == 0 and len(lines) == 2, lines
    assert lines[1] == (
        "warning: the key's destroy is not attested by the custodian (a version 2 receipt): "
        "it rests on the operator's log only"
    )
    code, lines = attested(cli, receipt, tmp_path)
    assert code == 1 and "carries no destroy attestation" in lines[0], lines


def test_audit_keys_names_the_custodians_key(cli: Cli) -> None:
    public = keys(cli)
    assert public["custodian"].startswith("partner.demo.shardvault.local/custodian+")
    lines = cli.ok("audit", "keys").decode().splitlines()
    assert lines[-2:] == [f"partner {public['partner']}", f"custodian {public['custodian']}"]
    partner = load(cli.config).governance
    assert partner is not None
    assert (partner.partner_dir / "custodian.skey").stat().st_mode & 0o777 == 0o600
