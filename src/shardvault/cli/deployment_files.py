"""Keep `get -o FILE` out of the deployment's own files, refused before anything is read.

`-o keys/keyring.json` replaced the keyring with the object's bytes: every later
command failed and all data became unreadable; so did a catalog, the directory,
the tombstones, the config, an audit log or a node's directory. The deployment
owns its config file, its access and custodian policies, the keyring and every
file beside it named after it (its lock, temporaries, tombstones, key subjects
and their SQLite journals), and three kinds of tree: the state directory (catalogs, directory,
audit logs, approvals, principals), the partner directory and each local node's
directory. `-o` is compared resolved, its symlinks followed as `open` follows
them (`outfile.output_target`).

Hard links, what is cheap: an existing file with more than one name, or an open
descriptor (`/dev/fd/N`, which is written into), is also compared by
(st_dev, st_ino) with the config, the policies, the keyring's files, the partner
directory's and every file under the state directory (a few per cell), statted
only then. Node directories are not walked (they hold every shard: too many to
stat at each get). A file `-o` names is replaced by a rename, so a hard link
into a node directory loses its name, never the shard's bytes; but an open
descriptor is written into, so one open on a file with several names, on the
disk of a node's directory, is refused: it could be a shard's. Which disk that is
comes from `/proc/self/mountinfo` (the mount the descriptor was opened through, and
the one each node's directory is under), not from a stat of the node's directory: a
hung disk's never returns, and `get -o /dev/fd/N` waited for it though the get could
read around that node.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from shardvault.cli.outfile import Output, checked_output, output_target
from shardvault.config import Config, node_directory
from shardvault.errors import InvalidInput
from shardvault.keys.key_subjects import key_subjects_path
from shardvault.keys.tombstones import tombstones_path
from shardvault.model import named


def output_outside(
    given: str | None, config: Config, option: str = "-o", written: str = "the object"
) -> Output | None:
    """`OPTION GIVEN` (none if not given), checked as `get -o` checks one and kept out of
    the deployment's files, before anything is read or done."""
    if given is None:
        return None
    output = checked_output(given, option)
    try:
        _refuse(
            output.given, output.target, output.found, config, option, written, output.descriptor
        )
    except BaseException:
        output.close()
        raise
    return output


def refuse_deployment_file(
    path: Path, config: Config, option: str = "-o", written: str = "the object"
) -> None:
    """Raise `InvalidInput` (exit 2) if writing PATH could change a file of the deployment."""
    _refuse(path, *output_target(path), config, option, written)


def _refuse(
    path: Path,
    target: Path,
    found: os.stat_result | None,
    config: Config,
    option: str,
    written: str,
    descriptor: int | None = None,
) -> None:
    """Refuse TARGET if it is a deployment file (or, open as DESCRIPTOR and so written
    into, may be a shard)."""
    what = _owner(target, config)
    if what is None and found is not None and stat.S_ISREG(found.st_mode) and found.st_nlink > 1:
        what = _same_file(found, config)
        if what is None and descriptor is not None:
            what = _maybe_a_shard(descriptor, config)
    if what is not None:
        raise InvalidInput(
            f"{option} {named(str(path))} is {what}: write {written} outside the deployment's files"
        )


def _maybe_a_shard(descriptor: int, config: Config) -> str | None:
    """What DESCRIPTOR, open on a file with several names, may be: a shard, if it is on the
    disk of a node's directory (see the module's note). Fails closed when the kernel does
    not say which disk it is on."""
    try:
        mounts = _mounts()
        device = {ident: device for ident, _, device in mounts}[_mount_id(descriptor)]
    except (OSError, ValueError, KeyError, IndexError):
        return "open on a file with other names on a disk that cannot be told, perhaps a shard's"
    for node in config.nodes:
        if node.backend != "local":
            continue
        if _device_under(node_directory(Path(node.location)), mounts) == device:
            return (
                f"open on a file with other names on the disk of node {node.id}'s "
                "directory, perhaps a shard, and would be written into"
            )
    return None


_Mount = tuple[int, Path, bytes]  # mount id, mount point, device (b"major:minor")
_ESCAPED = re.compile(rb"\\([0-7]{3})")  # mountinfo's escape of a space, tab, newline, \


