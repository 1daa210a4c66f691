"""A node directory names its node: a wrong path is refused, never written across a border."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_deployment, manifest_of
from shardvault.config import Config, load
from shardvault.errors import TooFewNodes
from shardvault.model import ObjectRef
from shardvault.nodes.marker import MARKER
from shardvault.vault import Vault


def open_every_node(config: Config) -> None:
    """Open the vault and every node's store (a cell's are opened when first needed)."""
    with Vault.open(config) as vault:
        vault.node_usage()


def test_first_open_marks_every_node_directory(config_path: Path) -> None:
    config = load(config_path)
    open_every_node(config)
    for node in config.nodes:
        marker = json.loads((Path(node.location) / MARKER).read_text())
        assert marker == {
            "format": "shardvault-node",
            "jurisdiction": node.jurisdiction,
            "node": node.id,
            "version": 1,
        }
    assert not list(Path(config.nodes[0].location).glob("*.tmp"))


def swap(text: str, one: str, other: str) -> str:
    return text.replace(one, "\0").replace(other, one).replace("\0", other)


def test_a_us_directory_configured_for_an_eu_node_is_refused(tmp_path: Path) -> None:
    path = make_deployment(tmp_path / "deploy")
    open_every_node(load(path))  # marks the directories
    # an operator's slip: a US disk given to an EU node, and the other way round
    path.write_text(swap(path.read_text(), "nodes/US/us-n1", "nodes/EU/eu-n1"))
    with Vault.open(load(path)) as vault:
        vault.register_subject("intl", "emma", "EU")
        with pytest.raises(TooFewNodes, match=r"unavailable: eu-n1 \(.*us-n1 belongs to "
                           r"node us-n1 in US, not eu-n1 in EU: fix the node's path"):  # fmt: skip
            vault.put(ObjectRef("intl", "emma", "k"), b"stays in the EU")
        usage = {u.node.id: u.unavailable for u in vault.node_usage()}
        assert "belongs to node eu-n1 in EU, not us-n1 in US" in usage["us-n1"]
    us_dir = tmp_path / "deploy" / "nodes" / "US" / "us-n1"
    assert sorted(p.name for p in us_dir.rglob("*") if p.is_file()) == [MARKER]


def test_swapped_paths_within_a_cell_read_around_and_gc_keeps_them(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    data = os.urandom(3000)
    vault.put(alice, data)
    nodes = manifest_of(vault, alice).nodes
    vault.close()
    config_path.write_text(
        swap(config_path.read_text(), f"nodes/US/{nodes[0]}", f"nodes/US/{nodes[1]}")
    )
    with Vault.open(load(config_path)) as again:
        with again.open_read(alice) as reader:
            assert reader.read_all() == data
        assert {d.node for d in reader.damage} == {nodes[0], nodes[1]}
        report = again.gc(grace_seconds=0)
        assert set(report.skipped_nodes) == {nodes[0], nodes[1]}
    config_path.write_text(
        swap(config_path.read_text(), f"nodes/US/{nodes[0]}", f"nodes/US/{nodes[1]}")
    )
    with Vault.open(load(config_path)) as fixed:
        with fixed.open_read(alice) as reader:
            assert reader.read_all() == data
        assert reader.damage == []


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"format":"other"}', b"[1]"])
def test_a_damaged_marker_makes_the_node_unavailable(config_path: Path, content: bytes) -> None:
    config = load(config_path)
    open_every_node(config)
    (Path(config.node("sg-n2").location) / MARKER).write_bytes(content)
    with Vault.open(config) as vault:
        usage = {u.node.id: u.unavailable for u in vault.node_usage()}
    assert usage["sg-n2"].endswith("is not a shardvault node marker: is this the node's directory?")
    assert [node for node, why in usage.items() if why] == ["sg-n2"]


def test_a_marker_of_a_newer_version_says_to_upgrade(config_path: Path) -> None:
    # "has marker version 2; this shardvault reads 1": the disk is fine, this shardvault
    # is too old for it, as the catalogs, the keyring and the config of a newer one say
    config = load(config_path)
    open_every_node(config)
    marker = Path(config.node("sg-n2").location) / MARKER
    marker.write_text(marker.read_text().replace('"version":1', '"version":2'))
    with Vault.open(config) as vault:
        usage = {u.node.id: u.unavailable for u in vault.node_usage()}
    assert usage["sg-n2"] == (
        f"{marker} is of node marker version 2; this shardvault reads version 1: upgrade shardvault"
    )
    assert [node for node, why in usage.items() if why] == ["sg-n2"]


@pytest.mark.parametrize("version", ["true", "1.0", "0"])
def test_a_marker_of_a_version_not_1_makes_the_node_unavailable(
    config_path: Path, version: str
) -> None:
    # true == 1 and 1.0 == 1 in Python: either was read as a version 1 marker
    config = load(config_path)
    open_every_node(config)
    marker = Path(config.node("sg-n2").location) / MARKER
    marker.write_text(marker.read_text().replace('"version":1', f'"version":{version}'))
    with Vault.open(config) as vault:
        usage = {u.node.id: u.unavailable for u in vault.node_usage()}
    found = json.loads(marker.read_text())["version"]
    assert usage["sg-n2"] == f"{marker} has marker version {found}; this shardvault reads 1"


def test_a_missing_node_directory_is_not_made_again(vault: Vault, config_path: Path) -> None:
    # an unmounted disk was recreated on the disk beneath it and took new shards
    vault.close()
    config = load(config_path)
    location = Path(config.node("us-n1").location)
    location.rename(location.with_name("unmounted"))
    with Vault.open(config) as again:
        usage = {u.node.id: u.unavailable for u in again.node_usage()}
        assert usage["us-n1"] == (
            f"opening {location} failed: no such directory (create it, or mount the node's disk)"
        )
        again.register_subject("intl", "alice", "US")
        with pytest.raises(TooFewNodes, match=r"unavailable: us-n1 \(opening .* no such direc"):
            again.put(ObjectRef("intl", "alice", "k"), b"x")
    assert not location.exists()


def test_an_empty_mount_point_of_a_node_marked_before_is_not_marked_again(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    """A disk not mounted leaves its (empty) mount point, which the first open used to
    mark as a new node, from any command: new shards then went to the disk beneath
    (found in review)."""
    data = os.urandom(3000)
    vault.put(alice, data)
    node = manifest_of(vault, alice).nodes[0]
    vault.close()
    config = load(config_path)
    mount_point = Path(next(n.location for n in config.nodes if n.id == node))
    disk = mount_point.with_name("disk-away")
    mount_point.rename(disk)
    mount_point.mkdir()  # unmounted: the empty directory stays
    with Vault.open(config) as unmounted:
        usage = {u.node.id: u.unavailable for u in unmounted.node_usage()}
        assert "was marked before: mount its disk" in (usage[node] or "")
        with unmounted.open_read(alice) as reader:
            assert reader.read_all() == data
        with pytest.raises(TooFewNodes, match="was marked before"):  # never to the disk beneath
            unmounted.put(ObjectRef("intl", "alice", "new"), b"elsewhere")
    assert list(mount_point.iterdir()) == []
    record = config.state_dir / "nodes" / node
    assert str(record) in (usage[node] or "")
    record.unlink()  # the operator takes an empty replacement disk on purpose
    with Vault.open(config) as replaced:
        assert not {u.node.id: u.unavailable for u in replaced.node_usage()}[node]
    assert (mount_point / MARKER).exists() and record.exists()


def test_a_node_another_process_marks_meanwhile_is_not_taken_for_a_disk_away(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes opening a new deployment at once: one read no marker, the other
    then marked the node and recorded it, and the first took the record for a disk
    not mounted and served without the node (found by a benchmark's two workers)."""
    from shardvault.nodes import marker

    config = load(config_path)
    node = config.nodes[0]
    marked = config.state_dir / "nodes"
    real_read = marker.read_own

    def no_marker_yet_then_the_other_process_marks(path: Path, what: str) -> bytes:
        monkeypatch.setattr(marker, "read_own", real_read)
        try:
            return real_read(path, what)  # FileNotFoundError: not marked yet
        finally:
            marker.claim(Path(node.location), node, marked)  # the other process, whole

    monkeypatch.setattr(marker, "read_own", no_marker_yet_then_the_other_process_marks)
    marker.claim(Path(node.location), node, marked)
    assert marker.read_own is real_read  # the race ran
    assert (marked / node.id).exists()
    assert json.loads((Path(node.location) / MARKER).read_text())["node"] == node.id


