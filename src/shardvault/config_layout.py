"""Where the config may put a deployment's directories and files, relative to each other.

Kept apart: each local node's directory (its shards alone: gc deletes what else it
finds there), the operator's state directory, the partner's directory, and the
keyring, the config and the two policies (each a file of its own). The partner's
files, the keyring with them, stay out of the operator's state directory
(docs/trust-model.md), and the keyring takes none of the names the partner's own
files have in its directory. No path, nor a file the keyring makes beside itself,
is too long to open. Paths are compared as the config resolved them, never statted.
Each problem is a (key, what is wrong) pair, for the config to report with the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shardvault.model import NodeSpec, shown
from shardvault.partner_files import PARTNER_FILES
from shardvault.path_limits import too_long

Problem = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Layout:
    """The places a config names, resolved: the config's own file and the rest."""

    config: Path
    state_dir: Path
    keyring: Path
    policy: Path
    custodian_policy: Path
    partner_dir: Path
    nodes: Mapping[str, NodeSpec]  # by the key naming each, e.g. "nodes[3]"
    keyring_files: tuple[Path, ...] = ()  # what the keyring makes beside itself


def layout_problems(layout: Layout) -> list[Problem]:
    """Every way the layout mixes what must stay apart, or names a path too long to
    open, each naming its key."""
    return [
        *_paths_not_too_long(layout),
        *_node_directories_apart(layout),
        *_files_apart(
            {
                "the config": layout.config,
                "governance.policy": layout.policy,
                "governance.custodian_policy": layout.custodian_policy,
                "custodian.path": layout.keyring,
            }
        ),
        *_files_outside_nodes(
            layout.nodes,
            {
                "custodian.path": layout.keyring,
                "governance.policy": layout.policy,
                "governance.custodian_policy": layout.custodian_policy,
                "governance.partner_dir": layout.partner_dir,
            },
        ),
        *_partner_apart_from_operator(layout),
        *_keyring_apart_from_partner_files(layout),
    ]


def nested(one: Path, other: Path) -> bool:
    """Whether one directory is the other or inside it, either way round."""
    return one == other or one.is_relative_to(other) or other.is_relative_to(one)


def _paths_not_too_long(layout: Layout) -> list[Problem]:
    """A path no file system takes fails as the command reaches it, "File name too long"
    naming no key; refused at load, it names its key and what to shorten."""
    paths: dict[str, Path | str] = {
        "storage.state_dir": layout.state_dir,
        "custodian.path": layout.keyring,
        "governance.policy": layout.policy,
        "governance.custodian_policy": layout.custodian_policy,
        "governance.partner_dir": layout.partner_dir,
        **{where + ".path": node.location for where, node in layout.nodes.items() if node.location},
    }
    problems: list[Problem] = []
    for key, path in paths.items():
        reason = too_long(path)
        if reason is not None:
            problems.append((key, f"{shown(str(path))}: {reason}"))
    if not any(key == "custodian.path" for key, _ in problems):
        problems.extend(_keyring_files_not_too_long(layout))
    return problems


def _keyring_files_not_too_long(layout: Layout) -> list[Problem]:
    """The keyring's lock, temporary and databases beside it have longer names than it
    has: one too long failed the first command to make it, naming no key."""
    for file in layout.keyring_files:
        reason = too_long(file)
        if reason is not None:
            return [
                (
                    "custodian.path",
                    f"{shown(str(layout.keyring))}: its file {shown(file.name, 40)} beside "
                    f"it: {reason}",
                )
            ]
    return []


