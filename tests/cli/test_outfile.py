"""`-o` writes where it was checked: what changes between the check and the write
is not followed (another user may write in the output's directory)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from shardvault.cli import outfile
from shardvault.cli.outfile import Output, checked_output, write_output


def _write(output: object, data: bytes = b"object") -> None:
    write_output(output, [data], lambda _n: None)  # type: ignore[arg-type]


def test_a_symlink_swapped_in_after_the_check_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.write_bytes(b"old")
    output = checked_output(str(out))
    out.unlink()
    out.symlink_to(victim)  # swapped in between the check and the write
    _write(output)
    assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and out.read_bytes() == b"object"


def test_a_symlink_put_where_nothing_was_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "new"
    output = checked_output(str(out))
    out.symlink_to(victim)
    _write(output)
    assert victim.read_bytes() == b"precious" and out.read_bytes() == b"object"


def test_a_directory_swapped_after_the_check_does_not_move_the_write(tmp_path: Path) -> None:
    checked, other = tmp_path / "checked", tmp_path / "other"
    checked.mkdir()
    other.mkdir()
    link = tmp_path / "dir"
    link.symlink_to(checked)
    output = checked_output(str(link / "out"))
    link.unlink()
    link.symlink_to(other)  # the path now leads elsewhere
    _write(output)
    assert (checked / "out").read_bytes() == b"object"
    assert not (other / "out").exists()


def test_a_fifo_is_fed_as_checked_whatever_has_its_name_now(tmp_path: Path) -> None:
    # whoever swapped in another FIFO, or a symlink, would read the object or aim it
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for swapped_in in ("symlink", "fifo"):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        checked = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the user's reader
        output = checked_output(str(fifo))
        fifo.unlink()
        if swapped_in == "fifo":
            os.mkfifo(fifo)
            theirs = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        else:
            fifo.symlink_to(victim)
        _write(output)
        assert os.read(checked, 100) == b"object"
        if swapped_in == "fifo":
            assert os.read(theirs, 100) == b""  # never opened by the write: no writer, EOF
            os.close(theirs)
        os.close(checked)
        fifo.unlink()
    assert victim.read_bytes() == b"precious"


def test_a_fifo_swapped_in_for_a_checked_file_is_not_fed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"old")
    output = checked_output(str(out))
    out.unlink()
    os.mkfifo(out)
    _write(output)  # never opens the FIFO: a rename puts the object in its place
    assert out.is_file() and out.read_bytes() == b"object"


def test_what_was_held_is_let_go_after_the_write(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    for path, held in ((tmp_path / "out", 1), (fifo, 2)):
        before = len(os.listdir("/proc/self/fd"))
        output = checked_output(str(path))
        assert len(os.listdir("/proc/self/fd")) == before + held
        _write(output)
        assert len(os.listdir("/proc/self/fd")) == before
    assert (tmp_path / "out").read_bytes() == b"object"
    assert os.read(reader, 100) == b"object"
    os.close(reader)


class _SignalAsTheOpenReturns:
    """Ctrl-C (or SIGTERM, raised the same way) landing just after a temporary was made:
    `timeout` killing `get -o` there left a `.NAME.partial-PID` behind."""

    def __init__(self, real: Callable[..., int]) -> None:
        self.real, self.made = real, 0

    def __call__(
        self, output: Output, flags: int, mode: int = 0o777, name: str | None = None
    ) -> int:
        fd = self.real(output, flags, mode, name)
        if flags & os.O_CREAT:
            self.made += 1
            raise KeyboardInterrupt
        return fd


@pytest.mark.parametrize("when", ["checking", "writing"])
def test_a_signal_as_a_temporary_is_made_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    out = tmp_path / "out"
    output = checked_output(str(out)) if when == "writing" else None
    interrupt = _SignalAsTheOpenReturns(outfile._open_in)
    monkeypatch.setattr(outfile, "_open_in", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _write(output if output is not None else checked_output(str(out)))
    assert interrupt.made == 1
    assert list(tmp_path.iterdir()) == []
