"""A Rich progress bar for large transfers, shown only on a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)

LARGE = 16 << 20


@contextmanager
def transfer_bar(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yields an `advance(nbytes)` callback; draws a bar when worth it and on a TTY."""
    console = Console(stderr=True)
    show = console.is_terminal and (total is None or total >= LARGE)
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=console,
        disable=not show,
        transient=True,
    )
    with bar:
        task = bar.add_task(escape(label), total=total)  # the label holds a user's key
        yield lambda nbytes: bar.advance(task, nbytes)
