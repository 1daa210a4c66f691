"""A vault opened and closed again and again in one process holds no more than once.

A long-running host (a server, a test suite, a notebook) opens and closes vaults for
as long as it runs. What a closed vault leaves open is only what the process keeps
by design, one per file or per filesystem and reused: the descriptor each filesystem's
group commit flushes through (`group_commit.filesystem_sync`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_deployment
from shardvault.config import load
from shardvault.errors import IntegrityError
from shardvault.keys.keyring import KeyringCustodian
from shardvault.model import ObjectRef
from shardvault.vault import Vault


@pytest.fixture(autouse=True)
def no_collection() -> Iterator[None]:
    """The vault is referred to in cycles: what garbage collection would release late, or
    (in a process with a large heap) hardly ever, is not released here at all."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def held_under(directory: Path) -> list[str]:
    """The files under `directory` this process holds open, one entry per descriptor."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return sorted(found)


def used_once(config_path: Path, round_: int) -> None:
    """Open the deployment's vault, put and get in two cells, close it."""
    with Vault.open(load(config_path)) as vault:
        if round_ == 0:
            vault.register_subject("intl", "alice", "US")
            vault.register_subject("intl", "bob", "SG")
        for subject in ("alice", "bob"):
            ref = ObjectRef("intl", subject, f"key-{round_}")
            vault.put(ref, ref.key.encode() * 100)
            assert vault.get(ref) == ref.key.encode() * 100


def test_a_vault_opened_and_closed_again_holds_no_more_than_the_first_time(
    tmp_path: Path,
) -> None:
    # each closed vault left its keyring's tombstones connection (and another thread's)
    # open until garbage collection found the vault
    config_path = make_deployment(tmp_path / "deploy")
    used_once(config_path, 0)
    first = held_under(tmp_path)
    assert not [path for path in first if "/keys/" in path]
    for round_ in range(1, 30):
        used_once(config_path, round_)
        assert held_under(tmp_path) == first, f"after {round_ + 1} vaults"


def test_vaults_of_many_deployments_closed_hold_none_of_their_files(tmp_path: Path) -> None:
    # one keyring descriptor (and connection) more with each deployment opened and closed
    for n in range(10):
        used_once(make_deployment(tmp_path / f"deploy-{n}"), 0)
        held = held_under(tmp_path)
        # at most the one directory this filesystem's group commit flushes through
        assert len(held) <= 1 and not [path for path in held if "/keys/" in path], held


def test_a_custodian_given_to_the_vault_is_left_open_by_its_close(tmp_path: Path) -> None:
    # the caller's: it outlives the vault (only one the vault opened is closed with it)
    config_path = make_deployment(tmp_path / "deploy")
    config = load(config_path)
    custodian = KeyringCustodian(config.keyring_path)
    used_once(config_path, 0)
    with Vault.open(config, custodian=custodian) as vault:
        assert vault.get(ObjectRef("intl", "alice", "key-0")) == b"key-0" * 100
    assert [path for path in held_under(tmp_path) if path.endswith("destroyed.sqlite")]
    custodian.close()
    assert not [path for path in held_under(tmp_path) if "/keys/" in path]


def test_a_vault_that_fails_to_open_holds_nothing_it_opened(tmp_path: Path) -> None:
    # a failed open left the subject directory and the catalogs it had read open: a
    # host retrying while a lost directory is restored held one set more each time
    config_path = make_deployment(tmp_path / "deploy")
    used_once(config_path, 0)
    first = held_under(tmp_path)
    config = load(config_path)
    kept = tmp_path / "directory-backup"
    kept.mkdir()
    for path in config.state_dir.glob("directory.sqlite*"):
        path.rename(kept / path.name)
    for attempt in range(3):
        with pytest.raises(IntegrityError, match="subject directory"):
            Vault.open(config)
        assert held_under(tmp_path) == first, f"after {attempt + 1} failed opens"
    for path in config.state_dir.glob("directory.sqlite*"):
        path.unlink()  # the blank one the failed opens made
    for path in kept.iterdir():
        path.rename(config.state_dir / path.name)
    used_once(config_path, 1)  # and the deployment opens again once it is back
