"""Rendering: JSON for scripts, Rich tables for people; one place for both."""

from __future__ import annotations

import errno
import io
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from enum import Enum
from typing import Any, BinaryIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from shardvault.errors import Unavailable
from shardvault.model import ObjectInfo, one_line, undecodable_escaped


class OutputFailed(Unavailable):
    """stdout cannot take the output (closed, disk full): exit 1, the request was fine.
    A CLI matter, so not among the library's errors."""


def to_plain(value: Any) -> Any:
    if isinstance(value, ObjectInfo):
        return {
            "tenant": value.ref.tenant,
            "subject": value.ref.subject,
            "key": value.ref.key,
            "version": value.version,
            "size": value.size,
            "created_at": iso_time(value.created_at),
            "segments": value.segments,
            "k": value.k,
            "m": value.m,
            "nodes": list(value.nodes),
            "etag": value.content_hash,
        }
    if is_dataclass(value) and not isinstance(value, type):
        return {key: to_plain(item) for key, item in asdict(value).items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {undecodable_escaped(str(key)): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):  # a path given, with bytes that are not UTF-8
        return undecodable_escaped(value)
    return value


def iso_time(epoch: float | None) -> str:
    """EPOCH as UTC ISO 8601 to the second; "-" for none (a token that never expires)."""
    return "-" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def write_out(data: str | bytes) -> None:
    """Write and flush data to stdout, or fail with one line: closed or full stdout is no crash.

    Text is written as valid UTF-8, a name's bytes that are not escaped (JSON is
    escaped before, string by string). A broken pipe is left to the framework,
    which exits 1 quietly as ``cat`` would.
    """
    with onto_stdout():
        stream = sys.stdout
        if isinstance(data, str) and not hasattr(stream, "buffer"):
            stream.write(data)  # a text-only stream (an embedding's StringIO)
        else:
            if isinstance(data, str):
                stream.flush()  # what print() left in the text layer goes first
                data = undecodable_escaped(data).encode(stream.encoding, stream.errors or "strict")
            _write_all(stream.buffer, data)
        stream.flush()


@contextmanager
def onto_stdout() -> Iterator[None]:
    """Around writing to stdout, ours or another's (the framework's help, which Rich
    prints): a closed or full stdout is `OutputFailed`, one line and exit 1, not output
    lost (Rich writes to nothing where there is no stdout) nor a bare OS error. A broken
    pipe is left to the framework, which exits 1 quietly as ``cat`` would."""
    if sys.stdout is None:
        raise OutputFailed(
            "stdout is closed: redirect it to a file (get, scan and audit head also take -o)"
        )
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        _discard_stdout()
        raise OutputFailed(f"cannot write to stdout: {exc.strerror or exc}") from None


def _write_all(buffer: BinaryIO, data: bytes) -> None:
    """Write all of DATA, or raise. With PYTHONUNBUFFERED, stdout's buffer is the raw
    file, whose write stops short when the disk fills or the pipe's reader goes away
    and says how much it took; the rest was dropped, and `get > file` exited 0 with a
    truncated file. The next write raises what stopped it."""
    view = memoryview(data)
    while view:
        written = buffer.write(view)
        if written is None:  # a non-blocking stdout that is full
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        view = view[written:]
    buffer.flush()


def _discard_stdout() -> None:
    """Point the process's stdout at /dev/null, so the exit-time flush of what is still
    buffered does not fail again (a second error and exit status 120)."""
    stream = sys.stdout
    if stream is not sys.__stdout__ or stream is None:
        return  # not the process's own stdout (an embedding or a test): nothing flushes it
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def print_json(value: Any) -> None:
    write_out(json.dumps(to_plain(value), indent=2, sort_keys=True) + "\n")


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], min_width: int = 0
) -> None:
    """A table on stdout; ``min_width`` keeps wide tables readable when stdout is a pipe.

    The title and cells are plain Text: keys and names are the user's, and Rich
    would read ``[bold]`` or ``[/]`` in them as markup (or fail on it).
    """
    table = Table(title=Text(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    write_out(_render(table, min_width))


def _render(table: Table, min_width: int) -> str:
    """Render for stdout as it is (terminal or not, its width) without Rich writing to it:
    `write_out` does, so a closed or full stdout is one error line."""
    stdout = Console()
    terminal = stdout.is_terminal
    buffer = io.StringIO()
    Console(
        file=buffer,
        width=max(stdout.width, min_width),
        force_terminal=terminal,
        color_system="auto" if terminal else None,
    ).print(table)
    return buffer.getvalue()


def shell_quoted(text: str) -> str:
    """TEXT quoted for a POSIX shell to read back as it is, in a command to paste. What a
    terminal shows as something else (a byte not UTF-8, a tab, a newline) is written as
    bash's ``$'...'`` reads it (``\\xff``, ``\\x09``): within shlex's single quotes the
    escape a line shows would be read as a backslash and letters."""
    if text.isprintable():
        return shlex.quote(text)
    return "$'" + "".join(_ansi_c(char) for char in text) + "'"


def _ansi_c(char: str) -> str:
    """CHAR within ``$'...'``: the byte of an undecodable name as ``\\xNN``, as are the
    UTF-8 bytes of a character not printable; a quote or backslash escaped."""
    if char in "'\\":
        return "\\" + char
    if char.isprintable():
        return char
    return "".join(f"\\x{byte:02x}" for byte in os.fsencode(char))


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def info_rows(items: Sequence[ObjectInfo]) -> list[list[Any]]:
    return [
        [item.ref.key, item.version, human_size(item.size), iso_time(item.created_at)]
        for item in items
    ]


def _stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


def say(message: str) -> None:
    """A human-readable note on stderr, so stdout stays clean for data.

    Printed as plain text: messages carry the user's keys and paths, which must
    come out exactly as given, never read as Rich markup; a byte of one that is
    not UTF-8 as ``\\xNN``, as output and error lines write it (stderr wrote the
    surrogate Python reads it as, ``\\udcff``), and a newline or other character
    that is not printable escaped, as error lines escape it: a note is one line.
    """
    _stderr_console().print(one_line(message))


def warn(message: str) -> None:
    """Like `say`, after a yellow ``warning:`` (our styling; the message stays plain)."""
    _stderr_console().print(Text.assemble(("warning:", "yellow"), " ", one_line(message)))
