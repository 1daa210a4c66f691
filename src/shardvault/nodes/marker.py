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

    {"format":"shardvault-node","jurisdiction":"US","node":"us-n1","version":1}
"""

from __future__ import annotations

import json
from pathlib import Path

from shardvault.durability import create_whole
from shardvault.errors import StorageError
from shardvault.model import NodeSpec

MARKER = "NODE"
FORMAT = "shardvault-node"
VERSION = 1


def claim(root: Path, node: NodeSpec) -> None:
    """Check that ``root`` is this node's directory, marking it so on first use."""
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
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        _write(path, json.dumps(expected, sort_keys=True, separators=(",", ":")).encode())
        raw = path.read_bytes()  # another process may have claimed it first
    except OSError as exc:
        raise StorageError(f"opening {root} failed: {exc.strerror}") from exc
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise StorageError(f"{path} is not a shardvault node marker: is this the node's directory?")
    if found.get("version") != VERSION:
        version = found.get("version")
        raise StorageError(f"{path} has marker version {version}; this shardvault reads {VERSION}")
    if (found.get("node"), found.get("jurisdiction")) != (node.id, node.jurisdiction):
        raise StorageError(
            f"{root} belongs to node {found.get('node')} in {found.get('jurisdiction')}, "
            f"not {node.id} in {node.jurisdiction}: fix the node's path in the config"
        )


def _write(path: Path, content: bytes) -> None:
    """Whole or not at all, and never over a marker another process wrote meanwhile."""
    try:
        create_whole(path, content, 0o644)
    except OSError as exc:
        raise StorageError(f"marking {path.parent} as a node failed: {exc.strerror}") from exc