def _mounts() -> list[_Mount]:
    """This process's mounts, as `/proc/self/mountinfo` lists them: read from the kernel's
    tables, touching no disk."""
    with open("/proc/self/mountinfo", "rb") as table:
        rows = [line.split(b" ") for line in table]
    return [(int(row[0]), _unescaped(row[4]), row[2]) for row in rows]


def _unescaped(point: bytes) -> Path:
    return Path(os.fsdecode(_ESCAPED.sub(lambda octal: bytes([int(octal[1], 8)]), point)))


def _mount_id(descriptor: int) -> int:
    """The mount DESCRIPTOR's file was opened through (the `mnt_id` of its fdinfo)."""
    with open(f"/proc/self/fdinfo/{descriptor}", "rb") as info:
        for line in info:
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    raise ValueError(f"no mnt_id for descriptor {descriptor}")


def _device_under(directory: Path, mounts: list[_Mount]) -> bytes | None:
    """The device of the mount DIRECTORY is in, by its name alone: the deepest mount point
    at or above it, the last mounted there if several are stacked on it."""
    found: tuple[int, bytes] | None = None
    for _, point, device in mounts:
        if directory.is_relative_to(point) and (found is None or len(point.parts) >= found[0]):
            found = (len(point.parts), device)
    return None if found is None else found[1]


def _owner(target: Path, config: Config) -> str | None:
    """What of the deployment TARGET is, or is inside; none if it is no part of it."""
    for file, what in _files(config):
        if target == file:
            return what
    keyring = _real(config.keyring_path)
    if target.parent == keyring.parent and _keyring_named(target.name, keyring):
        return f"a file of the deployment's keyring {keyring}"
    for tree, what in _trees(config):
        if target.is_relative_to(tree):
            return f"inside {what} {tree}"
    return None


def _files(config: Config) -> Iterator[tuple[Path, str]]:
    yield _real(config.path), "the deployment's config file"
    yield _real(config.keyring_path), "the deployment's keyring"
    if config.governance is not None:
        yield _real(config.governance.policy_path), "the deployment's access policy"
        yield _real(config.governance.custodian_policy_path), "the custodian's policy"


def _keyring_named(name: str, keyring: Path) -> bool:
    """Whether a file beside the keyring is one of its own, named exactly as the keyring
    names them: `keyring.json.lock`, a `.keyring.json.*.tmp`, `keyring.destroyed.sqlite`,
    `keyring.subjects.sqlite` and their `-wal`, `-shm` and `-journal` (not
    `keyring.json.bak`: the user's)."""
    databases = (tombstones_path(keyring).name, key_subjects_path(keyring).name)
    return (
        name in (keyring.name, f"{keyring.name}.lock")
        or (name.startswith(f".{keyring.name}.") and name.endswith(".tmp"))
        or any(name in (db, f"{db}-wal", f"{db}-shm", f"{db}-journal") for db in databases)
    )


def _trees(config: Config) -> Iterator[tuple[Path, str]]:
    yield _real(config.state_dir), "the deployment's state directory"
    if config.governance is not None:
        yield _real(config.governance.partner_dir), "the partner directory"
    for node in config.nodes:
        if node.backend == "local":
            yield node_directory(Path(node.location)), f"node {node.id}'s directory"


def _same_file(found: os.stat_result, config: Config) -> str | None:
    """The deployment's file FOUND is another name of, if any (see the module's note)."""
    identity = (found.st_dev, found.st_ino)
    for file in _linkable(config):
        try:
            info = file.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == identity:
            return f"a hard link to the deployment's file {file}"
    return None


def _linkable(config: Config) -> Iterator[Path]:
    """The files of the deployment but the shards."""
    yield from (file for file, _ in _files(config))
    keyring = _real(config.keyring_path)
    with suppress(OSError):
        yield from (p for p in keyring.parent.iterdir() if _keyring_named(p.name, keyring))
    trees = [config.state_dir]
    if config.governance is not None:
        trees.append(config.governance.partner_dir)
    for tree in trees:
        for directory, _dirs, names in os.walk(_real(tree)):
            yield from (Path(directory, name) for name in names)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))
