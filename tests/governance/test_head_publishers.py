"""Several processes publishing one cell's heads at once (forget, `audit head`, `export`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.audit.conftest import make_entry

from conftest import make_deployment
from shardvault.audit import Checkpoint
from shardvault.config import load
from shardvault.errors import IntegrityError
from shardvault.governance.heads import CellAudit, PartnerWitness, publish_head
from shardvault.model import ObjectRef
from shardvault.vault import Vault

PUBLISHER = """
import sys
from pathlib import Path
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.vault import Vault

with Vault.open(load(Path(sys.argv[1]))) as vault:
    for i in range(int(sys.argv[2])):
        vault.get(ObjectRef("intl", "alice", "x"))  # the log grows between heads
        vault.governance.publish_head("US")
"""


def test_concurrent_publishers_all_succeed_and_heads_only_grow(tmp_path: Path) -> None:
    # they shared one temporary file name (a quarter of them failed), and a smaller head
    # cosigned after a larger one would be refused as older than the partner's last
    config = make_deployment(tmp_path / "deploy")
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ObjectRef("intl", "alice", "x"), b"x")
    publishers = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(config), "40"], stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    for publisher in publishers:
        _, err = publisher.communicate(timeout=300)
        assert publisher.returncode == 0, err.decode()[-2000:]
    with Vault.open(load(config)) as vault:
        cell = vault.governance.cell("US")
        sizes = [Checkpoint.parse(note.text).size for note in cell.log.heads()]
        last = vault.governance.partner.last(cell)
        assert last is not None and last.size == max(sizes) == cell.log.size
        assert not list((cell.log.directory / "heads").glob(".*"))  # no temporary left


def test_the_partners_last_cosigned_head_is_durable_before_it_is_answered(
    tmp_path: Path, synced_directories: list[Path]
) -> None:
    # the partner's memory of its last head is what stops a rewritten history being
    # cosigned: its rename must survive a crash, so the directory is fsynced after it
    synced = synced_directories
    config = make_deployment(tmp_path / "deploy")
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "alice", "US")
        synced.clear()
        vault.governance.publish_head("US")
        cosigned = vault.governance.partner.directory / "cosigned"
    assert cosigned in synced
    assert sorted(p.name for p in cosigned.iterdir()) == ["US.lock", "US.note"]


def test_a_log_rolled_back_below_the_partners_last_head_is_refused_as_such(
    tmp_path: Path,
) -> None:
    # it was InvalidInput (exit 2, "old size 8 is outside 0..3"): a usage error
    # naming no log, for what is missing entries the partner has cosigned
    cell = CellAudit("US", tmp_path / "cell", "o.example/cell-us")
    partner = PartnerWitness(tmp_path / "partner", "p.example/witness")
    for i in range(3):
        cell.log.append(make_entry(i))
    publish_head(cell, partner, 1)
    cell.close()
    shutil.copytree(tmp_path / "cell" / "log", tmp_path / "backup")
    for i in range(3, 8):
        cell.log.append(make_entry(i))
    publish_head(cell, partner, 2)
    cell.close()
    shutil.rmtree(tmp_path / "cell" / "log")
    shutil.copytree(tmp_path / "backup", tmp_path / "cell" / "log")  # an older copy restored
    with pytest.raises(IntegrityError, match=r"cosigned a head of 8 entries.*has 3"):
        publish_head(cell, partner, 3)
    cell.close()
