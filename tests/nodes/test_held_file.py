"""Whether a file held open is still the one at its name, with /proc and without."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardvault.nodes.held_file import FD_LINKS, HeldFile


def removed(path: Path) -> None:
    path.unlink()


def restored(path: Path) -> None:
    content = path.read_bytes()  # the same name, another file
    path.unlink()
    path.write_bytes(content)


def renamed_over(path: Path) -> None:
    copy = path.with_name("copy")
    copy.write_bytes(path.read_bytes())
    copy.rename(path)


def moved_away(path: Path) -> None:
    path.rename(path.parent.parent / path.name)  # still linked, elsewhere


DAMAGE = {
    "removed": removed,
    "restored": restored,
    "renamed over": renamed_over,
    "moved away": moved_away,
}


@pytest.fixture(params=[FD_LINKS, "/nonexistent"], ids=["proc", "no proc"])
def fd_links(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    (tmp_path / "dir").mkdir()
    path = tmp_path / "dir" / "a.pack"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    yield path, fd
    os.close(fd)


def test_a_file_left_alone_is_at_its_name(opened: tuple[Path, int], fd_links: str) -> None:
    path, fd = opened
    held = HeldFile(fd, str(path), fd_links)
    os.write(fd, b"appended")
    assert held.at_its_name()


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_file_removed_replaced_or_moved_is_not(
    opened: tuple[Path, int], fd_links: str, damage: Callable[[Path], None]
) -> None:
    path, fd = opened
    held = HeldFile(fd, str(path), fd_links)
    damage(path)
    assert not held.at_its_name()


@pytest.mark.parametrize("damage", [restored, renamed_over], ids=["restored", "renamed over"])
def test_a_file_let_go_is_not_taken_for_the_one_its_number_and_name_now_give(
    tmp_path: Path, fd_links: str, damage: Callable[[Path], None]
) -> None:
    """A look without the writer's lock may read the number once the writer has closed
    it and another open has taken it, here for a file at the same path."""
    path = tmp_path / "a.pack"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    held = HeldFile(fd, str(path), fd_links)
    held.let_go()
    os.close(fd)
    damage(path)
    again = os.open(path, os.O_RDONLY)
    try:
        assert again == fd  # the number, given to the file now at the name
        assert not held.at_its_name()
    finally:
        os.close(again)


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_file_already_gone_from_its_name_when_held_is_not_at_it(
    opened: tuple[Path, int], fd_links: str, damage: Callable[[Path], None]
) -> None:
    """A pack removed between its making and its holding (a cleanup): /proc then names
    it as removed from the start, and a look comparing with that said it was there."""
    path, fd = opened
    damage(path)
    held = HeldFile(fd, str(path), fd_links)
    os.write(fd, b"appended")
    assert not held.at_its_name()


PROC_LOST = {
    "unmounted": lambda links: links.mkdir(),  # its empty mount point: ENOENT
    "not a directory": lambda links: links.write_bytes(b""),  # ENOTDIR
}


@pytest.mark.parametrize("proc_lost", PROC_LOST.values(), ids=PROC_LOST.keys())
def test_a_file_looked_at_once_proc_cannot_be_read_is_looked_at_by_its_name(
    opened: tuple[Path, int], tmp_path: Path, proc_lost: Callable[[Path], None]
) -> None:
    """/proc unmounted or hidden under a running process: every look raised, and every
    put of the node failed, where the look made without /proc can still answer."""
    path, fd = opened
    fd_links = tmp_path / "fd"
    fd_links.symlink_to(FD_LINKS)  # this process's /proc/self/fd, until it is not
    held = HeldFile(fd, str(path), str(fd_links))
    fd_links.unlink()
    proc_lost(fd_links)
    assert held.at_its_name()
    restored(path)
    assert not held.at_its_name()


def test_the_look_that_must_not_wait_for_the_disk_says_only_what_proc_can(
    opened: tuple[Path, int], tmp_path: Path
) -> None:
    """A pack let go as its store closes is looked at by /proc alone (nodes/packs.py):
    where only a stat of its name could say, a stat a hung disk holds, it is not said."""
    path, fd = opened
    fd_links = tmp_path / "fd"
    fd_links.symlink_to(FD_LINKS)
    held = HeldFile(fd, str(path), str(fd_links))
    assert held.linked_at_its_name() is True
    fd_links.unlink()  # /proc lost under the process
    assert held.linked_at_its_name() is None
    fd_links.symlink_to(FD_LINKS)
    restored(path)
    assert held.linked_at_its_name() is False
    assert HeldFile(fd, str(path), "/nonexistent").linked_at_its_name() is None  # never had it
