"""The tombstones a pack set has seen: which names are dead, and by which pack.

Out of the pack set (nodes/packs.py), which scans packs for them and appends them
(``delete``); compaction (nodes/pack_compaction.py) zeroes what they kill.
"""

from __future__ import annotations


class Tombstones:
    """The names a process has seen a tombstone of, and the pack holding it.

    A tombstone outranks every record of its name, but only while it is on disk:
    compaction drops tombstones, and repair may then write the name to the node
    again (it checks `has_trace`). So a pack that goes takes its tombstones out of
    what this process remembers, and the records of those names are looked at again.
    """

    def __init__(self) -> None:
        self._pack_of: dict[str, str] = {}
        self._in_pack: dict[str, set[str]] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._pack_of

    def pack_of(self, name: str) -> str | None:
        return self._pack_of.get(name)

    def add(self, name: str, pack: str) -> None:
        self._pack_of[name] = pack
        self._in_pack.setdefault(pack, set()).add(name)

    def drop_pack(self, pack: str) -> bool:
        """Forget the tombstones `pack` held; whether any name was dead by them alone
        (as far as this process saw: another pack's tombstone is found by a rescan)."""
        dropped = False
        for name in self._in_pack.pop(pack, ()):
            if self._pack_of.get(name) == pack:
                del self._pack_of[name]
                dropped = True
        return dropped
