"""The version line of a TOML file shardvault reads: one rule for every kind of file.

A later version is `NewerFormat` (exit 1: the file is fine, this shardvault is too old
for it), judged before the keys that version may add; a file with none was emptied or
cut short, and is told so rather than "version None"; any other value (1.0, true, 0)
is no version this reads.
"""

from __future__ import annotations

from shardvault.errors import ConfigError, NewerFormat
from shardvault.shown_text import named


def refuse_newer(version: object, known: int, shown_name: str) -> None:
    """`NewerFormat` if VERSION is a later one than KNOWN; SHOWN_NAME names the file as
    the message should (already `named`)."""
    if type(version) is int and version > known:
        raise NewerFormat(
            f"{shown_name} is of format version {version}; this shardvault reads version "
            f"{known}: upgrade shardvault"
        )


def check_version(version: object, known: int, source: str) -> None:
    """Refuse anything but version KNOWN of the file SOURCE names (`ConfigError`, or
    `NewerFormat` for a later one)."""
    refuse_newer(version, known, named(source))
    if version is None:
        raise ConfigError(
            f"{source} has no version: restore it from a backup if it was emptied or cut "
            f"short, else add 'version = {known}'"
        )
    if type(version) is not int or version != known:  # not 1.0, nor true
        raise ConfigError(f"{source} has version {version!r}; this reader knows version {known}")