def _node_directories_apart(layout: Layout) -> list[Problem]:
    """Each local node needs a directory of its own, apart from the state directory and
    out of the partner's (a partner's directory in a node's: `_files_outside_nodes`).
    Two nodes sharing one would be one disk counted as two failure domains, and each
    cell's gc would take the other's shards for orphans and delete them; gc deletes
    what it does not know in a node's tmp/, and a node's operator is not the partner."""
    problems: list[Problem] = []
    seen: list[tuple[NodeSpec, Path]] = []
    for where, node in layout.nodes.items():
        if node.backend != "local":
            continue
        path = Path(node.location)
        for other, other_path in seen:
            if nested(path, other_path):
                problems.append(
                    (
                        where + ".path",
                        f"{path} overlaps node {other.id}'s directory {other_path}: "
                        "give every node a directory of its own",
                    )
                )
        if nested(path, layout.state_dir):
            problems.append(
                (where + ".path", f"{path} overlaps storage.state_dir {layout.state_dir}")
            )
        if path != layout.partner_dir and path.is_relative_to(layout.partner_dir):
            problems.append(  # the partner's directory in the node's: `_files_outside_nodes`
                (
                    where + ".path",
                    f"{path} is inside governance.partner_dir {layout.partner_dir}: keep "
                    "storage nodes out of the partner's directory",
                )
            )
        seen.append((node, path))
    return problems


def _files_outside_nodes(nodes: Mapping[str, NodeSpec], files: Mapping[str, Path]) -> list[Problem]:
    """A local node's directory holds its shards only: gc removes any file in its tmp/
    older than the grace period (a keyring there went, and every object with it), and
    the custodian's keys or the policies on a storage node are no longer theirs alone."""
    problems: list[Problem] = []
    for key, path in files.items():
        for node in nodes.values():
            directory = Path(node.location)
            if node.backend == "local" and path.is_relative_to(directory):
                problems.append(
                    (
                        key,
                        f"{path} is inside node {node.id}'s directory {directory}: keep the "
                        "deployment's own files off its storage nodes",
                    )
                )
    return problems


def _files_apart(files: Mapping[str, Path]) -> list[Problem]:
    """The keyring and the two policies are files of their own, none of them the config:
    a keyring named as the access policy was opened as a keyring, so a read command
    said to chmod 600 the policy, then that the keyring was damaged, to be restored."""
    problems: list[Problem] = []
    first: dict[Path, str] = {}
    for key, path in files.items():
        if path in first:
            problems.append((key, f"{path} is {first[path]} too: give each its own file"))
        else:
            first[path] = key
    return problems


def _partner_apart_from_operator(layout: Layout) -> list[Problem]:
    """The partner's directory and the operator's state directory neither are nor hold
    one another, and the partner's files the config names (the keyring, which stands in
    for the partner's HSM, and the custodian's policy) are not in the state directory:
    whoever holds the state directory would hold the partner's keys, or decide what
    the partner's custodian allows. The keyring may be in the partner's directory."""
    state = layout.state_dir
    problems: list[Problem] = []
    if nested(layout.partner_dir, state):
        problems.append(
            (
                "governance.partner_dir",
                f"{layout.partner_dir} overlaps storage.state_dir {state}: keep the "
                "partner's directory apart from the operator's",
            )
        )
    for key, path in (
        ("custodian.path", layout.keyring),
        ("governance.custodian_policy", layout.custodian_policy),
    ):
        if path.is_relative_to(state):
            problems.append(
                (
                    key,
                    f"{path} is inside storage.state_dir {state}, the operator's: the "
                    "partner's files go outside it (the keyring may go in partner_dir)",
                )
            )
    return problems


def _keyring_apart_from_partner_files(layout: Layout) -> list[Problem]:
    """The keyring may be in the partner's directory, but not as one of the files the
    partner keeps there (its keys, its record of verdicts) nor inside its directories:
    each would read the other's bytes as its own, and the partner's key or record be
    taken for damage, or be overwritten."""
    for name, what in PARTNER_FILES.items():
        place = layout.partner_dir / name
        if layout.keyring == place or layout.keyring.is_relative_to(place):
            return [
                (
                    "custodian.path",
                    f"{layout.keyring} is, or is inside, the partner's {what} {place}: give "
                    "the keyring a file of its own",
                )
            ]
    return []
