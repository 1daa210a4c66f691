"""`get -o` never writes into the deployment's own files: `-o keys/keyring.json` replaced
the keyring with the object's bytes, and every object became unreadable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_cli import Cli, alice_holding_k

from conftest import make_deployment, tmpfs_mounted

REFUSED = "write the object outside the deployment's files"


@pytest.fixture
def alice(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    """A demo deployment with intl/alice and key k holding b"payload\\n"."""
    return alice_holding_k(Cli(make_deployment(tmp_path / "demo"), capsysbinary), tmp_path)


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under DIRECTORY and its bytes: a refused get changes none, audits nothing."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def refused(cli: Cli, target: Path | str) -> str:
    demo = cli.config.parent
    before = files_of(demo)
    line = cli.fails(2, "get", "intl", "alice", "k", "-o", str(target))
    assert REFUSED in line
    assert files_of(demo) == before
    return line


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("keys/keyring.json", "the deployment's keyring"),
        ("keys/keyring.json.lock", "a file of the deployment's keyring"),
        ("keys/keyring.destroyed.sqlite", "a file of the deployment's keyring"),
        ("keys/keyring.destroyed.sqlite-wal", "a file of the deployment's keyring"),
        ("keys/keyring.subjects.sqlite", "a file of the deployment's keyring"),
        ("keys/keyring.subjects.sqlite-journal", "a file of the deployment's keyring"),
        ("shardvault.toml", "the deployment's config file"),
        ("policy.toml", "the deployment's access policy"),
        ("partner/custodian-policy.toml", "the custodian's policy"),
        ("state/directory.sqlite", "inside the deployment's state directory"),
        ("state/cells/US/catalog.sqlite", "inside the deployment's state directory"),
        ("state/cells/US/audit/log/entries.log", "inside the deployment's state directory"),
        ("state/new.bin", "inside the deployment's state directory"),
        ("partner/new.bin", "inside the partner directory"),
        ("nodes/US/us-n1/new.bin", "inside node us-n1's directory"),
    ],
)
def test_get_into_a_file_of_the_deployment_is_exit_2_and_reads_nothing(
    alice: Cli, name: str, said: str
) -> None:
    target = alice.config.parent / name
    existed = target.exists()
    line = refused(alice, target)
    assert f"is {said}" in line
    assert target.exists() == existed


def test_links_into_the_deployment_are_refused(alice: Cli, tmp_path: Path) -> None:
    demo = alice.config.parent
    (tmp_path / "to-keyring").symlink_to(demo / "keys" / "keyring.json")
    assert "the deployment's keyring" in refused(alice, tmp_path / "to-keyring")
    (tmp_path / "to-state").symlink_to(demo / "state")
    refused(alice, tmp_path / "to-state" / "cells" / "US" / "catalog.sqlite")
    os.link(demo / "state" / "directory.key", tmp_path / "hard")
    line = refused(alice, tmp_path / "hard")
    assert f"a hard link to the deployment's file {demo.resolve()}/state/directory.key" in line


def test_a_descriptor_open_on_the_keyring_is_refused(alice: Cli) -> None:
    fd = os.open(alice.config.parent / "keys" / "keyring.json", os.O_WRONLY | os.O_APPEND)
    try:
        refused(alice, f"/dev/fd/{fd}")
    finally:
        os.close(fd)


def test_files_beside_the_deployment_are_still_written(alice: Cli, tmp_path: Path) -> None:
    demo = alice.config.parent
    for target in (demo / "out.bin", demo / "keys" / "other.json", demo / "nodes" / "US" / "x"):
        alice.ok("get", "intl", "alice", "k", "-o", str(target))
        assert target.read_bytes() == b"payload\n"


def test_a_hard_link_to_a_shard_is_replaced_and_the_shard_kept(alice: Cli, tmp_path: Path) -> None:
    # node directories are not walked for hard links (see cli/deployment_files.py): the
    # rename that replaces the link leaves the shard's bytes where they were
    shard = next((alice.config.parent / "nodes").glob("*/*/shards/*/*/*"))
    kept = shard.read_bytes()
    os.link(shard, tmp_path / "linked")
    alice.ok("get", "intl", "alice", "k", "-o", str(tmp_path / "linked"))
    assert (tmp_path / "linked").read_bytes() == b"payload\n"
    assert shard.read_bytes() == kept


def test_a_descriptor_open_on_a_hard_link_to_a_shard_is_refused(alice: Cli, tmp_path: Path) -> None:
    # it is written into, not replaced: the shard's bytes were overwritten
    shard = next((alice.config.parent / "nodes").glob("*/*/shards/*/*/*"))
    kept = shard.read_bytes()
    os.link(shard, tmp_path / "linked")
    fd = os.open(tmp_path / "linked", os.O_WRONLY)
    try:
        line = refused(alice, f"/dev/fd/{fd}")
    finally:
        os.close(fd)
    assert "other names on the disk of node" in line and "perhaps a shard" in line
    assert shard.read_bytes() == kept
    mine = tmp_path / "mine"  # one name: written into as before
    fd = os.open(mine, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        alice.ok("get", "intl", "alice", "k", "-o", f"/dev/fd/{fd}")
    finally:
        os.close(fd)
    assert mine.read_bytes() == b"payload\n"


def test_a_descriptor_on_the_disk_of_a_node_mounted_on_its_own_is_refused(
    alice: Cli, tmp_path: Path
) -> None:
    """Which disk a node's directory is on comes from /proc/self/mountinfo, not from a
    stat (a hung disk's never answers): here a mount of its own, whose name has a space
    (escaped there), reached through a symlink."""
    node = alice.config.parent / "nodes" / "US" / "us-n2"
    (tmp_path / "node disk").mkdir()
    with tmpfs_mounted(tmp_path / "node disk") as disk:
        shutil.copytree(node, disk / "us-n2")
        shutil.rmtree(node)
        node.symlink_to(disk / "us-n2")
        for linked, said in ((disk / "linked", "us-n2"), (tmp_path / "linked", "us-n1")):
            linked.touch()
            os.link(linked, linked.with_name("other-name"))
            fd = os.open(linked, os.O_WRONLY)
            try:
                line = refused(alice, f"/dev/fd/{fd}")
            finally:
                os.close(fd)
            assert f"on the disk of node {said}'s directory, perhaps a shard" in line


def test_the_keyrings_files_are_named_exactly(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A keyring named `.keyring.json` left its tombstones and lock writable (a leading
    dot was stripped from the name tried, not from the keyring's), while a user's
    `keyring.json.bak` beside it was refused (found in review)."""
    config = make_deployment(tmp_path / "demo")
    config.write_text(config.read_text().replace('"keys/keyring.json"', '"keys/.keyring.json"'))
    cli = Cli(config, capsysbinary)
    cli.ok("subject", "add", "intl", "alice", "-j", "US")
    source = tmp_path / "in.txt"
    source.write_bytes(b"payload\n")
    cli.ok("put", "intl", "alice", "k", str(source))
    keys = tmp_path / "demo" / "keys"
    own = (".keyring.json", ".keyring.json.lock", ".keyring.destroyed.sqlite")
    for name in (*own, ".keyring.subjects.sqlite"):
        assert (keys / name).exists()
        refused(cli, keys / name)
    for name in (".keyring.json.bak", "keyring.json", ".keyring.json2"):
        cli.ok("get", "intl", "alice", "k", "-o", str(keys / name))
        assert (keys / name).read_bytes() == b"payload\n"


@pytest.mark.parametrize(
    ("option", "written"), [("-o", "report"), ("--write-baseline", "baseline")]
)
def test_a_scan_does_not_write_into_the_deployment(
    alice: Cli, tmp_path: Path, option: str, written: str
) -> None:
    # it wrote its report over the keyring: every object unreadable
    demo = alice.config.parent
    source = tmp_path / "a.py"
    source.write_text('HOST = "77.88.8.8"\n')
    before = files_of(demo)
    line = alice.fails(2, "scan", str(source), option, str(demo / "keys" / "keyring.json"))
    assert line.endswith(
        f"is the deployment's keyring: write the {written} outside the deployment's files"
    )
    assert files_of(demo) == before
