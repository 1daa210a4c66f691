"""Every cross-process lock is released when its holder is done, even if a child was
forked while it was held: a flock belongs to the open file, which the child's copy of
the descriptor keeps open, so closing the holder's copy alone left it locked until the
child exited (found in review: every later write-out, head, registration, keyring
change or repair of the parent then waited on that child)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from shardvault.vault import Vault

Lock = tuple[Callable[[], AbstractContextManager[object]], Path]


def _locks(vault: Vault) -> dict[str, Lock]:
    cell = vault.cells["US"]
    partner = vault.governance.partner
    keyring = vault.custodian
    directory = vault.directory
    assert cell.maintenance_lock is not None
    return {
        "cell maintenance": (lambda: cell.maintenance(wait=True), cell.maintenance_lock),
        "partner's head turn": (
            lambda: partner.turn("US"),
            partner.directory / "cosigned" / "US.lock",
        ),
        "keyring change": (
            keyring._flocked,  # type: ignore[attr-defined]
            keyring.path.with_name(keyring.path.name + ".lock"),  # type: ignore[attr-defined]
        ),
        "directory registration": (
            directory.registration,
            Path(f"{directory._path}.lock"),  # type: ignore[attr-defined]
        ),
    }


@pytest.fixture
def child_holding() -> Iterator[Callable[[], None]]:
    """Fork a child that lives until the test ends, holding copies of every descriptor."""
    children: list[tuple[int, int]] = []

    def fork() -> None:
        release, hold = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child only waits
            os.close(hold)
            os.read(release, 1)
            os._exit(0)
        os.close(release)
        children.append((child, hold))

    yield fork
    for child, hold in children:
        os.close(hold)
        os.waitpid(child, 0)


@pytest.mark.parametrize(
    "which",
    ["cell maintenance", "partner's head turn", "keyring change", "directory registration"],
)
def test_a_lock_is_free_once_released_though_a_child_forked_under_it(
    vault: Vault, child_holding: Callable[[], None], which: str
) -> None:
    take, path = _locks(vault)[which]
    with take():
        child_holding()
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while the child held it
    finally:
        os.close(fd)
