"""Rendering: JSON for scripts, Rich tables for people; one place for both."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from enum import Enum
from typing import Any

from rich.console import Console
from rich.table import Table

from shardvault.model import ObjectInfo


def to_plain(value: Any) -> Any:
    if isinstance(value, ObjectInfo):
        return {
            "tenant": value.ref.tenant,
            "subject": value.ref.subject,
            "key": value.ref.key,
            "version": value.version,
            "size": value.size,
            "created_at": _iso(value.created_at),
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
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_plain(value), indent=2, sort_keys=True) + "\n")


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], min_width: int = 0
) -> None:
    """A table on stdout; ``min_width`` keeps wide tables readable when stdout is a pipe."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console = Console()
    if console.width < min_width:
        console = Console(width=min_width)
    console.print(table)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def info_rows(items: Sequence[ObjectInfo]) -> list[list[Any]]:
    return [
        [item.ref.key, item.version, human_size(item.size), _iso(item.created_at)] for item in items
    ]


def say(message: str) -> None:
    """A human-readable note on stderr, so stdout stays clean for data."""
    Console(stderr=True, soft_wrap=True).print(message)