def test_nodes_marked_before_records_were_kept_are_recorded_at_the_next_open(
    config_path: Path,
) -> None:
    config = load(config_path)
    open_every_node(config)
    records = config.state_dir / "nodes"
    for record in records.iterdir():
        record.unlink()
    open_every_node(config)
    assert sorted(p.name for p in records.iterdir()) == sorted(n.id for n in config.nodes)


def test_a_state_disk_that_cannot_take_the_record_leaves_the_nodes_serving(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording a node already marked failed on a full or read-only state disk, and
    made every node unavailable at once (found in review)."""
    from shardvault.nodes import marker

    config = load(config_path)
    open_every_node(config)
    for record in (config.state_dir / "nodes").iterdir():
        record.unlink()

    def no_room(*args: object) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(marker, "create_whole", no_room)
    with Vault.open(config) as vault:
        assert not any(u.unavailable for u in vault.node_usage())
    assert list((config.state_dir / "nodes").iterdir()) == []


KILLED_MARKING = r"""
import os, signal, sys
from pathlib import Path
from shardvault.config import load
from shardvault.vault import Vault

real_link = os.link

def link(source, target, *args, **kwargs):
    if os.path.basename(target) == sys.argv[2]:  # between the temporary's fsync and its link
        os.kill(os.getpid(), signal.SIGKILL)
    return real_link(source, target, *args, **kwargs)

os.link = link
Vault.open(load(Path(sys.argv[1]))).node_usage()  # opens every node's store
"""


@pytest.mark.parametrize("target", [MARKER, "us-n1"])  # the node's marker, or its record
def test_a_marking_killed_mid_way_leaves_no_temporary_after_the_next_open(
    tmp_path: Path, target: str
) -> None:
    path = make_deployment(tmp_path / "deploy")
    child = subprocess.run([sys.executable, "-c", KILLED_MARKING, str(path), target], check=False)
    assert child.returncode == -signal.SIGKILL
    left = list((tmp_path / "deploy").rglob("*.tmp"))
    assert left, "the kill came after the temporary was made"
    open_every_node(load(path))
    assert list((tmp_path / "deploy").rglob("*.tmp")) == []
    node = Path(next(n.location for n in load(path).nodes if n.id == "us-n1"))
    assert json.loads((node / MARKER).read_text())["node"] == "us-n1"
