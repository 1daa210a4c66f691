"""What a config loaded though it could never work, or broke the trust boundary: each is
refused at load, through the command, as one line naming the key, exit 2, nothing made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_cli import Cli

from conftest import make_deployment

LONG_NAME = "s" * 300


def tree(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[bytes], old: str, new: str) -> str:
    """The one error line of `subject add` (a command that writes) under the demo config
    with OLD replaced by NEW, having checked it made or changed nothing."""
    config = make_deployment(tmp_path / "demo")
    text = config.read_text()
    assert old in text, old
    config.write_text(text.replace(old, new, 1))
    before = tree(config.parent)
    line = Cli(config, capsys).fails(2, "subject", "add", "intl", "alice", "-j", "US")
    assert line.startswith(f"error: config {config}: "), line
    assert tree(config.parent) == before  # no state directory, keyring or node made
    return line


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        # `principal add` refuses such an id: a quorum counting it could never be met
        (
            'approvers = ["dpo", "partner-officer"',
            'approvers = ["../x", "dpo"',
            "governance.approvers: invalid principal id '../x': 1-128 ASCII letters, digits and",
        ),
        # the CLI acts as local-admin for anyone without a token: the operator would
        # approve alone, as an approver of requests a principal they made asked
        (
            'approvers = ["dpo", "partner-officer"',
            'approvers = ["dpo", "local-admin"',
            "governance.approvers: 'local-admin' is the CLI's built-in principal",
        ),
        # the partner's files must stay apart from the operator's (docs/trust-model.md)
        ('partner_dir = "partner"', 'partner_dir = "state"', "governance.partner_dir: "),
        ('partner_dir = "partner"', 'partner_dir = "state/partner"', "overlaps storage.state_dir"),
        ('state_dir = "state"', 'state_dir = "partner/state"', "governance.partner_dir: "),
        (
            'custodian_policy = "partner/custodian-policy.toml"',
            'custodian_policy = "state/custodian-policy.toml"',
            "governance.custodian_policy: ",
        ),
        ('path = "nodes/US/us-n1"', 'path = "partner/us-n1"', "is inside governance.partner_dir"),
        (
            "[tenants.intl]\n",
            '[tenants.intl]\njurisdictions = ["US", "SG", "US"]\n',
            "tenants.intl.jurisdictions: 'US' is listed twice",
        ),
        # a weight of 2^63 - 1 loaded: its node took every stripe's first place
        (
            'path = "nodes/US/us-n2"',
            'path = "nodes/US/us-n2"\ncapacity = 9223372036854775807',
            "nodes[1].capacity: 9223372036854775807 is more than 1000000",
        ),
        # "File name too long: '...'", naming no key and saying nothing to do
        (
            'state_dir = "state"',
            f'state_dir = "{LONG_NAME}"',
            "storage.state_dir: ",
        ),
        ('path = "nodes/US/us-n3"', f'path = "nodes/{LONG_NAME}"', "nodes[2].path: "),
    ],
    ids=[
        "approver-id",
        "approver-local-admin",
        "partner-is-state",
        "partner-in-state",
        "state-in-partner",
        "custodian-policy-in-state",
        "node-in-partner",
        "tenant-jurisdiction-twice",
        "huge-capacity",
        "state-dir-name-too-long",
        "node-path-name-too-long",
    ],
)
def test_a_config_that_could_not_work_is_refused_naming_the_key(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], old: str, new: str, said: str
) -> None:
    line = refused(tmp_path, capsysbinary, old, new)
    assert said in line, line
    if LONG_NAME in new:
        assert "a name in it is 300 bytes" in line and line.endswith("give a shorter path")


def test_the_keyring_may_be_the_partners_but_not_in_the_operators_state(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """The keyring stands in for the partner's HSM (docs/trust-model.md): in the state
    directory the operator would hold the root keys; in partner_dir it is where it belongs."""
    line = refused(tmp_path / "a", capsysbinary, '"keys/keyring.json"', '"state/keys.json"')
    assert "custodian.path: " in line and "is inside storage.state_dir" in line
    config = make_deployment(
        tmp_path / "b", edit=lambda t: t.replace('"keys/keyring.json"', '"partner/keys.json"', 1)
    )
    Cli(config, capsysbinary).ok("subject", "add", "intl", "alice", "-j", "US")
    assert (config.parent / "partner" / "keys.json").is_file()


@pytest.mark.parametrize(
    ("name", "said"),
    [  # within the limit itself, its files beside it are not: 255 and 4095 bytes
        ("k" * 252, "a name in it is 257 bytes"),  # NAME.lock
        ("k" * 240 + ".json", "a name in it is 263 bytes"),  # .NAME.<tag>.tmp
        ("k" * 235, "a name in it is 260 bytes"),  # NAME.destroyed.sqlite-journal
        ("{deep}/keyring.json", "more than the 4095 a path may be"),
    ],
    ids=["lock", "temporary", "journal", "whole-path"],
)
def test_a_keyring_whose_own_files_beside_it_are_too_long_is_refused(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], name: str, said: str
) -> None:
    """The keyring's lock, temporary copy and databases are made beside it under longer
    names: a command failed making one ("File name too long", naming no key), after
    making the state directory and the keyring's directory."""
    demo = tmp_path / "demo"
    if "{deep}" in name:  # the keyring's path 4090 bytes long: a journal's is 4110
        room = 4090 - len(str(demo / "keyring.json"))  # for "{deep}/"
        deep = "/".join(["d" * 99] * (room // 100))
        name = name.replace("{deep}", deep + "/" + "d" * (room - len(deep) - 2))
        assert len(str(demo / name)) == 4090
    line = refused(tmp_path, capsysbinary, '"keys/keyring.json"', f'"{name}"')
    assert "custodian.path: " in line and " beside it: " in line and said in line, line
    assert line.endswith("give a shorter path"), line


@pytest.mark.parametrize(
    ("keyring", "said"),
    [
        ("partner/verdicts.sqlite", "the partner's record of signed verdicts"),
        ("partner/witness.skey", "the partner's witness key"),
        ("partner/custodian.skey", "the partner's custodian's attestation key"),
        ("partner/seen", "the partner's record of the audit positions"),
        ("partner/cosigned/US.note", "the partner's last cosigned heads"),
    ],
    ids=["verdicts", "witness-key", "custodian-key", "seen", "cosigned"],
)
def test_a_keyring_named_as_one_of_the_partners_own_files_is_refused(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], keyring: str, said: str
) -> None:
    """Loaded, each put the keyring's JSON where the partner's side reads its own key or
    record (a verdicts file that is a keyring: the partner's denials unreadable)."""
    line = refused(tmp_path, capsysbinary, '"keys/keyring.json"', f'"{keyring}"')
    assert "custodian.path: " in line and said in line, line
    assert line.endswith("give the keyring a file of its own"), line


def test_a_config_that_is_not_toml_is_named_by_its_absolute_path(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # it was named as given ("config demo/../demo/shardvault.toml: not valid TOML"),
    # a validation error by its absolute path
    config = make_deployment(tmp_path / "demo", edit=lambda t: t + "\n[broken\n")
    monkeypatch.chdir(tmp_path)
    cli = Cli(Path("demo/../demo/shardvault.toml"), capsysbinary)
    line = cli.fails(2, "nodes")
    assert line.startswith(f"error: config {config.resolve()}: not valid TOML: "), line


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("missing.toml", "not found: pass --config"),
        ("a-directory", "is not a regular file"),
        ("a-fifo", "is not a regular file"),
        ("large.toml", "is larger than 1048576 bytes"),
    ],
    ids=["missing", "directory", "fifo", "too-large"],
)
def test_a_config_that_cannot_be_read_is_named_by_its_absolute_path(
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    said: str,
) -> None:
    # these were named as given ("config demo/../demo/missing.toml not found"), while
    # every error of a config read names it by its absolute path
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "a-directory").mkdir()
    os.mkfifo(demo / "a-fifo")
    (demo / "large.toml").write_bytes(b"#" * (1 << 21))
    monkeypatch.chdir(tmp_path)
    line = Cli(Path("demo/../demo") / name, capsysbinary).fails(2, "nodes")
    assert line.startswith(f"error: config {demo / name} {said}"), line


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/tmp/" + "a" * 300 + "/shardvault.toml", "a name in it is 300 bytes"),
        ("/tmp/" + "a/" * 2100 + "shardvault.toml", "it is 4220 bytes, more than the 4095"),
    ],
    ids=["name", "path"],
)
def test_a_config_path_too_long_says_what_to_shorten(
    capsysbinary: pytest.CaptureFixture[bytes], path: str, said: str
) -> None:
    line = Cli(Path(path), capsysbinary).fails(2, "nodes")
    assert said in line and line.endswith(": give a shorter path"), line
