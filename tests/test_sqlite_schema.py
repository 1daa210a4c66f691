"""The small SQLite files carry a schema version: a newer one is refused, not misread."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shardvault.config import load
from shardvault.errors import ApprovalRequired, NewerFormat
from shardvault.model import local_context
from shardvault.vault import Vault

FILES = {"directory.sqlite": 2, "governance.sqlite": 2, "cells/US/approvals.sqlite": 3}


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


@pytest.mark.parametrize(("name", "version"), FILES.items())
def test_a_file_from_a_newer_shardvault_is_refused(
    config_path: Path, name: str, version: int
) -> None:
    use_every_file(config_path, "alice")
    path = config_path.parent / "state" / name
    assert stamp(path) == version
    stamp(path, version + 1)
    with pytest.raises(NewerFormat, match=rf"schema version {version + 1}; .*upgrade shardvault"):
        use_every_file(config_path, "bob")


@pytest.mark.parametrize(("name", "version"), FILES.items())
def test_a_file_from_before_the_stamps_is_read_and_stamped(
    config_path: Path, name: str, version: int
) -> None:
    use_every_file(config_path, "alice")
    path = config_path.parent / "state" / name
    stamp(path, 0)
    use_every_file(config_path, "bob")
    assert stamp(path) == version
