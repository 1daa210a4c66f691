"""The version stamp of the deployment's small SQLite files (directory, approvals,
principal registry): `PRAGMA user_version`, checked at open so that a file
written by a newer shardvault is refused rather than misread."""

from __future__ import annotations

import sqlite3

from shardvault.errors import NewerFormat


def stamp_schema(db: sqlite3.Connection, version: int, what: str) -> None:
    """Refuse a file of a later schema than `version` (`NewerFormat`: exit 1, upgrade);
    stamp any other with `version`.

    A file with no stamp (0) is from before the stamps, with the layout of
    version 1: the only one so far of each of these files.
    """
    found = refuse_newer(db, version, what)
    if found != version:
        db.execute(f"PRAGMA user_version={int(version)}")


def refuse_newer(db: sqlite3.Connection, version: int, what: str) -> int:
    """The file's schema version, `NewerFormat` if later than `version`: for a reader
    that must not migrate the file (a read command writes nothing)."""
    (found,) = db.execute("PRAGMA user_version").fetchone()
    if found > version:
        raise NewerFormat(
            f"{what} has schema version {found}; this shardvault knows up to {version}: "
            "upgrade shardvault"
        )
    return int(found)
