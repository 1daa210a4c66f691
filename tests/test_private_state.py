"""The deployment's databases hold subject ids, object names and sizes in clear: no
other local user may read them (SQLite made them, and their WALs, 0644)."""

from __future__ import annotations

import stat
from pathlib import Path

from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.vault import Vault


def databases(root: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*.sqlite*") if p.is_file()}


def test_every_database_and_its_wal_is_private(config_path: Path) -> None:
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(ObjectRef("intl", "alice", "k"), b"data")
        found = databases(config_path.parent)
        assert any(p.name == "catalog.sqlite-wal" for p in found), "a WAL is open now"
    assert {p.name for p in found} >= {"catalog.sqlite", "directory.sqlite", "governance.sqlite"}
    assert {p: mode for p, mode in found.items() if mode & 0o077} == {}


def test_a_database_made_readable_before_is_made_private_when_opened(config_path: Path) -> None:
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
    catalog = next(config_path.parent.rglob("US/catalog.sqlite"))
    catalog.chmod(0o644)  # as the code before left it
    with Vault.open(load(config_path)) as vault:
        assert vault.subject("intl", "alice").jurisdiction == "US"
    assert stat.S_IMODE(catalog.stat().st_mode) == 0o600
