"""A node directory says which node it is, so a wrong path cannot move data across borders.

A node's directory must exist: one that is missing (a disk not mounted) makes
the node unavailable rather than be created again on the disk beneath it.

The first open of a local node writes ``NODE`` in its directory: the node's id
and jurisdiction (format below, docs/formats.md). Every later open checks it.
A directory that names another node or jurisdiction (paths swapped in the
config, a US disk mounted where an EU node was) is refused, and the vault
treats the node as unavailable: no shard is written there, reads go around it,
gc leaves it alone. MinIO's per-drive ``format.json`` and Ceph's OSD fsid
guard against the same mistake.

A disk is usually mounted on an empty directory, which stays when the disk is
not mounted: marking that would put the node's new shards on the disk beneath.
So the deployment records each node it marked (``<state>/nodes/<node id>``, on
the state disk), and a directory without a marker is marked only for a node
never marked before; otherwise it is unavailable until its disk is mounted, or
the record removed to take an empty replacement disk (repair then refills it).

    {"format":"shardvault-node","jurisdiction":"US","node":"us-n1","version":1}
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from shardvault.durability import create_whole, leftover_temporaries, read_own
from shardvault.errors import NewerFormat, StorageError
from shardvault.model import NodeSpec

MARKER = "NODE"
FORMAT = "shardvault-node"
VERSION = 1


def claim(root: Path, node: NodeSpec, marked: Path | None = None) -> None:
    """Check that ``root`` is this node's directory, marking it so on first use.

    ``marked``: the directory recording the nodes ever marked (None: not kept).
    """
    if not root.exists():  # an unmounted disk: never recreate it on the disk beneath
        raise StorageError(
            f"opening {root} failed: no such directory (create it, or mount the node's disk)"
        )
    path = root / MARKER
    expected = {
        "format": FORMAT,
        "jurisdiction": node.jurisdiction,
        "node": node.id,
        "version": VERSION,
    }
    content = json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()
    record = None if marked is None else marked / node.id
    try:
        raw = _marker_of(root, node, path, record, content)
    except OSError as exc:
        raise StorageError(f"opening {root} failed: {exc.strerror}") from exc
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise StorageError(f"{path} is not a shardvault node marker: is this the node's directory?")
    _check_version(found.get("version"), path)
    if (found.get("node"), found.get("jurisdiction")) != (node.id, node.jurisdiction):
        raise StorageError(
            f"{root} belongs to node {found.get('node')} in {found.get('jurisdiction')}, "
            f"not {node.id} in {node.jurisdiction}: fix the node's path in the config"
        )
    _drop_leftovers(path)
    if record is not None:
        _drop_leftovers(record)
        if not record.exists():  # marked now, or before records were kept
            _remember(record, content)


def _marker_of(
    root: Path, node: NodeSpec, path: Path, record: Path | None, content: bytes
) -> bytes:
    """The marker's bytes, marking the directory first if its node was never marked.

    A process that marks a node writes its record only after the marker, so a record
    seen means the marker is there if that process made it: it is read once more. Two
    processes opening a new deployment at once took the other's record, made between
    their own read of no marker and their look for a record, for a disk not mounted,
    and served without the node until restarted.
    """
    try:
        return read_own(path, "node marker")
    except FileNotFoundError:
        pass
    if record is not None and record.exists():
        try:
            return read_own(path, "node marker")  # marked by another process meanwhile
        except FileNotFoundError:
            raise StorageError(
                f"{root} has no node marker, but node {node.id} was marked before: mount "
                f"its disk (or, to take an empty replacement disk, remove {record})"
            ) from None
    _write(path, content)
    return read_own(path, "node marker")  # another process may have claimed it first


def _check_version(version: object, path: Path) -> None:
    """Version 1; a later one is `NewerFormat` (the disk is fine, this shardvault too old
    for it: upgrade), any other `StorageError`. Either makes the node unavailable."""
    if type(version) is int and version > VERSION:
        raise NewerFormat(
            f"{path} is of node marker version {version}; this shardvault reads version "
            f"{VERSION}: upgrade shardvault"
        )
    if type(version) is not int or version != VERSION:  # not true, nor 1.0, which equal 1
        raise StorageError(f"{path} has marker version {version}; this shardvault reads {VERSION}")


def _drop_leftovers(path: Path) -> None:
    """Remove the temporaries a process killed while writing ``path`` left (a copy of the
    marker in the node's root, which no sweep of shards takes). Once ``path`` is there,
    no other process needs its own (`create_whole`). Best effort: one that cannot be
    removed now (a read-only disk) harms nothing, and the next open tries again."""
    for temp in leftover_temporaries(path):
        with contextlib.suppress(OSError):
            temp.unlink()


def _remember(record: Path, content: bytes) -> None:
    """Best effort: a state disk full or read-only must not take every node down with
    it. The node is marked; its record is made at the next open that can."""
    with contextlib.suppress(OSError):
        record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_whole(record, content, 0o644)


def _write(path: Path, content: bytes) -> None:
    """Whole or not at all, and never over a marker another process wrote meanwhile."""
    try:
        create_whole(path, content, 0o644)
    except OSError as exc:
        raise StorageError(f"marking {path.parent} as a node failed: {exc.strerror}") from exc
