"""The small SQLite files carry a schema version: a newer one is refused, not misread."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shardvault.config import load
from shardvault.errors import ApprovalRequired, NewerFormat
from shardvault.model import local_context
from shardvault.vault import Vault

FILES = ["directory.sqlite", "governance.sqlite", "cells/US/approvals.sqlite"]


def use_every_file(config_path: Path, subject: str) -> None:
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", subject, "US")  # the directory, the registry
        with pytest.raises(ApprovalRequired):  # the forget invariant: an approval is filed
            vault.forget("intl", subject)
        assert vault.governance.visible_approvals(local_context("approval"))


def stamp(path: Path, version: int | None = None) -> int:
    with sqlite3.connect(path) as db:
        if version is not None:
            db.execute(f"PRAGMA user_version={version}")
        return int(db.execute("PRAGMA user_version").fetchone()[0])


@pytest.mark.parametrize("name", FILES)
def test_a_file_from_a_newer_shardvault_is_refused(config_path: Path, name: str) -> None:
    use_every_file(config_path, "alice")
    path = config_path.parent / "state" / name
    assert stamp(path) == 1
    stamp(path, 2)
    with pytest.raises(NewerFormat, match=r"schema version 2; .*upgrade shardvault"):
        use_every_file(config_path, "bob")


@pytest.mark.parametrize("name", FILES)
def test_a_file_from_before_the_stamps_is_read_and_stamped(config_path: Path, name: str) -> None:
    use_every_file(config_path, "alice")
    path = config_path.parent / "state" / name
    stamp(path, 0)
    use_every_file(config_path, "bob")
    assert stamp(path) == 1
